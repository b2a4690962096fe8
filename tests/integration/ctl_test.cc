// kvmmanager-ctl against the real agent, and against fake servers for its failure paths.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "tests/integration/test_util.h"

namespace kvm::test {
namespace {
namespace json = boost::json;

RunResult Ctl(std::vector<std::string> args,
              std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  args.insert(args.begin(), KVM_CTL_BINARY);
  return RunProgram(args, "", timeout);
}

TEST(Ctl, PingAndCallPrintResultsAndExitZero) {
  AgentProcess agent;
  RunResult ping = Ctl({"--socket", agent.socket_path(), "ping"});
  EXPECT_EQ(ping.exit_code, 0) << ping.err;
  EXPECT_NE(ping.out.find("pong"), std::string::npos);
  RunResult call = Ctl({"--socket", agent.socket_path(), "call", "get_agent_info"});
  EXPECT_EQ(call.exit_code, 0) << call.err;
  EXPECT_EQ(ParseJson(call.out).at("name"), "kvmmanager-agent");
  RunResult json_out = Ctl({"--socket", agent.socket_path(), "--json", "call", "ping", "{}"});
  EXPECT_EQ(json_out.exit_code, 0);
  EXPECT_EQ(ParseJson(json_out.out).at("pong"), true);
}

// Global options may follow the subcommand, as users type them; after `exec --` they belong
// to the guest command.
TEST(Ctl, GlobalOptionsAlsoWorkAfterTheSubcommand) {
  AgentProcess agent;
  RunResult ping = Ctl({"ping", "--socket", agent.socket_path(), "--json", "--timeout", "5"});
  EXPECT_EQ(ping.exit_code, 0) << ping.err;
  EXPECT_EQ(ParseJson(ping.out).at("pong"), true) << ping.out;
  RunResult exec = Ctl({"exec", "--socket", agent.socket_path(), "--", "echo", "--json"});
  EXPECT_EQ(exec.exit_code, 0) << exec.err;
  EXPECT_EQ(exec.out, "--json\n");
  RunResult bogus = Ctl({"ping", "--socket", agent.socket_path(), "--bogus"});
  EXPECT_EQ(bogus.exit_code, 2);
  EXPECT_NE(bogus.err.find("--bogus"), std::string::npos) << bogus.err;
}

// Started with stdout or stderr closed, ctl must not let its socket take the number: what it
// prints (guest file content here) would reach the agent as requests, and run.
TEST(Ctl, ClosedStandardDescriptorsNeverCarryOutputToTheAgent) {
  AgentProcess agent;
  std::string injected = agent.sandbox() + "/INJECTED";
  std::string payload = R"({"jsonrpc":"2.0","method":"file_write","params":{"path":")" + injected +
                        R"(","data":"cHduZWQ="},"id":7})"
                        "\n";
  WriteFile(agent.sandbox() + "/payload.txt", payload);
  std::string ctl = std::string(KVM_CTL_BINARY) + " --socket " + agent.socket_path();
  for (const std::string& command :
       {ctl + " cat :" + agent.sandbox() + "/payload.txt >&-",
        ctl + " exec -- cat " + agent.sandbox() + "/payload.txt >&-",
        ctl + " exec -- sh -c 'cat " + agent.sandbox() + "/payload.txt >&2' 2>&-",
        ctl + " --json call file_read '{\"path\":\"" + agent.sandbox() + "/payload.txt\"," +
            "\"encoding\":\"utf8\"}' >&-"}) {
    RunResult r = RunProgram({"/bin/sh", "-c", command}, "", std::chrono::seconds(20));
    EXPECT_NE(r.exit_code, 0) << command;
    EXPECT_FALSE(std::filesystem::exists(injected)) << command;
  }
  // A closed stdin is no input, not the agent's replies read back (that hung).
  RunResult in =
      RunProgram({"/bin/sh", "-c", ctl + " exec -i -- cat <&-"}, "", std::chrono::seconds(20));
  EXPECT_EQ(in.exit_code, 0) << in.err;
  EXPECT_EQ(in.out, "");
}

// exec -i whose local stdin cannot be read: the command runs with its input cut, and ctl
// exits 2 (a local file problem) after saying why, not with the command's 0.
TEST(Ctl, ExecInputThatCannotBeReadExitsTwo) {
  AgentProcess agent;
  std::string ctl = std::string(KVM_CTL_BINARY) + " --socket " + agent.socket_path();
  RunResult r =
      RunProgram({"/bin/sh", "-c", ctl + " exec -i -- cat < /"}, "", std::chrono::seconds(20));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("reading stdin: Is a directory"), std::string::npos) << r.err;
}

