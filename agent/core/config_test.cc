#include "agent/core/config.h"

#include <gtest/gtest.h>

namespace kvm {
namespace {

std::string ErrorOf(std::string_view text) {
  try {
    ParseConfig(text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsAreTheSeeds) {
  Config c = ParseConfig("{}").config;
  EXPECT_EQ(c.version, "1.0.0");
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.log_file, "/var/log/kvmmanager-agent.log");
  EXPECT_EQ(c.channel_name, "org.kvmmanager.agent.0");
  EXPECT_EQ(c.max_message_size_kb, 64);
  EXPECT_EQ(c.connection_retry_seconds, 5);
  EXPECT_EQ(c.request_timeout_seconds, 30);
  EXPECT_EQ(c.max_concurrent_requests, 10);
  EXPECT_EQ(c.security.allowed_read_paths,
            (std::vector<std::string>{"/tmp", "/var/log", "/etc/hostname", "/etc/os-release"}));
  EXPECT_EQ(c.security.allowed_write_paths, (std::vector<std::string>{"/tmp/kvmmanager"}));
  EXPECT_FALSE(c.security.command_whitelist.has_value());
  EXPECT_EQ(c.security.max_file_size_mb, 10);
  EXPECT_EQ(c.security.max_command_timeout_seconds, 300);
}

TEST(Config, SeedsFullExampleParsesToDefaults) {
  auto loaded = ParseConfig(R"({
    "version": "1.0.0", "log_level": "info", "log_file": "/var/log/kvmmanager-agent.log",
    "channel_name": "org.kvmmanager.agent.0", "max_message_size_kb": 64,
    "connection_retry_seconds": 5, "request_timeout_seconds": 30, "max_concurrent_requests": 10,
    "security": {"allowed_read_paths": ["/tmp", "/var/log", "/etc/hostname", "/etc/os-release"],
      "allowed_write_paths": ["/tmp/kvmmanager"], "command_whitelist": null,
      "max_file_size_mb": 10, "max_command_timeout_seconds": 300}})");
  EXPECT_TRUE(loaded.warnings.empty());
  EXPECT_EQ(ConfigToJson(loaded.config), ConfigToJson(Config{}));
}

TEST(Config, WhitelistAndOverrides) {
  Config c = ParseConfig(R"({"max_concurrent_requests": 3,
    "security": {"command_whitelist": ["ls", "/usr/bin/df"]}})")
                 .config;
  EXPECT_EQ(c.max_concurrent_requests, 3);
  ASSERT_TRUE(c.security.command_whitelist);
  EXPECT_EQ(c.security.command_whitelist->size(), 2u);
}

TEST(Config, WrongTypeOrValueNamesTheKey) {
  EXPECT_NE(ErrorOf(R"({"max_message_size_kb": "64"})").find("max_message_size_kb"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"max_concurrent_requests": 0})").find("max_concurrent_requests"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"log_level": "loud"})").find("log_level"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"security": {"allowed_read_paths": ["relative"]}})")
                .find("security.allowed_read_paths"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"security": {"command_whitelist": "ls"}})").find("security.command_whitelist"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"request_timeout_seconds": 1.5})").find("request_timeout_seconds"),
            std::string::npos);
  EXPECT_NE(ErrorOf("[1]").find("object"), std::string::npos);
  EXPECT_NE(ErrorOf("{").find("JSON"), std::string::npos);
}

// A whitelist entry that could never match a command is a mistake to report, not to keep.
TEST(Config, WhitelistEntriesAreNamesOrAbsolutePaths) {
  for (const char* entry : {R"("./x")", R"("..")", R"(".")", R"("bin/ls")", R"("")"}) {
    std::string text = std::string(R"({"security": {"command_whitelist": [)") + entry + "]}}";
    EXPECT_NE(ErrorOf(text).find("security.command_whitelist"), std::string::npos) << entry;
  }
  Config c =
      ParseConfig(R"({"security": {"command_whitelist": ["ls", "/usr/bin/id", "a b"]}})").config;
  EXPECT_EQ(c.security.command_whitelist->size(), 3u);
}

// A NUL would cut the name the kernel sees: another port or file than the one configured.
TEST(Config, NamesWithANulByteAreRefused) {
  EXPECT_NE(ErrorOf(R"({"channel_name": "org.kvmmanager.agent.0\u0000x"})").find("channel_name"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"log_file": "/var/log/a\u0000b"})").find("log_file"), std::string::npos);
}

// Entries a request could never reach ("..", longer than PATH_MAX) were accepted as dead
// entries; a channel name that cannot be a file name under /dev/virtio-ports likewise.
TEST(Config, PathEntriesAndChannelNamesThatCouldNeverMatchAreRefused) {
  for (std::string entry :
       {std::string("/tmp/../etc"), std::string("/tmp/.."), "/" + std::string(4095, 'a')}) {
    std::string text = R"({"security": {"allowed_write_paths": [")" + entry + R"("]}})";
    EXPECT_NE(ErrorOf(text).find("security.allowed_write_paths"), std::string::npos) << entry;
  }
  EXPECT_EQ(ParseConfig(R"({"security": {"allowed_read_paths": ["/a..b/..c"]}})")
                .config.security.allowed_read_paths.size(),
            1u);
  for (std::string name : {std::string(256, 'p'), std::string("a\\nb"), std::string("a\\u007fb")}) {
    EXPECT_NE(ErrorOf(R"({"channel_name": ")" + name + R"("})").find("channel_name"),
              std::string::npos)
        << name;
  }
  EXPECT_EQ(ParseConfig(R"({"channel_name": ")" + std::string(255, 'p') + R"("})")
                .config.channel_name.size(),
            255u);
}

// A syntax error says where, and names the usual hand-editing mistakes.
TEST(Config, SyntaxErrorsGiveTheLineColumnAndAHint) {
  EXPECT_NE(ErrorOf("\xEF\xBB\xBF{}")
                .find("line 1, column 1 (the file starts with a UTF-8 byte "
                      "order mark"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{\n  // note\n  \"log_level\": \"info\"\n}")
                .find("line 2, column 3 (JSON "
                      "has no comments)"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{\"log_level\": \"info\",\n}").find("line 2, column 1 (a comma before"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{\"log_level\": \"info\"").find("incomplete JSON at line 1"),
            std::string::npos);
}

TEST(Config, UnknownKeysAreWarnedNotFatal) {
  auto loaded = ParseConfig(R"({"colour": "blue", "security": {"x": 1}})");
  ASSERT_EQ(loaded.warnings.size(), 2u);
  EXPECT_NE(loaded.warnings[0].find("colour"), std::string::npos);
  EXPECT_NE(loaded.warnings[1].find("security.x"), std::string::npos);
}

TEST(Config, MissingFileMeansDefaults) {
  auto loaded = LoadConfigFile("/nonexistent/kvm/config.json");
  EXPECT_FALSE(loaded.file_found);
  EXPECT_EQ(loaded.config.max_message_size_kb, 64);
}

}  // namespace
}  // namespace kvm
