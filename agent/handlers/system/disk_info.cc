#include "agent/handlers/system/disk_info.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "agent/core/file_util.h"
#include "protocol/errors.h"

namespace kvm::sysinfo {
namespace json = boost::json;

std::string UnescapeOctal(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' &&
        s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      out.push_back(
          static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<MountEntry> ParseMountinfo(std::string_view text) {
  std::vector<MountEntry> out;
  for (auto line : SplitLines(text)) {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    auto f = SplitFields(line);
    if (f.size() < 7) continue;
    size_t sep = 6;
    while (sep < f.size() && f[sep] != "-") ++sep;
    if (sep + 2 >= f.size()) continue;  // need fstype and source
    MountEntry m;
    auto id = ParseU64(f[0]), parent = ParseU64(f[1]);
    size_t colon = f[2].find(':');
    if (!id || !parent || colon == std::string_view::npos) continue;
    auto major = ParseU64(f[2].substr(0, colon)), minor = ParseU64(f[2].substr(colon + 1));
    if (!major || !minor) continue;
    m.id = static_cast<int>(*id);
    m.parent = static_cast<int>(*parent);
    m.major = static_cast<unsigned>(*major);
    m.minor = static_cast<unsigned>(*minor);
    m.fs_root = UnescapeOctal(f[3]);
    m.mount_point = UnescapeOctal(f[4]);
    m.options = std::string(f[5]);
    m.fstype = UnescapeOctal(f[sep + 1]);
    m.source = UnescapeOctal(f[sep + 2]);
    if (sep + 3 < f.size()) m.super_options = std::string(f[sep + 3]);
    out.push_back(std::move(m));
  }
  return out;
}

bool IsInMemoryStatfs(std::string_view fstype) {
  static const std::set<std::string_view> kLocal =
      {"ext2",  "ext3",  "ext4",     "xfs",     "btrfs", "vfat",  "msdos",
       "exfat", "f2fs",  "jfs",      "iso9660", "udf",   "erofs", "squashfs",
       "tmpfs", "ramfs", "devtmpfs", "ntfs3",   "rootfs"};  // an initramfs root (ramfs or tmpfs)
  return kLocal.count(fstype) != 0;
}

bool IsPseudoFilesystem(std::string_view fstype) {
  static const std::set<std::string_view> kPseudo = {
      "autofs",       "binfmt_misc",   "bpf",
      "cgroup",       "cgroup2",       "configfs",
      "debugfs",      "devpts",        "devtmpfs",
      "efivarfs",     "fusectl",       "hugetlbfs",
      "mqueue",       "nsfs",          "overlay",
      "proc",         "pstore",        "ramfs",
      "rpc_pipefs",   "securityfs",    "selinuxfs",
      "sysfs",        "tmpfs",         "tracefs",
      "aufs",         "nfsd",          "devfs",
      "binder",       "fuse.lxcfs",    "fuse.gvfsd-fuse",
      "fuse.portal",  "fuse.snapfuse", "squashfs.pseudo",
      "zonefs.pseudo"};
  return kPseudo.count(fstype) != 0;
}

namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

std::string Basename(std::string_view path) {
  size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = ::opendir(path.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      out.emplace_back(e->d_name);
    }
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool IsPciAddress(std::string_view s) {  // dddd:bb:dd.f
  if (s.size() != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9, 11}) {
    if (!std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

// "H:C:T:L" of a SCSI device directory.
std::optional<std::array<uint64_t, 4>> ScsiAddress(std::string_view s) {
  std::array<uint64_t, 4> v{};
  for (int i = 0; i < 4; ++i) {
    size_t colon = i < 3 ? s.find(':') : s.size();
    if (colon == std::string_view::npos) return std::nullopt;
    auto n = ParseU64(s.substr(0, colon));
    if (!n) return std::nullopt;
    v[i] = *n;
    if (i < 3) s.remove_prefix(colon + 1);
  }
  return v;
}

bool StartsWithNumbered(std::string_view s, std::string_view prefix) {
  return s.size() > prefix.size() && s.substr(0, prefix.size()) == prefix &&
         ParseU64(s.substr(prefix.size())).has_value();
}

std::optional<std::string> Serial(const std::string& disk_dir) {
  for (const char* f : {"/serial", "/device/serial"}) {
    if (auto v = ReadSmallFile(disk_dir + f, 4096)) {
      std::string s(Trim(std::string_view(*v).substr(0, std::string_view(*v).find('\0'))));
      if (!s.empty()) return s;
    }
  }
  // SCSI: the Unit Serial Number VPD page (4-byte header, then ASCII).
  if (auto v = ReadSmallFile(disk_dir + "/device/vpd_pg80", 4096); v && v->size() > 4) {
    std::string s(Trim(std::string_view(*v).substr(4)));
    if (!s.empty()) return s;
  }
  if (auto v = ReadSmallFile(disk_dir + "/device/wwid", 4096)) {
    std::string s(Trim(*v));
    if (!s.empty()) return s;
  }
  return std::nullopt;
}

std::optional<std::string> AttrAt(const std::string& path) {
  auto v = ReadSmallFile(path, 4096);
  if (!v) return std::nullopt;
  std::string s(Trim(std::string_view(*v).substr(0, std::string_view(*v).find('\0'))));
  if (s.empty()) return std::nullopt;
  return s;
}

json::object DescribeDisk(const SystemRoot& sys, const std::string& disk_dir,
                          DiskAttributeCache* cache) {
  std::string name = Basename(disk_dir);
  json::value size = nullptr;
  if (auto s = AttrAt(disk_dir + "/size")) {
    if (auto sectors = ParseU64(*s)) size = *sectors * 512;  // sysfs counts 512-byte sectors
  }
  // Walk the device path: the bus that carries the disk and the addresses along the way.
  std::string devices_root = sys.Path("/sys/devices/");
  std::string_view rel(disk_dir);
  if (rel.substr(0, devices_root.size()) == devices_root) rel.remove_prefix(devices_root.size());
  std::string pci, bus;
  std::optional<std::array<uint64_t, 4>> scsi;
  bool virtio = false, ata = false, usb = false, nvme = false, mmc = false, xen = false,
       virt = false;
  size_t i = 0;
  while (i < rel.size()) {
    size_t slash = rel.find('/', i);
    if (slash == std::string_view::npos) slash = rel.size();
    std::string_view c = rel.substr(i, slash - i);
    if (i == 0 && c == "virtual") virt = true;
    if (IsPciAddress(c)) pci = std::string(c);
    if (StartsWithNumbered(c, "virtio")) virtio = true;
    if (StartsWithNumbered(c, "ata")) ata = true;
    if (StartsWithNumbered(c, "usb")) usb = true;
    if (c == "nvme" || StartsWithNumbered(c, "nvme")) nvme = true;
    if (c.substr(0, 3) == "mmc") mmc = true;
    if (c == "xen" || c.substr(0, 4) == "vbd-") xen = true;
    if (auto a = ScsiAddress(c)) scsi = a;
    i = slash + 1;
  }
  if (nvme)
    bus = "nvme";
  else if (usb)
    bus = "usb";
  else if (ata)
    bus = "ata";
  else if (scsi)
    bus = "scsi";
  else if (virtio)
    bus = "virtio";
  else if (mmc)
    bus = "mmc";
  else if (xen)
    bus = "xen";
  else if (virt)
    bus = "virtual";
  else
    bus = "unknown";
  auto read = [&] {
    return DiskAttributeCache::Attrs{Serial(disk_dir), AttrAt(disk_dir + "/device/model"),
                                     AttrAt(disk_dir + "/device/vendor")};
  };
  auto attrs = cache ? cache->Get(disk_dir, read) : read();
  const auto& serial = attrs.serial;
  const auto& model = attrs.model;
  const auto& vendor = attrs.vendor;
  json::value scsi_json = nullptr;
  if (scsi) {
    scsi_json = json::object{
        {"host", (*scsi)[0]}, {"channel", (*scsi)[1]}, {"target", (*scsi)[2]}, {"lun", (*scsi)[3]}};
  }
  auto str = [](const std::optional<std::string>& s) {
    return s ? json::value(ToValidUtf8(*s)) : json::value(nullptr);
  };
  return json::object{
      {"name", ToValidUtf8(name)},
      {"dev", ToValidUtf8("/dev/" + name)},
      {"size_bytes", size},
      {"serial", str(serial)},
      {"model", str(model)},
      {"vendor", str(vendor)},
      {"bus", bus},
      {"pci_address", pci.empty() ? json::value(nullptr) : json::value(pci)},
      {"scsi_address", std::move(scsi_json)},
  };
}

// Adds the disk(s) under the sysfs block device directory `dev_dir`.
void CollectDisks(const SystemRoot& sys, const std::string& dev_dir, int depth,
                  std::set<std::string>& seen, json::array& out, DiskAttributeCache* cache) {
  if (depth > 8) return;
  // A partition's disk is its parent directory.
  std::string disk_dir = dev_dir;
  if (Exists(dev_dir + "/partition")) disk_dir = dev_dir.substr(0, dev_dir.rfind('/'));
  // Stacked devices (device-mapper, md): the disks are below their "slaves".
  auto slaves = ListDir(disk_dir + "/slaves");
  if (!slaves.empty()) {
    for (const auto& s : slaves) {
      if (auto target = ResolveLink(disk_dir + "/slaves/" + s)) {
        CollectDisks(sys, *target, depth + 1, seen, out, cache);
      }
    }
    return;
  }
  if (seen.insert(disk_dir).second) out.push_back(DescribeDisk(sys, disk_dir, cache));
}

}  // namespace

DiskAttributeCache::Attrs DiskAttributeCache::Get(const std::string& disk_dir,
                                                  const std::function<Attrs()>& read) {
  struct stat st;
  uint64_t ino = ::stat(disk_dir.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(disk_dir);
    if (it != entries_.end() && ino != 0 && it->second.first == ino) return it->second.second;
  }
  Attrs attrs = read();
  std::lock_guard lock(mu_);
  if (entries_.size() > 4096) entries_.clear();  // bound: disks come and go over months
  entries_[disk_dir] = {ino, attrs};
  return attrs;
}

json::array DisksOfDevice(const SystemRoot& sys, unsigned major, unsigned minor,
                          std::string_view source, DiskAttributeCache* cache) {
  json::array out;
  std::optional<std::string> dev_dir;
  if (major != 0) {
    char link[64];
    std::snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major, minor);
    dev_dir = ResolveLink(sys.Path(link));
  }
  // Filesystems with anonymous device numbers (btrfs) name their device in the source.
  if (!dev_dir && source.substr(0, 5) == "/dev/") {
    std::string name = Basename(source);
    if (source.substr(0, 12) == "/dev/mapper/") {
      for (const auto& dm : ListDir(sys.Path("/sys/block"))) {
        if (AttrAt(sys.Path("/sys/block/" + dm + "/dm/name")) == name) {
          name = dm;
          break;
        }
      }
    }
    dev_dir = ResolveLink(sys.Path("/sys/class/block/" + name));
    if (!dev_dir) dev_dir = ResolveLink(sys.Path("/sys/block/" + name));
  }
  if (!dev_dir || !Exists(*dev_dir)) return out;
  std::set<std::string> seen;
  CollectDisks(sys, *dev_dir, 0, seen, out, cache);
  return out;
}

namespace {
struct Slot {
  std::string path;
  StatFn fn;
  bool done = false;
  bool abandoned = false;
  int error = 0;
  struct statvfs st {};
};
// A helper with no work for this long exits, so an idle agent keeps no helper threads.
constexpr auto kHelperIdleExit = std::chrono::seconds(10);
}  // namespace

// Helper threads are reused across calls (starting a thread cost about as much as the rest of
// get_disk_usage); a helper stuck in a hung statvfs is simply not idle, so the next call
// starts another one.
struct BoundedStatvfs::Shared {
  std::mutex mu;
  std::condition_variable done_cv;  // a slot finished
  std::condition_variable work_cv;  // a slot was queued
  std::set<std::string> hung;       // paths whose abandoned call has not returned yet
  std::deque<std::shared_ptr<Slot>> queue;
  size_t idle = 0;  // helpers waiting for work

  static void HelperMain(std::shared_ptr<Shared> self) {
    std::unique_lock lock(self->mu);
    for (;;) {
      ++self->idle;
      bool work =
          self->work_cv.wait_for(lock, kHelperIdleExit, [&] { return !self->queue.empty(); });
      --self->idle;
      if (!work) return;
      std::shared_ptr<Slot> slot = std::move(self->queue.front());
      self->queue.pop_front();
      lock.unlock();
      struct statvfs st {};
      int err = slot->fn(slot->path, &st);
      lock.lock();
      slot->done = true;
      slot->error = err;
      slot->st = st;
      if (slot->abandoned) self->hung.erase(slot->path);
      self->done_cv.notify_all();
    }
  }
};

BoundedStatvfs::BoundedStatvfs() : shared_(std::make_shared<Shared>()) {}

size_t BoundedStatvfs::hung_count() const {
  std::lock_guard lock(shared_->mu);
  return shared_->hung.size();
}

std::vector<BoundedStatvfs::Outcome> BoundedStatvfs::Run(const std::vector<std::string>& paths,
                                                         std::chrono::milliseconds timeout,
                                                         const StatFn& fn) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<Outcome> out(paths.size());
  std::vector<std::shared_ptr<Slot>> slots(paths.size());
  std::unique_lock lock(shared_->mu);
  size_t queued = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (shared_->hung.count(paths[i])) {
      out[i].still_hung = true;
      continue;
    }
    auto slot = std::make_shared<Slot>();
    slot->path = paths[i];
    slot->fn = fn;
    shared_->queue.push_back(slot);
    slots[i] = std::move(slot);
    ++queued;
  }
  // One helper per queued path, so every path starts at once: reuse idle ones, start the rest.
  // Detached: a call stuck in the kernel cannot be cancelled; the shared state it holds
  // outlives this request (and the method table).
  size_t pending = shared_->queue.size();
  for (size_t have = shared_->idle; have < pending; ++have) {
    try {
      std::thread(&Shared::HelperMain, shared_).detach();
    } catch (const std::system_error& e) {
      // No thread for the rest: answer them with the error instead of waiting.
      while (shared_->queue.size() > have) {
        auto slot = std::move(shared_->queue.back());
        shared_->queue.pop_back();
        slot->done = true;
        slot->error = e.code().value() ? e.code().value() : EAGAIN;
      }
      break;
    }
  }
  if (queued > 0) shared_->work_cv.notify_all();
  shared_->done_cv.wait_until(lock, deadline, [&] {
    for (const auto& s : slots) {
      if (s && !s->done) return false;
    }
    return true;
  });
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!slots[i]) continue;
    if (slots[i]->done) {
      out[i].done = true;
      out[i].error = slots[i]->error;
      out[i].st = slots[i]->st;
    } else if (auto it = std::find(shared_->queue.begin(), shared_->queue.end(), slots[i]);
               it != shared_->queue.end()) {
      shared_->queue.erase(it);  // never started: reported as not answering, not as hung
    } else {
      slots[i]->abandoned = true;
      shared_->hung.insert(slots[i]->path);
    }
  }
  return out;
}

