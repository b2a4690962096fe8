// Soak: many mixed requests from concurrent clients with random abrupt disconnects. Every request
// on a connection that stays gets exactly one correct answer; the agent's RSS and open fd count
// stay flat. KVM_SOAK_REQUESTS sets the count (default 100,000; the 1,000,000 run is in
// docs/BENCHMARKS.md).
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/hostile/raw_client.h"
#include "tests/support/agent_process.h"

namespace kvm::test {
namespace {
namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

uint64_t RequestedCount() {
  const char* env = std::getenv("KVM_SOAK_REQUESTS");
  return env ? std::strtoull(env, nullptr, 10) : 100000;
}

struct Totals {
  std::atomic<uint64_t> sent{0}, verified{0}, aborted_sessions{0}, sessions{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  void Fail(std::string what) {
    std::lock_guard lock(mutex);
    if (failures.size() < 20) failures.push_back(std::move(what));
  }
};

// One connection: sends `count` mixed requests pipelined, verifies each reply once, or (when
// `abort_after` is set) vanishes abruptly after that many.
class Session {
 public:
  Session(const std::string& socket, std::mt19937_64& rng, int client, uint64_t serial, Totals& t)
      : conn_(socket), rng_(rng), prefix_("c" + std::to_string(client) + "s" +
                                          std::to_string(serial) + "-"), totals_(t) {}

  // Returns how many requests were sent (fewer than `count` when the session aborts).
  uint64_t Run(uint64_t count, std::optional<uint64_t> abort_after) {
    uint64_t sent = 0;
    while (sent < count) {
      if (abort_after && sent >= *abort_after) {
        Abort();
        return sent;
      }
      std::string window;
      uint64_t before = sent;
      uint64_t lines = 1 + rng_() % 32;
      for (uint64_t i = 0; i < lines && sent < count; ++i) sent += AddRequest(window);
      if (!conn_.Send(window)) {
        totals_.Fail(prefix_ + ": send failed");
        return sent;
      }
      totals_.sent += sent - before;
      if (!Drain(/*all=*/rng_() % 4 == 0)) return sent;
    }
    if (!Drain(true)) return sent;
    // No reply may follow once every request is answered: half-close and expect plain EOF.
    conn_.ShutdownWrite();
    std::string extra;
    if (conn_.ReadLine(extra, 5s)) totals_.Fail(prefix_ + ": extra reply " + extra);
    return sent;
  }

 private:
  struct Expect {
    int64_t code;  // 0: a result
  };

  std::string NextId() { return prefix_ + std::to_string(next_++); }

  std::string Request(const std::string& method, const std::string& id,
                      const std::string& params = "") {
    return R"({"jsonrpc":"2.0","method":")" + method + "\"" +
           (params.empty() ? "" : ",\"params\":" + params) +
           (id.empty() ? "" : ",\"id\":\"" + id + "\"") + "}";
  }

  // Appends one line; returns how many requests it holds.
  uint64_t AddRequest(std::string& out) {
    int pick = static_cast<int>(rng_() % 100);
    std::string id = NextId();
    if (pick < 40) {
      out += Request("ping", id);
      pending_[id] = {0};
    } else if (pick < 55) {
      out += Request("get_agent_info", id);
      pending_[id] = {0};
    } else if (pick < 65) {
      out += Request("no_such_method", id);
      pending_[id] = {-32601};
    } else if (pick < 75) {
      out += Request("ping", id, R"({"bogus":1})");
      pending_[id] = {-32602};
    } else if (pick < 80) {
      out += R"({"jsonrpc":"2.0","method":"ping","id":)";  // truncated: -32700, id null
      ++expected_null_;
    } else if (pick < 85) {
      out += R"({"jsonrpc":"2.0","method":5,"id":")" + id + "\"}";
      pending_[id] = {-32600};
    } else if (pick < 90) {
      out += Request("ping", "");  // notification: never answered
    } else {
      std::string a = NextId(), b = NextId();
      out += "[" + Request("ping", a) + "," + Request("no_such_method", b) + "," +
             Request("ping", "") + "]";
      pending_[a] = {0};
      pending_[b] = {-32601};
      ++expected_batches_;
      out += '\n';
      return 3;
    }
    out += '\n';
    return 1;
  }

  void Check(const json::value& v, const std::string& line) {
    const json::object* o = v.if_object();
    if (!o || !o->contains("id")) return totals_.Fail(prefix_ + ": malformed reply " + line);
    const json::value& id = o->at("id");
    int64_t code = o->contains("error") ? o->at("error").at("code").as_int64() : 0;
    if (id.is_null()) {
      if (code != -32700 || expected_null_ == 0) {
        return totals_.Fail(prefix_ + ": unexpected null-id reply " + line);
      }
      --expected_null_;
      ++totals_.verified;
      return;
    }
    auto it = id.is_string() ? pending_.find(std::string(id.get_string())) : pending_.end();
    if (it == pending_.end()) return totals_.Fail(prefix_ + ": unknown or duplicate reply " + line);
    if (it->second.code != code) {
      totals_.Fail(prefix_ + ": expected code " + std::to_string(it->second.code) + ", got " + line);
    }
    pending_.erase(it);
    ++totals_.verified;
  }

