#include "agent/core/method_table.h"

#include <algorithm>
#include <stdexcept>

namespace kvm {

void RequestContext::ExtendDeadline(Clock::duration from_now) {
  if (!deadline_ns_) return;
  int64_t wanted = (Clock::now() + from_now).time_since_epoch().count();
  int64_t current = deadline_ns_->load();
  while (wanted > current && !deadline_ns_->compare_exchange_weak(current, wanted)) {
  }
}

void MethodTable::Add(std::string name, RunMode mode, Handler handler, std::string serialize_by) {
  if (mode != RunMode::kWorker && !serialize_by.empty()) {
    throw std::logic_error("only kWorker methods can be serialized: " + name);
  }
  auto [it, inserted] = methods_.emplace(
      std::move(name), MethodSpec{std::move(handler), mode, std::move(serialize_by)});
  if (!inserted) throw std::logic_error("method registered twice: " + it->first);
  names_.insert(std::lower_bound(names_.begin(), names_.end(), it->first), it->first);
}

const MethodSpec* MethodTable::Find(std::string_view name) const {
  auto it = methods_.find(name);
  return it == methods_.end() ? nullptr : &it->second;
}

}  // namespace kvm
