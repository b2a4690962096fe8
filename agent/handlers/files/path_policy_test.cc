#include "agent/handlers/files/path_policy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "agent/handlers/files/file_io.h"
#include "protocol/utf8.h"
#include "protocol/errors.h"

namespace kvm::files {
namespace {
namespace fs = std::filesystem;

LexicalResult Lex(std::string_view path, std::vector<std::string> entries) {
  return CheckLexical(path, NormalizeEntries(entries));
}

TEST(PathPolicyLexical, PrefixOfAComponentIsNotUnderIt) {
  EXPECT_EQ(Lex("/tmpfoo", {"/tmp"}).refusal, LexicalRefusal::kOutside);
  EXPECT_EQ(Lex("/tmpfoo/x", {"/tmp"}).refusal, LexicalRefusal::kOutside);
  EXPECT_TRUE(Lex("/tmp", {"/tmp"}).allowed());
  EXPECT_TRUE(Lex("/tmp/foo", {"/tmp"}).allowed());
  EXPECT_EQ(Lex("/etc/hostname2", {"/etc/hostname"}).refusal, LexicalRefusal::kOutside);
  EXPECT_EQ(Lex("/etc", {"/etc/hostname"}).refusal, LexicalRefusal::kOutside);
}

TEST(PathPolicyLexical, DotDotIsRefusedAnywhere) {
  EXPECT_EQ(Lex("/tmp/../etc/passwd", {"/tmp"}).refusal, LexicalRefusal::kDotDot);
  EXPECT_EQ(Lex("/tmp/a/../../../etc", {"/tmp"}).refusal, LexicalRefusal::kDotDot);
  EXPECT_EQ(Lex("/tmp/a/..", {"/tmp"}).refusal, LexicalRefusal::kDotDot);
  EXPECT_TRUE(Lex("/tmp/a..b/..c", {"/tmp"}).allowed());  // only whole ".." components
}

TEST(PathPolicyLexical, RelativeEmptyNulAndOverlongAreRefused) {
  EXPECT_EQ(Lex("tmp/x", {"/tmp"}).refusal, LexicalRefusal::kNotAbsolute);
  EXPECT_EQ(Lex("./tmp", {"/tmp"}).refusal, LexicalRefusal::kNotAbsolute);
  EXPECT_EQ(Lex("", {"/tmp"}).refusal, LexicalRefusal::kEmpty);
  EXPECT_EQ(Lex(std::string_view("/tmp/a\0/../etc", 14), {"/tmp"}).refusal,
            LexicalRefusal::kNulByte);
  EXPECT_EQ(Lex("/tmp/" + std::string(5000, 'a'), {"/tmp"}).refusal, LexicalRefusal::kTooLong);
}

TEST(PathPolicyLexical, SlashesAndDotsCollapse) {
  LexicalResult r = Lex("//tmp///kvm/./a//b/", {"/tmp/kvm/"});
  ASSERT_TRUE(r.allowed());
  EXPECT_EQ(r.normalized, "/tmp/kvm/a/b");
  EXPECT_EQ(r.remainder, "a/b");
  EXPECT_EQ(Lex("/tmp/kvm", {"/tmp/kvm"}).remainder, "");
}

TEST(PathPolicyLexical, LongestEntryWinsAndRootEntryCoversAll) {
  LexicalResult r = Lex("/a/b/c", {"/a", "/a/b"});
  ASSERT_TRUE(r.allowed());
  EXPECT_EQ(r.entry, 1u);
  EXPECT_EQ(r.remainder, "c");
  r = Lex("/x/y", {"/"});
  ASSERT_TRUE(r.allowed());
  EXPECT_EQ(r.remainder, "x/y");
  EXPECT_EQ(Lex("/x", {}).refusal, LexicalRefusal::kOutside);
  // Relative or ".." entries are unusable and dropped.
  EXPECT_EQ(Lex("/tmp/x", {"tmp", "/tmp/../etc"}).refusal, LexicalRefusal::kOutside);
}

// A tree: <base>/allowed/{file,dir/inner}, <base>/outside/secret, <base>/allowedfoo/secret.
class PathPolicyOpen : public ::testing::TestWithParam<Resolver> {
 protected:
  void SetUp() override {
    if (GetParam() == Resolver::kOpenat2 && !PathPolicy::KernelHasOpenat2()) {
      GTEST_SKIP() << "kernel without openat2";
    }
    char tmpl[] = "/tmp/kvm-policy-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    fs::create_directories(base_ + "/allowed/dir");
    fs::create_directories(base_ + "/outside");
    fs::create_directories(base_ + "/allowedfoo");
    Write(base_ + "/allowed/file", "inside");
    Write(base_ + "/allowed/dir/inner", "inner");
    Write(base_ + "/outside/secret", "secret");
    Write(base_ + "/allowedfoo/secret", "secret");
  }
  void TearDown() override {
    if (!base_.empty()) fs::remove_all(base_);
  }
  static void Write(const std::string& path, const std::string& text) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    ::close(fd);
  }
  PathPolicy Policy() const {
    return PathPolicy({base_ + "/allowed", "/proc"}, {base_ + "/allowed"}, GetParam());
  }
  static std::string ReadFd(int fd) {
    char buf[64];
    ssize_t n = ::pread(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
  // The error code the open throws, or 0.
  int OpenCode(const std::string& path, Access access = Access::kRead, int flags = O_RDONLY) {
    try {
      Policy().Open(path, access, flags);
      return 0;
    } catch (const RpcError& e) {
      return static_cast<int>(e.code());
    }
  }
  std::string base_;
};

TEST_P(PathPolicyOpen, OpensRegularFilesBelowTheEntry) {
  UniqueFd fd = Policy().Open(base_ + "/allowed/dir/inner", Access::kRead, O_RDONLY);
  EXPECT_EQ(ReadFd(fd.get()), "inner");
  EXPECT_EQ(OpenCode(base_ + "/allowed/missing"), static_cast<int>(ErrorCode::kNotFound));
  EXPECT_EQ(OpenCode(base_ + "/allowed/file/below"), static_cast<int>(ErrorCode::kNotFound));
}

TEST_P(PathPolicyOpen, PrefixSiblingIsRefused) {
  EXPECT_EQ(OpenCode(base_ + "/allowedfoo/secret"), static_cast<int>(ErrorCode::kPermissionDenied));
}

TEST_P(PathPolicyOpen, SymlinkInAnIntermediateDirectoryIsRefused) {
  fs::create_directory_symlink(base_ + "/outside", base_ + "/allowed/link");
  EXPECT_EQ(OpenCode(base_ + "/allowed/link/secret"),
            static_cast<int>(ErrorCode::kPermissionDenied));
  // Even a link that stays inside the tree: no symlinks below an entry at all.
  fs::create_directory_symlink(base_ + "/allowed/dir", base_ + "/allowed/inlink");
  EXPECT_EQ(OpenCode(base_ + "/allowed/inlink/inner"),
            static_cast<int>(ErrorCode::kPermissionDenied));
}

TEST_P(PathPolicyOpen, FinalSymlinkIsRefused) {
  fs::create_symlink(base_ + "/outside/secret", base_ + "/allowed/last");
  EXPECT_EQ(OpenCode(base_ + "/allowed/last"), static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(OpenCode(base_ + "/allowed/last", Access::kWrite, O_WRONLY),
            static_cast<int>(ErrorCode::kPermissionDenied));
}

TEST_P(PathPolicyOpen, MagicLinksUnderAnAllowedProcAreRefused) {
  std::string pid = std::to_string(::getpid());
  for (const std::string& path : std::vector<std::string>{
           "/proc/self/root/etc/hostname", "/proc/" + pid + "/root/etc/hostname",
           "/proc/" + pid + "/cwd", "/proc/thread-self/root/etc/hostname",
           "/proc/" + pid + "/root" + base_ + "/outside/secret"}) {
    EXPECT_EQ(OpenCode(path), static_cast<int>(ErrorCode::kPermissionDenied)) << path;
  }
}

TEST_P(PathPolicyOpen, ParentOfADirectoryEntryItselfIsRefused) {
  EXPECT_THROW(Policy().OpenParent(base_ + "/allowed", Access::kWrite), RpcError);
  PathPolicy::Parent p = Policy().OpenParent(base_ + "/allowed/dir/new", Access::kWrite);
  EXPECT_EQ(p.name, "new");
  struct stat a, b;
  ASSERT_EQ(::fstat(p.dir.get(), &a), 0);
  ASSERT_EQ(::stat((base_ + "/allowed/dir").c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
}

TEST_P(PathPolicyOpen, SingleFileEntryAllowsOnlyThatFile) {
  PathPolicy policy({base_ + "/outside/secret"}, {base_ + "/outside/secret"}, GetParam());
  UniqueFd fd = policy.Open(base_ + "/outside/secret", Access::kRead, O_RDONLY);
  EXPECT_EQ(ReadFd(fd.get()), "secret");
  PathPolicy::Parent p = policy.OpenParent(base_ + "/outside/secret", Access::kWrite);
  EXPECT_EQ(p.name, "secret");
  EXPECT_THROW(policy.Open(base_ + "/outside/other", Access::kRead, O_RDONLY), RpcError);
}

TEST_P(PathPolicyOpen, DirectorySwappedForSymlinkInALoopNeverEscapes) {
  // A racing thread atomically exchanges allowed/race (a real directory) with a symlink to
  // outside/, over and over (renameat2 RENAME_EXCHANGE, the classic check-then-open attack).
  std::string race = base_ + "/allowed/race";
  std::string link = base_ + "/allowed/race-link";
  fs::create_directories(race);
  Write(race + "/secret", "inside");
  fs::create_directory_symlink(base_ + "/outside", link);
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread flipper([&] {
    while (!stop) {
      if (::renameat2(AT_FDCWD, race.c_str(), AT_FDCWD, link.c_str(), RENAME_EXCHANGE) == 0) {
        ++swaps;
      }
    }
  });
  PathPolicy policy = Policy();
  int opened = 0, refused = 0, escaped = 0;
  std::string other_error;
  for (int i = 0; i < 20000; ++i) {
    try {
      UniqueFd fd = policy.Open(race + "/secret", Access::kRead, O_RDONLY);
      if (ReadFd(fd.get()) != "inside") ++escaped;
      ++opened;
    } catch (const RpcError& e) {
      if (e.code() != ErrorCode::kPermissionDenied) other_error = e.what();
      ++refused;
    }
  }
  stop = true;
  flipper.join();
  EXPECT_EQ(escaped, 0) << "opened the file behind the symlink";
  EXPECT_EQ(other_error, "") << "every refusal is the policy error";
  EXPECT_GT(swaps.load(), 100);
  EXPECT_GT(refused, 0);  // the race was really met
}

INSTANTIATE_TEST_SUITE_P(Resolvers, PathPolicyOpen,
                         ::testing::Values(Resolver::kOpenat2, Resolver::kWalk),
                         [](const auto& info) {
                           return info.param == Resolver::kOpenat2 ? "openat2" : "walk";
                         });

TEST(Utf8Prefix, AcceptsValidAndStopsAtInvalidOrCutSequences) {
  bool truncated = false;
  EXPECT_EQ(ValidUtf8Prefix("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80", &truncated), 15u);
  EXPECT_FALSE(truncated);
  EXPECT_EQ(ValidUtf8Prefix("ab\xE2\x82", &truncated), 2u);
  EXPECT_TRUE(truncated);
  EXPECT_EQ(ValidUtf8Prefix("ab\xFFzz", &truncated), 2u);
  EXPECT_FALSE(truncated);
  EXPECT_EQ(ValidUtf8Prefix("\xC0\xAF", &truncated), 0u);          // overlong
  EXPECT_EQ(ValidUtf8Prefix("\xED\xA0\x80", &truncated), 0u);      // surrogate
  EXPECT_EQ(ValidUtf8Prefix("\xF4\x90\x80\x80", &truncated), 0u);  // > U+10FFFF
}

// Found by fuzz_path_policy: the refusal quoted the first 256 bytes of the path, which could
// end inside a multi-byte character and made the JSON reply line invalid UTF-8.
TEST(PathPolicyLexical, RefusalMessageOfALongUtf8PathStaysValidUtf8) {
  std::string path = "/srv/";
  for (int i = 0; i < 200; ++i) path += "\xC3\xA9";  // 'é': byte 256 falls inside one
  PathPolicy policy({"/tmp"}, {}, Resolver::kWalk);
  try {
    policy.Check(path, Access::kRead);
    FAIL() << "a path outside /tmp was allowed";
  } catch (const RpcError& e) {
    std::string_view message = e.what();
    bool truncated = false;
    EXPECT_EQ(ValidUtf8Prefix(message, &truncated), message.size()) << message;
    EXPECT_NE(message.find("\xC3\xA9..."), std::string_view::npos) << message;
  }
}

TEST(ShortForMessage, CutsOnlyAtCharacterBoundaries) {
  EXPECT_EQ(ShortForMessage("abc", 3), "abc");
  EXPECT_EQ(ShortForMessage("abcd", 3), "abc...");
  EXPECT_EQ(ShortForMessage("a\xC3\xA9", 2), "a...");             // 2-byte char cut
  EXPECT_EQ(ShortForMessage("ab\xF0\x9F\x98\x80z", 5), "ab...");  // 4-byte char cut
  EXPECT_EQ(ShortForMessage("ab\xF0\x9F\x98\x80z", 6), "ab\xF0\x9F\x98\x80...");
}

}  // namespace
}  // namespace kvm::files
