#include "ctl/file_transfer.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <climits>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "agent/handlers/files/sha256.h"
#include "ctl/interrupt.h"
#include "ctl/read_reply.h"
#include "protocol/base64.h"

namespace kvm::transfer {
namespace json = boost::json;
namespace {

constexpr int64_t kBusy = -32004;

std::string JsonString(std::string_view s) { return json::serialize(json::value(s)); }

// Several requests in flight on one connection, matched to replies by id.
class Pipeline {
 public:
  explicit Pipeline(AgentClient& client) : client_(client) {}

  uint64_t Send(std::string_view method, std::string_view params_json) {
    uint64_t id = next_id_++;
    std::string line;
    line.reserve(params_json.size() + 96);
    line += R"({"jsonrpc":"2.0","method":")";
    line += method;
    line += R"(","params":)";
    line += params_json;
    line += R"(,"id":)";
    line += std::to_string(id);
    line += '}';
    client_.SendLine(line);
    lines_[id] = std::move(line);
    return id;
  }
  size_t in_flight() const { return lines_.size(); }

  // A file_read result decoded on the way in (see ParseReadReply).
  struct FastRead {
    std::string* bytes = nullptr;  // receives the decoded data
    ReadReply reply;
    bool decoded = false;  // false: the reply came the general way (errors, other methods)
  };

  // Next reply to one of our requests; a "busy" answer is retried transparently. With `fast`,
  // a file_read result is decoded straight into fast->bytes and only `ok` is set in the
  // CallResult (size and eof are in fast->reply).
  std::pair<uint64_t, CallResult> Receive(FastRead* fast = nullptr) {
    for (;;) {
      std::string_view text = client_.ReadLineView();
      if (fast != nullptr) {
        fast->decoded = false;
        if (ParseReadReply(text, fast->reply, *fast->bytes)) {
          auto it = lines_.find(fast->reply.id);
          if (it == lines_.end()) continue;  // not one of ours
          lines_.erase(it);
          fast->decoded = true;
          CallResult ok;
          ok.ok = true;
          return {fast->reply.id, std::move(ok)};
        }
      }
      json::error_code ec;
      json::value value = json::parse(text, ec);
      if (ec || !value.is_object()) continue;
      json::object& obj = value.get_object();
      auto rid = obj.find("id");
      if (rid == obj.end() || !rid->value().is_number()) continue;
      json::error_code nec;
      uint64_t id = rid->value().to_number<uint64_t>(nec);
      auto it = lines_.find(id);
      if (nec || it == lines_.end()) continue;
      CallResult result = DecodeReply(obj);
      if (!result.ok && result.error_code == kBusy) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        client_.SendLine(it->second);
        continue;
      }
      lines_.erase(it);
      return {id, std::move(result)};
    }
  }

  // Waits for every outstanding reply (after a failure), ignoring them.
  void Drain() {
    while (!lines_.empty()) Receive();
  }

 private:
  AgentClient& client_;
  // Far from AgentClient's own ids (pid * 1e6 + ...), so stale replies never match.
  uint64_t next_id_ = 9000000000000000000ull + static_cast<uint64_t>(::getpid()) * 1000000ull;
  std::map<uint64_t, std::string> lines_;
};

std::string GetString(const json::value& v, std::string_view key) {
  if (const json::value* f = v.is_object() ? v.get_object().if_contains(key) : nullptr;
      f && f->is_string()) {
    return std::string(f->get_string());
  }
  throw ClientError("reply lacks \"" + std::string(key) + "\"");
}

std::string_view GetView(const json::value& v, std::string_view key) {
  if (const json::value* f = v.is_object() ? v.get_object().if_contains(key) : nullptr;
      f && f->is_string()) {
    return f->get_string();
  }
  throw ClientError("reply lacks \"" + std::string(key) + "\"");
}

bool GetBool(const json::value& v, std::string_view key) {
  if (const json::value* f = v.is_object() ? v.get_object().if_contains(key) : nullptr;
      f && f->is_bool()) {
    return f->get_bool();
  }
  throw ClientError("reply lacks \"" + std::string(key) + "\"");
}

