// kvmmanager-ctl's file commands (cp, cat, rm, mkdir) against the real agent: what happens on
// the host side of a copy.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/handlers/files/sha256.h"
#include "tests/integration/test_util.h"

namespace kvm::test {
namespace {
namespace json = boost::json;
namespace fs = std::filesystem;

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// An agent whose allowed read and write entry is its sandbox, and a local directory.
class CtlFilesTest : public ::testing::Test {
 protected:
  RunResult Ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{KVM_CTL_BINARY, "--socket", agent_.socket_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(argv, "", std::chrono::seconds(60));
  }
  // Names in `dir` (not recursive), sorted.
  static std::vector<std::string> Names(const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  AgentProcess agent_;
  std::string sb_ = agent_.sandbox();
  TempDir local_;
};

// -n and -m mean the same both ways: a download with -n leaves an existing local file alone
// (it was silently replaced), and -m sets the downloaded file's permissions.
TEST_F(CtlFilesTest, NoClobberAndModeApplyToDownloadsToo) {
  WriteFile(sb_ + "/f", "guest");
  std::string kept = local_ / "kept";
  WriteFile(kept, "local");
  RunResult n = Ctl({"cp", "-q", "-n", ":" + sb_ + "/f", kept});
  EXPECT_EQ(n.exit_code, 2) << n.err;
  EXPECT_NE(n.err.find("it exists (cp -n)"), std::string::npos) << n.err;
  EXPECT_EQ(ReadFileText(kept), "local");
  EXPECT_EQ(Names(local_.path()), std::vector<std::string>{"kept"});  // no temp file left

  std::string fresh = local_ / "fresh";
  RunResult m = Ctl({"cp", "-q", "-n", "-m", "0600", ":" + sb_ + "/f", fresh});
  EXPECT_EQ(m.exit_code, 0) << m.err;
  EXPECT_EQ(ReadFileText(fresh), "guest");
  struct stat st;
  ASSERT_EQ(::stat(fresh.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  RunResult bad = Ctl({"cp", "-m", "0999", ":" + sb_ + "/f", local_ / "x"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("octal permissions"), std::string::npos) << bad.err;
}

// As cp(1): a download onto an existing FIFO or device writes into it (a rename would replace
// the node), and onto a symbolic link writes to the link's target, leaving the link a link.
TEST_F(CtlFilesTest, DownloadOntoAFifoDeviceOrSymlinkWritesThroughItWithoutReplacingIt) {
  std::string data = RandomBytes(300000, 1);
  WriteFile(sb_ + "/src.bin", data);

  std::string fifo = local_ / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Opened before ctl runs, without blocking; read until ctl has ended and the FIFO is empty,
  // so a ctl that replaced the FIFO instead of writing into it cannot hang the test.
  int read_fd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(read_fd, 0);
  std::atomic<bool> ctl_done{false};
  std::string got;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      pollfd p{read_fd, POLLIN, 0};
      ::poll(&p, 1, 50);
      bool done = ctl_done.load();
      ssize_t n = ::read(read_fd, buf, sizeof buf);
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
      } else if (done) {
        break;
      }
    }
  });
  RunResult to_fifo = Ctl({"cp", "-q", ":" + sb_ + "/src.bin", fifo});
  ctl_done = true;
  reader.join();
  ::close(read_fd);
  EXPECT_EQ(to_fifo.exit_code, 0) << to_fifo.err;
  EXPECT_NE(to_fifo.out.find(Sha256Hex(data)), std::string::npos) << to_fifo.out;
  EXPECT_TRUE(got == data) << got.size() << " bytes read from the FIFO";
  EXPECT_TRUE(fs::is_fifo(fifo));

  // The host's /dev/null through a link, and a null device made here (skipped where the file
  // system does not allow device nodes).
  std::string null_link = local_ / "null-link";
  fs::create_symlink("/dev/null", null_link);
  std::vector<std::string> devices{null_link};
  std::string node = local_ / "mynull";
  if (::mknod(node.c_str(), S_IFCHR | 0666, ::makedev(1, 3)) == 0) devices.push_back(node);
  for (const std::string& device : devices) {
    SCOPED_TRACE(device);
    RunResult r = Ctl({"cp", "-q", ":" + sb_ + "/src.bin", device});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find(Sha256Hex(data)), std::string::npos) << r.out;
    EXPECT_TRUE(fs::is_character_file(device));
  }
  EXPECT_TRUE(fs::is_symlink(null_link));
  EXPECT_TRUE(fs::is_character_file("/dev/null"));

