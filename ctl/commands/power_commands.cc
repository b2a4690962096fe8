// Placeholder until this group's issue lands.
#include "ctl/ctl.h"

namespace kvm::ctl {

void AddPowerCommands(CLI::App&, Options&) {}

}  // namespace kvm::ctl
