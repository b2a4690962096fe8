// File methods through the real agent binary: every escape attempt, crash safety, uploads,
// concurrency and kvmmanager-ctl's file commands.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <mutex>
#include <optional>
#include <thread>

#include "agent/core/unique_fd.h"
#include "agent/handlers/files/sha256.h"
#include "protocol/base64.h"
#include "tests/support/agent_process.h"

namespace kvm::test {
namespace {
namespace json = boost::json;
namespace fs = std::filesystem;

constexpr int64_t kDenied = -32000;

std::string Policy(const CallResult& r) {
  if (!r.error_data.is_object()) return "";
  const json::value* p = r.error_data.get_object().if_contains("policy");
  return p && p->is_string() ? std::string(p->get_string()) : "";
}

std::string Str(const json::value& v, std::string_view key) {
  return std::string(v.at(key).as_string());
}

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string ConfigJson(const std::vector<std::string>& read, const std::vector<std::string>& write,
                       int max_mb = 10) {
  json::array r, w;
  for (auto& p : read) r.push_back(json::value(p));
  for (auto& p : write) w.push_back(json::value(p));
  json::object security{{"allowed_read_paths", r},
                        {"allowed_write_paths", w},
                        {"command_whitelist", nullptr},
                        {"max_file_size_mb", max_mb},
                        {"max_command_timeout_seconds", 60}};
  json::object config{{"log_level", "debug"},          {"log_file", nullptr},
                      {"max_message_size_kb", 64},     {"request_timeout_seconds", 30},
                      {"max_concurrent_requests", 10}, {"security", security}};
  return json::serialize(config);
}

std::vector<std::string> TempNames(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind(".kvmmanager-tmp.", 0) == 0) out.push_back(e.path().string());
  }
  return out;
}

// Whether a download's temp file (LOCAL.kvmctl-part-XXXXXX) is beside `local`, and its size.
std::optional<uint64_t> PartFileSize(const std::string& local) {
  fs::path path(local);
  std::string prefix = path.filename().string() + ".kvmctl-part";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(path.parent_path(), ec)) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) {
      uint64_t size = e.file_size(ec);
      return ec ? 0 : size;  // removed since the listing
    }
  }
  return std::nullopt;
}

// AgentProcess returns once the socket file exists, which is at bind(), a moment before
// listen(): under load a connect can still be refused. Wait until the agent answers.
void WaitUntilServing(const AgentProcess& agent) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    try {
      agent.Connect();
      return;
    } catch (const ClientError&) {
      if (std::chrono::steady_clock::now() > deadline) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

// A box with sandbox/ (allowed), outside/ and sandboxfoo/ (not allowed), and an agent whose
// read paths are sandbox, /proc and /dev/null, write path sandbox.
class FilesFixture {
 public:
  explicit FilesFixture(const std::string& resolver, int max_mb = 10) {
    if (resolver.empty()) {
      ::unsetenv("KVMMANAGER_PATH_RESOLVER");
    } else {
      ::setenv("KVMMANAGER_PATH_RESOLVER", resolver.c_str(), 1);
    }
    fs::create_directories(sandbox());
    fs::create_directories(outside());
    fs::create_directories(box_ / "sandboxfoo");
    WriteFile(outside() + "/secret", "outside secret");
    WriteFile(box_ / "sandboxfoo/secret", "prefix secret");
    AgentProcess::Options options;
    options.config_json = ConfigJson({sandbox(), "/proc", "/dev/null"}, {sandbox()}, max_mb);
    agent_ = std::make_unique<AgentProcess>(options);
    WaitUntilServing(*agent_);
  }
  std::string sandbox() const { return box_ / "sandbox"; }
  std::string outside() const { return box_ / "outside"; }
  std::string box(const std::string& name) const { return box_ / name; }
  AgentProcess& agent() { return *agent_; }
  CallResult Call(const std::string& m, const json::object& p) { return agent_->Call(m, p); }
  CallResult Read(const std::string& path) { return Call("file_read", {{"path", path}}); }
  CallResult Write(const std::string& path, const std::string& bytes,
                   const std::string& mode = "overwrite") {
    return Call("file_write", {{"path", path}, {"data", Base64Encode(bytes)}, {"mode", mode}});
  }

 private:
  TempDir box_;
  std::unique_ptr<AgentProcess> agent_;
};

// ---------------------------------------------------------------- escapes, both resolvers

class FileEscapeTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { f_ = std::make_unique<FilesFixture>(GetParam()); }
  void ExpectDenied(const CallResult& r, const std::string& policy, const std::string& what) {
    EXPECT_FALSE(r.ok) << what;
    EXPECT_EQ(r.error_code, kDenied) << what << ": " << r.error_message;
    EXPECT_EQ(Policy(r), policy) << what << ": " << r.error_message;
  }
  std::unique_ptr<FilesFixture> f_;
};

TEST_P(FileEscapeTest, AgentUsesTheRequestedResolver) {
  std::string log = f_->agent().Stderr();
  EXPECT_NE(log.find(GetParam() == "walk" ? "an O_NOFOLLOW walk" : "openat2"), std::string::npos)
      << log;
}

TEST_P(FileEscapeTest, PrefixSiblingOfAnAllowedDirectoryIsRefused) {
  std::string sib = f_->box("sandboxfoo");
  ExpectDenied(f_->Read(sib + "/secret"), "allowed_read_paths", "read");
  ExpectDenied(f_->Write(sib + "/new", "x"), "allowed_write_paths", "write");
  EXPECT_FALSE(fs::exists(sib + "/new"));
}

TEST_P(FileEscapeTest, DotDotChainsAreRefused) {
  std::string sb = f_->sandbox();
  fs::create_directories(sb + "/a/b");
  for (std::string p : {sb + "/../outside/secret", sb + "/a/../../outside/secret",
                        sb + "/a/b/../../../../../../etc/passwd", sb + "/a/.."}) {
    ExpectDenied(f_->Read(p), "allowed_read_paths", p);
    ExpectDenied(f_->Call("file_stat", {{"path", p}}), "allowed_read_paths", p);
    ExpectDenied(f_->Write(p, "pwned"), "allowed_write_paths", p);
    ExpectDenied(f_->Call("file_delete", {{"path", p}}), "allowed_write_paths", p);
  }
  EXPECT_EQ(ReadFileText(f_->outside() + "/secret"), "outside secret");
}

TEST_P(FileEscapeTest, SymlinkInAnIntermediateDirectoryIsRefused) {
  std::string link = f_->sandbox() + "/link";
  fs::create_directory_symlink(f_->outside(), link);
  ExpectDenied(f_->Read(link + "/secret"), "allowed_read_paths", "read");
  ExpectDenied(f_->Call("file_list", {{"path", link}}), "allowed_read_paths", "list");
  ExpectDenied(f_->Write(link + "/new", "x"), "allowed_write_paths", "write");
  ExpectDenied(f_->Write(link + "/secret", "x", "append"), "allowed_write_paths", "append");
  ExpectDenied(f_->Call("file_upload_begin", {{"path", link + "/up"}}), "allowed_write_paths",
               "upload");
  ExpectDenied(f_->Call("file_mkdir", {{"path", link + "/d"}}), "allowed_write_paths", "mkdir");
  ExpectDenied(f_->Call("file_delete", {{"path", link + "/secret"}}), "allowed_write_paths",
               "delete");
  EXPECT_EQ(ReadFileText(f_->outside() + "/secret"), "outside secret");
  EXPECT_FALSE(fs::exists(f_->outside() + "/new"));
  EXPECT_FALSE(fs::exists(f_->outside() + "/d"));
}

TEST_P(FileEscapeTest, FinalSymlinkIsNeverFollowed) {
  std::string last = f_->sandbox() + "/last";
  fs::create_symlink(f_->outside() + "/secret", last);
  ExpectDenied(f_->Read(last), "allowed_read_paths", "read");
  ExpectDenied(f_->Write(last, "x"), "allowed_write_paths", "overwrite");
  ExpectDenied(f_->Write(last, "x", "append"), "allowed_write_paths", "append");
  ExpectDenied(f_->Call("file_stat", {{"path", last}, {"sha256", true}}), "regular_files_only",
               "sha256");
  CallResult st = f_->Call("file_stat", {{"path", last}});
  ASSERT_TRUE(st.ok) << st.error_message;
  EXPECT_EQ(Str(st.result, "type"), "symlink");
  EXPECT_EQ(ReadFileText(f_->outside() + "/secret"), "outside secret");
}

TEST_P(FileEscapeTest, MagicLinksUnderAllowedProcAreRefused) {
  std::string pid = std::to_string(f_->agent().pid());
  std::string secret = f_->outside() + "/secret";
  for (const std::string& p : std::vector<std::string>{
           "/proc/self/root" + secret, "/proc/" + pid + "/root" + secret,
           "/proc/thread-self/root" + secret, "/proc/" + pid + "/cwd/etc/hostname",
           "/proc/" + pid + "/fd/0", "/proc/self/exe"}) {
    ExpectDenied(f_->Read(p), "allowed_read_paths", p);
  }
}

TEST_P(FileEscapeTest, NulBytesAndRelativePathsAreRefused) {
  ExpectDenied(f_->Read(f_->sandbox() + std::string("/a\0/../../outside/secret", 24)),
               "allowed_read_paths", "nul");
  ExpectDenied(f_->Read("sandbox/secret"), "allowed_read_paths", "relative");
  ExpectDenied(f_->Read(""), "allowed_read_paths", "empty");
}

TEST_P(FileEscapeTest, RefusalDoesNotRevealWhetherAPathExists) {
  std::string there = f_->outside() + "/secret";
  std::string absent = f_->outside() + "/absent";
  CallResult a = f_->Read(there), b = f_->Read(absent);
  ASSERT_FALSE(a.ok);
  ASSERT_FALSE(b.ok);
  EXPECT_EQ(a.error_code, b.error_code);
  std::string ma = a.error_message, mb = b.error_message;
  ma.replace(ma.find(there), there.size(), "P");
  mb.replace(mb.find(absent), absent.size(), "P");
  EXPECT_EQ(ma, mb);
  json::object da = a.error_data.as_object(), db = b.error_data.as_object();
  da.erase("path");
  db.erase("path");
  EXPECT_EQ(json::serialize(da), json::serialize(db));
}

TEST_P(FileEscapeTest, FifoIsRefusedWithoutBlocking) {
  std::string fifo = f_->sandbox() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  auto start = std::chrono::steady_clock::now();
  ExpectDenied(f_->Read(fifo), "regular_files_only", "read");
  ExpectDenied(f_->Write(fifo, "x", "append"), "regular_files_only", "append");
  ExpectDenied(f_->Write(fifo, "x"), "regular_files_only", "overwrite");
  ExpectDenied(f_->Call("file_stat", {{"path", fifo}, {"sha256", true}}), "regular_files_only",
               "sha256");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  struct stat st;
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
}

