#include "agent/handlers/system/disk_info.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "agent/handlers/system/fixture_test_util.h"
#include "protocol/errors.h"

namespace kvm::sysinfo {
namespace {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using testing::Link;
using testing::Put;

TEST(Mountinfo, OctalEscapesInPathsAreDecoded) {
  auto m = ParseMountinfo(
      "36 25 0:32 / /mnt/with\\040space\\011tab\\012nl\\134back rw,relatime shared:12 - tmpfs "
      "my\\040src rw,size=1024k\n");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].mount_point, "/mnt/with space\ttab\nnl\\back");
  EXPECT_EQ(m[0].source, "my src");
  EXPECT_EQ(m[0].fstype, "tmpfs");
  EXPECT_EQ(m[0].options, "rw,relatime");
  EXPECT_EQ(m[0].super_options, "rw,size=1024k");
  EXPECT_EQ(m[0].major, 0u);
  EXPECT_EQ(m[0].minor, 32u);
  EXPECT_EQ(UnescapeOctal("a\\04"), "a\\04");      // too short to be an escape
  EXPECT_EQ(UnescapeOctal("a\\999b"), "a\\999b");  // not octal
}

TEST(Mountinfo, OptionalFieldsAndMalformedLines) {
  auto m = ParseMountinfo(
      "26 1 254:1 / / rw,relatime shared:1 master:2 propagate_from:3 - ext4 /dev/vda1 rw\n"
      "garbage line\n"
      "27 26 x:1 / /bad rw - ext4 /dev/x rw\n"
      "28 26 8:0 / /nosep rw shared:1 ext4 /dev/sda rw\n"
      "29 26 8:16 /sub /bind ro,relatime - xfs /dev/sdb rw\n");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].fstype, "ext4");
  EXPECT_EQ(m[0].source, "/dev/vda1");
  EXPECT_EQ(m[0].major, 254u);
  EXPECT_EQ(m[1].fs_root, "/sub");
  EXPECT_EQ(m[1].mount_point, "/bind");
}

TEST(Mountinfo, PseudoFilesystemsAreRecognised) {
  for (const char* t : {"proc", "sysfs", "cgroup2", "tmpfs", "overlay", "devtmpfs", "mqueue"}) {
    EXPECT_TRUE(IsPseudoFilesystem(t)) << t;
  }
  for (const char* t : {"ext4", "xfs", "btrfs", "nfs4", "cifs", "vfat", "fuse", "9p", "virtiofs"}) {
    EXPECT_FALSE(IsPseudoFilesystem(t)) << t;
  }
}

// A fixture sysfs: a virtio disk with a partition, a SCSI disk behind virtio-scsi, an NVMe
// namespace, and an LVM volume over two partitions.
class DiskFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string vda = "/sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda";
    Put(root, vda + "/size", "20971520\n");
    Put(root, vda + "/serial", "disk-serial-1");
    Put(root, vda + "/vda1/partition", "1\n");
    Put(root, vda + "/vda1/size", "2048\n");
    Link(root, "/sys/dev/block/254:1",
         "../../devices/pci0000:00/0000:00:04.0/virtio2/block/vda/vda1");
    Link(root, "/sys/dev/block/254:0", "../../devices/pci0000:00/0000:00:04.0/virtio2/block/vda");

    const std::string sda =
        "/sys/devices/pci0000:00/0000:00:05.0/virtio3/host2/target2:0:1/2:0:1:3/block/sda";
    Put(root, sda + "/size", "8388608\n");
    Put(root, sda + "/device/model", "QEMU HARDDISK   \n");
    Put(root, sda + "/device/vendor", "QEMU    \n");
    Put(root, sda + "/device/vpd_pg80", std::string("\x00\x80\x00\x08", 4) + "scsi-sn1");
    Put(root, sda + "/sda2/partition", "2\n");
    Link(root, "/sys/dev/block/8:2",
         "../../devices/pci0000:00/0000:00:05.0/virtio3/host2/target2:0:1/2:0:1:3/block/sda/sda2");
    Link(root, "/sys/class/block/sda2",
         "../../devices/pci0000:00/0000:00:05.0/virtio3/host2/target2:0:1/2:0:1:3/block/sda/sda2");

    const std::string nvme = "/sys/devices/pci0000:00/0000:00:06.0/nvme/nvme0/nvme0n1";
    Put(root, nvme + "/size", "1000\n");
    Put(root, nvme + "/device/serial", "  NVME123  \n");
    Link(root, "/sys/dev/block/259:0", "../../devices/pci0000:00/0000:00:06.0/nvme/nvme0/nvme0n1");

    const std::string dm = "/sys/devices/virtual/block/dm-0";
    Put(root, dm + "/size", "4096\n");
    Put(root, dm + "/dm/name", "vg-root\n");
    Link(root, dm + "/slaves/vda1", "../../../../pci0000:00/0000:00:04.0/virtio2/block/vda/vda1");
    Link(root, dm + "/slaves/sda2",
         "../../../../pci0000:00/0000:00:05.0/virtio3/host2/target2:0:1/2:0:1:3/block/sda/sda2");
    Link(root, "/sys/dev/block/253:0", "../../devices/virtual/block/dm-0");
    Link(root, "/sys/block/dm-0", "../devices/virtual/block/dm-0");
  }

  kvm::test::TempDir dir;
  std::string root = dir / "root";
  SystemRoot sys{root};
};

