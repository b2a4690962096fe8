#include "ctl/agent_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ctl/interrupt.h"
#include "ctl/terminal_text.h"
#include "protocol/jsonrpc.h"
#include "protocol/utf8.h"

namespace kvm {
namespace json = boost::json;

AgentClient::AgentClient(const std::string& socket_path, std::chrono::milliseconds timeout)
    : timeout_(timeout),
      next_id_(static_cast<uint64_t>(::getpid()) * 1000000 +
               static_cast<uint64_t>(Clock::now().time_since_epoch().count() % 1000000)) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof addr.sun_path) {
    throw UsageError("socket path too long (at most " + std::to_string(sizeof addr.sun_path - 1) +
                     " bytes): " + socket_path);
  }
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw ClientError(std::string("socket: ") + std::strerror(errno));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    // connect() says "Connection refused" for a regular file or a directory too.
    struct stat st;
    if (err == ECONNREFUSED && ::stat(socket_path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
      throw ClientError("cannot connect to " + socket_path + ": not a socket");
    }
    throw ClientError("cannot connect to " + socket_path + ": " + std::strerror(err));
  }
}

AgentClient::~AgentClient() {
  if (fd_ >= 0) ::close(fd_);
}

void AgentClient::SendLine(std::string_view line) {
  // The line and its newline go out as two pieces of one sendmsg: no copy of a 64 KiB chunk.
  static const char kNewline = '\n';
  iovec parts[2] = {{const_cast<char*>(line.data()), line.size()},
                    {const_cast<char*>(&kNewline), 1}};
  size_t total = line.size() + 1, sent = 0;
  while (sent < total) {
    iovec rest[2];
    int count = 0;
    size_t skip = sent;
    for (const iovec& part : parts) {
      if (skip >= part.iov_len) {
        skip -= part.iov_len;
        continue;
      }
      rest[count++] = {static_cast<char*>(part.iov_base) + skip, part.iov_len - skip};
      skip = 0;
    }
    msghdr msg{};
    msg.msg_iov = rest;
    msg.msg_iovlen = static_cast<size_t>(count);
    ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        // A line is sent whole or not at all: a fragment would spoil the next line (the
        // upload's abort) for the agent.
        if (stop_on_interrupt_ && sent == 0) ThrowIfInterrupted();
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) {
        // What a user sees when the agent stops (or the VM's channel goes) between two calls.
        throw ClientError("the agent closed the connection (stopping, or the channel went away)");
      }
      throw ClientError(std::string("send: ") + std::strerror(errno));
    }
    sent += static_cast<size_t>(n);
  }
}

std::string AgentClient::ReadLine() { return std::string(ReadLineView()); }

std::string_view AgentClient::ReadLineView() {
  first_skipped_.clear();  // what an earlier Call skipped is no part of a raw read's timeout
  return ReadLineBefore(Clock::now() + timeout_);
}

std::string AgentClient::SkippedLines() const {
  if (first_skipped_.empty()) return {};
  return "; lines that were not its reply were skipped, the first: " + ToValidUtf8(first_skipped_);
}

std::string_view AgentClient::ReadLineBefore(Clock::time_point deadline) {
  for (;;) {
    // Only bytes not yet scanned are searched: a 64 KiB line arrives in several reads.
    size_t from = std::max(start_, scanned_);
    if (const void* nl = std::memchr(buffer_.data() + from, '\n', filled_ - from)) {
      size_t end = static_cast<size_t>(static_cast<const char*>(nl) - buffer_.data());
      std::string_view line(buffer_.data() + start_, end - start_);
      start_ = end + 1;
      scanned_ = start_;
      // All consumed: the next read starts at the front. The bytes stay where they are until
      // that read, so the view remains valid until then.
      if (start_ == filled_) start_ = scanned_ = filled_ = 0;
      return line;
    }
    scanned_ = filled_;
    if (start_ > 0 && start_ >= filled_ / 2) {  // compact now and then, not per line
      std::memmove(buffer_.data(), buffer_.data() + start_, filled_ - start_);
      filled_ -= start_;
      scanned_ -= start_;
      start_ = 0;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      throw ClientError("timed out after " + std::to_string(timeout_.count()) +
                        " ms waiting for the agent's reply" + SkippedLines());
    }
    pollfd pfd{fd_, POLLIN, 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (rc < 0 && errno != EINTR) throw ClientError(std::string("poll: ") + std::strerror(errno));
    if (rc < 0 && stop_on_interrupt_) ThrowIfInterrupted();
    if (rc <= 0) continue;
    // A peer that never ends its line must not take the host's memory with it.
    if (filled_ - start_ > kMaxReplyLine) {
      throw ClientError("malformed reply: a line of over " + std::to_string(kMaxReplyLine >> 20) +
                        " MiB without its end");
    }
    // Straight into the buffer, 64 KiB of room at least: one copy out of the socket, no more.
    constexpr size_t kReadSize = 65536;
    if (buffer_.size() - filled_ < kReadSize) buffer_.resize(filled_ + kReadSize);
    ssize_t n = ::read(fd_, buffer_.data() + filled_, buffer_.size() - filled_);
    if (n < 0) {
      if (errno == EINTR && stop_on_interrupt_) ThrowIfInterrupted();
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) {  // closed with our request unread: the agent went away
        throw ClientError("the agent closed the connection (stopping, or the channel went away)" +
                          SkippedLines());
      }
      throw ClientError(std::string("read: ") + std::strerror(errno));
    }
    if (n == 0) throw ClientError("the agent closed the connection" + SkippedLines());
    filled_ += static_cast<size_t>(n);
  }
}

