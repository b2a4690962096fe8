// libFuzzer: kvm::ParseConfig on arbitrary text. Only ConfigError may come out; a config that
// parses must survive a round trip through ConfigToJson unchanged.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "agent/core/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  kvm::LoadedConfig loaded;
  try {
    loaded = kvm::ParseConfig(text);
  } catch (const kvm::ConfigError&) {
    return 0;  // refused with a message: the expected outcome for bad input
  }
  std::string json = kvm::ConfigToJson(loaded.config);
  kvm::LoadedConfig again;
  try {
    again = kvm::ParseConfig(json);
  } catch (const kvm::ConfigError& e) {
    std::fprintf(stderr, "accepted config does not re-parse: %s\n%s\n", e.what(), json.c_str());
    std::abort();
  }
  if (kvm::ConfigToJson(again.config) != json) {
    std::fprintf(stderr, "config round trip changed it:\n%s\n", json.c_str());
    std::abort();
  }
  return 0;
}
