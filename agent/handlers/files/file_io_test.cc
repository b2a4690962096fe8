#include "agent/handlers/files/file_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvm::files {
namespace {

// A file created in a fresh directory under `parent`, removed at the end.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& parent) {
    dir_ = parent + "/kvm-file-io-XXXXXX";
    if (::mkdtemp(dir_.data()) == nullptr) {
      dir_.clear();
      return;
    }
    path_ = dir_ + "/f";
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ >= 0 && ::write(fd_, "hello", 5) != 5) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~ScratchFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  int fd() const { return fd_; }

 private:
  std::string dir_, path_;
  int fd_ = -1;
};

long FsType(const std::string& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 ? static_cast<long>(fs.f_type) : -1;
}

TEST(ReadCannotWaitForDisk, TmpfsWithoutSwapIsReadFromMemory) {
  if (FsType("/dev/shm") != TMPFS_MAGIC) GTEST_SKIP() << "/dev/shm is not a tmpfs here";
  struct sysinfo si {};
  ASSERT_EQ(::sysinfo(&si), 0);
  if (si.totalswap != 0) GTEST_SKIP() << "this machine has swap (cachestat decides there)";
  ScratchFile file("/dev/shm");
  ASSERT_GE(file.fd(), 0);
  EXPECT_TRUE(ReadCannotWaitForDisk(file.fd(), 0, 5));
  EXPECT_TRUE(ReadCannotWaitForDisk(file.fd(), 0, 1 << 20));  // past the end: a hole, no wait
}

// The branch taken on machines with swap (this one has none, so the test above never reaches
// it): cachestat(2) on a tmpfs file whose pages are all in memory, and past its end (a hole).
TEST(ReadCannotWaitForDisk, CachestatFindsNoPageOfAResidentTmpfsFileInSwap) {
  if (FsType("/dev/shm") != TMPFS_MAGIC) GTEST_SKIP() << "/dev/shm is not a tmpfs here";
  utsname uts{};
  ASSERT_EQ(::uname(&uts), 0);
  int major = 0, minor = 0;
  ASSERT_EQ(std::sscanf(uts.release, "%d.%d", &major, &minor), 2) << uts.release;
  if (major < 6 || (major == 6 && minor < 5)) GTEST_SKIP() << "no cachestat before Linux 6.5";
  ScratchFile file("/dev/shm");
  ASSERT_GE(file.fd(), 0);
  EXPECT_TRUE(NoPageOfRangeInSwap(file.fd(), 0, 5));
  EXPECT_TRUE(NoPageOfRangeInSwap(file.fd(), 0, 1 << 20));
  EXPECT_FALSE(NoPageOfRangeInSwap(-1, 0, 5));  // cannot say: may wait
}

TEST(ReadCannotWaitForDisk, DiskBackedAndOtherFileSystemsMayWait) {
  // The build tree is on a disk file system (the tests are never built in a tmpfs here).
  std::string here = KVM_BINARY_DIR;
  long type = FsType(here);
  if (type == TMPFS_MAGIC || type == RAMFS_MAGIC) GTEST_SKIP() << here << " is in memory";
  ScratchFile file(here);
  ASSERT_GE(file.fd(), 0);
  EXPECT_FALSE(ReadCannotWaitForDisk(file.fd(), 0, 5));
  int proc = ::open("/proc/version", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(proc, 0);
  EXPECT_FALSE(ReadCannotWaitForDisk(proc, 0, 5));
  ::close(proc);
  EXPECT_FALSE(ReadCannotWaitForDisk(-1, 0, 5));  // fstatfs fails: not known, so may wait
}

}  // namespace
}  // namespace kvm::files
