// cp, cat, ls, stat, rm, mkdir: files in the guest, within the agent's allowed paths.
// A remote path is written with a leading ':' (cp needs it to tell the direction).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <optional>
#include <random>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "ctl/ctl.h"
#include "ctl/file_transfer.h"
#include "ctl/interrupt.h"
#include "ctl/json_print.h"
#include "ctl/terminal_text.h"

namespace kvm::ctl {
namespace json = boost::json;
namespace fs = std::filesystem;
namespace {

bool IsRemote(const std::string& s) { return !s.empty() && s[0] == ':'; }
std::string StripColon(const std::string& s) { return IsRemote(s) ? s.substr(1) : s; }

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// `dir` + "/" + `name`, without doubling a trailing slash.
std::string JoinPath(const std::string& dir, const std::string& name) {
  return !dir.empty() && dir.back() == '/' ? dir + name : dir + "/" + name;
}

// True when the agent refused an upload's target because it is a directory (file_upload_begin
// checks the target before any data moves, so the upload can start again under another name).
bool RefusedAsDirectory(const transfer::TransferError& e) {
  if (e.result.ok || !e.result.error_data.is_object()) return false;
  const json::object& data = e.result.error_data.get_object();
  const json::value* policy = data.if_contains("policy");
  const json::value* type = data.if_contains("type");
  return e.method == "file_upload_begin" && policy && type && *policy == "regular_files_only" &&
         *type == "directory";
}

// True when the agent's write policy refused an upload's target (file_upload_begin): outside
// allowed_write_paths, or an allowed entry itself, which a file cannot replace.
bool RefusedByWritePolicy(const transfer::TransferError& e) {
  if (e.result.ok || e.method != "file_upload_begin" || !e.result.error_data.is_object()) {
    return false;
  }
  const json::value* policy = e.result.error_data.get_object().if_contains("policy");
  return policy && *policy == "allowed_write_paths";
}

// A progress line on stderr, only when it is a terminal.
transfer::ProgressFn MakeProgress(const Options& options, bool enabled) {
  if (!enabled || options.json || !::isatty(STDERR_FILENO)) return nullptr;
  auto start =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  auto last = std::make_shared<std::chrono::steady_clock::time_point>();
  return [start, last](uint64_t done, uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - *last < std::chrono::milliseconds(100)) return;
    *last = now;
    double secs = std::chrono::duration<double>(now - *start).count();
    double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
    int bar = static_cast<int>(pct / 5);
    std::fprintf(stderr, "\r[%.*s%*s] %5.1f%% %.1f/%.1f MB %.1f MB/s", bar, "####################",
                 20 - bar, "", pct, static_cast<double>(done) / 1e6,
                 static_cast<double>(total) / 1e6,
                 secs > 0 ? static_cast<double>(done) / 1e6 / secs : 0.0);
    if (done >= total) std::fprintf(stderr, "\n");
  };
}

bool IsLocalDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

constexpr const char* kNotUtf8 = "the path is not valid UTF-8, which JSON cannot carry";

// Runs a transfer step; maps failures to ctl exit codes. A path JSON cannot carry fails this
// copy only (exit 2), naming `subject`: it is found before anything is sent, so the other
// files of a cp go on.
template <class Fn>
void RunTransfer(Options& options, AgentClient& client, const std::string& subject, Fn&& fn) {
  client.set_stop_on_interrupt(true);  // the caller holds an InterruptScope
  try {
    fn();
  } catch (const Interrupted& e) {
    // After the progress bar's line, if there is one.
    std::fprintf(stderr, "%skvmmanager-ctl: %s\n", ::isatty(STDERR_FILENO) ? "\n" : "", e.what());
    options.exit_code = 128 + e.signal;
  } catch (const transfer::TransferError& e) {
    std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
    if (e.result.error_code != 0) PrintRpcError(e.result);
    options.exit_code = kExitRpcError;
  } catch (const transfer::LocalError& e) {
    std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
    options.exit_code = kExitUsage;
  } catch (const NotUtf8Error&) {
    std::fprintf(stderr, "kvmmanager-ctl: cannot copy %s: %s\n", ForTerminal(subject).c_str(),
                 kNotUtf8);
    options.exit_code = kExitUsage;
  } catch (const ClientError&) {
    throw;
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
    options.exit_code = kExitRpcError;
  }
}

// A local procfs/sysfs file reports size 0 yet has content: it is read to its end into memory
// (a memfd), at most one byte past the agent's max_file_size_mb so the agent refuses a larger
// one, and that copy is uploaded. Returns the memfd and sets `size`, or prints why and
// returns -1.
int SnapshotOfSizeZeroFile(AgentClient& client, const std::string& local, int fd, uint64_t& size) {
  uint64_t limit = uint64_t{10} << 20;  // the agent's default, if it does not tell
  CallResult info = client.Call("get_agent_info");
  json::error_code ec;
  if (info.ok && info.result.is_object()) {
    const json::value* mb = info.result.find_pointer("/limits/max_file_size_mb", ec);
    if (mb != nullptr && mb->is_number()) limit = mb->to_number<uint64_t>(ec) << 20;
  }
  int mem = ::memfd_create("kvmctl-upload", MFD_CLOEXEC);
  if (mem < 0) {
    std::fprintf(stderr, "kvmmanager-ctl: cannot copy %s: memfd_create: %s\n",
                 ForTerminal(local).c_str(), std::strerror(errno));
    return -1;
  }
  std::string buf(65536, '\0');
  size = 0;
  while (size <= limit) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return mem;
    if (n < 0 || ::write(mem, buf.data(), static_cast<size_t>(n)) != n) {
      std::fprintf(stderr, "kvmmanager-ctl: cannot read %s: %s\n", ForTerminal(local).c_str(),
                   std::strerror(errno));
      ::close(mem);
      return -1;
    }
    size += static_cast<uint64_t>(n);
  }
  return mem;  // past the limit: the agent's refusal says so
}