// Output that cannot be written is a failure with a reason (exit 2), not a silent success.
TEST(Ctl, OutputThatCannotBeWrittenExitsTwo) {
  AgentProcess agent;
  for (const char* args : {"ping", "info", "--json ps", "call get_agent_info"}) {
    std::string command =
        std::string(KVM_CTL_BINARY) + " --socket " + agent.socket_path() + " " + args;
    RunResult r =
        RunProgram({"/bin/sh", "-c", command + " > /dev/full"}, "", std::chrono::seconds(20));
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find("cannot write the output"), std::string::npos) << args << ": " << r.err;
  }
}

TEST(Ctl, SocketFromEnvironment) {
  AgentProcess agent;
  ::setenv("KVMMANAGER_SOCKET", agent.socket_path().c_str(), 1);
  RunResult ping = Ctl({"ping"});
  ::unsetenv("KVMMANAGER_SOCKET");
  EXPECT_EQ(ping.exit_code, 0) << ping.err;
}

TEST(Ctl, AgentErrorIsPrintedWithCodeKindAndDataAndExitsOne) {
  AgentProcess agent;
  RunResult r = Ctl({"--socket", agent.socket_path(), "call", "no_such_method"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("-32601"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("method_not_found"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\"method\":\"no_such_method\""), std::string::npos) << r.err;
  RunResult p = Ctl({"--socket", agent.socket_path(), "call", "ping", R"({"bogus":1})"});
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.err.find("-32602"), std::string::npos) << p.err;
}

// A request line the agent cannot read (here: longer than max_message_size_kb) is answered
// with an error whose id is null; ctl takes it as the answer to its one request in flight,
// at once, instead of waiting for its timeout and saying nothing useful.
TEST(Ctl, RequestTheAgentCannotReadGetsItsErrorNotATimeout) {
  AgentProcess agent;
  std::string data(70000, 'A');
  auto start = std::chrono::steady_clock::now();
  RunResult r = Ctl({"--socket", agent.socket_path(), "--timeout", "10", "call", "file_write",
                     R"({"path":"/tmp/x","data":")" + data + "\"}"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("too_large"), std::string::npos) << r.err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // The connection is still good for the next call.
  EXPECT_EQ(Ctl({"--socket", agent.socket_path(), "ping"}).exit_code, 0);
}

// JSON cannot carry bytes that are not UTF-8: such an argument is refused before anything is
// sent (exit 2), for plain calls and for transfers alike.
TEST(Ctl, ArgumentThatIsNotUtf8IsRefusedBeforeSending) {
  AgentProcess agent;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"stat", ":/tmp/\xff\xfe"},
        std::vector<std::string>{"cat", ":/tmp/\xff"},
        std::vector<std::string>{"cp", ":/tmp/a\xc3", "/dev/null"}}) {
    std::vector<std::string> argv{"--socket", agent.socket_path(), "--timeout", "10"};
    argv.insert(argv.end(), args.begin(), args.end());
    RunResult r = Ctl(argv);
    EXPECT_EQ(r.exit_code, 2) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("not valid UTF-8"), std::string::npos) << args[0] << ": " << r.err;
  }
}

TEST(Ctl, BadUsageExitsTwo) {
  EXPECT_EQ(Ctl({}).exit_code, 2);
  EXPECT_EQ(Ctl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Ctl({"--socket", "/x", "call"}).exit_code, 2);
  RunResult bad_json = Ctl({"--socket", "/x", "call", "ping", "{not json"});
  EXPECT_EQ(bad_json.exit_code, 2);
  EXPECT_NE(bad_json.err.find("params must be a JSON object"), std::string::npos);
  EXPECT_EQ(Ctl({"--socket", "/x", "call", "ping", "[1]"}).exit_code, 2);
  EXPECT_EQ(Ctl({"--socket", "/x", "call", "ping", ""}).exit_code, 2);  // given: an object
  // As deep as the agent takes (64 levels for the whole request) goes out; deeper is said so.
  auto nested = [](int levels) {
    std::string text;
    for (int i = 0; i < levels - 1; ++i) text += "{\"a\":";
    text += "{}";
    for (int i = 0; i < levels - 1; ++i) text += "}";
    return text;
  };
  EXPECT_EQ(Ctl({"--socket", "/nonexistent.sock", "call", "ping", nested(63)}).exit_code, 3);
  RunResult deep = Ctl({"--socket", "/x", "call", "ping", nested(64)});
  EXPECT_EQ(deep.exit_code, 2);
  EXPECT_NE(deep.err.find("params nest deeper than 63 levels"), std::string::npos) << deep.err;
}

