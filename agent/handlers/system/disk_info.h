// get_disk_usage: mounted filesystems from /proc/self/mountinfo, their usage (statvfs, bounded
// per mount so a dead NFS server cannot hang the call) and the disks under them from sysfs.
#pragma once

#include <sys/statvfs.h>

#include <boost/json/object.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/handlers/system/sys_common.h"

namespace kvm::sysinfo {

struct MountEntry {
  int id = 0, parent = 0;
  unsigned major = 0, minor = 0;
  std::string fs_root;      // the directory of the filesystem mounted here ("/" unless a bind)
  std::string mount_point;  // unescaped
  std::string options;      // per-mount options (ro, nosuid...)
  std::string fstype;
  std::string source;  // unescaped
  std::string super_options;
};

// Parses mountinfo; malformed lines are skipped. Octal escapes (\040 \011 \012 \134) decoded.
std::vector<MountEntry> ParseMountinfo(std::string_view text);
std::string UnescapeOctal(std::string_view s);
// proc, sysfs, cgroup, tmpfs, overlay... : left out unless "all" is asked for.
bool IsPseudoFilesystem(std::string_view fstype);
// Local filesystems whose statfs only reads in-memory counters (it cannot wait on a server).
bool IsInMemoryStatfs(std::string_view fstype);

// Serial, model and vendor of disks, kept between calls: reading a virtio disk's serial asks the
// device (a host round trip, ~0.5 ms). Entries are keyed by the sysfs directory and its inode,
// so a disk unplugged and replaced under the same name is read afresh. Thread-safe.
class DiskAttributeCache {
 public:
  struct Attrs {
    std::optional<std::string> serial, model, vendor;
  };
  // Returns the cached attributes of `disk_dir`, or reads them with `read` and keeps them.
  Attrs Get(const std::string& disk_dir, const std::function<Attrs()>& read);

 private:
  std::mutex mu_;
  std::map<std::string, std::pair<uint64_t, Attrs>> entries_;
};

// The disks a block device lives on (itself, the disk of a partition, or every disk under a
// device-mapper/md device), described from sysfs: name, size, serial, bus and addresses.
boost::json::array DisksOfDevice(const SystemRoot& sys, unsigned major, unsigned minor,
                                 std::string_view source, DiskAttributeCache* cache = nullptr);

// statvfs stand-in: returns 0 or an errno value.
using StatFn = std::function<int(const std::string& path, struct statvfs* out)>;

// Runs statvfs calls on helper threads with a deadline. A call that does not return in time is
// left running (it may never return: dead NFS); while it is stuck, later requests for the same
// path are answered "unavailable" at once instead of starting another thread. Thread-safe.
class BoundedStatvfs {
 public:
  struct Outcome {
    bool done = false;        // the call returned in time
    int error = 0;            // errno when it returned with an error
    bool still_hung = false;  // an earlier call on this path has not returned yet
    struct statvfs st {};
  };
  BoundedStatvfs();
  // All paths are started at once; each result waits at most `timeout` from the start.
  std::vector<Outcome> Run(const std::vector<std::string>& paths, std::chrono::milliseconds timeout,
                           const StatFn& fn);
  size_t hung_count() const;

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
};

struct DiskOptions {
  bool all = false;
  std::chrono::milliseconds timeout{2000};
  StatFn stat;                          // empty: the real statvfs
  DiskAttributeCache* cache = nullptr;  // null: read every attribute every time
};

boost::json::object CollectDiskUsage(const SystemRoot& sys, const DiskOptions& options,
                                     BoundedStatvfs& runner);

}  // namespace kvm::sysinfo
