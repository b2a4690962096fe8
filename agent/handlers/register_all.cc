#include "agent/handlers/register_all.h"

namespace kvm {

void RegisterAllMethods(MethodTable& table) {
  RegisterCoreMethods(table);
  RegisterSystemMethods(table);
  RegisterExecMethods(table);
  RegisterFileMethods(table);
  RegisterPowerMethods(table);
}

}  // namespace kvm