void CopyToGuest(Options& options, AgentClient& client, const std::string& local,
                 const std::string& remote_in, const transfer::Options& topt) {
  InterruptScope interrupts;  // Ctrl-C aborts the upload session instead of leaving it behind
  int fd = ::open(local.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "kvmmanager-ctl: cannot open %s: %s\n", local.c_str(),
                 std::strerror(errno));
    options.exit_code = kExitUsage;
    return;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    std::fprintf(stderr, "kvmmanager-ctl: %s %s\n", local.c_str(),
                 S_ISDIR(st.st_mode) ? "is a directory (cp -r copies directories)"
                                     : "is not a regular file");
    ::close(fd);
    options.exit_code = kExitUsage;
    return;
  }
  auto size = static_cast<uint64_t>(st.st_size);
  if (size == 0) {
    char probe;
    if (::pread(fd, &probe, 1, 0) > 0) {  // procfs/sysfs: size 0, yet content
      int copy = SnapshotOfSizeZeroFile(client, local, fd, size);
      ::close(fd);
      if (copy < 0) {
        options.exit_code = kExitUsage;
        return;
      }
      fd = copy;
    }
  }
  std::string remote = remote_in;
  if (!remote.empty() && remote.back() == '/') remote += BaseName(local);
  RunTransfer(options, client, local, [&] {
    auto upload = [&] { return transfer::Upload(client, fd, size, remote, topt); };
    transfer::Outcome out;
    try {
      out = upload();
    } catch (const transfer::TransferError& e) {
      // As cp(1) does, an existing directory receives the file under its own name. Learned
      // from the agent's refusal, so an upload to a file path costs no extra round trip. An
      // allowed write entry that is a directory is refused by the policy instead (it cannot
      // be replaced): the file may still go into it, so that is tried too, and if the policy
      // refuses that as well, its first answer stands.
      bool directory = RefusedAsDirectory(e);
      if (!directory && !RefusedByWritePolicy(e)) throw;
      std::string first = remote;
      remote = JoinPath(remote, BaseName(local));
      try {
        out = upload();
      } catch (const transfer::TransferError& again) {
        if (directory || !RefusedByWritePolicy(again)) throw;
        remote = first;
        throw e;
      }
    }
    if (options.json) {
      std::printf("%s\n",
                  json::serialize(
                      json::object{{"path", remote}, {"size", out.size}, {"sha256", out.sha256}})
                      .c_str());
    } else if (!topt.progress) {
      std::printf("%s -> :%s  %llu bytes  sha256 %s\n", ForTerminal(local).c_str(),
                  ForTerminal(remote).c_str(), static_cast<unsigned long long>(out.size),
                  out.sha256.c_str());
    }
  });
  ::close(fd);
}