TEST_F(DiskFixture, PartitionMapsToItsVirtioDisk) {
  json::array d = DisksOfDevice(sys, 254, 1, "/dev/vda1");
  ASSERT_EQ(d.size(), 1u) << json::serialize(d);
  EXPECT_EQ(d[0], (json::object{{"name", "vda"},
                                {"dev", "/dev/vda"},
                                {"size_bytes", 20971520ull * 512},
                                {"serial", "disk-serial-1"},
                                {"model", nullptr},
                                {"vendor", nullptr},
                                {"bus", "virtio"},
                                {"pci_address", "0000:00:04.0"},
                                {"scsi_address", nullptr}}));
}

TEST_F(DiskFixture, ScsiDiskHasScsiAddressAndVpdSerial) {
  json::array d = DisksOfDevice(sys, 8, 2, "/dev/sda2");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].at("name"), "sda");
  EXPECT_EQ(d[0].at("bus"), "scsi");
  EXPECT_EQ(d[0].at("serial"), "scsi-sn1");
  EXPECT_EQ(d[0].at("model"), "QEMU HARDDISK");
  EXPECT_EQ(d[0].at("vendor"), "QEMU");
  EXPECT_EQ(d[0].at("pci_address"), "0000:00:05.0");
  EXPECT_EQ(d[0].at("scsi_address"),
            (json::object{{"host", 2}, {"channel", 0}, {"target", 1}, {"lun", 3}}));
}

TEST_F(DiskFixture, NvmeAndDeviceMapperOverTwoDisks) {
  json::array n = DisksOfDevice(sys, 259, 0, "/dev/nvme0n1");
  ASSERT_EQ(n.size(), 1u);
  EXPECT_EQ(n[0].at("bus"), "nvme");
  EXPECT_EQ(n[0].at("serial"), "NVME123");
  EXPECT_EQ(n[0].at("size_bytes"), 512000u);
  json::array lvm = DisksOfDevice(sys, 253, 0, "/dev/mapper/vg-root");
  ASSERT_EQ(lvm.size(), 2u) << json::serialize(lvm);
  EXPECT_EQ(lvm[0].at("name"), "sda");  // slaves in name order
  EXPECT_EQ(lvm[1].at("name"), "vda");
}

TEST_F(DiskFixture, AnonymousDeviceNumbersResolveThroughTheSourceName) {
  // btrfs reports 0:NN in mountinfo; its source names the block device.
  json::array d = DisksOfDevice(sys, 0, 45, "/dev/sda2");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].at("name"), "sda");
  json::array m = DisksOfDevice(sys, 0, 46, "/dev/mapper/vg-root");
  EXPECT_EQ(m.size(), 2u);
  EXPECT_TRUE(DisksOfDevice(sys, 0, 47, "tmpfs").empty());
  EXPECT_TRUE(DisksOfDevice(sys, 7, 99, "/dev/nothing").empty());
}