TEST_P(FileEscapeTest, DevicesAreRefused) {
  ExpectDenied(f_->Read("/dev/null"), "regular_files_only", "entry /dev/null");
  std::string dev = f_->sandbox() + "/null";
  ASSERT_EQ(::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)), 0) << "tests run as root";
  ExpectDenied(f_->Read(dev), "regular_files_only", "read");
  ExpectDenied(f_->Write(dev, "x", "append"), "regular_files_only", "append");
}

// A socket cannot even be opened (ENXIO): file_read answered an I/O error where every other
// method says regular_files_only with the type.
TEST_P(FileEscapeTest, SocketsAreRefusedAsNonRegularFiles) {
  std::string path = f_->sandbox() + "/sock";
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  CallResult r = f_->Read(path);
  ExpectDenied(r, "regular_files_only", "read");
  EXPECT_NE(r.error_message.find("is a socket"), std::string::npos) << r.error_message;
  ExpectDenied(f_->Write(path, "x", "append"), "regular_files_only", "append");
}

TEST_P(FileEscapeTest, HardLinkToAnOutsideFileIsNeitherReadNorAppended) {
  std::string hl = f_->sandbox() + "/hardlink";
  ASSERT_EQ(::link((f_->outside() + "/secret").c_str(), hl.c_str()), 0);
  ExpectDenied(f_->Read(hl), "no_hard_links", "read");
  ExpectDenied(f_->Write(hl, "more", "append"), "no_hard_links", "append");
  ExpectDenied(f_->Call("file_stat", {{"path", hl}, {"sha256", true}}), "no_hard_links", "sha256");
  // An overwrite replaces the name in the sandbox; the other name keeps its content.
  CallResult w = f_->Write(hl, "new");
  ASSERT_TRUE(w.ok) << w.error_message;
  EXPECT_EQ(ReadFileText(hl), "new");
  EXPECT_EQ(ReadFileText(f_->outside() + "/secret"), "outside secret");
}

TEST_P(FileEscapeTest, DirectorySwappedForSymlinkInALoopWhileWritingNeverEscapes) {
  std::string race = f_->sandbox() + "/race";
  std::string link = f_->sandbox() + "/race-link";
  fs::create_directories(race);
  fs::create_directory_symlink(f_->outside(), link);
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread flipper([&] {
    while (!stop) {
      if (::renameat2(AT_FDCWD, race.c_str(), AT_FDCWD, link.c_str(), RENAME_EXCHANGE) == 0) {
        ++swaps;
      }
    }
  });
  auto client = f_->agent().Connect();
  int written = 0, refused = 0;
  for (int i = 0; i < 400; ++i) {
    CallResult r =
        client->Call("file_write", {{"path", race + "/f"}, {"data", Base64Encode("pwned")}});
    if (r.ok) {
      ++written;
    } else {
      EXPECT_EQ(r.error_code, kDenied) << r.error_message;
      ++refused;
    }
    CallResult a =
        client->Call("file_write",
                     {{"path", race + "/secret"}, {"data", Base64Encode("x")}, {"mode", "append"}});
    if (!a.ok) {
      EXPECT_TRUE(a.error_code == kDenied || a.error_code == -32001) << a.error_message;
    }
    CallResult rd = client->Call("file_read", {{"path", race + "/secret"}});
    if (rd.ok) {
      EXPECT_NE(Str(rd.result, "data"), Base64Encode("outside secret"));
    }
  }
  stop = true;
  flipper.join();
  EXPECT_GT(swaps.load(), 100);
  EXPECT_GT(refused, 0) << "the race was never met";
  EXPECT_FALSE(fs::exists(f_->outside() + "/f"));
  EXPECT_EQ(ReadFileText(f_->outside() + "/secret"), "outside secret");
  RecordProperty("written_inside", written);
}

// An allowed entry may be a symlink (trusted config, e.g. /var/run), but not one another
// user could plant or swap: here the entry is a user's directory in a sticky, world-writable
// directory, which that user swaps with their own symlink to outside/ over and over. The
// entry was opened following the link, and its owner checked by a separate lstat: 58 of
// 3000 reads returned the outside secret and 164 writes landed outside (found by QA).
TEST_P(FileEscapeTest, UsersEntryInAStickyDirectorySwappedForTheirSymlinkNeverEscapes) {
  TempDir box;
  std::string pub = box / "pub", entry = box / "pub/e", link = box / "pub/elink";
  std::string outside = box / "outside";
  fs::create_directories(entry);
  fs::create_directories(outside);
  ::chmod(pub.c_str(), 01777);
  WriteFile(entry + "/solo", "inside");
  WriteFile(outside + "/solo", "outside secret");
  fs::create_directory_symlink(outside, link);
  ASSERT_EQ(::lchown(entry.c_str(), 1000, 1000), 0);
  ASSERT_EQ(::lchown(link.c_str(), 1000, 1000), 0);
  AgentProcess::Options options;
  options.config_json = ConfigJson({entry}, {entry});
  AgentProcess agent(options);
  WaitUntilServing(agent);
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread flipper([&] {
    while (!stop) {
      if (::renameat2(AT_FDCWD, entry.c_str(), AT_FDCWD, link.c_str(), RENAME_EXCHANGE) == 0) {
        ++swaps;
      }
    }
  });
  auto client = agent.Connect();
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    CallResult rd = client->Call("file_read", {{"path", entry + "/solo"}});
    if (rd.ok) {
      EXPECT_EQ(Str(rd.result, "data"), Base64Encode("inside"));
    }
    refused += !rd.ok && rd.error_code == kDenied;
    CallResult ls = client->Call("file_list", {{"path", entry}});
    if (ls.ok) {
      EXPECT_EQ(json::serialize(ls.result).find("secret"), std::string::npos);
    }
    client->Call("file_write",
                 {{"path", entry + "/planted" + std::to_string(i)}, {"data", Base64Encode("x")}});
  }
  stop = true;
  flipper.join();
  EXPECT_GT(swaps.load(), 100);
  EXPECT_GT(refused, 0) << "the race was never met";
  std::vector<std::string> outside_names;
  for (const auto& e : fs::directory_iterator(outside))
    outside_names.push_back(e.path().filename());
  EXPECT_EQ(outside_names, std::vector<std::string>{"solo"});
}

// An entry that names a user's symlink in a sticky directory is refused also when a request
// names the entry itself (it was followed: `cat :ENTRY` printed the link's target). A link
// root owns there is still followed, as is any link in a directory only root can write.
TEST_P(FileEscapeTest, EntryThatIsAnotherUsersSymlinkInAStickyDirectoryIsRefused) {
  TempDir box;
  std::string pub = box / "pub", outside = box / "outside";
  fs::create_directories(pub);
  fs::create_directories(outside);
  ::chmod(pub.c_str(), 01777);
  WriteFile(outside + "/solo", "outside secret");
  fs::create_symlink(outside + "/solo", pub + "/userfile");
  fs::create_directory_symlink(outside, pub + "/userdir");
  fs::create_directory_symlink(outside, pub + "/rootdir");
  ASSERT_EQ(::lchown((pub + "/userfile").c_str(), 1000, 1000), 0);
  ASSERT_EQ(::lchown((pub + "/userdir").c_str(), 1000, 1000), 0);
  AgentProcess::Options options;
  options.config_json =
      ConfigJson({pub + "/userfile", pub + "/userdir", pub + "/rootdir"}, {pub + "/userdir"});
  AgentProcess agent(options);
  WaitUntilServing(agent);
  for (const CallResult& r :
       {agent.Call("file_read", {{"path", pub + "/userfile"}}),
        agent.Call("file_stat", {{"path", pub + "/userfile"}, {"sha256", true}}),
        agent.Call("file_list", {{"path", pub + "/userdir"}}),
        agent.Call("file_read", {{"path", pub + "/userdir/solo"}}),
        agent.Call("file_write", {{"path", pub + "/userdir/new"}, {"data", "eA=="}})}) {
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error_code, kDenied) << r.error_message;
    // file_stat looks at the entry itself (O_NOFOLLOW with openat2): "is a symlink".
    EXPECT_TRUE(r.error_message.find("symlink another user could replace") != std::string::npos ||
                r.error_message.find("is a symlink") != std::string::npos)
        << r.error_message;
  }
  EXPECT_FALSE(fs::exists(outside + "/new"));
  CallResult trusted = agent.Call("file_read", {{"path", pub + "/rootdir/solo"}});
  ASSERT_TRUE(trusted.ok) << trusted.error_message;
  EXPECT_EQ(Str(trusted.result, "data"), Base64Encode("outside secret"));
}

// Trusted links on an entry's own path, the last component included, are followed by every
// method (the packaged /etc/os-release is a link to ../usr/lib/os-release: file_stat, hence
// `ctl cp`, described the link itself), also links whose target is "." or ends in "/.".
TEST_P(FileEscapeTest, TrustedLinksOfAnEntryAreFollowedByEveryMethod) {
  TempDir box;
  std::string data = box / "data";
  fs::create_directories(data + "/sub");
  WriteFile(data + "/f.txt", "hello");
  fs::create_symlink("data/f.txt", box / "l_file");
  fs::create_directory_symlink(data, box / "l_dir");
  fs::create_directory_symlink(".", box / "self");
  fs::create_directory_symlink(data + "/.", box / "l_dot");
  AgentProcess::Options options;
  options.config_json =
      ConfigJson({box / "l_file", box / "l_dir", box / "self", box / "l_dot"}, {box / "l_dir"});
  AgentProcess agent(options);
  WaitUntilServing(agent);
  CallResult st = agent.Call("file_stat", {{"path", box / "l_file"}, {"sha256", true}});
  ASSERT_TRUE(st.ok) << st.error_message;
  EXPECT_EQ(Str(st.result, "type"), "file");
  EXPECT_EQ(Str(st.result, "sha256"), Sha256Hex("hello"));
  EXPECT_EQ(Str(agent.Call("file_stat", {{"path", box / "l_dir"}}).result, "type"), "directory");
  CallResult mk = agent.Call("file_mkdir", {{"path", box / "l_dir"}, {"parents", true}});
  ASSERT_TRUE(mk.ok) << mk.error_message;
  EXPECT_FALSE(mk.result.at("created").as_bool());
  EXPECT_TRUE(agent.Call("file_list", {{"path", box / "l_dir"}}).ok);
  for (const std::string& path : {box / "l_file", box / "self/data/f.txt", box / "l_dot/f.txt"}) {
    CallResult r = agent.Call("file_read", {{"path", path}});
    ASSERT_TRUE(r.ok) << path << ": " << r.error_message;
    EXPECT_EQ(Str(r.result, "data"), Base64Encode("hello")) << path;
  }
}

// The start-up sweep of named temp files opens the write entries as requests do: a user's
// link (here in the user's own directory) is not followed, so no root-only file elsewhere
// that happens to carry the temp prefix is deleted (it was).
TEST_P(FileEscapeTest, StartUpTempSweepDoesNotFollowAnUntrustedEntryLink) {
  TempDir box;
  std::string user = box / "u", secret = box / "secret";
  fs::create_directories(user);
  fs::create_directories(secret);
  WriteFile(secret + "/.kvmmanager-tmp.notmine", "precious");
  fs::create_directory_symlink(secret, user + "/evil");
  ASSERT_EQ(::lchown(user.c_str(), 1000, 1000), 0);
  ASSERT_EQ(::lchown((user + "/evil").c_str(), 1000, 1000), 0);
  AgentProcess::Options options;
  options.config_json = ConfigJson({}, {user + "/evil"});
  AgentProcess agent(options);
  WaitUntilServing(agent);
  EXPECT_EQ(ReadFileText(secret + "/.kvmmanager-tmp.notmine"), "precious");
  EXPECT_EQ(agent.Stderr().find("removed stray temp file"), std::string::npos) << agent.Stderr();
}

