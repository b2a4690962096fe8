// How captured output travels in JSON: UTF-8 text when it is valid, else base64.
#pragma once

#include <boost/json/object.hpp>
#include <cstddef>
#include <string_view>

namespace kvm::exec {

// Length of a trailing, incomplete-but-so-far-valid UTF-8 sequence (0..3). A streamed chunk
// holds these bytes back so a character split across two reads does not force base64.
size_t IncompleteUtf8Tail(std::string_view bytes);

// Sets out[name] (text or base64) and out[name + "_encoding"] ("utf-8" or "base64").
void PutOutput(boost::json::object& out, std::string_view name, std::string_view bytes);

}  // namespace kvm::exec