TEST_F(DiskFixture, AttributeCacheKeepsSerialUntilTheDeviceIsReplaced) {
  DiskAttributeCache cache;
  const std::string vda = root + "/sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda";
  EXPECT_EQ(DisksOfDevice(sys, 254, 0, "/dev/vda", &cache).at(0).at("serial"), "disk-serial-1");
  kvm::test::WriteFile(vda + "/serial", "changed-in-place");
  kvm::test::WriteFile(vda + "/size", "2048\n");
  json::array again = DisksOfDevice(sys, 254, 0, "/dev/vda", &cache);
  EXPECT_EQ(again.at(0).at("serial"), "disk-serial-1");  // the device did not change
  EXPECT_EQ(again.at(0).at("size_bytes"), 2048u * 512);  // size is always read afresh
  // Hot-unplug and a new disk under the same name: a new sysfs directory (new inode).
  std::filesystem::rename(vda, vda + ".old");
  Put(root, "/sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda/serial", "new-disk");
  EXPECT_EQ(DisksOfDevice(sys, 254, 0, "/dev/vda", &cache).at(0).at("serial"), "new-disk");
  EXPECT_EQ(DisksOfDevice(sys, 254, 0, "/dev/vda").at(0).at("serial"), "new-disk");
}

// statvfs stand-in: fixed numbers per path, errors, and one path that hangs until released.
struct FakeStat {
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> calls{0};
  int operator()(const std::string& path, struct statvfs* st) {
    ++calls;
    if (path.find("hang") != std::string::npos) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return release; });
      return EIO;
    }
    if (path.find("denied") != std::string::npos) return EACCES;
    *st = {};
    st->f_frsize = 4096;
    st->f_bsize = 4096;
    st->f_blocks = 1000;
    st->f_bfree = 400;
    st->f_bavail = 300;
    st->f_files = 500;
    st->f_ffree = 123;
    return 0;
  }
  void Release() {
    std::lock_guard lock(mu);
    release = true;
    cv.notify_all();
  }
};

class DiskUsageFixture : public DiskFixture {
 protected:
  json::object Collect(bool all, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    DiskOptions o;
    o.all = all;
    o.timeout = timeout;
    o.stat = [f = fake](const std::string& p, struct statvfs* st) { return (*f)(p, st); };
    return CollectDiskUsage(sys, o, runner);
  }
  std::shared_ptr<FakeStat> fake = std::make_shared<FakeStat>();
  BoundedStatvfs runner;
};

const json::object* FindMount(const json::object& r, std::string_view mount_point) {
  for (const auto& fs : r.at("filesystems").as_array()) {
    if (fs.at("mount_point").as_string() == mount_point) return &fs.as_object();
  }
  return nullptr;
}

