// Placeholder until this module's issue lands: registers no methods, so they answer -32601.
#include "agent/handlers/register_all.h"

namespace kvm {

void RegisterPowerMethods(MethodTable&) {}

}  // namespace kvm
