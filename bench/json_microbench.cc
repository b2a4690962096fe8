// Was Boost.JSON the right choice? Parses a ping request and a 64 KiB base64 file_write line, and
// serializes a 64 KiB file_read reply, with Boost.JSON (what the agent uses, through
// protocol/jsonrpc), RapidJSON and simdjson (parse only: it has no document builder).
//   build/bench/json_microbench [--benchmark_min_time=0.5]
#include <benchmark/benchmark.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <simdjson.h>

#include <boost/json.hpp>
#include <cstdlib>
#include <string>

#include "protocol/base64.h"
#include "protocol/jsonrpc.h"
#include "startup/malloc_tuning.h"

namespace {
namespace json = boost::json;

const std::string kPing = R"({"jsonrpc":"2.0","method":"ping","id":12345})";

std::string Payload() {
  std::string data(49152, '\0');  // 48 KiB of bytes = 64 KiB of base64
  uint32_t x = 7;
  for (auto& c : data) {
    x = x * 1103515245 + 12345;
    c = static_cast<char>(x >> 16);
  }
  return kvm::Base64Encode(data);
}
const std::string kB64 = Payload();
const std::string kWrite =
    R"({"jsonrpc":"2.0","method":"file_write","params":{"path":"/tmp/kvmmanager/x.bin","data":")" +
    kB64 + R"(","offset":0,"append":false},"id":77})";

// --- parsing ----------------------------------------------------------------------------------
void BoostParse(benchmark::State& state, const std::string& line) {
  for (auto _ : state) {
    json::value v = kvm::jsonrpc::ParseLine(line);  // the agent's own entry point
    benchmark::DoNotOptimize(v);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * line.size()));
}

void BoostParseAndValidate(benchmark::State& state, const std::string& line) {
  for (auto _ : state) {
    auto request = kvm::jsonrpc::ValidateRequest(kvm::jsonrpc::ParseLine(line));
    benchmark::DoNotOptimize(request);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * line.size()));
}

void RapidParse(benchmark::State& state, const std::string& line) {
  for (auto _ : state) {
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(line.data(), line.size());
    if (d.HasParseError()) state.SkipWithError("rapidjson parse error");
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * line.size()));
}

void SimdDomParse(benchmark::State& state, const std::string& line) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(line);
  for (auto _ : state) {
    auto doc = parser.parse(padded);
    if (doc.error()) state.SkipWithError("simdjson parse error");
    benchmark::DoNotOptimize(doc);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * line.size()));
}

// The file_write case includes getting at the data string, as a handler must.
void BoostWriteLine(benchmark::State& state) {
  for (auto _ : state) {
    json::value v = kvm::jsonrpc::ParseLine(kWrite);
    auto& data = v.at("params").at("data").as_string();
    benchmark::DoNotOptimize(data.size());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kWrite.size()));
}

void RapidWriteLine(benchmark::State& state) {
  for (auto _ : state) {
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(kWrite.data(), kWrite.size());
    benchmark::DoNotOptimize(d["params"]["data"].GetStringLength());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kWrite.size()));
}

void SimdWriteLine(benchmark::State& state) {
  simdjson::ondemand::parser parser;
  simdjson::padded_string padded(kWrite);
  for (auto _ : state) {
    auto doc = parser.iterate(padded);
    std::string_view data = doc["params"]["data"].get_string();
    benchmark::DoNotOptimize(data.size());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kWrite.size()));
}

// --- serializing a 64 KiB file_read reply
// -----------------------------------------------------------
// The agent's own path: jsonrpc::ResultResponse, whose writer copies escape-free strings whole.
void AgentSerializeRead(benchmark::State& state) {
  json::value id = 77;
  for (auto _ : state) {
    json::value result = json::object{{"data", kB64}, {"bytes", 49152}, {"eof", false}};
    std::string reply = kvm::jsonrpc::ResultResponse(id, result);
    benchmark::DoNotOptimize(reply);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kB64.size()));
}

// Boost.JSON's own serializer on the same reply (what ResultResponse used before).
void BoostSerializeRead(benchmark::State& state) {
  for (auto _ : state) {
    json::value result = json::object{{"data", kB64}, {"bytes", 49152}, {"eof", false}};
    std::string reply = R"({"jsonrpc":"2.0","result":)" + json::serialize(result) + R"(,"id":77})";
    benchmark::DoNotOptimize(reply);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kB64.size()));
}

void RapidSerializeRead(benchmark::State& state) {
  for (auto _ : state) {
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    w.StartObject();
    w.Key("jsonrpc");
    w.String("2.0");
    w.Key("result");
    w.StartObject();
    w.Key("data");
    w.String(kB64.data(), static_cast<rapidjson::SizeType>(kB64.size()));
    w.Key("bytes");
    w.Int(49152);
    w.Key("eof");
    w.Bool(false);
    w.EndObject();
    w.Key("id");
    w.Int(77);
    w.EndObject();
    std::string reply(buffer.GetString(), buffer.GetSize());
    benchmark::DoNotOptimize(reply);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kB64.size()));
}

// Lower bound: base64 never needs escaping, so a reply could be plain concatenation.
void ConcatSerializeRead(benchmark::State& state) {
  for (auto _ : state) {
    std::string reply = R"({"jsonrpc":"2.0","result":{"data":")";
    reply += kB64;
    reply += R"(","bytes":49152,"eof":false},"id":77})";
    benchmark::DoNotOptimize(reply);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kB64.size()));
}

// --- base64 of one 48 KiB chunk (bytes/s counts the binary side) ---------------------------------
void Base64Encode48K(benchmark::State& state) {
  std::string bytes;
  kvm::Base64Decode(kB64, bytes);
  std::string out;
  for (auto _ : state) {
    out.clear();
    kvm::Base64Append(out, bytes);
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes.size()));
}

void Base64Decode48K(benchmark::State& state) {
  std::string out;
  for (auto _ : state) {
    if (!kvm::Base64Decode(kB64, out)) state.SkipWithError("decode failed");
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * out.size()));
}

}  // namespace

BENCHMARK_CAPTURE(BoostParse, ping, kPing);
BENCHMARK_CAPTURE(BoostParseAndValidate, ping, kPing);
BENCHMARK_CAPTURE(RapidParse, ping, kPing);
BENCHMARK_CAPTURE(SimdDomParse, ping, kPing);
BENCHMARK(BoostWriteLine);
BENCHMARK(RapidWriteLine);
BENCHMARK(SimdWriteLine);
BENCHMARK(AgentSerializeRead);
BENCHMARK(BoostSerializeRead);
BENCHMARK(RapidSerializeRead);
BENCHMARK(ConcatSerializeRead);
BENCHMARK(Base64Encode48K);
BENCHMARK(Base64Decode48K);
// The agent's heap settings (startup/malloc_tuning.h); KVM_DEFAULT_MALLOC=1 keeps glibc's
// defaults, to see what their page faults cost.
int main(int argc, char** argv) {
  if (!std::getenv("KVM_DEFAULT_MALLOC")) kvm::TuneMallocForMessages();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
