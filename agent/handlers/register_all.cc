#include "agent/handlers/register_all.h"

namespace kvm {

void RegisterAllMethods(MethodTable& table) {
  RegisterCoreMethods(table);
  RegisterSystemMethods(table);
  ChildSpawned child_spawned = RegisterExecMethods(table);
  RegisterFileMethods(table);
  RegisterPowerMethods(table, child_spawned);
}

}  // namespace kvm