  // Reads replies until none are outstanding (all) or nothing more is immediately there.
  bool Drain(bool all) {
    std::string line;
    while (!pending_.empty() || expected_null_ > 0 || expected_batches_ > 0) {
      if (!conn_.ReadLine(line, all ? 10s : 1ms)) {
        if (!all) return true;
        totals_.Fail(prefix_ + ": lost replies: " + std::to_string(pending_.size()) +
                     " pending, " + std::to_string(expected_null_) + " parse errors");
        return false;
      }
      json::error_code ec;
      json::value v = json::parse(line, ec);
      if (ec) {
        totals_.Fail(prefix_ + ": reply is not JSON: " + line);
        return false;
      }
      if (v.is_array()) {
        if (expected_batches_ == 0 || v.get_array().size() != 2) {
          totals_.Fail(prefix_ + ": unexpected batch reply " + line);
        }
        --expected_batches_;
        for (const auto& e : v.get_array()) Check(e, line);
      } else {
        Check(v, line);
      }
    }
    return true;
  }

  void Abort() {
    ++totals_.aborted_sessions;
    if (rng_() % 2) {
      linger l{1, 0};  // reset instead of an orderly close
      ::setsockopt(conn_.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
  }

  RawClient conn_;
  std::mt19937_64& rng_;
  std::string prefix_;
  Totals& totals_;
  uint64_t next_ = 0;
  std::map<std::string, Expect> pending_;
  int64_t expected_null_ = 0;
  int64_t expected_batches_ = 0;
};

void Drive(const AgentProcess& agent, uint64_t total, int clients, Totals& totals) {
  std::vector<std::thread> threads;
  std::atomic<uint64_t> budget{total};
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(0x5eed + c);
      uint64_t serial = 0;
      for (;;) {
        uint64_t want = 1 + rng() % 400;
        uint64_t left = budget.load();
        do {
          if (left == 0) return;
          want = std::min(want, left);
        } while (!budget.compare_exchange_weak(left, left - want));
        std::optional<uint64_t> abort_after;
        if (rng() % 10 == 0) abort_after = rng() % want;
        ++totals.sessions;
        uint64_t sent =
            Session(agent.socket_path(), rng, c, serial++, totals).Run(want, abort_after);
        if (sent < want) budget += want - sent;  // an aborted session's rest goes back

      }
    });
  }
  for (auto& t : threads) t.join();
}

int SettledFdCount(pid_t pid, int want) {
  int now = -1;
  for (int i = 0; i < 250; ++i) {
    now = OpenFdCount(pid);
    if (now == want) break;
    std::this_thread::sleep_for(20ms);
  }
  return now;
}

TEST(Soak, MixedRequestsWithRandomDisconnectsKeepRssAndFdsFlat) {
  AgentProcess::Options options;
  options.log_level = "warn";
  AgentProcess agent(options);
  const uint64_t total = RequestedCount();
  const int clients = 8;

  // Warm-up: allocator pools and thread stacks reach their steady size first.
  Totals warm;
  Drive(agent, std::max<uint64_t>(total / 20, 2000), clients, warm);
  ASSERT_TRUE(warm.failures.empty()) << warm.failures.front();
  int fds_base = SettledFdCount(agent.pid(), -1);
  long rss_base = RssKib(agent.pid());

  Totals totals;
  long rss_max = rss_base;
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done) {
      rss_max = std::max(rss_max, RssKib(agent.pid()));
      std::this_thread::sleep_for(100ms);
    }
  });
  auto t0 = Clock::now();
  Drive(agent, total, clients, totals);
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  done = true;
  sampler.join();
  int fds_after = SettledFdCount(agent.pid(), fds_base);
  long rss_after = RssKib(agent.pid());

  std::printf("soak: %llu requests (%llu verified replies) in %.1f s = %.0f req/s; %llu sessions, "
              "%llu aborted; RSS %ld -> %ld KiB (max %ld); fds %d -> %d\n",
              static_cast<unsigned long long>(totals.sent.load()),
              static_cast<unsigned long long>(totals.verified.load()), seconds,
              totals.sent / seconds, static_cast<unsigned long long>(totals.sessions.load()),
              static_cast<unsigned long long>(totals.aborted_sessions.load()), rss_base, rss_after,
              rss_max, fds_base, fds_after);
  RecordProperty("requests", std::to_string(totals.sent.load()));
  RecordProperty("seconds", std::to_string(seconds));
  RecordProperty("rss_kib", std::to_string(rss_base) + "->" + std::to_string(rss_after));
  for (const auto& f : totals.failures) ADD_FAILURE() << f;
  EXPECT_GE(totals.sent.load(), total);  // a batch may overshoot by two
  EXPECT_GT(totals.verified.load(), total / 2);
  EXPECT_EQ(fds_after, fds_base) << "file descriptors leaked";
  EXPECT_LT(rss_after - rss_base, 4 * 1024) << "RSS grew during the soak";
  EXPECT_LT(rss_max - rss_base, 16 * 1024) << "RSS peaked far above the warmed-up size";
  // The agent is still healthy.
  CallResult ping = agent.Call("ping");
  EXPECT_TRUE(ping.ok);
}

}  // namespace
}  // namespace kvm::test