// Where a download lands, as cp(1) decides it: a regular file (new or existing) is replaced by
// a temp file renamed over it once the sha256 matched; an existing device, FIFO or socket is
// written in place (a rename would replace the node itself, e.g. the host's /dev/null); a
// symbolic link is followed, so its target receives the file and the link stays.
struct LocalDestination {
  std::string path;       // the file replaced or written (a symbolic link's target)
  bool in_place = false;  // write into `path` itself
};

// Fills `out`, or returns false with the reason in `error`. `no_clobber` (cp -n): only a new
// file will do.
bool ResolveDestination(const std::string& local, bool no_clobber, LocalDestination& out,
                        std::string& error) {
  out = LocalDestination{local, false};
  struct stat st;
  if (::lstat(local.c_str(), &st) != 0) {
    if (errno == ENOENT && !local.empty() && local.back() == '/') errno = ENOTDIR;
    if (errno == ENOENT) return true;  // a new file
    error = std::strerror(errno);
    return false;
  }
  if (no_clobber) {
    error = "it exists (cp -n)";
    return false;
  }
  if (S_ISLNK(st.st_mode)) {
    if (::stat(local.c_str(), &st) != 0) {
      // As GNU cp: creating a file where a dangling link points is rarely what was meant.
      error =
          errno == ENOENT ? "not writing through a dangling symbolic link" : std::strerror(errno);
      return false;
    }
    char* real = ::realpath(local.c_str(), nullptr);
    if (real == nullptr) {
      error = std::strerror(errno);
      return false;
    }
    out.path = real;
    std::free(real);
  }
  if (S_ISDIR(st.st_mode)) {
    error = "it is a directory";
    return false;
  }
  out.in_place = !S_ISREG(st.st_mode);
  return true;
}

// The file a download writes: a temp file beside the target under a name of its own
// (TARGET.kvmctl-part-XXXXXX, O_EXCL, so two downloads to one path never write into each
// other's: each installs a whole, verified file, and the last rename wins), or, in place, an
// existing device or FIFO. The temp file is removed on every path that does not Install() it:
// a refusal, a usage error, a lost connection, a signal.
class LocalFile {
 public:
  // Check fd() >= 0; errno tells why not.
  explicit LocalFile(const LocalDestination& dest) : dest_(dest) {
    if (dest_.in_place) {
      fd_ = ::open(dest_.path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
      return;
    }
    static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    std::random_device random;
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      std::string suffix(6, '0');
      for (char& c : suffix) c = kChars[random() % (sizeof kChars - 1)];
      temp_ = dest_.path + ".kvmctl-part-" + suffix;
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd_ < 0 && errno != EEXIST) break;
    }
    if (fd_ < 0) temp_.clear();
  }
  ~LocalFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!temp_.empty()) ::unlink(temp_.c_str());
  }
  LocalFile(const LocalFile&) = delete;
  LocalFile& operator=(const LocalFile&) = delete;

  int fd() const { return fd_; }

  // Makes the verified content the destination's, with `permissions` if given (a new or
  // replaced file; a device keeps its own). `no_clobber`: a file that appeared meanwhile is
  // not replaced. Throws LocalError naming `shown`.
  void Install(const std::string& shown, std::optional<mode_t> permissions, bool no_clobber) {
    if (dest_.in_place) {
      // A device or FIFO: nothing to rename; fsync where it means something (a block device).
      if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) {
        throw transfer::LocalError("cannot finish " + shown + ": " + std::strerror(errno));
      }
      return;
    }
    if ((permissions && ::fchmod(fd_, *permissions) != 0) || ::fsync(fd_) != 0) {
      throw transfer::LocalError("cannot finish " + shown + ": " + std::strerror(errno));
    }
    int rc = no_clobber ? ::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, dest_.path.c_str(),
                                      RENAME_NOREPLACE)
                        : ::rename(temp_.c_str(), dest_.path.c_str());
    bool linked = false;
    if (rc != 0 && no_clobber && errno == EINVAL) {  // a filesystem without RENAME_NOREPLACE
      rc = ::link(temp_.c_str(), dest_.path.c_str());
      linked = rc == 0;
    }
    if (rc != 0) {
      throw transfer::LocalError(
          "cannot finish " + shown + ": " +
          (errno == EEXIST ? std::string("it exists (cp -n)") : std::string(std::strerror(errno))));
    }
    if (!linked) temp_.clear();  // renamed: nothing to remove (a linked temp goes with us)
  }

 private:
  LocalDestination dest_;
  std::string temp_;  // the temp file while it is ours to remove
  int fd_ = -1;
};

