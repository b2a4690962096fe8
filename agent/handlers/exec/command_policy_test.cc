#include "agent/handlers/exec/command_policy.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iterator>
#include <sstream>

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

// Every variable that makes an allowed program load or run code it does not name itself.
// Space-separated names.
constexpr const char* kInjecting =
    "LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT LD_ANYTHING_NEW GCONV_PATH GETCONF_DIR GLIBC_TUNABLES "
    "HOSTALIASES "
    "LOCALDOMAIN LOCPATH MALLOC_TRACE NIS_PATH NLSPATH RESOLV_HOST_CONF RES_OPTIONS TMPDIR TZDIR "
    "BASH_ENV ENV SHELLOPTS BASHOPTS PS4 PROMPT_COMMAND IFS BASH_FUNC_ls%% PYTHONPATH "
    "PYTHONSTARTUP PYTHONHOME PYTHONINSPECT PERL5LIB PERL5OPT PERLLIB RUBYOPT RUBYLIB "
    "NODE_OPTIONS NODE_PATH JAVA_TOOL_OPTIONS _JAVA_OPTIONS LUA_INIT LUA_PATH LUA_CPATH";
constexpr const char* kHarmless =
    "LANG LC_ALL TZ HOME TERM ld_preload XLD_PRELOAD MY_LD_PATH PYTHONUNBUFFERED";

std::vector<std::string> Names(const char* list) {
  std::istringstream in(list);
  return {std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
}

TEST(EnvInjection, LoaderLibcShellAndInterpreterVariablesAreNamed) {
  for (const auto& name : Names(kInjecting)) EXPECT_TRUE(EnvInjectionReason(name, "x")) << name;
  // PATH only when it differs from the agent's own search path.
  EXPECT_TRUE(EnvInjectionReason("PATH", "/tmp/kvmmanager:/usr/bin"));
  EXPECT_FALSE(EnvInjectionReason("PATH", kSearchPath));
  for (const auto& name : Names(kHarmless)) EXPECT_FALSE(EnvInjectionReason(name, "x")) << name;
}

TEST(EnvInjection, RefusedOnlyUnderAWhitelist) {
  EXPECT_NO_THROW(CheckEnvVariable(std::nullopt, "LD_PRELOAD", "/tmp/evil.so"));
  EXPECT_NO_THROW(CheckEnvVariable(Whitelist{{"ls"}}, "LANG", "C"));
  try {
    CheckEnvVariable(Whitelist{{"ls"}}, "LD_PRELOAD", "/tmp/evil.so");
    ADD_FAILURE() << "LD_PRELOAD passed under a whitelist";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kPermissionDenied);
    EXPECT_EQ(e.data().at("policy").as_string(), "command_whitelist");
    EXPECT_EQ(e.data().at("variable").as_string(), "LD_PRELOAD");
  }
}

}  // namespace
}  // namespace kvm::exec