uint64_t GetUint(const json::value& v, std::string_view key) {
  if (const json::value* f = v.is_object() ? v.get_object().if_contains(key) : nullptr;
      f && f->is_number()) {
    json::error_code ec;
    uint64_t n = f->to_number<uint64_t>(ec);
    if (!ec) return n;
  }
  throw ClientError("reply lacks \"" + std::string(key) + "\"");
}

void WriteFully(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw LocalError(std::string("local write: ") + std::strerror(errno));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

// Writes all of `pieces` with writev, resuming after short writes.
void WritevFully(int fd, const std::vector<std::string>& pieces) {
  std::vector<iovec> iov;
  for (const std::string& piece : pieces) {
    if (!piece.empty()) iov.push_back({const_cast<char*>(piece.data()), piece.size()});
  }
  size_t first = 0;
  while (first < iov.size()) {
    int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t n = ::writev(fd, &iov[first], count);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw LocalError(std::string("local write: ") + std::strerror(errno));
    }
    for (auto left = static_cast<size_t>(n); left > 0;) {
      size_t step = std::min(left, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + step;
      iov[first].iov_len -= step;
      left -= step;
      if (iov[first].iov_len == 0) ++first;
    }
  }
}

// Reserves the blocks of a download of `size` bytes before any is written, without changing
// the file's size: ext4 writes a reserved 10 MB in ~40% less kernel time, and a full disk is
// reported before the transfer rather than at the end. Nothing to do where fallocate is not
// supported (pipes, some file systems).
void ReserveSpace(int fd, uint64_t size) {
  if (size == 0) return;
  if (::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(size)) == 0) return;
  if (errno == ENOSPC || errno == EDQUOT) {
    throw LocalError(std::string("local write: ") + std::strerror(errno) + " (" +
                     std::to_string(size) + " bytes needed)");
  }
}

// Hashes and writes downloaded pieces on a thread of its own, in the order pushed: SHA-256 is
// about a third of the client's CPU in a download, and on its own thread it runs alongside
// receiving and decoding the next replies (measured: 50 MB downloads went from ~430 to ~600
// MB/s on two cores when the client skipped it).
class HashingWriter {
 public:
  explicit HashingWriter(int fd) : fd_(fd), thread_([this] { Run(); }) {}
  ~HashingWriter() { Close(); }
  HashingWriter(const HashingWriter&) = delete;
  HashingWriter& operator=(const HashingWriter&) = delete;

  // Queues `piece`; waits while kMaxQueued pieces are pending. Throws the thread's write error.
  void Push(std::string piece) {
    std::unique_lock lock(mu_);
    space_.wait(lock, [&] { return queue_.size() < kMaxQueued || error_; });
    if (error_) std::rethrow_exception(error_);
    queue_.push_back(std::move(piece));
    work_.notify_one();
  }

  // A buffer of an earlier piece, already written (or an empty string): decoding into it
  // spares an allocation and the zero-fill of a new one.
  std::string Spare() {
    std::lock_guard lock(mu_);
    if (spare_.empty()) return std::string();
    std::string buffer = std::move(spare_.back());
    spare_.pop_back();
    return buffer;
  }

  // Waits until every piece is hashed and written; returns the hex digest.
  std::string Finish() {
    Close();
    if (error_) std::rethrow_exception(error_);
    return hash_.FinishHex();
  }

 private:
  static constexpr size_t kMaxQueued = 16;  // 16 x 48 KiB waiting at most
  // Pieces are written once this much has been hashed, in one writev: on ext4, 1 MiB writes
  // of a 10 MB file took half the kernel time of 48 KiB ones (fewer calls, larger folios).
  static constexpr size_t kWriteBytes = size_t{1} << 20;

  // Takes every piece waiting at once: one wake-up and one lock round per batch, not per piece.
  void Run() {
    BlockInterruptsInThisThread();  // a signal must wake the thread waiting on the agent
    std::deque<std::string> batch;
    std::vector<std::string> held;  // hashed, not yet written
    size_t held_bytes = 0;
    std::unique_lock lock(mu_);
    for (;;) {
      work_.wait(lock, [&] { return !queue_.empty() || closed_; });
      bool last = queue_.empty();  // closed, and nothing more will come
      batch.clear();
      batch.swap(queue_);
      space_.notify_one();
      if (error_) {  // after a failed write, only drain
        if (last) return;
        continue;
      }
      lock.unlock();
      std::exception_ptr failed;
      try {
        for (std::string& piece : batch) {
          hash_.Update(piece);
          held_bytes += piece.size();
          held.push_back(std::move(piece));
        }
        if (held_bytes >= kWriteBytes || (last && !held.empty())) {
          WritevFully(fd_, held);
          held_bytes = 0;
        }
      } catch (...) {
        failed = std::current_exception();
      }
      lock.lock();
      if (held_bytes == 0 || failed) {
        for (std::string& piece : held) {
          if (spare_.size() < kMaxSpare) spare_.push_back(std::move(piece));
        }
        held.clear();
        held_bytes = 0;
      }
      if (failed) {
        error_ = failed;
        space_.notify_all();
      }
      if (last) return;
    }
  }