void CopyFromGuest(Options& options, AgentClient& client, const std::string& remote,
                   std::string local, const transfer::Options& topt) {
  InterruptScope interrupts;  // Ctrl-C removes the partial file instead of leaving it behind
  if (local == "." || IsLocalDirectory(local)) local = JoinPath(local, BaseName(remote));
  LocalDestination dest;
  std::string error;
  const bool no_clobber = topt.mode == "create_new";
  if (!ResolveDestination(local, no_clobber, dest, error)) {
    std::fprintf(stderr, "kvmmanager-ctl: cannot create %s: %s\n", ForTerminal(local).c_str(),
                 error.c_str());
    options.exit_code = kExitUsage;
    return;
  }
  LocalFile file(dest);
  if (file.fd() < 0) {
    int err = errno;
    if (err == EINTR && PendingInterrupt() != 0) {  // a FIFO nobody read from
      std::fprintf(stderr, "kvmmanager-ctl: %s\n", Interrupted(PendingInterrupt()).what());
      options.exit_code = 128 + PendingInterrupt();
      return;
    }
    std::fprintf(stderr, "kvmmanager-ctl: cannot %s %s: %s\n", dest.in_place ? "write" : "create",
                 ForTerminal(local).c_str(), std::strerror(err));
    options.exit_code = kExitUsage;
    return;
  }
  RunTransfer(options, client, ":" + remote, [&] {
    transfer::Outcome out = transfer::Download(client, remote, file.fd(), topt);
    std::optional<mode_t> permissions;
    if (topt.permissions)
      permissions = static_cast<mode_t>(std::stoul(*topt.permissions, nullptr, 8));
    file.Install(local, permissions, no_clobber);
    if (options.json) {
      std::printf(
          "%s\n",
          json::serialize(json::object{{"path", local}, {"size", out.size}, {"sha256", out.sha256}})
              .c_str());
    } else if (!topt.progress) {
      std::printf(":%s -> %s  %llu bytes  sha256 %s\n", ForTerminal(remote).c_str(),
                  ForTerminal(local).c_str(), static_cast<unsigned long long>(out.size),
                  out.sha256.c_str());
    }
  });
}

std::string FormatTime(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm;
  char buf[32];
  if (!::localtime_r(&tt, &tm) || !std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm))
    return "-";
  return buf;
}

const json::value* Field(const json::value& v, std::string_view key) {
  return v.is_object() ? v.get_object().if_contains(key) : nullptr;
}

std::string Text(const json::value* v) {
  if (!v) return "-";
  if (v->is_string()) return std::string(v->get_string());
  return CompactJson(*v);
}

// A name for a table row: control characters (a newline in a file name would start a false
// row) shown as '?', as ls(1) does on a terminal. --json keeps the name exact.
std::string RowName(const json::value* v) { return ForTerminal(Text(v)); }