// Mistakes on ctl's own command line are usage errors (2), whatever part of it they are in.
TEST(Ctl, LocalMistakesAreUsageErrorsThatNameThem) {
  ::unsetenv("KVMMANAGER_SOCKET");
  RunResult none = Ctl({"ping"});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("--socket"), std::string::npos) << none.err;
  RunResult too_long = Ctl({"--socket", "/tmp/" + std::string(120, 'x'), "ping"});
  EXPECT_EQ(too_long.exit_code, 2);
  EXPECT_NE(too_long.err.find("socket path too long"), std::string::npos) << too_long.err;
  RunResult unknown = Ctl({"--socket", "/x", "frobnicate"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("unknown command \"frobnicate\""), std::string::npos) << unknown.err;
  RunResult timeout = Ctl({"--timeout", "abc", "ping"});
  EXPECT_EQ(timeout.exit_code, 2);
  EXPECT_NE(timeout.err.find("must be a number of seconds, got abc"), std::string::npos)
      << timeout.err;
  RunResult command_timeout =
      Ctl({"--socket", "/x", "exec", "--command-timeout", "0", "--", "true"});
  EXPECT_EQ(command_timeout.exit_code, 2);
  EXPECT_NE(command_timeout.err.find("1 to 604800"), std::string::npos) << command_timeout.err;
}

