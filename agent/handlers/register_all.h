// Every method module of the agent; main() builds the method table with this.
#pragma once

#include <functional>

#include "agent/core/method_table.h"

namespace kvm {

// One line per module; each module's Register function lists its methods by name.
void RegisterAllMethods(MethodTable& table);

void RegisterCoreMethods(MethodTable& table);  // ping, get_agent_info
void RegisterSystemMethods(
    MethodTable& table);  // get_system_info, get_network_info, get_disk_usage
// Called by a module right after it spawned a child: the exec module, which makes the agent the
// subreaper of its children's orphans, then watches for such orphans to reap.
using ChildSpawned = std::function<void()>;
ChildSpawned RegisterExecMethods(MethodTable& table);  // exec_command, exec_*, process_*
void RegisterFileMethods(MethodTable& table);          // file_*
void RegisterPowerMethods(MethodTable& table, ChildSpawned child_spawned);  // shutdown, reboot...

}  // namespace kvm