TEST_F(DiskUsageFixture, UsageBindMountsReadOnlyAndPseudoFilesystems) {
  Put(root, "/proc/self/mountinfo",
      "21 26 0:20 / /proc rw,relatime - proc proc rw\n"
      "26 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
      "30 26 8:2 / /srv/my\\040data ro,relatime - xfs /dev/sda2 rw\n"
      "31 26 254:1 /var/lib/x /mnt/bind rw,relatime - ext4 /dev/vda1 rw\n"
      "32 26 0:40 / /run/user/0 rw - tmpfs tmpfs rw\n"
      "33 26 253:0 / /data rw - ext4 /dev/mapper/vg-root ro\n"
      "34 26 0:41 / /mnt/over rw - tmpfs first rw\n"
      "35 26 8:2 / /mnt/over rw - xfs /dev/sda2 rw\n"
      "36 26 0:60 /root /srv/subvol rw - btrfs /dev/sdb rw\n");
  json::object r = Collect(false);
  const json::array& fs = r["filesystems"].as_array();
  ASSERT_EQ(fs.size(), 6u) << json::serialize(r);
  const json::object* root_fs = FindMount(r, "/");
  ASSERT_TRUE(root_fs);
  EXPECT_EQ(root_fs->at("total_bytes"), 4096000u);
  EXPECT_EQ(root_fs->at("used_bytes"), 600u * 4096);
  EXPECT_EQ(root_fs->at("free_bytes"), 400u * 4096);
  EXPECT_EQ(root_fs->at("available_bytes"), 300u * 4096);
  EXPECT_EQ(root_fs->at("total_inodes"), 500u);
  EXPECT_EQ(root_fs->at("used_inodes"), 377u);
  EXPECT_EQ(root_fs->at("free_inodes"), 123u);
  EXPECT_EQ(root_fs->at("available"), true);
  EXPECT_EQ(root_fs->at("read_only"), false);
  EXPECT_EQ(root_fs->at("bind"), false);
  EXPECT_EQ(root_fs->at("disks").at(0).at("name"), "vda");
  const json::object* srv = FindMount(r, "/srv/my data");
  ASSERT_TRUE(srv);
  EXPECT_EQ(srv->at("read_only"), true);                    // per-mount ro
  EXPECT_EQ(FindMount(r, "/data")->at("read_only"), true);  // superblock ro
  EXPECT_EQ(FindMount(r, "/data")->at("disks").as_array().size(), 2u);
  const json::object* bind = FindMount(r, "/mnt/bind");
  ASSERT_TRUE(bind);
  EXPECT_EQ(bind->at("bind"), true);
  EXPECT_EQ(bind->at("fs_root"), "/var/lib/x");
  // A subvolume (fs_root not "/") seen once is not a duplicate.
  EXPECT_EQ(FindMount(r, "/srv/subvol")->at("bind"), false);
  EXPECT_EQ(FindMount(r, "/srv/subvol")->at("fs_root"), "/root");
  // Mounted over: only the top mount is visible at that path; xfs on sda2 was listed at /srv.
  EXPECT_EQ(FindMount(r, "/mnt/over")->at("bind"), true);
  const json::object* over = FindMount(r, "/mnt/over");
  ASSERT_TRUE(over);
  EXPECT_EQ(over->at("fstype"), "xfs");
  EXPECT_FALSE(FindMount(r, "/proc"));
  EXPECT_FALSE(FindMount(r, "/run/user/0"));

  json::object everything = Collect(true);
  EXPECT_EQ(everything["filesystems"].as_array().size(), 8u);
  ASSERT_TRUE(FindMount(everything, "/proc"));
  EXPECT_TRUE(FindMount(everything, "/proc")->at("disks").as_array().empty());
}

TEST_F(DiskUsageFixture, StatvfsErrorsMarkTheMountUnavailable) {
  Put(root, "/proc/self/mountinfo",
      "26 1 254:1 / / rw - ext4 /dev/vda1 rw\n"
      "40 26 0:50 / /mnt/denied rw - nfs4 srv:/x rw\n");
  json::object r = Collect(false);
  const json::object* d = FindMount(r, "/mnt/denied");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->at("available"), false);
  EXPECT_TRUE(d->at("total_bytes").is_null());
  EXPECT_EQ(d->at("error"), "Permission denied");
  EXPECT_EQ(FindMount(r, "/")->at("available"), true);
}