// As in open(2), "x/" names a directory: no method may reach (or delete, or create) a file
// through it, whichever resolver walks the path.
TEST_P(FileEscapeTest, APathEndingInSlashNeverReachesAFile) {
  std::string sb = f_->sandbox();
  WriteFile(sb + "/file", "content");
  fs::create_directories(sb + "/dir");
  const int kNotFound = -32001;
  for (std::string p : {sb + "/file/", sb + "/file/."}) {
    EXPECT_EQ(f_->Read(p).error_code, kNotFound) << p;
    EXPECT_EQ(f_->Call("file_stat", {{"path", p}}).error_code, kNotFound) << p;
    EXPECT_EQ(f_->Call("file_list", {{"path", p}}).error_code, kNotFound) << p;
    EXPECT_EQ(f_->Write(p, "new").error_code, kNotFound) << p;
    EXPECT_EQ(f_->Call("file_upload_begin", {{"path", p}}).error_code, kNotFound) << p;
    CallResult rm = f_->Call("file_delete", {{"path", p}});
    EXPECT_EQ(rm.error_code, kNotFound) << p;
    EXPECT_NE(rm.error_message.find("Not a directory"), std::string::npos) << rm.error_message;
  }
  EXPECT_EQ(ReadFileText(sb + "/file"), "content");
  // No file "new" made from "new/".
  EXPECT_EQ(f_->Write(sb + "/new/", "x").error_code, kNotFound);
  EXPECT_FALSE(fs::exists(sb + "/new"));
  // A directory with a slash is still that directory.
  EXPECT_TRUE(f_->Call("file_stat", {{"path", sb + "/dir/"}}).ok);
  EXPECT_TRUE(f_->Call("file_list", {{"path", sb + "/dir/"}}).ok);
  CallResult rmdir = f_->Call("file_delete", {{"path", sb + "/dir/"}});
  EXPECT_TRUE(rmdir.ok) << rmdir.error_message;
  EXPECT_FALSE(fs::exists(sb + "/dir"));
  // And without the slash the file is served as before.
  EXPECT_TRUE(f_->Read(sb + "/file").ok);
}

INSTANTIATE_TEST_SUITE_P(Resolvers, FileEscapeTest, ::testing::Values("openat2", "walk"),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------- behaviour

class FileMethodsTest : public ::testing::Test {
 protected:
  // kvmmanager-ctl with ARGS against this test's agent.
  RunResult Ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{KVM_CTL_BINARY, "--socket", f_.agent().socket_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(argv, "", std::chrono::seconds(60));
  }
  FilesFixture f_{""};
  std::string sb_ = f_.sandbox();
};

TEST_F(FileMethodsTest, WriteThenReadRoundTripsEveryByteValue) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
  CallResult w = f_.Write(sb_ + "/bin", bytes);
  ASSERT_TRUE(w.ok) << w.error_message;
  EXPECT_EQ(w.result.at("bytes_written").to_number<uint64_t>(), 256u);
  EXPECT_EQ(ReadFileText(sb_ + "/bin"), bytes);
  CallResult r = f_.Read(sb_ + "/bin");
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(Str(r.result, "data"), Base64Encode(bytes));
  EXPECT_EQ(r.result.at("size").to_number<uint64_t>(), 256u);
  EXPECT_TRUE(r.result.at("eof").as_bool());
}

size_t CountOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// file_read is tried on the I/O thread and served there from the page cache; a file whose
// pages were evicted needs the disk, so the read moves to a worker: same answer either way.
TEST_F(FileMethodsTest, ReadServedFromThePageCacheOrOnAWorkerGivesTheSameBytes) {
  std::string bytes(200000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 131) >> 3);
  WriteFile(sb_ + "/big", bytes);
  auto read_all = [&] {
    std::string got;
    for (uint64_t offset = 0; offset < bytes.size();) {
      CallResult r = f_.Call("file_read", {{"path", sb_ + "/big"}, {"offset", offset}});
      EXPECT_TRUE(r.ok) << r.error_message;
      if (!r.ok) break;
      std::string chunk;
      EXPECT_TRUE(Base64Decode(Str(r.result, "data"), chunk));
      if (chunk.empty()) break;
      got += chunk;
      offset += chunk.size();
    }
    return got;
  };
  EXPECT_EQ(read_all(), bytes);  // just written: cached
  std::string moved = "file_read would block on the I/O thread";
  size_t before = CountOf(f_.agent().Stderr(), moved);
  // Everything was in the caches (openat2 RESOLVE_CACHED needs Linux 5.12).
  struct utsname uts {};
  ::uname(&uts);
  int major = 0, minor = 0;
  std::sscanf(uts.release, "%d.%d", &major, &minor);
  const bool resolve_cached = major > 5 || (major == 5 && minor >= 12);
  if (resolve_cached) {
    EXPECT_EQ(before, 0u) << "a cached file was not read on the I/O thread";
  }
  // Refusals and errors from the I/O thread are those a worker gives. A missing name is looked
  // up once (that lookup may need the disk), then it is a cached negative entry.
  EXPECT_EQ(f_.Read(sb_ + "/missing").error_code, -32001);
  size_t settled = CountOf(f_.agent().Stderr(), moved);
  EXPECT_EQ(f_.Read(sb_ + "/missing").error_code, -32001);
  CallResult dir = f_.Read(sb_);
  EXPECT_EQ(dir.error_code, kDenied) << dir.error_message;
  if (resolve_cached) {
    EXPECT_EQ(CountOf(f_.agent().Stderr(), moved), settled) << "errors did not come inline";
  }
  before = CountOf(f_.agent().Stderr(), moved);
  // Evict the file's (clean, synced) pages: the next reads find nothing in the page cache.
  {
    int fd = ::open((sb_ + "/big").c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fdatasync(fd), 0);
    ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ::close(fd);
  }
  EXPECT_EQ(read_all(), bytes);
  std::string log = f_.agent().Stderr();
  // tmpfs keeps every page in memory: there nothing ever needs the disk.
  struct statfs sfs {};
  ASSERT_EQ(::statfs(sb_.c_str(), &sfs), 0);
  if (sfs.f_type != TMPFS_MAGIC) {
    EXPECT_GT(CountOf(log, moved), before) << log;
  }
}

TEST_F(FileMethodsTest, ReadHonoursOffsetAndLength) {
  WriteFile(sb_ + "/f", "0123456789");
  CallResult r = f_.Call("file_read", {{"path", sb_ + "/f"}, {"offset", 3}, {"length", 4}});
  ASSERT_TRUE(r.ok);
  // The whole result, as the agent writes base64 chunks itself (no json::value in between).
  EXPECT_EQ(r.result,
            json::parse(R"({"data":"MzQ1Ng==","size":10,"eof":false,"offset":3,"length":4})"));
  EXPECT_EQ(Str(r.result, "data"), Base64Encode("3456"));
  EXPECT_FALSE(r.result.at("eof").as_bool());
  r = f_.Call("file_read", {{"path", sb_ + "/f"}, {"offset", 8}, {"length", 100}});
  EXPECT_EQ(Str(r.result, "data"), Base64Encode("89"));
  EXPECT_TRUE(r.result.at("eof").as_bool());
  r = f_.Call("file_read", {{"path", sb_ + "/f"}, {"offset", 50}});
  EXPECT_EQ(Str(r.result, "data"), "");
  EXPECT_TRUE(r.result.at("eof").as_bool());
}

