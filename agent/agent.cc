#include "agent/agent.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "agent/core/sd_notify.h"
#include "agent/handlers/register_all.h"

namespace kvm {
namespace {
// How long a graceful stop waits for in-flight requests before abandoning them.
constexpr auto kStopGrace = std::chrono::seconds(10);
constexpr auto kAbandonGrace = std::chrono::seconds(2);

// Tells systemd (Type=notify) about state changes; a no-op outside systemd.
void Notify(Logger& log, const char* state) {
  if (std::string err = SdNotify(state); !err.empty()) LOG_WARN(log, "sd_notify: %s", err.c_str());
}
}  // namespace

void ApplyLogSettings(const AgentOptions& options, const Config& config, Logger& log) {
  log.set_level(ParseLogLevel(options.log_level.value_or(config.log_level)));
  if (std::string err = log.OpenFile(config.log_file); !err.empty()) {
    LOG_WARN(log, "%s; %s", err.c_str(),
             log.has_file()       ? "still logging to the file used before"
             : options.foreground ? "logging to stderr only"
                                  : "the daemon will log nothing");
  }
}

Agent::Agent(AgentOptions options, Config config, Logger& log)
    : options_(std::move(options)), log_(log) {
  RegisterAllMethods(methods_);
  methods_.RunStartHooks(config, log_);
  dispatcher_ = std::make_unique<Dispatcher>(loop_, methods_, log_,
                                             std::make_shared<const Config>(std::move(config)));
}

Agent::~Agent() {
  listeners_.clear();
  port_.reset();
}

void Agent::Start() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  signal_fd_.reset(::signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signal_fd_) throw std::system_error(errno, std::generic_category(), "signalfd");
  loop_.Watch(signal_fd_.get(), EPOLLIN, [this](uint32_t) { OnSignal(); });

  for (const auto& spec : options_.listen) {
    listeners_.push_back(
        std::make_unique<Listener>(loop_, *dispatcher_, log_, ParseListenAddress(spec)));
  }
  const Config& config = *dispatcher_->config();
  if (options_.device || options_.listen.empty()) {
    std::string path = options_.device.value_or("/dev/virtio-ports/" + config.channel_name);
    port_ = std::make_unique<SerialPort>(loop_, *dispatcher_, log_, path,
                                         static_cast<int>(config.connection_retry_seconds));
    port_->Start();
  }
  Notify(log_, "READY=1");
}

int Agent::Run() {
  loop_.Run();
  if (dispatcher_->in_flight() > 0) {
    // A handler ignored abandonment; joining its thread could hang the stop forever.
    LOG_ERROR(log_, "%zu requests still running at exit; exiting without waiting",
              dispatcher_->in_flight());
    std::fflush(nullptr);
    ::_exit(0);
  }
  LOG_INFO(log_, "stopped");
  return 0;
}

void Agent::OnSignal() {
  signalfd_siginfo info;
  while (::read(signal_fd_.get(), &info, sizeof info) == sizeof info) {
    if (info.ssi_signo == SIGHUP) {
      Reload();
    } else {
      BeginStop(info.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
    }
  }
}

void Agent::Reload() {
  LOG_INFO(log_, "SIGHUP: reloading %s", options_.config_path.c_str());
  Notify(log_, "RELOADING=1");
  try {
    LoadedConfig loaded = LoadConfigFile(options_.config_path);
    if (!loaded.file_found) {
      // Falling back to the defaults here would silently drop the security settings.
      LOG_ERROR(log_, "config reload failed, keeping the previous config: %s not found",
                options_.config_path.c_str());
      Notify(log_, "READY=1");
      return;
    }
    for (const auto& warning : loaded.warnings) LOG_WARN(log_, "%s", warning.c_str());
    const Config& old = *dispatcher_->config();
    if (loaded.config.channel_name != old.channel_name) {
      LOG_WARN(log_, "channel_name change takes effect at the next start");
    }
    if (port_) port_->set_retry_seconds(static_cast<int>(loaded.config.connection_retry_seconds));
    ApplyLogSettings(options_, loaded.config, log_);
    dispatcher_->SetConfig(std::make_shared<const Config>(std::move(loaded.config)));
    LOG_INFO(log_, "config reloaded");
  } catch (const ConfigError& e) {
    LOG_ERROR(log_, "config reload failed, keeping the previous config: %s", e.what());
  }
  Notify(log_, "READY=1");
}

void Agent::BeginStop(const char* why) {
  if (stopping_) return;
  stopping_ = true;
  Notify(log_, "STOPPING=1");
  LOG_INFO(log_, "%s: stopping; %zu requests in flight", why, dispatcher_->in_flight());
  dispatcher_->BeginShutdown();
  for (auto& listener : listeners_) listener->StopAccepting();
  if (port_) port_->StopReading();
  stop_deadline_ = EventLoop::Clock::now() + kStopGrace;
  CheckStopped();
}

void Agent::CheckStopped() {
  size_t sessions = 0;
  for (auto& listener : listeners_) sessions += listener->session_count();
  bool idle = dispatcher_->in_flight() == 0 && sessions == 0 && (!port_ || port_->idle());
  auto now = EventLoop::Clock::now();
  if (idle || now >= stop_deadline_ + kAbandonGrace) {
    loop_.Stop();
    return;
  }
  if (now >= stop_deadline_ && !abandoned_) {
    LOG_WARN(log_, "abandoning %zu requests still running", dispatcher_->in_flight());
    dispatcher_->AbandonAll();
    abandoned_ = true;
  }
  loop_.AddTimer(std::chrono::milliseconds(20), [this] { CheckStopped(); });
}

}  // namespace kvm
