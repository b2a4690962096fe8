// shutdown, reboot, halt and power_cancel. The agent answers first and acts afterwards: see
// Scheduler (power_scheduler.h) for how the action is held back until the reply is out.
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "agent/handlers/power/power_backend.h"
#include "agent/handlers/power/power_scheduler.h"
#include "agent/handlers/register_all.h"
#include "protocol/errors.h"
#include "protocol/params.h"

namespace kvm {
namespace json = boost::json;
using power::Action;

namespace {

constexpr int64_t kMaxDelaySeconds = 86400;  // a day; longer plans belong to the host
constexpr size_t kMaxMessageBytes = 1024;

const char* Phrase(Action action) {
  switch (action) {
    case Action::kPowerOff:
      return "power off";
    case Action::kReboot:
      return "reboot";
    case Action::kHalt:
      return "halt";
  }
  return "power off";
}

std::string WallText(const std::string& body, const std::string& message) {
  std::string text = "\r\nBroadcast message from kvmmanager-agent (requested by the host):\r\n\r\n";
  text += body;
  text += "\r\n";
  if (!message.empty()) text += power::SanitizeForTerminal(message) + "\r\n";
  return text;
}

json::value RequestPower(power::Scheduler& scheduler, Action action, const json::object& params,
                         RequestContext& ctx) {
  Params p(params, {"delay_seconds", "message", "force"});
  int64_t delay = p.OptionalInt("delay_seconds", 0, kMaxDelaySeconds).value_or(0);
  std::string message = p.OptionalString("message").value_or("");
  if (message.size() > kMaxMessageBytes) {
    Params::Fail("message", "a string of at most 1024 bytes");
  }
  bool force = p.OptionalBool("force").value_or(false);

  // systemctl puts --message into its own wall text and the journal: one line, no controls.
  std::string one_line = message;
  std::replace(one_line.begin(), one_line.end(), '\n', ' ');
  power::Plan plan = power::ChoosePlan(scheduler.env(), power::Privileges::OfThisProcess(), action,
                                       force, power::SanitizeForTerminal(one_line));
  json::array command;
  for (const auto& a : plan.argv) command.emplace_back(a);
  std::string method = plan.method;

  std::string notice, cancel_notice;
  if (!message.empty()) {
    notice = WallText(delay > 0 ? "The system will " + std::string(Phrase(action)) + " in " +
                                      std::to_string(delay) + " seconds."
                                : "The system will " + std::string(Phrase(action)) + " now.",
                      message);
    cancel_notice =
        WallText("The scheduled " + std::string(Phrase(action)) + " has been cancelled.", "");
  }
  auto scheduled = scheduler.Schedule(std::move(plan), std::chrono::seconds(delay),
                                      std::move(cancel_notice), ctx.log());
  // Nothing runs before the reply has been sent ("answer first"); a throw below cancels.
  power::Scheduler::Release release(scheduler, scheduled.pending);
  ctx.AfterReplySent([weak = scheduler.weak_from_this(), pending = scheduled.pending] {
    if (auto live = weak.lock()) live->ReplySent(pending);
  });
  int recipients = notice.empty() ? 0 : power::BroadcastToTerminals(scheduler.env(), notice);
  LOG_INFO(ctx.log(), "power: %s via %s scheduled in %llds%s", power::ActionName(action),
           method.c_str(), static_cast<long long>(delay),
           scheduler.env().test_mode ? " (TEST MODE: KVM_AGENT_POWER_TEST_DIR is set)" : "");

  json::object result{{"scheduled", true},
                      {"action", power::ActionName(action)},
                      {"method", method},
                      {"command", std::move(command)},
                      {"force", force},
                      {"delay_seconds", delay},
                      {"execute_at", scheduled.execute_at_unix},
                      {"message_recipients", recipients}};
  if (scheduler.env().test_mode) result["test_mode"] = true;
  return result;
}

}  // namespace

void RegisterPowerMethods(MethodTable& table, ChildSpawned child_spawned) {
  auto& scheduler = table.Own(std::make_shared<power::Scheduler>(
      power::Environment::FromProcessEnvironment(), std::move(child_spawned)));
  table.Add("shutdown", RunMode::kWorker,
            [&scheduler](const json::object& params, RequestContext& ctx) {
              return RequestPower(scheduler, Action::kPowerOff, params, ctx);
            });
  table.Add("reboot", RunMode::kWorker,
            [&scheduler](const json::object& params, RequestContext& ctx) {
              return RequestPower(scheduler, Action::kReboot, params, ctx);
            });
  table.Add("halt", RunMode::kWorker,
            [&scheduler](const json::object& params, RequestContext& ctx) {
              return RequestPower(scheduler, Action::kHalt, params, ctx);
            });
  table.Add("power_cancel", RunMode::kWorker,
            [&scheduler](const json::object& params, RequestContext&) -> json::value {
              Params p(params, {});
              return scheduler.Cancel();
            });
}

}  // namespace kvm
