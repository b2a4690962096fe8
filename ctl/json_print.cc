#include "ctl/json_print.h"

#include <boost/json.hpp>

#include "protocol/json_write.h"

namespace kvm {
namespace json = boost::json;
namespace {

void Print(const json::value& v, std::string& out, int indent) {
  auto newline = [&](int level) {
    out += '\n';
    out.append(static_cast<size_t>(level) * 2, ' ');
  };
  if (v.is_object() && !v.get_object().empty()) {
    out += '{';
    bool first = true;
    for (const auto& [key, item] : v.get_object()) {
      if (!first) out += ',';
      first = false;
      newline(indent + 1);
      out += json::serialize(json::string_view(key));
      out += ": ";
      Print(item, out, indent + 1);
    }
    newline(indent);
    out += '}';
  } else if (v.is_array() && !v.get_array().empty()) {
    out += '[';
    bool first = true;
    for (const auto& item : v.get_array()) {
      if (!first) out += ',';
      first = false;
      newline(indent + 1);
      Print(item, out, indent + 1);
    }
    newline(indent);
    out += ']';
  } else {
    AppendJson(out, v);  // numbers as the agent writes them (42570.27, not 4.257027E4)
  }
}

}  // namespace

std::string CompactJson(const json::value& value) {
  std::string out;
  AppendJson(out, value);
  return out;
}

std::string PrettyJson(const json::value& value) {
  std::string out;
  Print(value, out, 0);
  return out;
}

}  // namespace kvm