  void Close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    work_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

  const int fd_;
  Sha256 hash_;  // used by the thread only, until Finish() has joined it
  std::mutex mu_;
  std::condition_variable work_, space_;
  std::deque<std::string> queue_;
  std::vector<std::string> spare_;  // written pieces' buffers, for Spare()
  // Room for the queue and for what is held until kWriteBytes (default chunks are 48 KiB).
  static constexpr size_t kMaxSpare = kMaxQueued + kWriteBytes / 32768;
  bool closed_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the members above exist
};

// Sends `size` bytes of `local_fd` as file_upload_chunk requests, `options.window` in flight,
// hashing them into `hash`. On a refused chunk or a local read error the session is aborted.
void UploadChunks(AgentClient& client, Pipeline& pipe, int local_fd, uint64_t size, size_t chunk,
                  const std::string& handle, const Options& options, Sha256& hash) {
  std::map<uint64_t, size_t> lengths;
  std::string buf(chunk, '\0');
  std::string params;
  std::string handle_json = JsonString(handle);
  uint64_t offset = 0, done = 0;
  auto fail = [&](const CallResult& r) {
    pipe.Drain();
    client.Call("file_upload_abort", {{"handle", handle}});
    throw TransferError("file_upload_chunk failed", r, "file_upload_chunk");
  };
  while (offset < size || pipe.in_flight() > 0) {
    ThrowIfInterrupted();
    while (offset < size && pipe.in_flight() < static_cast<size_t>(options.window)) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(chunk, size - offset));
      ssize_t n = ::pread(local_fd, buf.data(), want, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        pipe.Drain();
        client.Call("file_upload_abort", {{"handle", handle}});
        throw LocalError(n == 0 ? "local file shrank during the upload"
                                : std::string("local read: ") + std::strerror(errno));
      }
      std::string_view piece(buf.data(), static_cast<size_t>(n));
      hash.Update(piece);
      params.clear();
      params.reserve(Base64EncodedSize(piece.size()) + handle_json.size() + 64);
      params += R"({"handle":)";
      params += handle_json;
      params += R"(,"offset":)";
      params += std::to_string(offset);
      params += R"(,"data":")";
      Base64Append(params, piece);
      params += "\"}";
      lengths[pipe.Send("file_upload_chunk", params)] = piece.size();
      offset += piece.size();
    }
    auto [id, result] = pipe.Receive();
    if (!result.ok) fail(result);
    done += lengths[id];
    lengths.erase(id);
    if (options.progress) options.progress(done, size);
  }
}

}  // namespace

Outcome Upload(AgentClient& client, int local_fd, uint64_t size, const std::string& remote,
               const Options& options) {
  json::object begin_params{{"path", remote}, {"size", size}, {"mode", options.mode}};
  if (options.permissions) begin_params["permissions"] = *options.permissions;
  // Not stopped half-way by a signal: a session the agent opened after ctl stopped listening
  // would be left to expire. A signal is still noted, and aborts the session right after.
  CallResult begin;
  {
    StopOnInterruptScope no_stop(client, false);
    begin = client.Call("file_upload_begin", begin_params);
  }
  if (!begin.ok) throw TransferError("file_upload_begin failed", begin, "file_upload_begin");
  std::string handle = GetString(begin.result, "handle");
  size_t chunk = GetUint(begin.result, "chunk_size");
  if (chunk == 0) throw ClientError("agent announced chunk_size 0");

  Sha256 hash;
  Pipeline pipe(client);
  try {
    UploadChunks(client, pipe, local_fd, size, chunk, handle, options, hash);
  } catch (const Interrupted&) {
    // The agent would keep the session and its temp file (space reserved for the whole file)
    // until it expires: abort it now. Briefly: the user asked to stop, and a second signal
    // ends this wait too.
    client.set_timeout(std::chrono::seconds(2));
    try {
      client.Call("file_upload_abort", {{"handle", handle}});
    } catch (const std::exception&) {
    }
    throw;
  }
  // No chunk reported progress for an empty file; its bar (the summary on a terminal) is due.
  if (size == 0 && options.progress) options.progress(0, 0);
  Outcome out{size, hash.FinishHex()};
  CallResult commit = client.Call("file_upload_commit",
                                  {{"handle", handle}, {"sha256", out.sha256}, {"size", size}});
  if (!commit.ok) throw TransferError("file_upload_commit failed", commit, "file_upload_commit");
  return out;
}