  // A link to a regular file: the target gets the content, the link stays.
  WriteFile(local_ / "target.bin", "old");
  std::string link = local_ / "link";
  fs::create_symlink("target.bin", link);
  RunResult through = Ctl({"cp", "-q", ":" + sb_ + "/src.bin", link});
  EXPECT_EQ(through.exit_code, 0) << through.err;
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(fs::read_symlink(link), "target.bin");
  EXPECT_TRUE(ReadFileText(local_ / "target.bin") == data);

  // A dangling link is refused, and nothing is created.
  fs::create_symlink("nowhere", local_ / "dangling");
  RunResult dangling = Ctl({"cp", "-q", ":" + sb_ + "/src.bin", local_ / "dangling"});
  EXPECT_EQ(dangling.exit_code, 2);
  EXPECT_NE(dangling.err.find("dangling symbolic link"), std::string::npos) << dangling.err;
  EXPECT_FALSE(fs::exists(local_ / "nowhere"));
  EXPECT_TRUE(fs::is_symlink(local_ / "dangling"));

  std::vector<std::string> expected{"dangling", "fifo", "link", "null-link", "target.bin"};
  if (devices.size() > 1) expected.insert(expected.begin() + 3, "mynull");
  EXPECT_EQ(Names(local_.path()), expected);
}

// Each download has a temp file of its own: two to one local name each install a whole file
// they verified (the last rename wins), never a mix of both, and leave no temp file.
TEST_F(CtlFilesTest, ConcurrentDownloadsToOneLocalNameLeaveOneWholeFile) {
  std::string a = RandomBytes(4000000, 2), b = RandomBytes(4000000, 3);
  WriteFile(sb_ + "/a.bin", a);
  WriteFile(sb_ + "/b.bin", b);
  std::string target = local_ / "one.bin";
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    RunResult ra, rb;
    std::thread other([&] { ra = Ctl({"cp", "-q", ":" + sb_ + "/a.bin", target}); });
    rb = Ctl({"cp", "-q", ":" + sb_ + "/b.bin", target});
    other.join();
    EXPECT_EQ(ra.exit_code, 0) << ra.err;
    EXPECT_EQ(rb.exit_code, 0) << rb.err;
    std::string got = ReadFileText(target);
    EXPECT_TRUE(got == a || got == b) << "a mix of both downloads (" << got.size() << " bytes)";
    EXPECT_EQ(Names(local_.path()), std::vector<std::string>{"one.bin"});
  }
}

// A download that fails after its temp file was created leaves nothing behind: the agent's
// connection lost mid-way (exit 3), and a remote name JSON cannot carry (exit 2).
TEST_F(CtlFilesTest, FailedDownloadLeavesNoTempFile) {
  // An "agent" that reads the first requests and hangs up.
  std::string sock = local_ / "hangup.sock";
  int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, sock.c_str());
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 1), 0);
  std::thread server([&] {
    int fd = ::accept(listener, nullptr, nullptr);
    char buf[4096];
    [[maybe_unused]] ssize_t n = ::read(fd, buf, sizeof buf);
    ::close(fd);
  });
  std::string dest = local_ / "down";
  fs::create_directory(dest);
  RunResult lost = RunProgram(
      {KVM_CTL_BINARY, "--socket", sock, "cp", "-q", ":" + sb_ + "/x.bin", dest + "/x.bin"}, "",
      std::chrono::seconds(60));
  server.join();
  ::close(listener);
  EXPECT_EQ(lost.exit_code, 3) << lost.err;
  EXPECT_TRUE(Names(dest).empty()) << Names(dest)[0];

  RunResult bad_name = Ctl({"cp", "-q", ":" + sb_ + "/\xff", dest + "/x"});
  EXPECT_EQ(bad_name.exit_code, 2) << bad_name.err;
  EXPECT_NE(bad_name.err.find("not valid UTF-8"), std::string::npos) << bad_name.err;
  EXPECT_TRUE(Names(dest).empty()) << Names(dest)[0];
}