// Every entry of a guest directory, page after page (file_list ends a page before the reply
// would pass max_message_size_kb). Returns the failed call, or the last page's answer.
CallResult ListDirectory(AgentClient& client, const std::string& path, json::array& entries) {
  uint64_t offset = 0;
  for (;;) {
    CallResult r = client.Call("file_list", {{"path", path}, {"offset", offset}});
    if (!r.ok) return r;
    if (const json::value* e = Field(r.result, "entries"); e && e->is_array()) {
      for (const auto& entry : e->get_array()) entries.push_back(entry);
    }
    const json::value* next = Field(r.result, "next_offset");
    if (!next || !next->is_number()) return r;
    offset = next->to_number<uint64_t>();
  }
}

// False also for a path JSON cannot carry: copying it then fails as a file, on its own.
bool IsRemoteDirectory(AgentClient& client, const std::string& path) {
  try {
    CallResult st = client.Call("file_stat", {{"path", path}});
    return st.ok && Text(Field(st.result, "type")) == "directory";
  } catch (const NotUtf8Error&) {
    return false;
  }
}

// One cp: its files and trees, one after the other as cp(1) does. A failed file or entry is
// reported and the rest goes on; `failure` keeps the first failure's exit code. A signal (exit
// code >= 128) stops everything: Stopped() says so.
struct CopyJob {
  // Deeper than any real tree; a guest that lists a directory inside itself forever stops here.
  static constexpr int kMaxDepth = 256;

  Options& options;
  const transfer::Options& topt;
  int failure = 0;

  bool Stopped() const { return options.exit_code >= 128; }
  void Fail(int code) {
    if (failure == 0) failure = code;
  }
  void Skip(const std::string& path, const std::string& what) {
    std::fprintf(stderr,
                 "kvmmanager-ctl: skipping %s: %s (only files and directories are copied)\n",
                 ForTerminal(path).c_str(), what.c_str());
    Fail(kExitRpcError);
  }
  // Runs one file's copy (CopyToGuest, CopyFromGuest), folding its exit code into `failure`.
  template <class Fn>
  void File(Fn&& copy) {
    options.exit_code = 0;
    copy();
    if (!Stopped() && options.exit_code != 0) Fail(options.exit_code);
  }

  bool RemoteMkdir(AgentClient& client, const std::string& dir) {
    CallResult r;
    try {
      r = client.Call("file_mkdir", {{"path", dir}, {"parents", true}});
    } catch (const NotUtf8Error&) {  // this directory only; the rest goes on
      std::fprintf(stderr, "kvmmanager-ctl: cannot create :%s: %s\n", ForTerminal(dir).c_str(),
                   kNotUtf8);
      Fail(kExitUsage);
      return false;
    }
    if (r.ok) return true;
    std::fprintf(stderr, "kvmmanager-ctl: cannot create :%s\n", ForTerminal(dir).c_str());
    PrintRpcError(r);
    Fail(kExitRpcError);
    return false;
  }

  void Upload(AgentClient& client, const std::string& local_root, const std::string& remote_root) {
    if (!RemoteMkdir(client, remote_root)) return;
    std::error_code ec;
    fs::recursive_directory_iterator it(local_root, ec), end;
    if (ec) {
      std::fprintf(stderr, "kvmmanager-ctl: cannot read %s: %s\n", local_root.c_str(),
                   ec.message().c_str());
      Fail(kExitUsage);
      return;
    }
    for (; it != end && !Stopped(); it.increment(ec)) {
      if (ec) {
        std::fprintf(stderr, "kvmmanager-ctl: %s\n", ec.message().c_str());
        Fail(kExitUsage);
        break;
      }
      std::string local = it->path().string();
      std::string remote =
          JoinPath(remote_root, it->path().lexically_relative(local_root).string());
      auto status = it->symlink_status(ec);
      if (fs::is_directory(status)) {
        if (!RemoteMkdir(client, remote)) it.disable_recursion_pending();
      } else if (fs::is_regular_file(status)) {
        File([&] { CopyToGuest(options, client, local, remote, topt); });
      } else {
        Skip(local, fs::is_symlink(status) ? "a symbolic link" : "not a regular file");
      }
    }
  }