TEST(Ctl, NoAgentExitsThreeWithReason) {
  TempDir dir;
  RunResult r = Ctl({"--socket", dir / "absent.sock", "ping"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("cannot connect"), std::string::npos) << r.err;
}

TEST(Ctl, PathThatIsNotASocketIsSaidSo) {
  TempDir dir;
  WriteFile(dir / "file", "");
  for (const std::string& path : {dir / "file", dir.path()}) {
    RunResult r = Ctl({"--socket", path, "ping"});
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_NE(r.err.find(path + ": not a socket"), std::string::npos) << r.err;
  }
}

// One connection of a fake agent on a unix socket, served by `serve` on a thread of its own.
class OneConnectionServer {
 public:
  explicit OneConnectionServer(std::function<void(int fd)> serve) {
    path_ = dir_ / "fake.sock";
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(listen_fd_, 1);
    thread_ = std::thread([this, serve] {
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      serve(fd);
      ::close(fd);
    });
  }
  ~OneConnectionServer() {
    thread_.join();
    ::close(listen_fd_);
  }
  const std::string& path() const { return path_; }

 private:
  TempDir dir_;
  std::string path_;
  int listen_fd_;
  std::thread thread_;
};

// Reads one request line, lets `behaviour` answer it (or not), then holds the line open 1.5 s.
class FakeServer : public OneConnectionServer {
 public:
  explicit FakeServer(std::function<void(int fd, const std::string& request)> behaviour)
      : OneConnectionServer([behaviour](int fd) {
          std::string got;
          char c;
          // Skip the client's leading resync newline, then read the request line.
          while (::read(fd, &c, 1) == 1) {
            if (c == '\n') {
              if (got.empty()) continue;
              break;
            }
            got += c;
          }
          behaviour(fd, got);
          std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        }) {}
};

void Send(int fd, const std::string& text) {
  [[maybe_unused]] ssize_t n = ::write(fd, text.data(), text.size());
}

TEST(Ctl, SkipsStaleLinesAndMatchesItsOwnId) {
  FakeServer server([](int fd, const std::string& request) {
    auto id = json::serialize(json::parse(request).at("id"));
    Send(fd, "garbage from a previous client\n");
    Send(fd, R"({"jsonrpc":"2.0","result":{"pong":false},"id":12345})"
             "\n");
    Send(fd, R"({"jsonrpc":"2.0","result":{"pong":true,"timestamp":1},"id":)" + id + "}\n");
  });
  RunResult r = Ctl({"--socket", server.path(), "--json", "call", "ping"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ParseJson(r.out).at("pong"), true);
}

TEST(Ctl, TimeoutExitsThree) {
  FakeServer server([](int, const std::string&) {});
  auto start = std::chrono::steady_clock::now();
  RunResult r = Ctl({"--socket", server.path(), "--timeout", "0.5", "ping"});
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("timed out"), std::string::npos) << r.err;
  EXPECT_LT(took, std::chrono::seconds(10));
}

// A peer that is no agent at all: the timeout shows what it sent instead of a reply.
TEST(Ctl, TimeoutShowsTheLinesThatWereNotTheReply) {
  FakeServer server([](int fd, const std::string&) { Send(fd, "220 hello, I am no agent\n"); });
  RunResult r = Ctl({"--socket", server.path(), "--timeout", "0.5", "ping"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("timed out"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("220 hello, I am no agent"), std::string::npos) << r.err;
}

// An agent that goes away (a graceful stop closes idle connections) is said so, not as
// "send: Broken pipe".
TEST(Ctl, AgentThatClosesTheConnectionIsSaidSo) {
  for (int i = 0; i < 5; ++i) {  // the close races ctl's send: both orders must read well
    OneConnectionServer server([](int fd) { ::shutdown(fd, SHUT_RDWR); });
    RunResult r = Ctl({"--socket", server.path(), "--timeout", "5", "ping"});
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_NE(r.err.find("the agent closed the connection"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("Broken pipe"), std::string::npos) << r.err;
  }
}

// A peer that sends one endless line: ctl stops at its cap with "malformed reply" (exit 3)
// instead of growing until the host runs out of memory.
TEST(Ctl, EndlessReplyLineIsMalformedNotAMemoryExhaustion) {
  FakeServer server([](int fd, const std::string&) {
    Send(fd, R"({"jsonrpc":"2.0","id":1,"result":")");
    std::string chunk(1 << 20, 'A');
    for (size_t sent = 0; sent <= AgentClient::kMaxReplyLine + (4u << 20); sent += chunk.size()) {
      if (::write(fd, chunk.data(), chunk.size()) <= 0) break;  // ctl gave up and closed
    }
  });
  RunResult r = Ctl({"--socket", server.path(), "--timeout", "60", "ping"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("malformed reply: a line of over 128 MiB"), std::string::npos) << r.err;
}

// The error's kind and data are the guest's text too: no control character reaches the
// terminal raw (ESC, BEL, the 8-bit CSI).
TEST(Ctl, AgentErrorKindAndDataAreShownWithoutControlCharacters) {
  FakeServer server([](int fd, const std::string& request) {
    auto id = json::serialize(json::parse(request).at("id"));
    Send(fd, "{\"jsonrpc\":\"2.0\",\"id\":" + id +
                 ",\"error\":{\"code\":-32001,\"message\":\"No\\u001b[31m\","
                 "\"data\":{\"kind\":\"not_found\\u001b[31m\\u0007\",\"x\":\"\\u009b1m\"}}}\n");
  });
  RunResult r = Ctl({"--socket", server.path(), "--timeout", "5", "ping"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\x07'), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("\xc2\x9b"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not_found?[31m?"), std::string::npos) << r.err;
}

// A peer that answers with something else and hangs up: ctl says what it got.
TEST(Ctl, ClosedConnectionShowsTheLinesThatWereNotTheReply) {
  OneConnectionServer server([](int fd) {
    char buf[4096];
    [[maybe_unused]] ssize_t n = ::read(fd, buf, sizeof buf);
    Send(fd, "HTTP/1.1 400 Bad Request\n");
  });
  RunResult r = Ctl({"--socket", server.path(), "--timeout", "5", "ping"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("closed the connection"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("HTTP/1.1 400 Bad Request"), std::string::npos) << r.err;
}

// A fake agent that answers its one request with `result` (a JSON text) under the right id.
class FixedResultServer : public FakeServer {
 public:
  explicit FixedResultServer(const std::string& result)
      : FakeServer([result](int fd, const std::string& request) {
          auto id = json::serialize(json::parse(request).at("id"));
          Send(fd, R"({"jsonrpc":"2.0","result":)" + result + R"(,"id":)" + id + "}\n");
        }) {}
};

// A reply of the wrong shape is a malformed reply (exit 3, said so), never a crash or a
// success printed from nothing.
TEST(Ctl, ResultOfTheWrongShapeIsAMalformedReply) {
  struct Case {
    std::vector<std::string> args;
    std::string result;
  };
  std::vector<Case> cases{
      {{"net"}, "null"},
      {{"net"}, R"({"interfaces":5})"},
      {{"net"}, R"({"interfaces":[{"name":"eth0","addresses":"x"}]})"},
      {{"net"}, R"({"interfaces":[],"dns":{"nameservers":1}})"},
      {{"df"}, "null"},
      {{"df"}, R"({"filesystems":{}})"},
      {{"df"}, R"({"filesystems":[{"available":true,"used_bytes":"1","available_bytes":2}]})"},
      {{"df"}, R"({"filesystems":[{"disks":7}]})"},
      {{"ping"}, "null"},
      {{"ping"}, R"({"pong":false})"},
      {{"--json", "ping"}, "[]"},
      {{"info"}, "null"},
      {{"--json", "info"}, "3"},
  };
  for (const Case& c : cases) {
    FixedResultServer server(c.result);
    std::vector<std::string> args{"--socket", server.path(), "--timeout", "5"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    RunResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 3) << c.args.back() << " " << c.result << ": " << r.out << r.err;
    EXPECT_NE(r.err.find("malformed reply"), std::string::npos) << c.result << ": " << r.err;
  }
}

// --timeout bounds the whole call: lines that are not the reply do not restart the clock.
TEST(Ctl, TimeoutHoldsWhileOtherLinesKeepArriving) {
  FakeServer server([](int fd, const std::string&) {
    for (int i = 0; i < 10; ++i) {
      Send(fd, R"({"jsonrpc":"2.0","result":{},"id":12345})"
               "\n");
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  });
  auto start = std::chrono::steady_clock::now();
  RunResult r = Ctl({"--socket", server.path(), "--timeout", "2", "ping"});
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("timed out after 2000 ms"), std::string::npos) << r.err;
  EXPECT_LT(took, std::chrono::milliseconds(3500));
}

// JSON has no text for a number out of double range: such params are refused before sending.
TEST(Ctl, ParamsWithANumberOutOfRangeAreRefusedLocally) {
  for (const char* params : {R"({"timeout_ms":1e999})", R"({"a":[1,{"b":-1e400}]})"}) {
    RunResult r = Ctl({"--socket", "/nonexistent.sock", "call", "get_disk_usage", params});
    EXPECT_EQ(r.exit_code, 2) << params << ": " << r.err;
    EXPECT_NE(r.err.find("too large for JSON"), std::string::npos) << r.err;
  }
}

TEST(Ctl, TimeoutThatIsNotAFiniteNumberIsAUsageError) {
  for (const char* value : {"nan", "NaN", "-nan", "inf", "1e999"}) {
    RunResult r = Ctl({"--socket", "/nonexistent.sock", "--timeout", value, "ping"});
    EXPECT_EQ(r.exit_code, 2) << value << ": " << r.err;
    EXPECT_NE(r.err.find("--timeout"), std::string::npos) << value << ": " << r.err;
  }
}

// Reads one line (without its newline) from `fd`, skipping empty ones; empty at EOF.
std::string ReadRequestLine(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1) {
    if (c != '\n') {
      line += c;
    } else if (!line.empty()) {
      break;
    }
  }
  return line;
}

// ctl exec against an agent that accepts exec_start and never answers: Ctrl-C (or SIGTERM)
// ends ctl at once with 128+N, as for cat, instead of after --timeout with exit 3.
TEST(CtlExec, InterruptStopsAWaitForAnAgentThatDoesNotAnswer) {
  for (int signo : {SIGINT, SIGTERM}) {
    FakeServer server([](int, const std::string&) {});
    BackgroundProcess ctl(
        {KVM_CTL_BINARY, "--socket", server.path(), "--timeout", "30", "exec", "--", "true"});
    ASSERT_GT(ctl.pid(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // exec_start is sent
    auto start = std::chrono::steady_clock::now();
    ::kill(ctl.pid(), signo);
    EXPECT_EQ(ctl.Wait(std::chrono::seconds(10)), 128 + signo);
    // At most the ~1 s it gives a late exec_start answer, not the 30 s of --timeout.
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(2500));
  }
}

// The exec_start answer comes just after Ctrl-C: the command it started is stopped
// (exec_kill of its handle) before ctl exits 130, not left running in the guest.
TEST(CtlExec, CommandStartedJustAfterAnInterruptIsKilled) {
  std::atomic<bool> interrupted{false};
  std::string second_method, second_params;
  {  // the server thread has finished once the block ends
    OneConnectionServer server([&](int fd) {
      json::object start = json::parse(ReadRequestLine(fd)).as_object();
      while (!interrupted) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      Send(fd, R"({"jsonrpc":"2.0","result":{"handle":77,"pid":4242},"id":)" +
                   json::serialize(start.at("id")) + "}\n");
      std::string next = ReadRequestLine(fd);
      if (next.empty()) return;
      json::object request = json::parse(next).as_object();
      second_method = request.at("method").as_string();
      second_params = json::serialize(request.at("params"));
      Send(fd,
           R"({"jsonrpc":"2.0","result":{"handle":77,"signal":15,"signal_name":"SIGTERM"},"id":)" +
               json::serialize(request.at("id")) + "}\n");
    });
    BackgroundProcess ctl(
        {KVM_CTL_BINARY, "--socket", server.path(), "--timeout", "30", "exec", "--", "sleep", "9"});
    ASSERT_GT(ctl.pid(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(ctl.pid(), SIGINT);
    interrupted = true;
    EXPECT_EQ(ctl.Wait(std::chrono::seconds(10)), 128 + SIGINT);
  }
  EXPECT_EQ(second_method, "exec_kill");
  EXPECT_NE(second_params.find("\"handle\":77"), std::string::npos) << second_params;
}

// A fake agent that answers every request line of one connection with `answer(method,
// params)`: the result object's JSON text.
class ScriptedServer : public OneConnectionServer {
 public:
  using Answer = std::function<std::string(const std::string& method, const json::object& params)>;
  explicit ScriptedServer(Answer answer)
      : OneConnectionServer([answer](int fd) {
          std::string line;
          char c;
          while (::read(fd, &c, 1) == 1) {
            if (c != '\n') {
              line += c;
              continue;
            }
            if (line.empty()) continue;
            json::object request = json::parse(line).as_object();
            line.clear();
            const json::value* params = request.if_contains("params");
            std::string reply =
                R"({"jsonrpc":"2.0","result":)" +
                answer(std::string(request.at("method").as_string()),
                       params && params->is_object() ? params->as_object() : json::object{}) +
                R"(,"id":)" + json::serialize(request.at("id")) + "}\n";
            [[maybe_unused]] ssize_t n = ::write(fd, reply.data(), reply.size());
          }
        }) {}
};

// cp -r from a guest whose agent lies: entry names that would leave the destination ("..",
// "../x", "/abs", "a/b", a NUL) are refused, and a directory listed inside itself forever stops
// at a depth limit. The host gets nothing outside the destination, and ctl exits 1.
TEST(Ctl, RecursiveDownloadRefusesEscapingNamesFromACompromisedGuest) {
  ScriptedServer server([](const std::string& method, const json::object& params) {
    if (method == "file_stat") return std::string(R"({"type":"directory"})");
    if (method != "file_list") return std::string("{}");
    std::string path(params.at("path").as_string());
    if (path == "/src") {
      return std::string(
          R"({"entries":[{"name":"..","type":"directory"},{"name":"../escape","type":"file"},)"
          R"({"name":"/abs","type":"file"},{"name":"a/b","type":"file"},)"
          R"({"name":"nul\u0000x","type":"file"},{"name":"","type":"file"},)"
          R"({"name":"loop","type":"directory"}],"next_offset":null,"truncated":false})");
    }
    // Every directory below holds one more "loop".
    return std::string(
        R"({"entries":[{"name":"loop","type":"directory"}],"next_offset":null,"truncated":false})");
  });
  TempDir dir;
  std::string dest = dir / "dest";
  RunResult r = Ctl({"--socket", server.path(), "cp", "-r", "-q", ":/src", dest});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  for (const char* name : {"\"..\"", "\"../escape\"", "\"/abs\"", "\"a/b\"", "\"\""}) {
    EXPECT_NE(r.err.find(std::string("refusing the entry name ") + name), std::string::npos)
        << name << " in: " << r.err;
  }
  EXPECT_NE(r.err.find("directories deep"), std::string::npos) << r.err;
  // Only the destination was created next to it: nothing escaped.
  std::vector<std::string> beside;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    beside.push_back(e.path().filename());
  }
  EXPECT_EQ(beside, std::vector<std::string>{"dest"});
  EXPECT_FALSE(std::filesystem::exists("/abs"));
}

}  // namespace
}  // namespace kvm::test
