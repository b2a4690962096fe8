#include "tests/support/agent_process.h"