  // A name from the guest's listing must be one path component: a compromised guest must not
  // make the host write outside the destination ("../x", "/etc/x", "a/b").
  static bool SafeName(const std::string& name) {
    return !name.empty() && name != "." && name != ".." &&
           name.find_first_of(std::string_view("/\0", 2)) == std::string::npos;
  }

  void Download(AgentClient& client, const std::string& remote_root, const std::string& local_root,
                int depth = 0) {
    if (depth > kMaxDepth) {
      std::fprintf(stderr, "kvmmanager-ctl: :%s is more than %d directories deep; not copied\n",
                   ForTerminal(remote_root).c_str(), kMaxDepth);
      Fail(kExitRpcError);
      return;
    }
    std::error_code ec;
    if (!fs::create_directory(local_root, ec) && !fs::is_directory(local_root)) {
      std::fprintf(stderr, "kvmmanager-ctl: cannot create %s: %s\n",
                   ForTerminal(local_root).c_str(),
                   ec ? ec.message().c_str() : "a file of that name exists");
      Fail(kExitUsage);
      return;
    }
    json::array entries;
    CallResult r = ListDirectory(client, remote_root, entries);
    if (!r.ok) {
      std::fprintf(stderr, "kvmmanager-ctl: cannot list :%s\n", ForTerminal(remote_root).c_str());
      PrintRpcError(r);
      Fail(kExitRpcError);
      return;
    }
    if (const json::value* t = Field(r.result, "truncated"); t && t->is_bool() && t->get_bool()) {
      std::fprintf(stderr, "kvmmanager-ctl: :%s has more entries than the agent lists\n",
                   ForTerminal(remote_root).c_str());
      Fail(kExitRpcError);
    }
    for (const auto& entry : entries) {
      if (Stopped()) return;
      std::string name = Text(Field(entry, "name")), type = Text(Field(entry, "type"));
      if (const json::value* lossy = Field(entry, "name_lossy");
          lossy && lossy->is_bool() && lossy->get_bool()) {
        // Asked for by the name shown, another file (the one really named so) would come.
        std::fprintf(stderr,
                     "kvmmanager-ctl: cannot copy :%s: the guest's file name is not valid UTF-8 "
                     "(shown with U+FFFD), so no request can name it\n",
                     ForTerminal(JoinPath(remote_root, name)).c_str());
        Fail(kExitUsage);
        continue;
      }
      if (!SafeName(name)) {
        std::fprintf(stderr,
                     "kvmmanager-ctl: refusing the entry name \"%s\" the guest lists in :%s\n",
                     RowName(Field(entry, "name")).c_str(), ForTerminal(remote_root).c_str());
        Fail(kExitRpcError);
        continue;
      }
      std::string remote = JoinPath(remote_root, name), local = JoinPath(local_root, name);
      if (type == "directory") {
        Download(client, remote, local, depth + 1);
      } else if (type == "file") {
        File([&] { CopyFromGuest(options, client, remote, local, topt); });
      } else {
        Skip(":" + remote, type == "symlink" ? "a symbolic link" : "a " + type);
      }
    }
  }
};

// Where `src` goes under cp's rules: into `dst` under its own name when `dst` is a directory
// (or must be one), else as `dst` itself.
std::string TreeTarget(const std::string& src, const std::string& dst, bool dst_is_dir) {
  std::string name = src;
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  return dst_is_dir ? JoinPath(dst, BaseName(name)) : dst;
}

}  // namespace