TEST_F(FileMethodsTest, ProcfsFilesThatReportSizeZeroAreReadUntilEof) {
  std::string expected = ReadFileText("/proc/version");
  ASSERT_FALSE(expected.empty());
  CallResult r = f_.Read("/proc/version");
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data"), Base64Encode(expected));
  EXPECT_EQ(r.result.at("size").to_number<uint64_t>(), 0u);
  EXPECT_TRUE(r.result.at("eof").as_bool());

  r = f_.Call("file_read", {{"path", "/proc/version"}, {"length", 5}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data"), Base64Encode(expected.substr(0, 5)));
  EXPECT_FALSE(r.result.at("eof").as_bool());
  r = f_.Call("file_read", {{"path", "/proc/version"}, {"offset", 5}, {"length", 4096}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data"), Base64Encode(expected.substr(5)));
  EXPECT_TRUE(r.result.at("eof").as_bool());

  CallResult st = f_.Call("file_stat", {{"path", "/proc/version"}, {"sha256", true}});
  ASSERT_TRUE(st.ok) << st.error_message;
  EXPECT_EQ(Str(st.result, "sha256"), Sha256Hex(expected));

  std::string status = "/proc/" + std::to_string(f_.agent().pid()) + "/status";
  r = f_.Call("file_read", {{"path", status}, {"encoding", "utf8"}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data").rfind("Name:\tkvmmanager-agen", 0), 0u) << Str(r.result, "data");
}

TEST(FileLimits, ProcfsFileLongerThanTheLimitIsRefusedPastIt) {
  FilesFixture f("", 1);  // max_file_size_mb 1
  size_t local = ReadFileText("/proc/kallsyms").size();
  if (local <= (1u << 20)) GTEST_SKIP() << "/proc/kallsyms holds only " << local << " bytes here";
  CallResult r = f.Call("file_read", {{"path", "/proc/kallsyms"}, {"offset", (1 << 20) - 10}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("length").to_number<uint64_t>(), 10u);
  r = f.Call("file_read", {{"path", "/proc/kallsyms"}, {"offset", 1 << 20}});
  EXPECT_EQ(r.error_code, -32002);
  CallResult st = f.Call("file_stat", {{"path", "/proc/kallsyms"}, {"sha256", true}});
  EXPECT_EQ(st.error_code, -32002);
}

TEST_F(FileMethodsTest, ReadReplyFitsInOneMessage) {
  std::string big = RandomBytes(200000, 1);
  WriteFile(sb_ + "/big", big);
  std::string line =
      f_.agent().RoundTrip(R"({"jsonrpc":"2.0","method":"file_read","params":{"path":")" + sb_ +
                           R"(/big","length":1000000},"id":1})");
  EXPECT_LE(line.size(), 64u * 1024);
  json::value reply = ParseJson(line);
  const json::value& result = reply.at("result");
  EXPECT_EQ(result.at("length").to_number<uint64_t>(), 48384u);
  EXPECT_FALSE(result.at("eof").as_bool());
  std::string decoded;
  ASSERT_TRUE(Base64Decode(result.at("data").as_string(), decoded));
  EXPECT_EQ(decoded, big.substr(0, 48384));
}

TEST_F(FileMethodsTest, Utf8ReadsWholeCharactersAndFailsCleanlyOnInvalidBytes) {
  WriteFile(sb_ + "/text", "h\xC3\xA9llo \xE2\x82\xAC");
  CallResult r = f_.Call("file_read", {{"path", sb_ + "/text"}, {"encoding", "utf8"}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data"), "h\xC3\xA9llo \xE2\x82\xAC");
  // A length that cuts the euro sign returns the text before it; the next read continues.
  r = f_.Call("file_read", {{"path", sb_ + "/text"}, {"encoding", "utf8"}, {"length", 9}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data"), "h\xC3\xA9llo ");
  EXPECT_EQ(r.result.at("length").to_number<uint64_t>(), 7u);
  EXPECT_FALSE(r.result.at("eof").as_bool());
  // A length shorter than the first character: no text fits, and the content is not invalid
  // (it said "not valid UTF-8 at byte 7"): the error names length.
  r = f_.Call("file_read",
              {{"path", sb_ + "/text"}, {"encoding", "utf8"}, {"offset", 7}, {"length", 2}});
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error_code, -32602);
  EXPECT_EQ(Str(r.error_data, "param"), "length") << r.error_message;
  WriteFile(sb_ + "/bad", "ok\xFFno");
  r = f_.Call("file_read", {{"path", sb_ + "/bad"}, {"encoding", "utf8"}});
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error_code, -32602);
  EXPECT_EQ(r.error_data.at("offset").to_number<int>(), 2);
  CallResult w = f_.Call("file_write",
                         {{"path", sb_ + "/u"}, {"data", "plain \xC3\xA9"}, {"encoding", "utf8"}});
  ASSERT_TRUE(w.ok) << w.error_message;
  EXPECT_EQ(ReadFileText(sb_ + "/u"), "plain \xC3\xA9");
}

TEST_F(FileMethodsTest, InvalidBase64IsRefusedAndNothingIsWritten) {
  WriteFile(sb_ + "/keep", "old");
  for (std::string bad : {"abc", "ab=c", "a b=", "@@@@", "YQ==YQ=="}) {
    CallResult r = f_.Call("file_write", {{"path", sb_ + "/keep"}, {"data", bad}});
    EXPECT_EQ(r.error_code, -32602) << bad;
    CallResult n = f_.Call("file_write", {{"path", sb_ + "/new"}, {"data", bad}});
    EXPECT_EQ(n.error_code, -32602) << bad;
  }
  EXPECT_EQ(ReadFileText(sb_ + "/keep"), "old");
  EXPECT_FALSE(fs::exists(sb_ + "/new"));
  EXPECT_TRUE(TempNames(sb_).empty());
}

TEST_F(FileMethodsTest, ModesCreateNewAndAppend) {
  ASSERT_TRUE(f_.Write(sb_ + "/m", "one", "create_new").ok);
  CallResult again = f_.Write(sb_ + "/m", "two", "create_new");
  EXPECT_EQ(again.error_code, -32007);
  EXPECT_EQ(ReadFileText(sb_ + "/m"), "one");
  CallResult app = f_.Write(sb_ + "/m", "+two", "append");
  ASSERT_TRUE(app.ok) << app.error_message;
  EXPECT_EQ(app.result.at("size").to_number<uint64_t>(), 7u);
  EXPECT_EQ(ReadFileText(sb_ + "/m"), "one+two");
  ASSERT_TRUE(f_.Write(sb_ + "/m", "three").ok);
  EXPECT_EQ(ReadFileText(sb_ + "/m"), "three");
  EXPECT_EQ(
      f_.Call("file_write", {{"path", sb_ + "/m"}, {"data", ""}, {"mode", "bogus"}}).error_code,
      -32602);
}

TEST_F(FileMethodsTest, PermissionsAreAppliedAndKeptOnOverwrite) {
  ASSERT_TRUE(
      f_.Call("file_write", {{"path", sb_ + "/p"}, {"data", ""}, {"permissions", "0640"}}).ok);
  struct stat st;
  ASSERT_EQ(::stat((sb_ + "/p").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  ASSERT_TRUE(f_.Write(sb_ + "/p", "new").ok);
  ASSERT_EQ(::stat((sb_ + "/p").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(f_.Call("file_write", {{"path", sb_ + "/p"}, {"data", ""}, {"permissions", "4755"}})
                .error_code,
            -32602);
}

TEST_F(FileMethodsTest, ChunkedUploadOutOfOrderIsVerifiedAndCommitted) {
  std::string data = RandomBytes(1000000, 7);
  WriteFile(sb_ + "/up", "old content");
  CallResult b = f_.Call("file_upload_begin", {{"path", sb_ + "/up"}, {"size", data.size()}});
  ASSERT_TRUE(b.ok) << b.error_message;
  std::string handle = Str(b.result, "handle");
  size_t chunk = b.result.at("chunk_size").to_number<size_t>();
  EXPECT_EQ(chunk, 48384u);
  std::vector<size_t> offsets;
  for (size_t off = 0; off < data.size(); off += chunk) offsets.push_back(off);
  std::reverse(offsets.begin(), offsets.end());
  auto client = f_.agent().Connect();
  for (size_t off : offsets) {
    CallResult c = client->Call(
        "file_upload_chunk",
        {{"handle", handle}, {"offset", off}, {"data", Base64Encode(data.substr(off, chunk))}});
    ASSERT_TRUE(c.ok) << c.error_message;
  }
  EXPECT_EQ(ReadFileText(sb_ + "/up"), "old content");  // nothing visible before commit
  CallResult c =
      client->Call("file_upload_commit", {{"handle", handle}, {"sha256", Sha256Hex(data)}});
  ASSERT_TRUE(c.ok) << c.error_message;
  EXPECT_EQ(Str(c.result, "sha256"), Sha256Hex(data));
  EXPECT_EQ(ReadFileText(sb_ + "/up"), data);
  EXPECT_TRUE(TempNames(sb_).empty());
  // The handle is gone after commit.
  EXPECT_EQ(client->Call("file_upload_abort", {{"handle", handle}}).error_code, -32001);
}

TEST_F(FileMethodsTest, CommitSentRightBehindPipelinedChunksIsHandledAfterThem) {
  // Every chunk and the commit go out in one burst, before any reply is read: requests naming
  // one handle run in arrival order, so the commit sees every chunk (PROTOCOL.md). 9 chunks
  // and the commit: within the default max_concurrent_requests (10), so none is "busy".
  std::string data = RandomBytes(400000, 11);
  CallResult b = f_.Call("file_upload_begin", {{"path", sb_ + "/burst"}, {"size", data.size()}});
  ASSERT_TRUE(b.ok) << b.error_message;
  std::string handle = Str(b.result, "handle");
  size_t chunk = b.result.at("chunk_size").to_number<size_t>();
  auto client = f_.agent().Connect();
  int id = 0;
  std::string burst;
  for (size_t off = 0; off < data.size(); off += chunk) {
    burst += json::serialize(json::object{
        {"jsonrpc", "2.0"},
        {"id", ++id},
        {"method", "file_upload_chunk"},
        {"params",
         {{"handle", handle}, {"offset", off}, {"data", Base64Encode(data.substr(off, chunk))}}}});
    burst += '\n';
  }
  int commit_id = ++id;
  burst +=
      json::serialize(json::object{{"jsonrpc", "2.0"},
                                   {"id", commit_id},
                                   {"method", "file_upload_commit"},
                                   {"params", {{"handle", handle}, {"sha256", Sha256Hex(data)}}}});
  // Written from a thread: the agent's replies fill the socket while the burst is still going.
  std::thread writer([&] { client->SendLine(burst); });
  std::map<int64_t, json::object> replies;
  while (static_cast<int>(replies.size()) < id) {
    json::object reply = json::parse(client->ReadLine()).as_object();
    replies[reply.at("id").as_int64()] = reply;
  }
  writer.join();
  for (auto& [rid, reply] : replies) {
    EXPECT_TRUE(reply.contains("result")) << rid << ": " << json::serialize(reply);
  }
  EXPECT_EQ(Str(replies[commit_id].at("result"), "sha256"), Sha256Hex(data));
  EXPECT_EQ(ReadFileText(sb_ + "/burst"), data);
  EXPECT_TRUE(TempNames(sb_).empty());
}

TEST_F(FileMethodsTest, ChunkedUploadWithWrongChecksumLeavesTargetUntouched) {
  WriteFile(sb_ + "/up", "old content");
  auto client = f_.agent().Connect();
  CallResult b = client->Call("file_upload_begin", {{"path", sb_ + "/up"}});
  std::string handle = Str(b.result, "handle");
  ASSERT_TRUE(client
                  ->Call("file_upload_chunk",
                         {{"handle", handle}, {"offset", 0}, {"data", Base64Encode("new data")}})
                  .ok);
  CallResult c =
      client->Call("file_upload_commit", {{"handle", handle}, {"sha256", Sha256Hex("other data")}});
  ASSERT_FALSE(c.ok);
  EXPECT_EQ(c.error_code, -32008);
  EXPECT_EQ(Str(c.error_data, "actual"), Sha256Hex("new data"));
  EXPECT_EQ(ReadFileText(sb_ + "/up"), "old content");
  EXPECT_TRUE(TempNames(sb_).empty());
  // A size that does not match is refused too, and a bad digest is a param error.
  b = client->Call("file_upload_begin", {{"path", sb_ + "/up"}, {"size", 3}});
  handle = Str(b.result, "handle");
  EXPECT_EQ(client
                ->Call("file_upload_chunk",
                       {{"handle", handle}, {"offset", 2}, {"data", Base64Encode("xy")}})
                .error_code,
            -32602);
  EXPECT_EQ(client->Call("file_upload_commit", {{"handle", handle}, {"sha256", "zz"}}).error_code,
            -32602);
  EXPECT_EQ(client->Call("file_upload_commit", {{"handle", handle}, {"sha256", Sha256Hex("")}})
                .error_code,
            -32008);
  EXPECT_EQ(ReadFileText(sb_ + "/up"), "old content");
}

TEST_F(FileMethodsTest, UploadChunksMayRepeatOverlapAndLeaveGapsFilledLater) {
  auto client = f_.agent().Connect();
  CallResult b = client->Call("file_upload_begin", {{"path", sb_ + "/ov"}});
  std::string handle = Str(b.result, "handle");
  auto chunk = [&](uint64_t off, const std::string& bytes) {
    CallResult r = client->Call(
        "file_upload_chunk", {{"handle", handle}, {"offset", off}, {"data", Base64Encode(bytes)}});
    ASSERT_TRUE(r.ok) << r.error_message;
  };
  chunk(20, "CCCCC");       // early: waits for the gap
  chunk(0, "AAAAAAAAAA");   // hashed
  chunk(0, "BBBBB");        // rewrites hashed bytes
  chunk(10, "DDDDDDDDDD");  // fills the gap
  std::string expected = "BBBBBAAAAADDDDDDDDDDCCCCC";
  CallResult c =
      client->Call("file_upload_commit", {{"handle", handle}, {"sha256", Sha256Hex(expected)}});
  ASSERT_TRUE(c.ok) << c.error_message;
  EXPECT_EQ(ReadFileText(sb_ + "/ov"), expected);
}

TEST_F(FileMethodsTest, UploadAbortDiscardsEverything) {
  auto client = f_.agent().Connect();
  CallResult b = client->Call("file_upload_begin", {{"path", sb_ + "/ab"}, {"mode", "create_new"}});
  std::string handle = Str(b.result, "handle");
  ASSERT_TRUE(client
                  ->Call("file_upload_chunk",
                         {{"handle", handle}, {"offset", 0}, {"data", Base64Encode("zzz")}})
                  .ok);
  ASSERT_TRUE(client->Call("file_upload_abort", {{"handle", handle}}).ok);
  EXPECT_FALSE(fs::exists(sb_ + "/ab"));
  EXPECT_TRUE(TempNames(sb_).empty());
  EXPECT_EQ(client
                ->Call("file_upload_chunk",
                       {{"handle", handle}, {"offset", 0}, {"data", Base64Encode("z")}})
                .error_code,
            -32001);
}

TEST(FileUploadExpiry, IdleSessionsExpire) {
  ::setenv("KVMMANAGER_UPLOAD_IDLE_SECONDS", "1", 1);
  FilesFixture f("");
  ::unsetenv("KVMMANAGER_UPLOAD_IDLE_SECONDS");
  CallResult b = f.Call("file_upload_begin", {{"path", f.sandbox() + "/slow"}});
  ASSERT_TRUE(b.ok) << b.error_message;
  EXPECT_EQ(b.result.at("expires_after_idle_seconds").to_number<int>(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  CallResult c =
      f.Call("file_upload_chunk",
             {{"handle", Str(b.result, "handle")}, {"offset", 0}, {"data", Base64Encode("late")}});
  EXPECT_EQ(c.error_code, -32001);
  EXPECT_FALSE(fs::exists(f.sandbox() + "/slow"));
}

TEST(FileLimits, TooLargeIsRefusedBeforeAnythingIsWritten) {
  FilesFixture f("", 1);  // max_file_size_mb 1
  std::string sb = f.sandbox();
  std::string two_mb(2 << 20, 'x');
  WriteFile(sb + "/huge", two_mb);
  CallResult r = f.Read(sb + "/huge");
  EXPECT_EQ(r.error_code, -32002);
  EXPECT_EQ(r.error_data.at("limit_bytes").to_number<uint64_t>(), 1u << 20);
  EXPECT_EQ(f.Call("file_upload_begin", {{"path", sb + "/u"}, {"size", 2 << 20}}).error_code,
            -32002);
  CallResult b = f.Call("file_upload_begin", {{"path", sb + "/u"}});
  CallResult c = f.Call("file_upload_chunk", {{"handle", Str(b.result, "handle")},
                                              {"offset", (1 << 20) - 1},
                                              {"data", Base64Encode("ab")}});
  EXPECT_EQ(c.error_code, -32002);
  WriteFile(sb + "/almost", std::string((1 << 20) - 2, 'a'));
  EXPECT_EQ(f.Write(sb + "/almost", "abc", "append").error_code, -32002);
  EXPECT_EQ(fs::file_size(sb + "/almost"), (1u << 20) - 2);
  EXPECT_TRUE(f.Write(sb + "/almost", "ab", "append").ok);
}

TEST_F(FileMethodsTest, ListWithLimitZeroIsRefusedRatherThanAPageThatNeverAdvances) {
  WriteFile(sb_ + "/a", "a");
  CallResult r = f_.Call("file_list", {{"path", sb_}, {"limit", 0}});
  EXPECT_EQ(r.error_code, -32602);
  EXPECT_TRUE(f_.Call("file_list", {{"path", sb_}, {"limit", 1}}).ok);
}

// The reply holds the directory's path as JSON: a name of control characters takes six bytes
// a character there, and the page must still fit in max_message_size_kb.
TEST_F(FileMethodsTest, ListPageFitsTheMessageLimitWhenThePathNeedsEscaping) {
  std::string dir = sb_;
  std::string ctrl(200, '\x01');
  for (int level = 0; level < 15; ++level) dir += "/" + ctrl;  // ~3 KB, ~18 KB escaped
  fs::create_directories(dir);
  for (int i = 0; i < 3000; ++i) WriteFile(dir + "/" + std::to_string(100000 + i), "");
  auto client = f_.agent().Connect();
  json::object params{{"path", dir}};
  std::string request =
      R"({"jsonrpc":"2.0","id":1,"method":"file_list","params":)" + json::serialize(params) + "}";
  client->SendLine(request);
  std::string reply = client->ReadLine();
  EXPECT_LE(reply.size() + 1, 64u * 1024) << "reply of " << reply.size() << " bytes";
  json::value v = json::parse(reply);
  ASSERT_TRUE(v.as_object().contains("result")) << reply.substr(0, 300);
  EXPECT_GT(v.at("result").at("entries").as_array().size(), 0u);
  EXPECT_FALSE(v.at("result").at("next_offset").is_null());
}

// st_size 0 is how procfs files look, so content past max_file_size is refused there; a
// plain empty file has none, and any offset is simply its end.
TEST_F(FileMethodsTest, EmptyFileReadFarPastTheLimitIsAtItsEnd) {
  WriteFile(sb_ + "/empty", "");
  CallResult r = f_.Call("file_read", {{"path", sb_ + "/empty"}, {"offset", 1LL << 40}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(Str(r.result, "data"), "");
  EXPECT_TRUE(r.result.at("eof").as_bool());
}

TEST_F(FileMethodsTest, ConcurrentWritersToOnePathLeaveOneWholeVersion) {
  std::string target = sb_ + "/shared";
  std::vector<std::thread> writers;
  std::mutex failures_mutex;
  std::vector<std::string> failures;  // "code message", to read when this fails
  for (int t = 0; t < 6; ++t) {
    writers.emplace_back([&, t] {
      auto client = f_.agent().Connect();
      std::string content(40000, static_cast<char>('a' + t));
      for (int i = 0; i < 20; ++i) {
        CallResult r =
            client->Call("file_write", {{"path", target}, {"data", Base64Encode(content)}});
        if (!r.ok && r.error_code != -32004) {  // busy is an allowed answer, nothing else
          std::lock_guard lock(failures_mutex);
          failures.push_back(std::to_string(r.error_code) + " " + r.error_message);
        }
      }
    });
  }
  for (auto& w : writers) w.join();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed writes, first: " << failures.front();
  std::string final_text = ReadFileText(target);
  ASSERT_EQ(final_text.size(), 40000u);
  EXPECT_EQ(final_text, std::string(40000, final_text[0]));
  EXPECT_TRUE(TempNames(sb_).empty());
}

TEST(FileCrashSafety, KillDuringWritesLeavesOldOrNewContentAndStrayTempsAreSwept) {
  TempDir box;
  std::string dir = box / "data";
  fs::create_directories(dir);
  std::string target = dir + "/target";
  std::string a(45000, 'A'), b(45000, 'B');
  WriteFile(target, a);
  std::string config = ConfigJson({dir}, {dir});
  std::mt19937 rng(42);
  for (int round = 0; round < 6; ++round) {
    AgentProcess::Options options;
    options.config_json = config;
    auto agent = std::make_unique<AgentProcess>(options);
    WaitUntilServing(*agent);
    std::atomic<bool> stop{false};
    std::vector<std::thread> writers;
    for (int t = 0; t < 3; ++t) {
      writers.emplace_back([&, t] {
        try {
          auto client = agent->Connect(std::chrono::seconds(5));
          for (int i = 0; !stop; ++i) {
            client->Call("file_write",
                         {{"path", target}, {"data", Base64Encode((i + t) % 2 ? b : a)}});
          }
        } catch (const ClientError&) {  // the agent died under us: expected
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 250));
    agent->Signal(SIGKILL);
    agent->WaitExit(std::chrono::seconds(10));
    stop = true;
    for (auto& w : writers) w.join();
    std::string now = ReadFileText(target);
    ASSERT_TRUE(now == a || now == b)
        << "torn file after kill, round " << round << ", size " << now.size();
  }
  // A stray named temp (what a kill between link and rename leaves) goes at the next start.
  WriteFile(dir + "/.kvmmanager-tmp.deadbeef", "stray");
  fs::create_directories(dir + "/sub");
  WriteFile(dir + "/sub/.kvmmanager-tmp.cafe", "stray");
  AgentProcess::Options options;
  options.config_json = config;
  AgentProcess agent(options);
  WaitUntilServing(agent);
  EXPECT_TRUE(TempNames(dir).empty());
  EXPECT_NE(agent.Stderr().find("stray temp"), std::string::npos);
}

// mkdir -p of the allowed entry itself: it exists, which with parents is fine, as anywhere.
TEST_F(FileMethodsTest, MkdirWithParentsOfTheAllowedEntryItselfIsAnExistingDirectory) {
  CallResult r = f_.Call("file_mkdir", {{"path", sb_}, {"parents", true}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_FALSE(r.result.at("created").as_bool());
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_}}).error_code, -32007);
  EXPECT_EQ(f_.Call("file_delete", {{"path", sb_}}).error_code, -32000);  // still not removable
  EXPECT_TRUE(fs::is_directory(sb_));
}

// A level that is a file or a symlink is what a path through it would meet (not a directory,
// the symlink policy), not "already exists" (found by QA); the last level existing as a file
// is still "already exists", as mkdir -p says.
TEST_F(FileMethodsTest, MkdirThroughAFileOrSymlinkSaysWhatItMet) {
  WriteFile(sb_ + "/u1", "file");
  fs::create_directory_symlink(sb_, sb_ + "/lnk");
  ASSERT_TRUE(
      f_.Call("file_mkdir", {{"path", sb_ + "/p1/p2"}, {"parents", true}, {"permissions", "0500"}})
          .ok);
  EXPECT_EQ(fs::status(sb_ + "/p1").permissions(), fs::perms(0755));  // as mkdir -p -m
  EXPECT_EQ(fs::status(sb_ + "/p1/p2").permissions(), fs::perms(0500));
  CallResult through = f_.Call("file_mkdir", {{"path", sb_ + "/u1/x"}, {"parents", true}});
  EXPECT_EQ(through.error_code, -32001) << through.error_message;
  EXPECT_NE(through.error_message.find("Not a directory"), std::string::npos)
      << through.error_message;
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_ + "/u1/x"}}).error_code, -32001);
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_ + "/u1/"}}).error_code, -32001);
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_ + "/u1"}, {"parents", true}}).error_code, -32007);
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_ + "/lnk/x"}, {"parents", true}}).error_code,
            -32000);
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_ + "/lnk"}, {"parents", true}}).error_code, -32000);
}

