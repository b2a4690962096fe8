// Placeholder until this group's issue lands.
#include "ctl/ctl.h"

namespace kvm::ctl {

void AddFileCommands(CLI::App&, Options&) {}

}  // namespace kvm::ctl
