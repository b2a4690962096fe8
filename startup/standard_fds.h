// Makes sure descriptors 0, 1 and 2 are open before anything else opens a file.
#pragma once

#include <fcntl.h>

#include <cerrno>

namespace kvm {

// Started with one of them closed (`cmd >&-`), the next open() would take its number: a
// socket on fd 1 would receive everything printed as if it were a request. A closed one is
// filled with /dev/null opened the other way round (stdin write-only, stdout and stderr
// read-only), so using it fails with EBADF, as it did closed, instead of leaking elsewhere.
inline void FillClosedStandardFds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      // The lowest free number is this one: the lower ones are open by now.
      ::open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY);
    }
  }
}

}  // namespace kvm
