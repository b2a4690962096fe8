// libFuzzer: bytes from a client -> LineFramer -> Dispatcher (ping, get_agent_info) -> replies.
// Checks: the framer cuts the same lines however the bytes are split; every line gets exactly one
// reply; every reply is one valid JSON-RPC 2.0 response line.
#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/dispatcher.h"
#include "agent/handlers/register_all.h"
#include "protocol/line_framer.h"

namespace {
namespace json = boost::json;

[[noreturn]] void Fail(const char* why, const std::string& detail) {
  std::fprintf(stderr, "fuzz_jsonrpc invariant broken: %s: %.500s\n", why, detail.c_str());
  std::abort();
}

struct RecordingSink : kvm::ReplySink {
  std::vector<std::string> replies;
  void Finish(std::string reply, kvm::SentCallback on_sent) override {
    replies.push_back(std::move(reply));
    if (on_sent) on_sent();
  }
};

void CheckResponse(const json::value& v, const std::string& text) {
  const json::object* o = v.if_object();
  if (!o) Fail("response is not an object", text);
  auto jv = o->find("jsonrpc");
  if (jv == o->end() || jv->value() != "2.0") Fail("response lacks jsonrpc 2.0", text);
  bool has_result = o->contains("result"), has_error = o->contains("error");
  if (has_result == has_error) Fail("response needs exactly one of result/error", text);
  if (!o->contains("id")) Fail("response lacks id", text);
  if (has_error) {
    const json::object* e = o->at("error").if_object();
    if (!e || !e->contains("code") || !e->at("code").is_int64() || !e->contains("message") ||
        !e->at("message").is_string()) {
      Fail("malformed error member", text);
    }
    const json::object* data = e->contains("data") ? e->at("data").if_object() : nullptr;
    if (!data || !data->contains("kind")) Fail("error without data.kind", text);
  }
}

struct Fixture {
  kvm::EventLoop loop;
  kvm::MethodTable methods;
  kvm::Logger log;
  std::unique_ptr<kvm::Dispatcher> dispatcher;
  Fixture() {
    log.set_level(kvm::LogLevel::kOff);
    kvm::RegisterCoreMethods(methods);
    auto config = std::make_shared<kvm::Config>();
    config->max_message_size_kb = 4;  // small, so the fuzzer reaches the oversized path
    dispatcher = std::make_unique<kvm::Dispatcher>(loop, methods, log, config);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* f = new Fixture();
  if (size == 0) return 0;
  // The first byte picks how the stream is chunked, as reads from a socket would split it.
  size_t step = 1 + data[0] % 64;
  std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t max_line = 4096;

  std::vector<std::string> whole_lines, chunk_lines;
  int whole_over = 0, chunk_over = 0;
  kvm::LineFramer whole(max_line), chunked(max_line);
  whole.Feed(
      stream, [&](std::string_view l) { whole_lines.emplace_back(l); },
      [&] {
        whole_lines.emplace_back("\x01oversized");
        ++whole_over;
      });
  for (size_t i = 0; i < stream.size(); i += step) {
    chunked.Feed(
        stream.substr(i, step), [&](std::string_view l) { chunk_lines.emplace_back(l); },
        [&] {
          chunk_lines.emplace_back("\x01oversized");
          ++chunk_over;
        });
  }
  if (whole_lines != chunk_lines)
    Fail("framer output depends on read boundaries", std::string(stream));
  if (whole.buffered() > max_line + 1) Fail("framer buffers more than the cap", "");

  auto sink = std::make_shared<RecordingSink>();
  for (const auto& line : whole_lines) {
    size_t before = sink->replies.size();
    if (line == "\x01oversized") {
      f->dispatcher->HandleOversized(sink);
    } else {
      if (line.size() > max_line || line.find('\n') != std::string::npos) Fail("bad line", line);
      f->dispatcher->HandleLine(line, sink);
    }
    // ping/get_agent_info run inline: the reply must be there already, exactly once.
    if (sink->replies.size() != before + 1) Fail("line not answered exactly once", line);
    const std::string& reply = sink->replies.back();
    if (reply.empty()) continue;  // notification(s)
    if (reply.find('\n') != std::string::npos) Fail("reply spans lines", reply);
    json::error_code ec;
    json::value v = json::parse(reply, ec);
    if (ec) Fail("reply is not JSON", reply);
    if (v.is_array()) {
      if (v.get_array().empty()) Fail("empty batch reply", reply);
      for (const auto& element : v.get_array()) CheckResponse(element, reply);
    } else {
      CheckResponse(v, reply);
    }
  }
  return 0;
}
