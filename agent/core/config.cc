#include "agent/core/config.h"

#include <boost/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/core/file_util.h"

namespace kvm {
namespace json = boost::json;
namespace {

[[noreturn]] void Fail(std::string_view key, std::string_view expected, const json::value& got) {
  std::string shown = json::serialize(got);
  if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
  throw ConfigError("config key \"" + std::string(key) + "\": expected " + std::string(expected) +
                    ", got " + shown);
}

std::string GetString(const json::value& v, std::string_view key) {
  if (!v.is_string()) Fail(key, "a string", v);
  return std::string(v.get_string());
}

int64_t GetInt(const json::value& v, std::string_view key, int64_t min, int64_t max) {
  std::string expected = "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  if (v.is_int64() && v.get_int64() >= min && v.get_int64() <= max) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(max)) {
    return static_cast<int64_t>(v.get_uint64());
  }
  Fail(key, expected, v);
}

// A request path with a ".." component is refused, so an entry with one could never match:
// refused here rather than accepted as a dead entry. PATH_MAX (4096) counts the NUL.
bool IsUsableEntry(std::string_view path) {
  if (path.empty() || path[0] != '/' || path.size() > 4095 ||
      path.find('\0') != std::string_view::npos) {
    return false;
  }
  for (size_t start = 1; start <= path.size();) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    if (path.substr(start, slash - start) == "..") return false;
    start = slash + 1;
  }
  return true;
}

std::vector<std::string> GetPathList(const json::value& v, std::string_view key) {
  constexpr const char* kExpected = "an array of absolute paths (no \"..\", at most 4095 bytes)";
  if (!v.is_array()) Fail(key, kExpected, v);
  std::vector<std::string> out;
  for (const auto& item : v.get_array()) {
    if (!item.is_string() || !IsUsableEntry(item.get_string())) Fail(key, kExpected, item);
    out.emplace_back(item.get_string());
  }
  return out;
}

// "line L, column C" of byte `offset` (columns in bytes, from 1), plus a hint for the usual
// hand-editing mistakes; a bare "syntax error" left people guessing.
std::string WhereAndWhy(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  std::string out =
      " at line " + std::to_string(line) + ", column " + std::to_string(offset - line_start + 1);
  std::string_view rest = text.substr(offset);
  size_t before = text.find_last_not_of(" \t\r\n", offset == 0 ? 0 : offset - 1);
  if (text.substr(0, 3) == "\xEF\xBB\xBF") {
    out += " (the file starts with a UTF-8 byte order mark: save it without one)";
  } else if (rest.substr(0, 2) == "//" || rest.substr(0, 2) == "/*") {
    out += " (JSON has no comments)";
  } else if (!rest.empty() && (rest[0] == '}' || rest[0] == ']') && offset > 0 &&
             before != std::string_view::npos && text[before] == ',') {
    out += " (a comma before a closing bracket: JSON allows no trailing comma)";
  }
  return out;
}

void ParseSecurity(const json::object& object, SecurityConfig& security, LoadedConfig& loaded) {
  for (const auto& [key, value] : object) {
    std::string full = "security." + std::string(key);
    if (key == "allowed_read_paths") {
      security.allowed_read_paths = GetPathList(value, full);
    } else if (key == "allowed_write_paths") {
      security.allowed_write_paths = GetPathList(value, full);
    } else if (key == "command_whitelist") {
      if (value.is_null()) {
        security.command_whitelist.reset();
        continue;
      }
      if (!value.is_array()) Fail(full, "null or an array of command names/absolute paths", value);
      std::vector<std::string> list;
      for (const auto& item : value.get_array()) {
        // A name (no '/') or an absolute path; "./x" or ".." would never match a command.
        std::string_view entry = item.is_string() ? std::string_view(item.get_string()) : "";
        if (entry.empty() || entry.find('\0') != std::string_view::npos || entry == "." ||
            entry == ".." || (entry.find('/') != std::string_view::npos && entry[0] != '/')) {
          Fail(full, "null or an array of command names/absolute paths", item);
        }
        list.emplace_back(item.get_string());
      }
      security.command_whitelist = std::move(list);
    } else if (key == "max_file_size_mb") {
      security.max_file_size_mb = GetInt(value, full, 1, 1024 * 1024);
    } else if (key == "max_command_timeout_seconds") {
      security.max_command_timeout_seconds = GetInt(value, full, 1, 7 * 24 * 3600);
    } else {
      loaded.warnings.push_back("unknown config key \"" + full + "\" ignored");
    }
  }
}

}  // namespace