// The size cap covers every read of content (file_stat's sha256 read a file of any size), and
// a chunk holds at most the chunk_size its upload_begin announced (one byte more was taken).
TEST_F(FileMethodsTest, HashAndChunksKeepToTheirLimits) {
  WriteFile(sb_ + "/big", std::string(10 * 1024 * 1024 + 1, 'b'));  // max_file_size_mb is 10
  CallResult hash = f_.Call("file_stat", {{"path", sb_ + "/big"}, {"sha256", true}});
  EXPECT_EQ(hash.error_code, -32002) << hash.error_message;
  EXPECT_TRUE(f_.Call("file_stat", {{"path", sb_ + "/big"}}).ok);  // stat alone reads nothing
  CallResult b = f_.Call("file_upload_begin", {{"path", sb_ + "/up"}});
  ASSERT_TRUE(b.ok) << b.error_message;
  size_t chunk = b.result.at("chunk_size").to_number<size_t>();
  std::string handle = Str(b.result, "handle");
  CallResult over = f_.Call(
      "file_upload_chunk",
      {{"handle", handle}, {"offset", 0}, {"data", Base64Encode(std::string(chunk + 1, 'x'))}});
  EXPECT_EQ(over.error_code, -32002) << over.error_message;
  EXPECT_TRUE(
      f_.Call("file_upload_chunk",
              {{"handle", handle}, {"offset", 0}, {"data", Base64Encode(std::string(chunk, 'x'))}})
          .ok);
  f_.Call("file_upload_abort", {{"handle", handle}});
}