namespace {

// Reads `remote` by chunks with up to `window` reads in flight; hands each piece, in file
// order, to `sink(std::string& bytes)`, which may take the bytes and leave another buffer in
// their place (it is reused for a later chunk). Returns the total size. `extra_method` goes out
// with the first read, its answer to `extra_result`; `reported_size` gets the file's size as
// the first read tells it (before the first piece reaches `sink`). With `live`, a file that
// changes meanwhile is not an error (cat of a log being written): its first `size` bytes as
// of the first read are read, fewer if it shrinks.
template <class Sink>
uint64_t ReadPipelined(const std::string& remote, const Options& options, Pipeline& pipe,
                       Sink&& sink, const std::string& extra_method,
                       const std::string& extra_params, CallResult* extra_result,
                       uint64_t* reported_size = nullptr, bool live = false) {
  RequireUtf8(remote, "the remote path");
  std::string path_json = JsonString(remote);
  // The first read learns the file's size and the agent's chunk size (it caps `length`); the
  // extra request (a download's sha256) goes out with it: a small file costs one round trip.
  uint64_t first_id =
      pipe.Send("file_read", R"({"path":)" + path_json + R"(,"offset":0,"length":1073741824})");
  uint64_t extra_id = 0;  // 0: none outstanding (Pipeline ids are never 0)
  if (!extra_method.empty()) extra_id = pipe.Send(extra_method, extra_params);
  CallResult first;
  for (;;) {
    auto [id, result] = pipe.Receive();
    if (id == first_id) {
      first = std::move(result);
      break;
    }
    if (extra_result != nullptr) *extra_result = std::move(result);
    extra_id = 0;
  }
  if (!first.ok) {
    pipe.Drain();
    throw TransferError("file_read failed", first, "file_read");
  }
  std::string decoded;
  if (!Base64Decode(GetView(first.result, "data"), decoded)) {
    pipe.Drain();
    throw ClientError("agent sent invalid base64");
  }
  uint64_t size = GetUint(first.result, "size");
  if (reported_size != nullptr) *reported_size = size;
  size_t chunk = decoded.size();
  uint64_t done = decoded.size();
  sink(decoded);
  if (options.progress) options.progress(done, size);
  if (chunk == 0 && size > 0) throw ClientError("agent returned an empty chunk");

  if (size == 0 && !GetBool(first.result, "eof")) {
    // A procfs/sysfs file: size 0 yet content, so one read at a time until the agent says eof.
    for (;;) {
      ThrowIfInterrupted();
      pipe.Send("file_read", R"({"path":)" + path_json + R"(,"offset":)" + std::to_string(done) +
                                 R"(,"length":)" + std::to_string(chunk) + "}");
      std::pair<uint64_t, CallResult> reply = pipe.Receive();
      if (extra_id != 0 && reply.first == extra_id && extra_result != nullptr) {
        *extra_result = std::move(reply.second);
        reply = pipe.Receive();
      }
      const CallResult& result = reply.second;
      if (!result.ok) {
        pipe.Drain();
        throw TransferError("file_read failed", result, "file_read");
      }
      if (!Base64Decode(GetView(result.result, "data"), decoded)) {
        throw ClientError("agent sent invalid base64");
      }
      done += decoded.size();
      bool last = GetBool(result.result, "eof") || decoded.empty();
      sink(decoded);
      if (options.progress) options.progress(done, done);
      if (last) break;
    }
  }
  std::map<uint64_t, uint64_t> offsets;    // id -> offset
  std::map<uint64_t, std::string> ready;   // offset -> bytes, waiting for their turn
  std::string spare = std::move(decoded);  // a buffer to decode the next chunk into
  uint64_t next_offset = done;
  std::string params;
  while (done < size || pipe.in_flight() > 0) {
    ThrowIfInterrupted();
    while (next_offset < size && pipe.in_flight() < static_cast<size_t>(options.window)) {
      params = R"({"path":)" + path_json + R"(,"offset":)" + std::to_string(next_offset) +
               R"(,"length":)" + std::to_string(chunk) + "}";
      offsets[pipe.Send("file_read", params)] = next_offset;
      next_offset += chunk;
    }
    std::string bytes = std::move(spare);
    Pipeline::FastRead fast;
    fast.bytes = &bytes;
    auto [id, result] = pipe.Receive(&fast);
    if (extra_id != 0 && id == extra_id && extra_result != nullptr) {
      *extra_result = std::move(result);
      spare = std::move(bytes);
      continue;
    }
    if (!result.ok) {
      pipe.Drain();
      throw TransferError("file_read failed", result, "file_read");
    }
    uint64_t off = offsets[id];
    offsets.erase(id);
    if (!fast.decoded && !Base64Decode(GetView(result.result, "data"), bytes)) {
      throw ClientError("agent sent invalid base64");
    }
    if (live && off >= size) {  // past an end the file shrank to: nothing to keep
      spare = std::move(bytes);
      continue;
    }
    uint64_t want = std::min<uint64_t>(chunk, size - off);
    uint64_t file_size = fast.decoded ? fast.reply.size : GetUint(result.result, "size");
    if (live && bytes.size() > want) bytes.resize(want);         // it grew: stop where it was
    if (live && bytes.size() < want) size = off + bytes.size();  // it shrank: its new end
    if (!live && (bytes.size() != want || file_size != size)) {
      pipe.Drain();
      throw TransferError("the file changed during the copy", CallResult{});
    }
    ready[off] = std::move(bytes);
    while (!ready.empty() && ready.begin()->first == done) {
      done += ready.begin()->second.size();
      sink(ready.begin()->second);
      spare = std::move(ready.begin()->second);
      ready.erase(ready.begin());
      if (options.progress) options.progress(done, size);
    }
  }
  return done;
}

}  // namespace