bool IsValidLogLevel(std::string_view level) {
  return level == "trace" || level == "debug" || level == "info" || level == "warn" ||
         level == "error" || level == "off";
}

LoadedConfig ParseConfig(std::string_view text) {
  LoadedConfig loaded;
  json::error_code ec;
  json::parse_options options;
  options.max_depth = 16;
  json::stream_parser parser({}, options);
  size_t used = parser.write(text.data(), text.size(), ec);
  if (!ec) parser.finish(ec);
  if (ec) throw ConfigError("config is not valid JSON: " + ec.message() + WhereAndWhy(text, used));
  json::value root = parser.release();
  if (!root.is_object()) throw ConfigError("config must be a JSON object");
  Config& c = loaded.config;
  for (const auto& [key, value] : root.get_object()) {
    if (key == "version") {
      c.version = GetString(value, key);
    } else if (key == "log_level") {
      c.log_level = GetString(value, key);
      if (!IsValidLogLevel(c.log_level)) {
        Fail(key, "one of trace, debug, info, warn, error, off", value);
      }
    } else if (key == "log_file") {
      c.log_file = value.is_null() ? std::string() : GetString(value, key);
      if (!c.log_file.empty() &&
          (c.log_file[0] != '/' || c.log_file.find('\0') != std::string::npos)) {
        Fail(key, "an absolute path or null", value);
      }
    } else if (key == "channel_name") {
      c.channel_name = GetString(value, key);
      // It becomes a file name under /dev/virtio-ports (at most 255 bytes, no '/').
      bool control = false;
      for (unsigned char ch : c.channel_name) control |= ch < 0x20 || ch == 0x7f;
      if (c.channel_name.empty() || c.channel_name.size() > 255 || control ||
          c.channel_name.find('/') != std::string::npos || c.channel_name == "." ||
          c.channel_name == "..") {
        Fail(key, "a port name: 1-255 bytes, no '/' or control characters, not . or ..", value);
      }
    } else if (key == "max_message_size_kb") {
      c.max_message_size_kb = GetInt(value, key, 1, 64 * 1024);
    } else if (key == "connection_retry_seconds") {
      c.connection_retry_seconds = GetInt(value, key, 1, 3600);
    } else if (key == "request_timeout_seconds") {
      c.request_timeout_seconds = GetInt(value, key, 1, 24 * 3600);
    } else if (key == "max_concurrent_requests") {
      c.max_concurrent_requests = GetInt(value, key, 1, 1024);
    } else if (key == "security") {
      if (!value.is_object()) Fail(key, "an object", value);
      ParseSecurity(value.get_object(), c.security, loaded);
    } else {
      loaded.warnings.push_back("unknown config key \"" + std::string(key) + "\" ignored");
    }
  }
  return loaded;
}

LoadedConfig LoadConfigFile(const std::string& path) {
  constexpr size_t kMaxConfigBytes = 1 << 20;
  int error_number = 0;
  auto text = ReadSmallFile(path, kMaxConfigBytes + 1, &error_number);
  if (!text) {
    if (error_number == ENOENT) return LoadedConfig{};
    throw ConfigError("cannot read config " + path + ": " + std::strerror(error_number));
  }
  if (text->size() > kMaxConfigBytes) throw ConfigError("config " + path + " is over 1 MiB");
  try {
    LoadedConfig loaded = ParseConfig(*text);
    loaded.file_found = true;
    return loaded;
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
}

std::string ConfigToJson(const Config& c) {
  json::object security{
      {"allowed_read_paths", json::value_from(c.security.allowed_read_paths)},
      {"allowed_write_paths", json::value_from(c.security.allowed_write_paths)},
      {"command_whitelist", c.security.command_whitelist
                                ? json::value_from(*c.security.command_whitelist)
                                : json::value(nullptr)},
      {"max_file_size_mb", c.security.max_file_size_mb},
      {"max_command_timeout_seconds", c.security.max_command_timeout_seconds},
  };
  json::object root{
      {"version", c.version},
      {"log_level", c.log_level},
      {"log_file", c.log_file.empty() ? json::value(nullptr) : json::value(c.log_file)},
      {"channel_name", c.channel_name},
      {"max_message_size_kb", c.max_message_size_kb},
      {"connection_retry_seconds", c.connection_retry_seconds},
      {"request_timeout_seconds", c.request_timeout_seconds},
      {"max_concurrent_requests", c.max_concurrent_requests},
      {"security", std::move(security)},
  };
  return json::serialize(root);
}

}  // namespace kvm
