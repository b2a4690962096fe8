// Human-friendly JSON output for the CLI (Boost.JSON 1.81 serializes on one line only).
#pragma once

#include <boost/json/value.hpp>

#include <string>

namespace kvm {

std::string PrettyJson(const boost::json::value& value);
// One line, as the agent writes JSON (doubles in plain notation).
std::string CompactJson(const boost::json::value& value);

}  // namespace kvm