void AddFileCommands(CLI::App& app, Options& options) {
  // cp
  auto* cp = app.add_subcommand(
      "cp",
      "copy files to (cp LOCAL... :REMOTE) or from (cp :REMOTE... LOCAL) the guest, in chunks, "
      "verified by sha256");
  auto paths = std::make_shared<std::vector<std::string>>();
  auto no_clobber = std::make_shared<bool>(false);
  auto perms = std::make_shared<std::string>();
  auto no_progress = std::make_shared<bool>(false);
  auto recursive = std::make_shared<bool>(false);
  cp->add_option("paths", *paths,
                 "SOURCE... DESTINATION: LOCAL files and a :REMOTE destination, or :REMOTE "
                 "files and a LOCAL one. Into an existing directory (or a path ending in /) a "
                 "file keeps its name; with several sources the destination is a directory")
      ->required()
      ->expected(2, -1);
  cp->add_flag("-n,--no-clobber", *no_clobber,
               "fail (that file) if the destination file exists, in the guest or locally");
  cp->add_option("-m,--mode", *perms, "permissions of the copied file, 0 to 0777, e.g. 0644")
      ->check(CLI::Validator(
          [](std::string& text) {
            bool octal = !text.empty() && text.size() <= 4 &&
                         text.find_first_not_of("01234567") == std::string::npos &&
                         std::stoul(text, nullptr, 8) <= 0777;
            return octal ? std::string() : "must be octal permissions 0 to 0777, got " + text;
          },
          "MODE"));
  cp->add_flag("-q,--quiet", *no_progress, "no progress bar");
  cp->add_flag("-r,--recursive", *recursive,
               "copy directories with everything below them (files and directories; symbolic "
               "links and special files are reported and skipped)");
  cp->callback([&options, paths, no_clobber, perms, no_progress, recursive] {
    std::string dst = paths->back();
    std::vector<std::string> sources(paths->begin(), paths->end() - 1);
    for (const auto& src : sources) {
      if (IsRemote(src) == IsRemote(dst)) {
        std::fprintf(stderr,
                     "kvmmanager-ctl: the sources must be on one side and the destination on "
                     "the other (:REMOTE is the guest): %s -> %s\n",
                     src.c_str(), dst.c_str());
        options.exit_code = kExitUsage;
        return;
      }
    }
    const bool upload = IsRemote(dst);
    if (StripColon(dst).empty()) {
      std::fprintf(stderr, "kvmmanager-ctl: the destination is an empty path\n");
      options.exit_code = kExitUsage;
      return;
    }
    if (sources.size() > 1) {
      if (upload) {
        if (dst.back() != '/') dst += '/';  // the agent then refuses a name that is no directory
      } else if (!IsLocalDirectory(dst)) {
        std::fprintf(stderr, "kvmmanager-ctl: copying %zu files: %s is not a directory\n",
                     sources.size(), dst.c_str());
        options.exit_code = kExitUsage;
        return;
      }
    }
    transfer::Options topt;
    topt.progress = MakeProgress(options, !*no_progress);
    if (*no_clobber) topt.mode = "create_new";
    if (!perms->empty()) topt.permissions = *perms;
    // One connection for everything: the host end of a VM's channel serves one at a time.
    auto client = Connect(options);
    std::string target = StripColon(dst);
    // cp -r: is the destination an existing directory (the trees go into it) or a name to
    // create? Asked once, only when a source is a directory.
    std::optional<bool> dst_is_dir;
    auto destination_is_dir = [&] {
      if (!dst_is_dir) {
        // As cp(1): a trailing slash on a destination that does not exist does not make it
        // one; the tree's contents go into a new directory of that name.
        dst_is_dir = sources.size() > 1 ||
                     (upload ? IsRemoteDirectory(*client, target) : IsLocalDirectory(target));
      }
      return *dst_is_dir;
    };
    CopyJob job{options, topt};
    for (const auto& src : sources) {
      std::string from = StripColon(src);
      bool tree =
          *recursive && (upload ? IsLocalDirectory(from) : IsRemoteDirectory(*client, from));
      if (tree) {
        std::string into = TreeTarget(from, target, destination_is_dir());
        if (upload) {
          job.Upload(*client, from, into);
        } else {
          job.Download(*client, from, into);
        }
      } else if (upload) {
        job.File([&] { CopyToGuest(options, *client, from, target, topt); });
      } else {
        job.File([&] { CopyFromGuest(options, *client, from, target, topt); });
      }
      if (job.Stopped()) return;  // options.exit_code says which signal
    }
    options.exit_code = job.failure;
  });

  // cat
  auto* cat = app.add_subcommand("cat", "print a guest file to stdout");
  auto cat_path = std::make_shared<std::string>();
  cat->add_option("path", *cat_path, ":REMOTE path (the ':' is optional)")->required();
  cat->callback([&options, cat_path] {
    InterruptScope interrupts;
    auto client = Connect(options);
    RunTransfer(options, *client, *cat_path, [&] {
      transfer::Stream(*client, StripColon(*cat_path), STDOUT_FILENO, transfer::Options{});
    });
  });

  // ls
  auto* ls = app.add_subcommand("ls", "list a guest directory (a file: that file's line)");
  auto ls_path = std::make_shared<std::string>();
  ls->add_option("path", *ls_path, ":REMOTE directory or file")->required();
  ls->callback([&options, ls_path] {
    auto client = Connect(options);
    std::string path = StripColon(*ls_path);
    json::array all;
    CallResult r = ListDirectory(*client, path, all);
    if (!r.ok && all.empty() &&
        (ErrorKind(r) == "not_found" || ErrorKind(r) == "permission_denied")) {
      // Like ls(1), a path that is not a directory is listed as itself, if it exists: the
      // agent's file_list answers ENOTDIR as not_found, and refuses a symlink below an entry,
      // which file_stat describes without following. (A path file_stat refuses too keeps
      // file_list's error.)
      CallResult st = client->Call("file_stat", {{"path", path}});
      if (st.ok && Text(Field(st.result, "type")) != "directory") {
        json::object entry{{"name", path}};
        for (const char* key : {"type", "size", "mode", "mtime"}) {
          if (const json::value* v = Field(st.result, key)) entry[key] = *v;
        }
        all.push_back(std::move(entry));
        r = std::move(st);
      }
    }
    if (!r.ok) {
      PrintRpcError(r);
      options.exit_code = kExitRpcError;
      return;
    }
    if (options.json) {
      std::printf("%s\n", CompactJson(all).c_str());
      return;
    }
    for (const auto& entry : all) {
      const json::value* mtime = Field(entry, "mtime");
      std::printf("%-10s %5s %12s  %s  %s\n", Text(Field(entry, "type")).c_str(),
                  Text(Field(entry, "mode")).c_str(), Text(Field(entry, "size")).c_str(),
                  mtime && mtime->is_int64() ? FormatTime(mtime->get_int64()).c_str() : "-",
                  RowName(Field(entry, "name")).c_str());
    }
  });

  // stat
  auto* stat_cmd = app.add_subcommand("stat", "show a guest file's metadata");
  auto stat_path = std::make_shared<std::string>();
  auto with_sha = std::make_shared<bool>(false);
  stat_cmd->add_option("path", *stat_path, ":REMOTE path")->required();
  stat_cmd->add_flag("--sha256", *with_sha, "also compute the file's sha256 in the guest");
  stat_cmd->callback([&options, stat_path, with_sha] {
    json::object params{{"path", StripColon(*stat_path)}};
    if (*with_sha) params["sha256"] = true;
    CallAndShow(options, "file_stat", params,
                [](const json::value& r) { std::printf("%s\n", PrettyJson(r).c_str()); });
  });

  // rm
  auto* rm = app.add_subcommand("rm", "delete a guest file (or empty directory)");
  auto rm_path = std::make_shared<std::string>();
  rm->add_option("path", *rm_path, ":REMOTE path")->required();
  // Quiet on success, as rm(1); --json prints the agent's result.
  rm->callback([&options, rm_path] {
    CallAndShow(options, "file_delete", {{"path", StripColon(*rm_path)}},
                [](const json::value&) {});
  });

  // mkdir
  auto* mkdir = app.add_subcommand("mkdir", "create a guest directory");
  auto mk_path = std::make_shared<std::string>();
  auto parents = std::make_shared<bool>(false);
  mkdir->add_option("path", *mk_path, ":REMOTE path")->required();
  mkdir->add_flag("-p,--parents", *parents, "create missing parents; no error if it exists");
  // Quiet on success, as mkdir(1); --json prints the agent's result (created: false for an
  // existing directory with -p).
  mkdir->callback([&options, mk_path, parents] {
    CallAndShow(options, "file_mkdir", {{"path", StripColon(*mk_path)}, {"parents", *parents}},
                [](const json::value&) {});
  });
}

}  // namespace kvm::ctl