CallResult DecodeReply(json::object& reply, std::string_view raw) {
  CallResult out;
  if (auto r = reply.find("result"); r != reply.end()) {
    out.ok = true;
    out.result = std::move(r->value());  // a file_read result holds up to 64 KiB of data
    return out;
  }
  auto e = reply.find("error");
  if (e == reply.end() || !e->value().is_object()) {
    throw ClientError("malformed reply (no result, no error): " + std::string(raw));
  }
  const json::object& err = e->value().get_object();
  if (auto c = err.find("code"); c != err.end() && c->value().is_int64()) {
    out.error_code = c->value().get_int64();
  }
  if (auto m = err.find("message"); m != err.end() && m->value().is_string()) {
    out.error_message = std::string(m->value().get_string());
  }
  if (auto d = err.find("data"); d != err.end()) out.error_data = d->value();
  return out;
}

void RequireUtf8(std::string_view text, std::string_view what) {
  if (!IsValidUtf8(text)) {
    throw NotUtf8Error(std::string(what) + " is not valid UTF-8, which JSON cannot carry: " +
                       ToValidUtf8(text.substr(0, 200)));
  }
}

CallResult AgentClient::Call(std::string_view method, const json::object& params) {
  uint64_t id = next_id_++;
  json::object request{{"jsonrpc", "2.0"}, {"method", method}, {"id", id}};
  if (!params.empty()) request["params"] = params;
  std::string text = json::serialize(request);
  // Boost writes a string's bytes as they are: a path given in another encoding would make a
  // line the agent rejects as unreadable, and it could not say which request that was.
  RequireUtf8(text, "the request (a path or argument)");
  // A leading newline ends any partial line a previous host client left in a serial channel.
  std::string line = resynced_ ? std::string() : std::string("\n");
  resynced_ = true;
  line += text;
  pending_id_ = 0;  // a reply never read is skipped like any other id
  SendLine(line);
  pending_id_ = id;
  return AwaitReply();
}

CallResult AgentClient::AwaitReply() {
  if (pending_id_ == 0) throw ClientError("no request awaits a reply");
  uint64_t id = pending_id_;
  // One deadline for the whole wait: lines that are not the answer must not extend it.
  auto deadline = Clock::now() + timeout_;
  first_skipped_.clear();
  // Shown if no reply comes: a peer that is no agent at all then says so.
  auto skip = [this](std::string_view line) {
    if (first_skipped_.empty()) first_skipped_ = ForTerminal(line.substr(0, 100));
  };
  for (;;) {
    std::string reply(ReadLineBefore(deadline));
    json::error_code ec;
    json::value value = json::parse(reply, ec);
    if (ec || !value.is_object()) {  // not ours (e.g. a stale fragment)
      skip(reply);
      continue;
    }
    json::object& obj = value.get_object();
    auto rid = obj.find("id");
    // An error with a null id is the agent's answer to a line it could not read as a request
    // (too long, not JSON): with one request in flight, that is this one. Otherwise the call
    // would wait for its timeout and then say nothing useful.
    if (rid != obj.end() && rid->value().is_null() && obj.contains("error")) {
      pending_id_ = 0;
      return DecodeReply(obj, reply);
    }
    json::error_code nec;
    if (rid == obj.end() || !rid->value().is_number() ||
        rid->value().to_number<uint64_t>(nec) != id || nec) {
      skip(reply);
      continue;
    }
    pending_id_ = 0;
    return DecodeReply(obj, reply);
  }
}

}  // namespace kvm
