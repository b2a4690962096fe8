#include "agent/handlers/exec/command_policy.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocol/errors.h"
#include "tests/support/agent_process.h"

namespace kvm::exec {
namespace {

using Whitelist = std::optional<std::vector<std::string>>;

ErrorCode CodeOf(std::string_view command, const std::string& cwd = "/") {
  try {
    ResolveCommand(command, cwd);
  } catch (const RpcError& e) {
    return e.code();
  }
  return ErrorCode::kInternalError;  // "no error" marker
}

TEST(ResolveCommand, NamesUseTheFixedSearchPath) {
  auto r = ResolveCommand("ls", "/");
  EXPECT_EQ(r.path.rfind("/", 0), 0u);
  char real[PATH_MAX];
  ASSERT_TRUE(::realpath(r.path.c_str(), real));
  EXPECT_EQ(r.real_path, real);
}

TEST(ResolveCommand, MissingAndBadCommandsAreRefused) {
  EXPECT_EQ(CodeOf("no-such-command-kvmtest"), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf("/no/such/file"), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(""), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf(std::string("ls\0x", 4)), ErrorCode::kInvalidParams);
  test::TempDir dir;
  test::WriteFile(dir / "data", "not a program\n");
  ::chmod((dir / "data").c_str(), 0644);
  EXPECT_EQ(CodeOf(dir / "data"), ErrorCode::kIoError);  // not executable
  EXPECT_EQ(CodeOf("/tmp"), ErrorCode::kIoError);        // a directory
  EXPECT_EQ(CodeOf("."), ErrorCode::kNotFound);
}

TEST(ResolveCommand, RelativePathsAreTakenFromCwd) {
  test::TempDir dir;
  ASSERT_EQ(::symlink("/bin/true", (dir / "t").c_str()), 0);
  auto r = ResolveCommand("./t", dir.path());
  EXPECT_EQ(r.path, dir.path() + "/./t");
  EXPECT_EQ(r.real_path, ResolveCommand("true", "/").real_path);
}

class Whitelisted : public ::testing::Test {
 protected:
  Whitelist only_ls = std::vector<std::string>{"ls"};
  bool Allows(const std::string& command, const std::string& cwd = "/") {
    return WhitelistAllows(only_ls, ResolveCommand(command, cwd));
  }
};

TEST_F(Whitelisted, NullWhitelistAllowsEverything) {
  EXPECT_TRUE(WhitelistAllows(std::nullopt, ResolveCommand("sh", "/")));
}

TEST_F(Whitelisted, TheNameAndItsAbsolutePathsPass) {
  EXPECT_TRUE(Allows("ls"));
  EXPECT_TRUE(Allows(ResolveCommand("ls", "/").path));
  EXPECT_TRUE(Allows(ResolveCommand("ls", "/").real_path));
}

TEST_F(Whitelisted, OtherProgramsAndLookalikesAreRefused) {
  EXPECT_FALSE(Allows("sh"));
  EXPECT_FALSE(Allows("../bin/sh", "/usr/lib"));
  test::TempDir dir;
  // A different program named ls.
  ASSERT_EQ(::mkdir((dir / "evil").c_str(), 0755), 0);
  test::WriteFile(dir / "evil/ls", "#!/bin/sh\necho pwned\n");
  ::chmod((dir / "evil/ls").c_str(), 0755);
  EXPECT_FALSE(Allows(dir / "evil/ls"));
  EXPECT_FALSE(Allows("./ls", dir / "evil"));
  // A symlink named ls pointing at a shell.
  ASSERT_EQ(::symlink("/bin/sh", (dir / "ls").c_str()), 0);
  EXPECT_FALSE(Allows(dir / "ls"));
}

TEST_F(Whitelisted, MultiCallBinariesNeedTheSameBaseName) {
  // Like busybox: `ls` and `sh` are links to one binary that dispatches on argv[0].
  test::TempDir dir;
  ASSERT_EQ(::symlink("/bin/true", (dir / "ls").c_str()), 0);
  ASSERT_EQ(::symlink("/bin/true", (dir / "sh").c_str()), 0);
  Whitelist list = std::vector<std::string>{dir / "ls"};
  EXPECT_TRUE(WhitelistAllows(list, ResolveCommand(dir / "ls", "/")));
  EXPECT_FALSE(WhitelistAllows(list, ResolveCommand(dir / "sh", "/")));
  EXPECT_TRUE(WhitelistAllowsExecutable(list, ResolveCommand("true", "/").real_path));
}

TEST_F(Whitelisted, RelativeOrUnresolvableEntriesAllowNothing) {
  Whitelist list = std::vector<std::string>{"bin/ls", "./ls", "no-such-cmd-kvmtest", ""};
  EXPECT_FALSE(WhitelistAllows(list, ResolveCommand("ls", "/")));
}

TEST_F(Whitelisted, RefusalIsPermissionDeniedNamingThePolicy) {
  try {
    CheckWhitelist(only_ls, "sh", ResolveCommand("sh", "/"));
    FAIL() << "sh passed a whitelist of ls";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kPermissionDenied);
    EXPECT_EQ(e.data().at("policy").as_string(), "command_whitelist");
  }
}

}  // namespace
}  // namespace kvm::exec