TEST_F(FileMethodsTest, ListStatMkdirDelete) {
  ASSERT_TRUE(f_.Call("file_mkdir", {{"path", sb_ + "/d/e/f"}, {"parents", true}}).ok);
  EXPECT_TRUE(fs::is_directory(sb_ + "/d/e/f"));
  EXPECT_EQ(f_.Call("file_mkdir", {{"path", sb_ + "/d"}}).error_code, -32007);
  EXPECT_TRUE(f_.Call("file_mkdir", {{"path", sb_ + "/d"}, {"parents", true}}).ok);
  for (int i = 0; i < 1000; ++i) {
    WriteFile(sb_ + "/d/a-somewhat-longer-file-name-" + std::to_string(i), "x");
  }
  size_t seen = 0;
  uint64_t offset = 0;
  int pages = 0;
  for (;;) {
    CallResult l = f_.Call("file_list", {{"path", sb_ + "/d"}, {"offset", offset}});
    ASSERT_TRUE(l.ok) << l.error_message;
    ++pages;
    seen += l.result.at("entries").as_array().size();
    EXPECT_EQ(l.result.at("total").to_number<uint64_t>(), 1001u);
    if (l.result.at("next_offset").is_null()) break;
    offset = l.result.at("next_offset").to_number<uint64_t>();
  }
  EXPECT_EQ(seen, 1001u);
  EXPECT_GT(pages, 1);  // a page stays below max_message_size_kb
  WriteFile(sb_ + "/s", "abc");
  CallResult st = f_.Call("file_stat", {{"path", sb_ + "/s"}, {"sha256", true}});
  ASSERT_TRUE(st.ok);
  EXPECT_EQ(Str(st.result, "type"), "file");
  EXPECT_EQ(st.result.at("size").to_number<int>(), 3);
  EXPECT_EQ(Str(st.result, "sha256"), Sha256Hex("abc"));
  EXPECT_EQ(f_.Call("file_stat", {{"path", sb_ + "/none"}}).error_code, -32001);
  EXPECT_EQ(f_.Call("file_delete", {{"path", sb_ + "/d/e"}}).error_code, -32008);
  EXPECT_TRUE(f_.Call("file_delete", {{"path", sb_ + "/s"}}).ok);
  EXPECT_FALSE(fs::exists(sb_ + "/s"));
  EXPECT_EQ(f_.Call("file_delete", {{"path", sb_ + "/s"}}).error_code, -32001);
  EXPECT_EQ(f_.Call("file_delete", {{"path", sb_}}).error_code, kDenied);
  EXPECT_TRUE(fs::is_directory(sb_));
}

