#include "agent/handlers/system/sys_common.h"

#include <unistd.h>

#include <charconv>
#include <cstdlib>

#include "agent/core/file_util.h"

namespace kvm::sysinfo {

std::optional<std::string> ReadText(const SystemRoot& sys, std::string_view absolute,
                                    size_t max_bytes) {
  return ReadSmallFile(sys.Path(absolute), max_bytes);
}

std::optional<std::string> ReadAttr(const SystemRoot& sys, std::string_view absolute) {
  auto text = ReadText(sys, absolute, 4096);
  if (!text) return std::nullopt;
  std::string_view v(*text);
  if (auto nl = v.find('\n'); nl != std::string_view::npos) v = v.substr(0, nl);
  while (!v.empty() && (v.back() == '\0' || v.back() == ' ' || v.back() == '\t')) {
    v.remove_suffix(1);
  }
  return std::string(Trim(v));
}

std::string_view Trim(std::string_view s) {
  // By hand: find_first_not_of(" \t\r\n\v\f") searches the set for every byte, and the
  // per-call parsing of /proc files trims dozens of fields.
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  size_t b = 0, e = s.size();
  while (b < e && space(s[b])) ++b;
  while (e > b && space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::vector<std::string_view> SplitFields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

std::optional<uint64_t> ParseU64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::optional<double> ParseDouble(std::string_view s) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::optional<std::vector<unsigned>> ParseCpuList(std::string_view text) {
  std::vector<unsigned> out;
  text = Trim(text);
  if (text.empty()) return out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view part = text.substr(start, comma - start);
    size_t dash = part.find('-');
    auto lo = ParseU64(part.substr(0, dash));
    auto hi = dash == std::string_view::npos ? lo : ParseU64(part.substr(dash + 1));
    if (!lo || !hi || *hi < *lo || *hi > 65535) return std::nullopt;
    for (uint64_t c = *lo; c <= *hi; ++c) out.push_back(static_cast<unsigned>(c));
    start = comma + 1;
  }
  return out;
}

std::string NormalizePath(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t slash = path.find('/', i);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view part = path.substr(i, slash - i);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    i = slash + 1;
  }
  std::string out;
  for (auto p : parts) out.append("/").append(p);
  return out.empty() ? "/" : out;
}

std::optional<std::string> ResolveLink(const std::string& link_path) {
  char buf[4096];
  ssize_t n = ::readlink(link_path.c_str(), buf, sizeof buf - 1);
  if (n <= 0) return std::nullopt;
  std::string target(buf, static_cast<size_t>(n));
  if (!target.empty() && target[0] == '/') return NormalizePath(target);
  std::string dir = link_path.substr(0, link_path.rfind('/'));
  return NormalizePath(dir + "/" + target);
}

}  // namespace kvm::sysinfo
