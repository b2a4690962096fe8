// shutdown, reboot, halt [--delay S] [--message M] [--force], and power-cancel.
#include <boost/json.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "ctl/ctl.h"

namespace kvm::ctl {
namespace json = boost::json;

namespace {

struct PowerArgs {
  int64_t delay = 0;
  std::string message;
  bool force = false;
};

void AddPowerAction(CLI::App& app, Options& options, const char* name, const char* method,
                    const char* help) {
  auto* sub = app.add_subcommand(name, help);
  auto args = std::make_shared<PowerArgs>();
  sub->add_option("--delay", args->delay, "seconds to wait before acting (0-86400)")
      ->check(CLI::Range(int64_t{0}, int64_t{86400}));
  sub->add_option("--message", args->message, "message broadcast to logged-in users");
  sub->add_flag("--force", args->force, "skip the init system: sync, then reboot(2) at once");
  sub->callback([&options, args, method] {
    json::object params{{"delay_seconds", args->delay}, {"force", args->force}};
    if (!args->message.empty()) params["message"] = args->message;
    CallAndShow(options, method, params, [](const json::value& result) {
      const auto& r = result.as_object();
      auto text = [&](const char* key) -> std::string {
        const json::value* v = r.if_contains(key);
        return v && v->is_string() ? std::string(v->get_string()) : std::string("?");
      };
      auto number = [&](const char* key) -> long long {
        const json::value* v = r.if_contains(key);
        return v && v->is_int64() ? static_cast<long long>(v->get_int64()) : 0;
      };
      std::printf("%s scheduled via %s in %lld s (at unix time %lld); %lld terminal(s) notified\n",
                  text("action").c_str(), text("method").c_str(), number("delay_seconds"),
                  number("execute_at"), number("message_recipients"));
    });
  });
}

}  // namespace

void AddPowerCommands(CLI::App& app, Options& options) {
  AddPowerAction(app, options, "shutdown", "shutdown",
                 "power the guest off (graceful unless --force)");
  AddPowerAction(app, options, "reboot", "reboot", "reboot the guest (graceful unless --force)");
  AddPowerAction(app, options, "halt", "halt", "halt the guest without powering off");
  auto* cancel = app.add_subcommand("power-cancel", "cancel a delayed shutdown/reboot/halt");
  cancel->callback([&options] {
    CallAndShow(options, "power_cancel", {}, [](const json::value& result) {
      const json::value* action = result.as_object().if_contains("action");
      std::printf("cancelled the scheduled %s\n",
                  action && action->is_string() ? action->get_string().c_str() : "power action");
    });
  });
}

}  // namespace kvm::ctl