// `cp FILE :ENTRY` where ENTRY is the allowed write directory itself (the default config's
// /tmp/kvmmanager): the file goes into it under its own name, as into any directory.
TEST_F(CtlFilesTest, UploadToTheAllowedEntryItselfGoesIntoIt) {
  WriteFile(local_ / "src.txt", "into the entry\n");
  RunResult up = Ctl({"cp", "-q", local_ / "src.txt", ":" + sb_});
  EXPECT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(ReadFileText(sb_ + "/src.txt"), "into the entry\n");
  EXPECT_NE(up.out.find(":" + sb_ + "/src.txt "), std::string::npos) << up.out;
  // A refusal of the file inside is the agent's answer (here: -n and the file exists).
  RunResult again = Ctl({"cp", "-q", "-n", local_ / "src.txt", ":" + sb_});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("exists"), std::string::npos) << again.err;
  // Outside every entry the policy's first answer stands.
  RunResult outside = Ctl({"cp", "-q", local_ / "src.txt", ":" + local_.path()});
  EXPECT_EQ(outside.exit_code, 1);
  EXPECT_NE(outside.err.find("'" + local_.path() + "'"), std::string::npos) << outside.err;
  EXPECT_FALSE(fs::exists(sb_ + "/src.txt/src.txt"));
}

