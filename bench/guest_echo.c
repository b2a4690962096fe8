/* The lower bound for a guest agent's round trip: echoes each read back on a virtio-serial
 * port, waiting the way kvmmanager-agent does (level-triggered epoll, then read, then write:
 * three system calls per request). Built static by bench/vm_ab.sh and run inside the test VM.
 *   guest_echo PORT_PATH */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: guest_echo PORT_PATH\n");
    return 2;
  }
  int fd = open(argv[1], O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    perror("epoll");
    return 1;
  }
  static char buf[65536];
  for (;;) {
    struct epoll_event ready;
    if (epoll_wait(ep, &ready, 1, -1) < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0) { /* no host: the port stays readable, so do not spin */
      usleep(10000);
      continue;
    }
    if (n < 0) continue;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(fd, buf + off, (size_t)(n - off));
      if (w > 0) {
        off += w;
      } else if (w < 0 && errno == EAGAIN) {
        usleep(1000); /* the host is slow to take the bytes */
      } else if (w < 0 && errno != EINTR) {
        break; /* the host left; its echo goes with it */
      }
    }
  }
}