json::object CollectDiskUsage(const SystemRoot& sys, const DiskOptions& options,
                              BoundedStatvfs& runner) {
  auto text = ReadText(sys, "/proc/self/mountinfo", 16 << 20);
  if (!text) {
    throw RpcError(ErrorCode::kIoError, "cannot read /proc/self/mountinfo",
                   {{"errno", errno}, {"detail", std::strerror(errno)}});
  }
  auto mounts = ParseMountinfo(*text);
  // A mount point mounted over again shows only the top mount (the later line).
  std::map<std::string, size_t> last;
  for (size_t i = 0; i < mounts.size(); ++i) last[mounts[i].mount_point] = i;
  std::vector<const MountEntry*> shown;
  for (size_t i = 0; i < mounts.size(); ++i) {
    if (last[mounts[i].mount_point] != i) continue;
    if (!options.all && IsPseudoFilesystem(mounts[i].fstype)) continue;
    shown.push_back(&mounts[i]);
  }
  StatFn fn = options.stat ? options.stat : [](const std::string& p, struct statvfs* st) {
    return ::statvfs(p.c_str(), st) == 0 ? 0 : errno;
  };
  // Filesystems whose statfs reads counters in memory are asked directly, saving two thread
  // hand-offs; anything that can wait on a server or a daemon (nfs, cifs, fuse, 9p, virtiofs,
  // overlay over those...) goes through the bounded helpers. So does a local filesystem
  // mounted below such a mount, since reaching its mount point walks the path through it.
  std::map<int, const MountEntry*> by_id;
  for (const auto& m : mounts) by_id[m.id] = &m;
  auto direct = [&](const MountEntry* m) {
    for (int depth = 0; m && depth < 64; ++depth) {
      if (!IsInMemoryStatfs(m->fstype)) return false;
      if (m->parent == m->id) break;
      auto it = by_id.find(m->parent);
      m = it == by_id.end() ? nullptr : it->second;
    }
    return true;
  };
  std::vector<BoundedStatvfs::Outcome> results(shown.size());
  std::vector<std::string> paths;
  std::vector<size_t> bounded;  // indexes into shown
  for (size_t i = 0; i < shown.size(); ++i) {
    if (direct(shown[i])) {
      results[i].done = true;
      results[i].error = fn(shown[i]->mount_point, &results[i].st);
    } else {
      paths.push_back(shown[i]->mount_point);
      bounded.push_back(i);
    }
  }
  if (!paths.empty()) {
    auto outcomes = runner.Run(paths, options.timeout, fn);
    for (size_t k = 0; k < bounded.size(); ++k) results[bounded[k]] = outcomes[k];
  }

  std::set<std::pair<unsigned, unsigned>> devices_seen;
  json::array filesystems;
  for (size_t i = 0; i < shown.size(); ++i) {
    const MountEntry& m = *shown[i];
    const auto& r = results[i];
    auto has_opt = [](std::string_view opts, std::string_view o) {
      size_t start = 0;
      while (start <= opts.size()) {
        size_t comma = opts.find(',', start);
        if (comma == std::string_view::npos) comma = opts.size();
        if (opts.substr(start, comma - start) == o) return true;
        start = comma + 1;
      }
      return false;
    };
    // A second view of a filesystem already listed. Not "fs_root != /": btrfs subvolumes
    // (Fedora's / is subvol "/root") are the only view of their data.
    bool bind = !devices_seen.insert({m.major, m.minor}).second;
    json::object fs{
        {"mount_point", ToValidUtf8(m.mount_point)},
        {"source", ToValidUtf8(m.source)},
        {"fstype", ToValidUtf8(m.fstype)},
        {"read_only", has_opt(m.options, "ro") || has_opt(m.super_options, "ro")},
        {"fs_root", ToValidUtf8(m.fs_root)},
        {"bind", bind},
        {"device", json::object{{"major", m.major}, {"minor", m.minor}}},
    };
    if (r.done && r.error == 0) {
      const auto& st = r.st;
      uint64_t frsize = st.f_frsize ? st.f_frsize : st.f_bsize;
      fs["available"] = true;
      fs["total_bytes"] = static_cast<uint64_t>(st.f_blocks) * frsize;
      fs["used_bytes"] =
          static_cast<uint64_t>(st.f_blocks - std::min(st.f_bfree, st.f_blocks)) * frsize;
      fs["free_bytes"] = static_cast<uint64_t>(st.f_bfree) * frsize;
      fs["available_bytes"] = static_cast<uint64_t>(st.f_bavail) * frsize;
      fs["total_inodes"] = static_cast<uint64_t>(st.f_files);
      fs["used_inodes"] = static_cast<uint64_t>(st.f_files - std::min(st.f_ffree, st.f_files));
      fs["free_inodes"] = static_cast<uint64_t>(st.f_ffree);
      fs["error"] = nullptr;
    } else {
      fs["available"] = false;
      for (const char* k : {"total_bytes", "used_bytes", "free_bytes", "available_bytes",
                            "total_inodes", "used_inodes", "free_inodes"}) {
        fs[k] = nullptr;
      }
      if (r.still_hung) {
        fs["error"] = "statvfs of an earlier request has not returned yet (hung mount)";
      } else if (!r.done) {
        fs["error"] = "statvfs did not return within " + std::to_string(options.timeout.count()) +
                      " ms (hung mount)";
      } else {
        fs["error"] = std::string(std::strerror(r.error));
      }
    }
    fs["disks"] = DisksOfDevice(sys, m.major, m.minor, m.source, options.cache);
    filesystems.push_back(std::move(fs));
  }
  return json::object{{"filesystems", std::move(filesystems)}};
}

}  // namespace kvm::sysinfo
