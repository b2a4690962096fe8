// exec_bench: round trip of running `true` in the "guest" through kvmmanager-agent
// (exec_command, and exec_start + exec_status) versus qemu-ga (guest-exec followed by
// guest-exec-status polling until it reports exited). Both run locally on unix sockets, so
// the figures compare the agents, not a virtio-serial link.
//
//   exec_bench [--iterations N] [--agent PATH] [--qemu-ga PATH]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "ctl/agent_client.h"

extern char** environ;

namespace {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    std::fprintf(stderr, "exec_bench: cannot start %s: %s\n", args[0], std::strerror(rc));
    std::exit(1);
  }
  return pid;
}

void WaitSocket(const std::string& path, pid_t pid, const std::string& log) {
  for (int i = 0; i < 2000; ++i) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return;
    if (::waitpid(pid, nullptr, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::fprintf(stderr, "exec_bench: %s did not appear; see %s\n", path.c_str(), log.c_str());
  std::exit(1);
}

struct Stats {
  std::vector<double> us;
  double Percentile(double p) {
    std::sort(us.begin(), us.end());
    return us[std::min(us.size() - 1, static_cast<size_t>(p * static_cast<double>(us.size())))];
  }
  double Mean() const {
    double sum = 0;
    for (double v : us) sum += v;
    return sum / static_cast<double>(us.size());
  }
};

Stats Measure(int iterations, const std::function<void()>& once) {
  for (int i = 0; i < std::max(5, iterations / 10); ++i) once();  // warm-up
  Stats s;
  for (int i = 0; i < iterations; ++i) {
    auto start = Clock::now();
    once();
    s.us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  return s;
}

json::object QgaCall(kvm::AgentClient& qga, const json::object& request) {
  qga.SendLine(json::serialize(request));
  for (;;) {
    json::value reply = json::parse(qga.ReadLine());
    if (reply.as_object().contains("error")) {
      std::fprintf(stderr, "exec_bench: qemu-ga error: %s\n", json::serialize(reply).c_str());
      std::exit(1);
    }
    if (auto* r = reply.as_object().if_contains("return")) {
      return r->is_object() ? r->as_object() : json::object{};
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 300;
  std::string agent_bin = KVM_AGENT_BINARY;
  std::string qga_bin = "/usr/sbin/qemu-ga";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--iterations")
      iterations = std::max(10, std::atoi(argv[i + 1]));
    else if (flag == "--agent")
      agent_bin = argv[i + 1];
    else if (flag == "--qemu-ga")
      qga_bin = argv[i + 1];
  }
  char dir_template[] = "/tmp/exec-bench-XXXXXX";
  std::string dir = ::mkdtemp(dir_template);
  std::string config = dir + "/config.json";
  FILE* f = std::fopen(config.c_str(), "w");
  std::fputs("{\"log_file\":null,\"log_level\":\"warn\"}", f);
  std::fclose(f);
  ::mkdir((dir + "/qga-state").c_str(), 0700);

  pid_t agent = Spawn(
      {agent_bin, "--foreground", "--config", config, "--listen", "unix:" + dir + "/agent.sock"},
      dir + "/agent.log");
  pid_t qga = Spawn({qga_bin, "-m", "unix-listen", "-p", dir + "/qga.sock", "-t",
                     dir + "/qga-state", "-f", dir + "/qga.pid"},
                    dir + "/qga.log");
  WaitSocket(dir + "/agent.sock", agent, dir + "/agent.log");
  WaitSocket(dir + "/qga.sock", qga, dir + "/qga.log");

  kvm::AgentClient client(dir + "/agent.sock", std::chrono::seconds(30));
  kvm::AgentClient qga_client(dir + "/qga.sock", std::chrono::seconds(30));

  Stats overhead;  // round trip minus the command's own run time (spawn to exit)
  Stats sync = Measure(iterations, [&] {
    auto start = Clock::now();
    auto r = client.Call("exec_command", {{"command", "true"}});
    if (!r.ok || r.result.at("exit_code").as_int64() != 0) {
      std::fprintf(stderr, "exec_bench: exec_command failed: %s\n", r.error_message.c_str());
      std::exit(1);
    }
    double rt = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
    overhead.us.push_back(rt - 1000.0 * static_cast<double>(r.result.at("duration_ms").as_int64()));
  });
  int64_t async_polls = 0;
  Stats async = Measure(iterations, [&] {
    auto r = client.Call("exec_start", {{"command", "true"}});
    for (;;) {
      auto s = client.Call("exec_status", {{"handle", r.result.at("handle")}, {"wait_ms", 5000}});
      ++async_polls;
      if (!s.ok) std::exit(1);
      if (s.result.at("exited").as_bool()) break;
    }
  });
  int64_t qga_polls = 0;
  Stats qemu = Measure(iterations, [&] {
    json::object started = QgaCall(
        qga_client,
        {{"execute", "guest-exec"}, {"arguments", {{"path", "true"}, {"capture-output", true}}}});
    json::value pid = started.at("pid");
    for (;;) {
      json::object s =
          QgaCall(qga_client, {{"execute", "guest-exec-status"}, {"arguments", {{"pid", pid}}}});
      ++qga_polls;
      if (s.at("exited").as_bool()) break;
    }
  });
  int total = iterations + std::max(5, iterations / 10);

  std::printf("exec `true`, %d iterations each (after warm-up), microseconds per round trip\n",
              iterations);
  std::printf("%-44s %9s %9s %9s %9s\n", "method", "median", "p90", "mean", "min");
  auto row = [](const char* name, Stats& s) {
    std::printf("%-44s %9.0f %9.0f %9.0f %9.0f\n", name, s.Percentile(0.5), s.Percentile(0.9),
                s.Mean(), s.Percentile(0.0));
  };
  row("kvmmanager-agent exec_command", sync);
  row("kvmmanager-agent exec_start + exec_status", async);
  row("qemu-ga guest-exec + guest-exec-status", qemu);
  std::printf("status polls per run: agent %.2f (wait_ms long-poll), qemu-ga %.2f (busy polling)\n",
              static_cast<double>(async_polls) / total, static_cast<double>(qga_polls) / total);
  std::printf("agent overhead beyond the command's own run time (ms-granular): median %.0f us\n",
              overhead.Percentile(0.5));
  std::printf("median speed-up of exec_command over qemu-ga: %.2fx\n",
              qemu.Percentile(0.5) / sync.Percentile(0.5));

  ::kill(agent, SIGTERM);
  ::kill(qga, SIGTERM);
  ::waitpid(agent, nullptr, 0);
  ::waitpid(qga, nullptr, 0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