TEST_F(DiskUsageFixture, HungMountIsReportedWithinTheTimeoutAndNotRetriedWhileStuck) {
  Put(root, "/proc/self/mountinfo",
      "26 1 254:1 / / rw - ext4 /dev/vda1 rw\n"
      "41 26 0:51 / /mnt/hang rw - nfs4 deadserver:/export rw\n"
      "42 26 0:52 / /mnt/hang2 rw - cifs //dead/share rw\n");
  auto start = Clock::now();
  json::object r = Collect(false, std::chrono::milliseconds(200));
  auto took = Clock::now() - start;
  // Both hung mounts share one deadline: ~200 ms in all, not 200 ms each, and never forever.
  EXPECT_LT(took, std::chrono::milliseconds(1500));
  EXPECT_GE(took, std::chrono::milliseconds(190));
  for (const char* p : {"/mnt/hang", "/mnt/hang2"}) {
    const json::object* h = FindMount(r, p);
    ASSERT_TRUE(h) << p;
    EXPECT_EQ(h->at("available"), false);
    EXPECT_NE(std::string(h->at("error").as_string()).find("200 ms"), std::string::npos);
  }
  EXPECT_EQ(FindMount(r, "/")->at("available"), true);
  EXPECT_EQ(runner.hung_count(), 2u);

  // While they are stuck, the next call answers at once and starts no new helper thread.
  int calls_before = fake->calls.load();
  start = Clock::now();
  r = Collect(false, std::chrono::seconds(10));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(fake->calls.load(), calls_before + 1);  // only "/"
  EXPECT_NE(std::string(FindMount(r, "/mnt/hang")->at("error").as_string()).find("earlier"),
            std::string::npos);

  // Once the server "comes back", the stuck calls return and the mounts are tried again.
  fake->Release();
  for (int i = 0; i < 200 && runner.hung_count() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(runner.hung_count(), 0u);
  r = Collect(false);
  EXPECT_EQ(FindMount(r, "/mnt/hang")->at("error"), "Input/output error");
}

TEST_F(DiskUsageFixture, LocalFilesystemsAreAskedDirectlyButNotBelowANetworkMount) {
  Put(root, "/proc/self/mountinfo",
      "26 1 254:1 / / rw - ext4 /dev/vda1 rw\n"
      "40 26 0:50 / /mnt/nfs rw - nfs4 srv:/x rw\n"
      "41 40 8:17 / /mnt/nfs/hang-local rw - ext4 /dev/sdb1 rw\n"
      "42 26 8:18 / /data rw - xfs /dev/sdb2 rw\n");
  std::mutex mu;
  std::map<std::string, bool> on_caller;  // path -> statvfs ran on the calling thread
  auto caller = std::this_thread::get_id();
  DiskOptions o;
  o.timeout = std::chrono::milliseconds(300);
  o.stat = [&, f = fake](const std::string& p, struct statvfs* st) {
    {
      std::lock_guard lock(mu);
      on_caller[p] = std::this_thread::get_id() == caller;
    }
    return (*f)(p, st);
  };
  auto start = Clock::now();
  json::object r = CollectDiskUsage(sys, o, runner);
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(2000));
  // The ext4 below the NFS mount hangs (its path walk crosses NFS): bounded, not waited for.
  EXPECT_EQ(FindMount(r, "/mnt/nfs/hang-local")->at("available"), false);
  EXPECT_EQ(FindMount(r, "/")->at("available"), true);
  EXPECT_EQ(FindMount(r, "/data")->at("available"), true);
  std::lock_guard lock(mu);
  EXPECT_TRUE(on_caller["/"]);
  EXPECT_TRUE(on_caller["/data"]);
  EXPECT_FALSE(on_caller["/mnt/nfs"]);
  fake->Release();
}

TEST_F(DiskUsageFixture, InitramfsRootIsAskedDirectly) {
  Put(root, "/proc/self/mountinfo", "1 1 0:2 / / rw - rootfs rootfs rw\n");
  bool on_caller = false;
  auto caller = std::this_thread::get_id();
  DiskOptions o;
  o.stat = [&, f = fake](const std::string& p, struct statvfs* st) {
    on_caller = std::this_thread::get_id() == caller;
    return (*f)(p, st);
  };
  json::object r = CollectDiskUsage(sys, o, runner);
  EXPECT_EQ(FindMount(r, "/")->at("available"), true);
  EXPECT_TRUE(on_caller);
}

TEST_F(DiskUsageFixture, MissingMountinfoIsAnIoError) { EXPECT_THROW(Collect(false), RpcError); }

}  // namespace
}  // namespace kvm::sysinfo
