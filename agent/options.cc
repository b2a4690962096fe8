#include "agent/options.h"

#include <getopt.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/core/config.h"
#include "version.h"

namespace kvm {

std::string AgentUsage() {
  return std::string(
             "Usage: kvmmanager-agent [OPTIONS]\n"
             "Guest agent: serves JSON-RPC 2.0 (one JSON text per line) to the host over a\n"
             "virtio-serial port, and optionally over unix or vsock sockets.\n"
             "\n"
             "Options:\n"
             "  -f, --foreground       stay in the foreground (systemd, containers);\n"
             "                         without it the agent daemonizes\n"
             "  -l, --log-level LEVEL  trace, debug, info, warn, error or off\n"
             "                         (overrides the config's log_level)\n"
             "  -d, --device PATH      serial port to serve\n"
             "                         (default /dev/virtio-ports/<channel_name>)\n"
             "  -c, --config PATH      config file (default ") +
         kDefaultConfigPath +
         ")\n"
         "                         a missing file means built-in defaults\n"
         "      --listen ADDR      also serve ADDR: unix:PATH (socket mode 0600) or\n"
         "                         vsock:PORT; repeatable. With --listen and no --device\n"
         "                         the serial port is not used\n"
         "      --check-config     validate the config, print the effective config as\n"
         "                         JSON and exit (0 valid, 2 invalid)\n"
         "  -V, --version          print the version and exit\n"
         "  -h, --help             print this help and exit\n"
         "\n"
         "Relative paths are taken from the directory the agent is started in.\n"
         "\n"
         "Signals: SIGTERM/SIGINT stop gracefully (in-flight requests finish, up to 10 s,\n"
         "         then up to 2 s to hand over replies a client has not read yet);\n"
         "SIGHUP reloads the config file (if it is missing or invalid, the running config\n"
         "is kept).\n"
         "Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config.\n";
}

namespace {
// The option getopt_long just stopped at. Within a group (-xf) argv[optind - 1] may be the
// word before it, so a short option is named by optopt.
std::string OffendingOption(char** argv) {
  std::string_view given = argv[optind - 1];
  if (given.substr(0, 2) == "--") return std::string(given.substr(0, given.find('=')));
  return std::string("-") + static_cast<char>(optopt);
}
}  // namespace

std::optional<OptionsExit> ParseAgentOptions(int argc, char** argv, AgentOptions& options) {
  enum { kListen = 1000, kCheckConfig };
  static const option kLong[] = {
      {"foreground", no_argument, nullptr, 'f'},
      {"log-level", required_argument, nullptr, 'l'},
      {"device", required_argument, nullptr, 'd'},
      {"config", required_argument, nullptr, 'c'},
      {"listen", required_argument, nullptr, kListen},
      {"check-config", no_argument, nullptr, kCheckConfig},
      {"version", no_argument, nullptr, 'V'},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0},
  };
  options.config_path = kDefaultConfigPath;
  opterr = 0;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, ":fl:d:c:Vh", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f':
        options.foreground = true;
        break;
      case 'l':
        if (!IsValidLogLevel(optarg)) {
          return OptionsExit{2, std::string("kvmmanager-agent: --log-level must be one of trace, "
                                            "debug, info, warn, error, off (got \"") +
                                    optarg + "\")\n"};
        }
        options.log_level = optarg;
        break;
      case 'd':
        if (!*optarg)
          return OptionsExit{2, "kvmmanager-agent: --device needs a path\nTry --help.\n"};
        options.device = optarg;
        break;
      case 'c':
        if (!*optarg)
          return OptionsExit{2, "kvmmanager-agent: --config needs a path\nTry --help.\n"};
        options.config_path = optarg;
        break;
      case kListen:
        options.listen.emplace_back(optarg);
        break;
      case kCheckConfig:
        options.check_config = true;
        break;
      case 'V':
        return OptionsExit{0, std::string("kvmmanager-agent ") + KVM_AGENT_VERSION + "\n"};
      case 'h':
        return OptionsExit{0, AgentUsage()};
      case ':':
        return OptionsExit{2, "kvmmanager-agent: option " + OffendingOption(argv) +
                                  " needs a value\nTry --help.\n"};
      default: {
        std::string name = OffendingOption(argv);
        std::string_view given = argv[optind - 1];
        bool known = false;
        for (const option* o = kLong; o->name; ++o) known |= name == std::string("--") + o->name;
        if (known && given.find('=') != std::string_view::npos) {
          return OptionsExit{2, "kvmmanager-agent: option " + name + " takes no value (got \"" +
                                    std::string(given) + "\")\nTry --help.\n"};
        }
        return OptionsExit{2, "kvmmanager-agent: unknown option " + name + "\nTry --help.\n"};
      }
    }
  }
  if (optind < argc) {
    return OptionsExit{2, std::string("kvmmanager-agent: unexpected argument \"") + argv[optind] +
                              "\"\nTry --help.\n"};
  }
  return std::nullopt;
}

std::string MakeOptionPathsAbsolute(AgentOptions& options) {
  std::string cwd;
  auto absolute = [&](std::string& path) -> bool {
    if (path.empty() || path[0] == '/') return true;
    if (cwd.empty()) {
      char buf[4096];
      if (!::getcwd(buf, sizeof buf)) return false;
      cwd = buf;
    }
    path = cwd + (cwd.back() == '/' ? "" : "/") + path;
    return true;
  };
  bool ok = absolute(options.config_path);
  if (options.device) ok = ok && absolute(*options.device);
  for (auto& spec : options.listen) {
    if (spec.rfind("unix:", 0) != 0) continue;
    std::string path = spec.substr(5);
    ok = ok && absolute(path);
    spec = "unix:" + path;
  }
  if (!ok) {
    return std::string("cannot resolve a relative path: getcwd: ") + std::strerror(errno);
  }
  return {};
}

}  // namespace kvm