TEST_F(FileMethodsTest, CtlCopiesBothWaysAndVerifies) {
  std::string local = f_.box("local.bin");
  std::string data = RandomBytes(2500000, 3);
  WriteFile(local, data);
  RunResult up = Ctl({"cp", local, ":" + sb_ + "/remote.bin"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.out.find(Sha256Hex(data)), std::string::npos) << up.out;
  EXPECT_EQ(ReadFileText(sb_ + "/remote.bin"), data);
  RunResult down = Ctl({"cp", ":" + sb_ + "/remote.bin", f_.box("back.bin")});
  ASSERT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(ReadFileText(f_.box("back.bin")), data);
  EXPECT_FALSE(PartFileSize(f_.box("back.bin")).has_value());
  WriteFile(sb_ + "/hello.txt", "hello\n");
  RunResult cat = Ctl({"cat", ":" + sb_ + "/hello.txt"});
  EXPECT_EQ(cat.exit_code, 0);
  EXPECT_EQ(cat.out, "hello\n");
  RunResult ls = Ctl({"ls", ":" + sb_});
  EXPECT_EQ(ls.exit_code, 0);
  EXPECT_NE(ls.out.find("remote.bin"), std::string::npos);
  RunResult st = Ctl({"--json", "stat", "--sha256", ":" + sb_ + "/remote.bin"});
  EXPECT_EQ(st.exit_code, 0);
  EXPECT_NE(st.out.find(Sha256Hex(data)), std::string::npos);
  RunResult rm = Ctl({"rm", ":" + sb_ + "/remote.bin"});
  EXPECT_EQ(rm.exit_code, 0);
  EXPECT_FALSE(fs::exists(sb_ + "/remote.bin"));
  RunResult empty_up = Ctl({"cp", "/dev/null", ":" + sb_ + "/x"});
  EXPECT_EQ(empty_up.exit_code, 2);  // not a regular file locally
  WriteFile(f_.box("empty"), "");
  EXPECT_EQ(Ctl({"cp", f_.box("empty"), ":" + sb_ + "/"}).exit_code, 0);
  EXPECT_TRUE(fs::exists(sb_ + "/empty"));
  RunResult denied = Ctl({"cp", local, ":" + f_.outside() + "/x"});
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_NE(denied.err.find("allowed_write_paths"), std::string::npos) << denied.err;
  RunResult clobber = Ctl({"cp", "-n", local, ":" + sb_ + "/hello.txt"});
  EXPECT_EQ(clobber.exit_code, 1);
  EXPECT_EQ(ReadFileText(sb_ + "/hello.txt"), "hello\n");
}

// Like cp(1): a destination that is an existing directory, on either side, receives the file
// under its own name, and a trailing slash is not doubled in the name printed.
TEST_F(FileMethodsTest, CtlCopiesIntoAnExistingDirectoryUnderTheFilesName) {
  std::string local = f_.box("local.bin");
  std::string data = RandomBytes(100000, 4);
  WriteFile(local, data);
  fs::create_directory(sb_ + "/into");
  RunResult up = Ctl({"cp", local, ":" + sb_ + "/into"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.out.find(":" + sb_ + "/into/local.bin "), std::string::npos) << up.out;
  EXPECT_EQ(ReadFileText(sb_ + "/into/local.bin"), data);
  // A directory of that name inside it is refused as before, once, not looped on.
  fs::create_directory(sb_ + "/into/sub");
  WriteFile(f_.box("sub"), "x");
  RunResult nested = Ctl({"cp", f_.box("sub"), ":" + sb_ + "/into"});
  EXPECT_EQ(nested.exit_code, 1);
  EXPECT_NE(nested.err.find("is a directory"), std::string::npos) << nested.err;
  EXPECT_TRUE(fs::is_directory(sb_ + "/into/sub"));

  // A remote directory as the source is refused by the agent's first read; nothing is left.
  RunResult dir_src = Ctl({"cp", ":" + sb_ + "/into", f_.box("dir_src")});
  EXPECT_EQ(dir_src.exit_code, 1);
  EXPECT_NE(dir_src.err.find("is a directory"), std::string::npos) << dir_src.err;
  EXPECT_FALSE(fs::exists(f_.box("dir_src")));
  EXPECT_FALSE(PartFileSize(f_.box("dir_src")).has_value());

  fs::create_directory(f_.box("down"));
  RunResult down = Ctl({"cp", ":" + sb_ + "/into/local.bin", f_.box("down") + "/"});
  ASSERT_EQ(down.exit_code, 0) << down.err;
  EXPECT_NE(down.out.find("-> " + f_.box("down") + "/local.bin "), std::string::npos) << down.out;
  EXPECT_EQ(ReadFileText(f_.box("down") + "/local.bin"), data);
}

// Several sources, as cp(1): each lands in the destination directory under its own name; a
// file that fails does not stop the others, and the exit code is the failure's.
TEST_F(FileMethodsTest, CtlCopiesSeveralFilesIntoADirectoryEachWay) {
  std::string a = RandomBytes(70000, 5), b = RandomBytes(3, 6);
  WriteFile(f_.box("a.bin"), a);
  WriteFile(f_.box("b.bin"), b);
  fs::create_directory(sb_ + "/many");
  RunResult up = Ctl({"cp", f_.box("a.bin"), f_.box("b.bin"), ":" + sb_ + "/many"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(ReadFileText(sb_ + "/many/a.bin"), a);
  EXPECT_EQ(ReadFileText(sb_ + "/many/b.bin"), b);

  fs::create_directory(f_.box("back"));
  RunResult down =
      Ctl({"cp", ":" + sb_ + "/many/a.bin", ":" + sb_ + "/many/b.bin", f_.box("back")});
  ASSERT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(ReadFileText(f_.box("back") + "/a.bin"), a);
  EXPECT_EQ(ReadFileText(f_.box("back") + "/b.bin"), b);

  // A missing file in the middle: the others are still copied, the exit code says it failed.
  fs::remove_all(sb_ + "/many");
  fs::create_directory(sb_ + "/many");
  RunResult partial =
      Ctl({"cp", f_.box("a.bin"), f_.box("missing.bin"), f_.box("b.bin"), ":" + sb_ + "/many/"});
  EXPECT_EQ(partial.exit_code, 2);  // a local file problem
  EXPECT_NE(partial.err.find("missing.bin"), std::string::npos) << partial.err;
  EXPECT_EQ(ReadFileText(sb_ + "/many/a.bin"), a);
  EXPECT_EQ(ReadFileText(sb_ + "/many/b.bin"), b);

  // Several sources need a directory; sources on both sides are refused before anything moves.
  RunResult not_dir =
      Ctl({"cp", ":" + sb_ + "/many/a.bin", ":" + sb_ + "/many/b.bin", f_.box("a.bin")});
  EXPECT_EQ(not_dir.exit_code, 2);
  EXPECT_NE(not_dir.err.find("is not a directory"), std::string::npos) << not_dir.err;
  EXPECT_EQ(ReadFileText(f_.box("a.bin")), a);
  RunResult remote_not_dir =
      Ctl({"cp", f_.box("a.bin"), f_.box("b.bin"), ":" + sb_ + "/many/a.bin"});
  EXPECT_NE(remote_not_dir.exit_code, 0);
  EXPECT_EQ(ReadFileText(sb_ + "/many/a.bin"), a);
  RunResult mixed = Ctl({"cp", f_.box("a.bin"), ":" + sb_ + "/many/b.bin", ":" + sb_ + "/x/"});
  EXPECT_EQ(mixed.exit_code, 2);
  EXPECT_FALSE(fs::exists(sb_ + "/x"));
  for (const char* empty : {":", ""}) {
    RunResult r = Ctl({"cp", "-r", empty[0] ? f_.box("a.bin") : ":" + sb_ + "/many", empty});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("empty path"), std::string::npos) << r.err;
  }
}

// cp -r, both ways, with cp(1)'s naming: a new name receives the tree's contents, an existing
// directory receives the tree under its own name. Symbolic links and special files are named
// on stderr and skipped (exit 1); everything else is copied.
TEST_F(FileMethodsTest, CtlCopiesDirectoryTreesBothWaysWithR) {
  std::string tree = f_.box("tree");
  fs::create_directories(tree + "/sub/deeper");
  fs::create_directories(tree + "/empty");
  std::string big = RandomBytes(300000, 8);
  WriteFile(tree + "/one.txt", "1\n");
  WriteFile(tree + "/sub/two.bin", big);
  WriteFile(tree + "/sub/deeper/three", "3\n");
  fs::create_symlink("one.txt", tree + "/link");

  RunResult up = Ctl({"cp", "-r", "-q", tree, ":" + sb_ + "/copy"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_NE(up.err.find("skipping " + tree + "/link: a symbolic link"), std::string::npos)
      << up.err;
  EXPECT_EQ(ReadFileText(sb_ + "/copy/one.txt"), "1\n");
  EXPECT_EQ(ReadFileText(sb_ + "/copy/sub/two.bin"), big);
  EXPECT_EQ(ReadFileText(sb_ + "/copy/sub/deeper/three"), "3\n");
  EXPECT_TRUE(fs::is_directory(sb_ + "/copy/empty"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(sb_ + "/copy/link")));

  // The destination now exists: the tree goes into it under its own name.
  fs::remove(tree + "/link");
  RunResult again = Ctl({"cp", "-r", "-q", tree, ":" + sb_ + "/copy"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(ReadFileText(sb_ + "/copy/tree/sub/two.bin"), big);

  // Back to the host, a remote symbolic link skipped the same way.
  fs::create_symlink("/etc/passwd", sb_ + "/copy/sub/escape");
  std::string back = f_.box("back");
  RunResult down = Ctl({"cp", "-r", "-q", ":" + sb_ + "/copy", back});
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_NE(down.err.find("skipping :" + sb_ + "/copy/sub/escape: a symbolic link"),
            std::string::npos)
      << down.err;
  EXPECT_EQ(ReadFileText(back + "/sub/two.bin"), big);
  EXPECT_EQ(ReadFileText(back + "/tree/sub/deeper/three"), "3\n");
  EXPECT_TRUE(fs::is_directory(back + "/empty"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(back + "/sub/escape")));

  // A tree the policy does not let the agent create is refused at its first directory, named.
  RunResult refused = Ctl({"cp", "-r", "-q", tree, ":" + f_.outside() + "/tree"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("cannot create :" + f_.outside() + "/tree"), std::string::npos)
      << refused.err;
  EXPECT_NE(refused.err.find("permission_denied"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(f_.outside() + "/tree"));

  // Without -r a directory is refused with the hint, and nothing is created.
  RunResult plain = Ctl({"cp", tree, ":" + sb_ + "/plain"});
  EXPECT_EQ(plain.exit_code, 2);
  EXPECT_NE(plain.err.find("cp -r"), std::string::npos) << plain.err;
  EXPECT_FALSE(fs::exists(sb_ + "/plain"));
}

// cat of a log being written: what was there at the first read comes out, exit 0, instead of
// "the file changed during the copy" half-way (cp still refuses such a copy: it verifies).
TEST_F(FileMethodsTest, CtlCatOfAFileBeingAppendedToPrintsItsContentAtTheStart) {
  std::string start(8 << 20, '\0');
  for (size_t i = 0; i < start.size(); ++i) start[i] = static_cast<char>('a' + i % 26);
  WriteFile(sb_ + "/log", start);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    int fd = ::open((sb_ + "/log").c_str(), O_WRONLY | O_APPEND);
    while (!stop) {
      ASSERT_EQ(::write(fd, "appended line\n", 14), 14);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ::close(fd);
  });
  RunResult cat = Ctl({"cat", ":" + sb_ + "/log"});
  stop = true;
  writer.join();
  ASSERT_EQ(cat.exit_code, 0) << cat.err;
  ASSERT_GE(cat.out.size(), start.size());
  EXPECT_EQ(cat.out.substr(0, start.size()), start);
  EXPECT_EQ(cat.out, ReadFileText(sb_ + "/log").substr(0, cat.out.size()));
}

// Like ls(1): a file is listed as itself; a missing path is still the agent's error.
TEST_F(FileMethodsTest, CtlLsOfAFileShowsThatFileAndOfNothingFails) {
  WriteFile(sb_ + "/hello.txt", "hello\n");
  RunResult file = Ctl({"ls", ":" + sb_ + "/hello.txt"});
  ASSERT_EQ(file.exit_code, 0) << file.err;
  EXPECT_EQ(file.out.rfind("file ", 0), 0u) << file.out;
  EXPECT_NE(file.out.find(" 6  "), std::string::npos) << file.out;
  EXPECT_NE(file.out.find(sb_ + "/hello.txt\n"), std::string::npos) << file.out;
  RunResult raw = Ctl({"--json", "ls", ":" + sb_ + "/hello.txt"});
  ASSERT_EQ(raw.exit_code, 0) << raw.err;
  json::array entries = json::parse(raw.out).as_array();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].at("name"), json::value(sb_ + "/hello.txt"));
  EXPECT_EQ(entries[0].at("type"), "file");
  EXPECT_EQ(entries[0].at("size"), 6);
  RunResult missing = Ctl({"ls", ":" + sb_ + "/none"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("not_found"), std::string::npos) << missing.err;
  EXPECT_EQ(missing.out, "");
  RunResult denied = Ctl({"ls", ":" + f_.outside()});
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_NE(denied.err.find("allowed_read_paths"), std::string::npos) << denied.err;
  // A symlink below the entry (never followed) is listed as the link itself.
  fs::create_symlink(sb_ + "/hello.txt", sb_ + "/link");
  RunResult link = Ctl({"ls", ":" + sb_ + "/link"});
  ASSERT_EQ(link.exit_code, 0) << link.err;
  EXPECT_EQ(link.out.rfind("symlink ", 0), 0u) << link.out;
  EXPECT_NE(link.out.find(sb_ + "/link\n"), std::string::npos) << link.out;
}

// tmpfs (/tmp on many systems) refuses preadv2's RWF_NOWAIT, yet reads from memory: its files
// are read on the I/O thread as cached files elsewhere are, not moved to a worker per chunk
// (which cost downloads from /dev/shm a quarter of their speed here).
TEST(FileReadOnTmpfs, IsServedOnTheIoThreadWhenNothingIsInSwap) {
  struct statfs sfs {};
  if (::statfs("/dev/shm", &sfs) != 0 || sfs.f_type != TMPFS_MAGIC) {
    GTEST_SKIP() << "/dev/shm is not a tmpfs here";
  }
  struct sysinfo si {};
  ASSERT_EQ(::sysinfo(&si), 0);
  if (si.totalswap != 0) {
    // With swap, the I/O thread reads only after cachestat (Linux 6.5) finds no page in swap.
    GTEST_SKIP() << "this machine has swap: the no-swap rule is not what decides here";
  }
  std::string tmpl = "/dev/shm/kvm-tmpfs-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  std::string dir = tmpl;
  std::string bytes = RandomBytes(300000, 9);
  WriteFile(dir + "/f.bin", bytes);
  {
    AgentProcess::Options options;
    options.config_json = ConfigJson({dir}, {dir}, 10);
    AgentProcess agent(options);
    WaitUntilServing(agent);
    std::string got;
    for (uint64_t offset = 0; offset < bytes.size();) {
      CallResult r = agent.Call("file_read", {{"path", dir + "/f.bin"}, {"offset", offset}});
      ASSERT_TRUE(r.ok) << r.error_message;
      std::string chunk;
      ASSERT_TRUE(Base64Decode(Str(r.result, "data"), chunk));
      ASSERT_FALSE(chunk.empty());
      got += chunk;
      offset += chunk.size();
    }
    EXPECT_EQ(got, bytes);
    EXPECT_EQ(CountOf(agent.Stderr(), "file_read would block on the I/O thread"), 0u)
        << agent.Stderr();
  }
  fs::remove_all(dir);
}

// A file name need not be UTF-8 and a JSON reply must be: such names are listed with U+FFFD in
// place of each stray byte, and the reply stays JSON (it used to carry the raw bytes, which the
// ctl could not parse: `ls` waited for its timeout).
TEST_F(FileMethodsTest, ListOfNamesThatAreNotUtf8IsStillJson) {
  fs::create_directory(sb_ + "/odd");
  WriteFile(sb_ + "/odd/\xff\xfe", "x");
  WriteFile(sb_ + "/odd/caf\xc3\xa9", "y");
  CallResult r = f_.Call("file_list", {{"path", sb_ + "/odd"}});
  ASSERT_TRUE(r.ok) << r.error_message;
  std::vector<std::string> names;
  for (const auto& e : r.result.at("entries").as_array()) {
    names.emplace_back(e.at("name").as_string());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"caf\xc3\xa9", "\xef\xbf\xbd\xef\xbf\xbd"}));
  RunResult ls = Ctl({"ls", ":" + sb_ + "/odd"});
  EXPECT_EQ(ls.exit_code, 0) << ls.err;
  EXPECT_NE(ls.out.find("\xef\xbf\xbd\xef\xbf\xbd"), std::string::npos) << ls.out;
  // A newline or tab in a name does not break the table: one row per entry, shown as '?'.
  WriteFile(sb_ + "/odd/two\nlines\tname", "z");
  RunResult rows = Ctl({"ls", ":" + sb_ + "/odd"});
  EXPECT_EQ(rows.exit_code, 0) << rows.err;
  EXPECT_EQ(std::count(rows.out.begin(), rows.out.end(), '\n'), 3) << rows.out;
  EXPECT_NE(rows.out.find("two?lines?name\n"), std::string::npos) << rows.out;
  RunResult raw = Ctl({"--json", "ls", ":" + sb_ + "/odd"});
  EXPECT_NE(raw.out.find(R"(two\nlines\tname)"), std::string::npos) << raw.out;
}

// The download hashes and writes on a thread of its own; a local write that fails there must
// still end the copy with the error, remove the partial file and not hang.
TEST_F(FileMethodsTest, CtlDownloadThatCannotBeWrittenLocallyFailsAndLeavesNothing) {
  WriteFile(sb_ + "/remote.bin", RandomBytes(2500000, 5));
  std::string target = f_.box("back.bin");
  // A 32 KiB file size limit (ulimit -f counts 512-byte blocks), SIGXFSZ ignored: writes past
  // it fail with EFBIG instead of killing ctl.
  RunResult down =
      RunProgram({"/bin/sh", "-c", "ulimit -f 64; trap '' XFSZ; exec \"$0\" \"$@\"", KVM_CTL_BINARY,
                  "--socket", f_.agent().socket_path(), "cp", ":" + sb_ + "/remote.bin", target},
                 "", std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 2) << down.err;  // a local file problem
  EXPECT_NE(down.err.find("local write: File too large"), std::string::npos) << down.err;
  EXPECT_FALSE(fs::exists(target));
  EXPECT_FALSE(PartFileSize(target).has_value());
  // The agent serves the next client as usual.
  EXPECT_TRUE(f_.Call("ping", {}).ok);
}

// A 256 KiB tmpfs mounted at `dir` for one test (needs root, as CI runs; skipped otherwise).
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& dir) : dir_(dir) {
    fs::create_directories(dir_);
    mounted_ = ::mount("kvm-test", dir_.c_str(), "tmpfs", 0, "size=256k") == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// The upload's declared size is reserved at begin: a disk that cannot hold it says so before
// any data moves, and no temp file is left behind.
TEST_F(FileMethodsTest, UploadTooLargeForTheDiskIsRefusedAtBegin) {
  SmallTmpfs small(sb_ + "/small");
  if (!small.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << small.error();
  CallResult b = f_.Call("file_upload_begin", {{"path", sb_ + "/small/big"}, {"size", 1000000}});
  EXPECT_FALSE(b.ok);
  EXPECT_EQ(b.error_code, -32005) << b.error_message;  // io_error
  EXPECT_NE(b.error_message.find("No space left on device"), std::string::npos) << b.error_message;
  EXPECT_TRUE(fs::is_empty(sb_ + "/small"));
  // What fits is taken as before.
  RunResult up = Ctl({"cp", "/etc/hostname", ":" + sb_ + "/small/fits"});
  EXPECT_EQ(up.exit_code, 0) << up.err;
}

// A commit may name a smaller size than the begin reserved; the installed file keeps no
// blocks past its end.
TEST_F(FileMethodsTest, CommitSmallerThanTheReservedSizeLeavesNoBlocksAllocatedPastTheEnd) {
  CallResult b = f_.Call("file_upload_begin", {{"path", sb_ + "/small"}, {"size", 4000000}});
  ASSERT_TRUE(b.ok) << b.error_message;
  json::string handle = b.result.at("handle").as_string();
  ASSERT_TRUE(f_.Call("file_upload_chunk",
                      {{"handle", handle}, {"offset", 0}, {"data", Base64Encode("hello")}})
                  .ok);
  CallResult c = f_.Call("file_upload_commit",
                         {{"handle", handle}, {"sha256", Sha256Hex("hello")}, {"size", 5}});
  ASSERT_TRUE(c.ok) << c.error_message;
  EXPECT_EQ(ReadFileText(sb_ + "/small"), "hello");
  struct stat st {};
  ASSERT_EQ(::stat((sb_ + "/small").c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, 65536) << "blocks: " << st.st_blocks;
}

TEST_F(FileMethodsTest, CtlDownloadTooLargeForTheLocalDiskFailsAtOnceAndLeavesNothing) {
  SmallTmpfs small(f_.box("small"));
  if (!small.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << small.error();
  WriteFile(sb_ + "/remote.bin", RandomBytes(1000000, 9));
  RunResult down = Ctl({"cp", ":" + sb_ + "/remote.bin", f_.box("small") + "/back.bin"});
  EXPECT_EQ(down.exit_code, 2) << down.err;  // a local file problem
  EXPECT_NE(down.err.find("local write: No space left on device (1000000 bytes needed)"),
            std::string::npos)
      << down.err;
  EXPECT_TRUE(fs::is_empty(f_.box("small")));
  EXPECT_TRUE(f_.Call("ping", {}).ok);
}

// ---------------------------------------------------------------- Ctrl-C during a copy

// Polls `done` every millisecond for up to 20 s.
template <class Fn>
bool WaitFor(Fn done) {
  for (int i = 0; i < 20000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// How many of `pid`'s open files lie under `dir` (an upload's temp file and directory), and
// the size of the largest.
struct OpenFiles {
  int count = 0;
  uint64_t largest = 0;
};
OpenFiles OpenFilesUnder(pid_t pid, const std::string& dir) {
  OpenFiles out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code link_ec;
    std::string target = fs::read_symlink(e.path(), link_ec).string();
    if (link_ec || target.rfind(dir, 0) != 0) continue;
    ++out.count;
    struct stat st {};
    if (::stat(e.path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      out.largest = std::max(out.largest, static_cast<uint64_t>(st.st_size));
    }
  }
  return out;
}

// A client that vanishes without an abort (kill -9, a lost connection) leaves its session; it
// goes at the idle expiry with its temp file and reserved space, whether or not any other
// upload call ever comes by.
TEST(FileUploadExpiry, AnAbandonedSessionGoesWithoutAnyFurtherCall) {
  ::setenv("KVMMANAGER_UPLOAD_IDLE_SECONDS", "1", 1);
  FilesFixture f("");
  ::unsetenv("KVMMANAGER_UPLOAD_IDLE_SECONDS");
  CallResult b = f.Call("file_upload_begin", {{"path", f.sandbox() + "/gone"}, {"size", 1000000}});
  ASSERT_TRUE(b.ok) << b.error_message;
  ASSERT_TRUE(f.Call("file_upload_chunk", {{"handle", Str(b.result, "handle")},
                                           {"offset", 0},
                                           {"data", Base64Encode(std::string(4096, 'x'))}})
                  .ok);
  EXPECT_GE(OpenFilesUnder(f.agent().pid(), f.sandbox()).count, 1);
  // No call of any kind from here on.
  EXPECT_TRUE(WaitFor([&] { return OpenFilesUnder(f.agent().pid(), f.sandbox()).count == 0; }))
      << "the abandoned session's files are still open after 20 s";
  EXPECT_TRUE(fs::is_empty(f.sandbox()));
}

// On a full disk, the space reserved by a session idle for 2 s (a client killed mid-copy) is
// taken back for a new upload; a live session's reservation stands.
TEST_F(FileMethodsTest, ARetriedUploadIsNotRefusedForItsAbandonedPredecessorsReservation) {
  SmallTmpfs small(sb_ + "/small");
  if (!small.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << small.error();
  // 256 KiB holds one of these reservations, not two.
  CallResult a = f_.Call("file_upload_begin", {{"path", sb_ + "/small/a"}, {"size", 200000}});
  ASSERT_TRUE(a.ok) << a.error_message;
  ASSERT_TRUE(f_.Call("file_upload_chunk", {{"handle", Str(a.result, "handle")},
                                            {"offset", 0},
                                            {"data", Base64Encode(std::string(1000, 'a'))}})
                  .ok);
  CallResult live = f_.Call("file_upload_begin", {{"path", sb_ + "/small/b"}, {"size", 200000}});
  EXPECT_EQ(live.error_code, -32005) << "a live session's reservation was taken";
  std::this_thread::sleep_for(std::chrono::milliseconds(2300));
  CallResult retry = f_.Call("file_upload_begin", {{"path", sb_ + "/small/b"}, {"size", 200000}});
  EXPECT_TRUE(retry.ok) << retry.error_message;
}

// Copies big enough to be caught mid-way (64 MB: over 60 ms even at 1 GB/s).
class CopyInterruptTest : public ::testing::Test {
 protected:
  FilesFixture f_{"", 100};
  std::string sb_ = f_.sandbox();
  std::string data_ = RandomBytes(64000000, 11);
};

TEST_F(CopyInterruptTest, CtrlCDuringADownloadRemovesThePartialFile) {
  WriteFile(sb_ + "/big.bin", data_);
  std::string local = f_.box("big.bin");
  for (int signal : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(signal);
    BackgroundProcess ctl({KVM_CTL_BINARY, "--socket", f_.agent().socket_path(), "cp",
                           ":" + sb_ + "/big.bin", local});
    ASSERT_GT(ctl.pid(), 0);
    ASSERT_TRUE(WaitFor([&] { return PartFileSize(local).value_or(0) > 0; }));
    ::kill(ctl.pid(), signal);
    EXPECT_EQ(ctl.Wait(std::chrono::seconds(20)), 128 + signal);
    EXPECT_FALSE(PartFileSize(local).has_value());
    EXPECT_FALSE(fs::exists(local));
  }
  EXPECT_TRUE(f_.Call("ping", {}).ok);
}

// Caught twice: as file_upload_begin runs (ctl lets the call finish, to know the session it must
// abort) and once chunks have been written.
TEST_F(CopyInterruptTest, CtrlCDuringAnUploadAbortsTheSessionInTheAgent) {
  std::string local = f_.box("big.bin");
  WriteFile(local, data_);
  for (uint64_t written_before_signal : {uint64_t{0}, uint64_t{4} << 20}) {
    SCOPED_TRACE(written_before_signal);
    BackgroundProcess ctl(
        {KVM_CTL_BINARY, "--socket", f_.agent().socket_path(), "cp", local, ":" + sb_ + "/up.bin"});
    ASSERT_GT(ctl.pid(), 0);
    ASSERT_TRUE(WaitFor([&] {
      OpenFiles open = OpenFilesUnder(f_.agent().pid(), sb_);
      return open.count > 0 && open.largest >= written_before_signal;
    }));
    ::kill(ctl.pid(), SIGINT);
    EXPECT_EQ(ctl.Wait(std::chrono::seconds(20)), 128 + SIGINT);
    // Aborted, not left to expire (300 s): the agent closes the temp file and the directory.
    EXPECT_TRUE(WaitFor([&] { return OpenFilesUnder(f_.agent().pid(), sb_).count == 0; }));
    EXPECT_FALSE(fs::exists(sb_ + "/up.bin"));
  }
}

TEST_F(FileMethodsTest, CtlCatsProcfsFilesWholeAndCopiesOnlyStableOnes) {
  // /proc/kallsyms: megabytes behind a size of 0, so many chunks (the agent allows 10 MB here).
  std::string expected = ReadFileText("/proc/kallsyms");
  RunResult cat = Ctl({"cat", ":/proc/kallsyms"});
  ASSERT_EQ(cat.exit_code, 0) << cat.err;
  EXPECT_GT(cat.out.size(), 48384u);
  EXPECT_EQ(cat.out.size(), expected.size());
  EXPECT_TRUE(cat.out == expected);

  RunResult cp = Ctl({"cp", ":/proc/version", f_.box("version")});
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_EQ(ReadFileText(f_.box("version")), ReadFileText("/proc/version"));

  // Every open of the kernel's uuid file makes a new uuid, so the agent's hash pass and the
  // read never see the same content (even when they run at once, as they may: ctl sends them
  // together): the sha256 check fails, with a hint, and nothing is left behind.
  RunResult changing = Ctl({"cp", ":/proc/sys/kernel/random/uuid", f_.box("uuid")});
  EXPECT_EQ(changing.exit_code, 1);
  EXPECT_NE(changing.err.find("use cat for those"), std::string::npos) << changing.err;
  EXPECT_FALSE(fs::exists(f_.box("uuid")));
  EXPECT_FALSE(PartFileSize(f_.box("uuid")).has_value());
}

}  // namespace
}  // namespace kvm::test