// A local name JSON cannot carry (not UTF-8) fails that file alone, named on stderr; the
// others of the copy still go (exit 2 at the end), with several sources and with -r.
TEST_F(CtlFilesTest, SourceNameThatIsNotUtf8FailsOnlyThatFile) {
  std::string bad = local_ / "bad\xffname";
  WriteFile(bad, "bad");
  WriteFile(local_ / "src.txt", "good\n");
  fs::create_directory(sb_ + "/ms3");
  RunResult several = Ctl({"cp", "-q", bad, local_ / "src.txt", ":" + sb_ + "/ms3/"});
  EXPECT_EQ(several.exit_code, 2) << several.err;
  EXPECT_NE(several.err.find("cannot copy " + local_.path() +
                             "/bad\xffname: the path is not valid UTF-8"),
            std::string::npos)
      << several.err;
  EXPECT_NE(several.err.find("not valid UTF-8"), std::string::npos) << several.err;
  EXPECT_EQ(ReadFileText(sb_ + "/ms3/src.txt"), "good\n");

  std::string tree = local_ / "tree";
  fs::create_directories(tree + "/sub\xfe/deeper");
  WriteFile(tree + "/a\xff", "a");
  WriteFile(tree + "/sub\xfe/deeper/lost", "lost");
  WriteFile(tree + "/z.txt", "z\n");
  fs::create_directory(tree + "/ok");
  WriteFile(tree + "/ok/y.txt", "y\n");
  RunResult r = Ctl({"cp", "-r", "-q", tree, ":" + sb_ + "/t"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(ReadFileText(sb_ + "/t/z.txt"), "z\n");
  EXPECT_EQ(ReadFileText(sb_ + "/t/ok/y.txt"), "y\n");
  EXPECT_NE(r.err.find("cannot copy " + tree + "/a\xff: the path"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cannot create :" + sb_ + "/t/sub\xfe: the path"), std::string::npos)
      << r.err;
  EXPECT_EQ(Names(sb_ + "/t"), (std::vector<std::string>{"ok", "z.txt"}));
}

// A guest name that is not UTF-8 is listed with U+FFFD, so it can read exactly like another
// entry's real name: cp -r copied that other file twice and exited 0 (found by QA). The agent
// marks such names (name_lossy) and cp fails that file alone, exit 2.
TEST_F(CtlFilesTest, DownloadOfATreeWithANameThatIsNotUtf8FailsThatFileAlone) {
  fs::create_directories(sb_ + "/amb");
  WriteFile(sb_ + "/amb/n\xff", "INVALID-NAME-CONTENT");
  WriteFile(sb_ + "/amb/n\xef\xbf\xbd", "REPLACEMENT-CHAR-CONTENT");
  std::string out = local_ / "amb";
  RunResult r = Ctl({"cp", "-r", "-q", ":" + sb_ + "/amb", out});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("is not valid UTF-8 (shown with U+FFFD)"), std::string::npos) << r.err;
  EXPECT_EQ(Names(out), std::vector<std::string>{"n\xef\xbf\xbd"});
  EXPECT_EQ(ReadFileText(out + "/n\xef\xbf\xbd"), "REPLACEMENT-CHAR-CONTENT");
}

// cp -r to a new destination written with a trailing slash creates it with the tree's
// contents, as cp(1) does, both ways; a file to a missing directory names the destination.
TEST_F(CtlFilesTest, TrailingSlashOnANewDestinationDoesNotMakeItAnExistingDirectory) {
  fs::create_directories(sb_ + "/t1/a/sub");
  WriteFile(sb_ + "/t1/a/sub/f", "f\n");
  std::string dlnew = local_ / "dlnew";
  RunResult down = Ctl({"cp", "-r", "-q", ":" + sb_ + "/t1/a", dlnew + "/"});
  EXPECT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(ReadFileText(dlnew + "/sub/f"), "f\n");
  EXPECT_FALSE(fs::exists(dlnew + "/a"));

  std::string tree = local_ / "tree";
  fs::create_directories(tree + "/sub");
  WriteFile(tree + "/sub/g", "g\n");
  RunResult up = Ctl({"cp", "-r", "-q", tree + "/", ":" + sb_ + "/t2/"});
  EXPECT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(ReadFileText(sb_ + "/t2/sub/g"), "g\n");
  EXPECT_FALSE(fs::exists(sb_ + "/t2/tree"));

  // Existing directories still receive the tree under its own name.
  RunResult again = Ctl({"cp", "-r", "-q", tree, ":" + sb_ + "/t2/"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(ReadFileText(sb_ + "/t2/tree/sub/g"), "g\n");

  RunResult missing = Ctl({"cp", "-q", ":" + sb_ + "/t1/a/sub/f", local_ / "nodir/"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("cannot create " + local_.path() + "/nodir/: Not a directory"),
            std::string::npos)
      << missing.err;
  EXPECT_EQ(missing.err.find("kvmctl-part"), std::string::npos) << missing.err;
}

// A local write that fails (here: a full disk, /dev/full) is a local file problem, exit 2 as
// documented, for cat and for cp.
TEST_F(CtlFilesTest, LocalWriteErrorExitsTwo) {
  WriteFile(sb_ + "/big", RandomBytes(200000, 4));
  RunResult cat = RunProgram({"/bin/sh", "-c", "exec \"$0\" \"$@\" >/dev/full", KVM_CTL_BINARY,
                              "--socket", agent_.socket_path(), "cat", ":" + sb_ + "/big"});
  EXPECT_EQ(cat.exit_code, 2) << cat.err;
  EXPECT_NE(cat.err.find("local write: No space left on device"), std::string::npos) << cat.err;
  std::string full = local_ / "full";
  fs::create_symlink("/dev/full", full);
  RunResult cp = Ctl({"cp", "-q", ":" + sb_ + "/big", full});
  EXPECT_EQ(cp.exit_code, 2) << cp.err;
  EXPECT_NE(cp.err.find("local write: No space left on device"), std::string::npos) << cp.err;
}

// rm and mkdir print nothing on success, and the agent's result with --json.
TEST_F(CtlFilesTest, RmAndMkdirPrintTheResultWithJson) {
  RunResult made = Ctl({"--json", "mkdir", "-p", ":" + sb_ + "/d/e"});
  EXPECT_EQ(made.exit_code, 0) << made.err;
  EXPECT_EQ(ParseJson(made.out).at("created"), true) << made.out;
  RunResult again = Ctl({"--json", "mkdir", "-p", ":" + sb_ + "/d/e"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(ParseJson(again.out).at("created"), false) << again.out;
  RunResult plain = Ctl({"mkdir", "-p", ":" + sb_ + "/d/e"});
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.out, "");
  RunResult rm = Ctl({"--json", "rm", ":" + sb_ + "/d/e"});
  EXPECT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_TRUE(ParseJson(rm.out).is_object()) << rm.out;
  EXPECT_FALSE(fs::exists(sb_ + "/d/e"));
  RunResult missing = Ctl({"--json", "rm", ":" + sb_ + "/d/e"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
}

// On a terminal (a pty from script(1)), an empty file's upload shows its progress line like
// any other file, not nothing.
TEST_F(CtlFilesTest, EmptyUploadOnATerminalShowsItsProgressLine) {
  if (::access("/usr/bin/script", X_OK) != 0) GTEST_SKIP() << "no script(1) here";
  WriteFile(local_ / "empty", "");
  std::string command = std::string(KVM_CTL_BINARY) + " --socket " + agent_.socket_path() + " cp " +
                        local_ / "empty" + " :" + sb_ + "/";
  RunResult r = RunProgram({"/usr/bin/script", "-qec", command, "/dev/null"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("100.0%"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(sb_ + "/empty"));
}

// A local procfs file reports size 0 yet has content: the upload carries that content.
TEST_F(CtlFilesTest, UploadOfAProcfsFileCarriesItsContent) {
  RunResult r = Ctl({"cp", "-q", "/proc/self/mountinfo", ":" + sb_ + "/"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::string got = ReadFileText(sb_ + "/mountinfo");
  EXPECT_NE(got.find(" / "), std::string::npos) << got;
  EXPECT_NE(r.out.find(std::to_string(got.size()) + " bytes"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvm::test