Outcome Download(AgentClient& client, const std::string& remote, int local_fd,
                 const Options& options) {
  Pipeline pipe(client);
  // The agent hashes the file on another worker while the reads go on; a path that is not a
  // regular file is refused by the first file_read.
  CallResult hash_result;
  HashingWriter writer(local_fd);
  uint64_t size = 0;  // as file_read reports it (0 for procfs/sysfs files)
  bool reserved = false;
  uint64_t received = ReadPipelined(
      remote, options, pipe,
      [&](std::string& bytes) {
        if (!reserved) {  // `size` is known from the first reply on
          ReserveSpace(local_fd, size);
          reserved = true;
        }
        writer.Push(std::exchange(bytes, writer.Spare()));
      },
      "file_stat", R"({"path":)" + JsonString(remote) + R"(,"sha256":true})", &hash_result, &size);
  Outcome out{received, writer.Finish()};
  if (!hash_result.ok) throw TransferError("file_stat (sha256) failed", hash_result, "file_stat");
  std::string remote_sha = GetString(hash_result.result, "sha256");
  if (remote_sha != out.sha256 || GetUint(hash_result.result, "size") != size) {
    throw TransferError("sha256 mismatch: agent " + remote_sha + ", received " + out.sha256 +
                            (size == 0 && received > 0
                                 ? " (a procfs/sysfs file can change from one read to the next; "
                                   "use cat for those)"
                                 : " (the file changed during the copy?)"),
                        CallResult{});
  }
  return out;
}

uint64_t Stream(AgentClient& client, const std::string& remote, int out_fd,
                const Options& options) {
  Pipeline pipe(client);
  return ReadPipelined(
      remote, options, pipe,
      [&](std::string& bytes) { WriteFully(out_fd, bytes.data(), bytes.size()); }, std::string(),
      std::string(), nullptr, nullptr, /*live=*/true);
}

}  // namespace kvm::transfer
