#include "agent/handlers/exec/proc_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "tests/support/agent_process.h"

namespace kvm::exec {
namespace {

TEST(ProcStat, ParsesCommWithSpacesAndParentheses) {
  auto st = ParseProcStat(
      "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 12345 1000 "
      "250 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0");
  ASSERT_TRUE(st);
  EXPECT_EQ(st->pid, 4242);
  EXPECT_EQ(st->comm, "we ird) (x)");
  EXPECT_EQ(st->state, 'S');
  EXPECT_EQ(st->ppid, 1);
  EXPECT_EQ(st->utime_ticks, 7u);
  EXPECT_EQ(st->stime_ticks, 3u);
  EXPECT_EQ(st->start_ticks, 12345u);
  EXPECT_EQ(st->rss_pages, 250);
  EXPECT_FALSE(st->kernel_thread());
}

TEST(ProcStat, RejectsGarbage) {
  EXPECT_FALSE(ParseProcStat(""));
  EXPECT_FALSE(ParseProcStat("12 (x"));
  EXPECT_FALSE(ParseProcStat("12 (x) S 1 2"));
  EXPECT_FALSE(ParseProcStat("abc (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22"));
}

TEST(ProcStat, ReadsOwnProcess) {
  auto st = ReadProcStat(::getpid());
  ASSERT_TRUE(st);
  EXPECT_EQ(st->ppid, ::getppid());
  EXPECT_EQ(st->pgid, ::getpgrp());
}

TEST(Passwd, ParsesNamesAndHomesAndSkipsMalformedLines) {
  test::TempDir dir;
  test::WriteFile(dir / "passwd",
                  "root:x:0:0:root:/root:/bin/sh\n"
                  "broken line\n"
                  "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
                  "dup:x:1000:1000::/nowhere:/bin/sh\n"
                  "nohome:x:1001:1001:::/bin/sh");
  auto users = ReadPasswd(dir / "passwd");
  EXPECT_EQ(users.size(), 3u);
  EXPECT_EQ(users[0], "root");
  EXPECT_EQ(users[1000], "alice");
  EXPECT_EQ(HomeOf(1000, dir / "passwd"), "/home/alice");
  EXPECT_FALSE(HomeOf(1001, dir / "passwd"));
  EXPECT_FALSE(HomeOf(4242, dir / "passwd"));
}

TEST(CollectTree, FollowsParentsGroupsAndSessions) {
  auto make = [](pid_t pid, pid_t ppid, pid_t pgid, pid_t sid) {
    ProcStat s;
    s.pid = pid;
    s.ppid = ppid;
    s.pgid = pgid;
    s.sid = sid;
    return s;
  };
  std::vector<ProcStat> table{
      make(1, 0, 1, 1),         make(100, 50, 100, 7),  // leader
      make(101, 100, 100, 7),                           // child
      make(102, 101, 102, 102),                         // grandchild that called setsid
      make(103, 1, 102, 102),                           // in the grandchild's session, parent gone
      make(104, 1, 100, 7),                             // orphan still in the leader's group
      make(200, 50, 200, 7),                            // unrelated sibling
  };
  auto tree = CollectTree(100, table);
  EXPECT_EQ(tree, (std::vector<pid_t>{100, 101, 102, 103, 104}));
}

}  // namespace
}  // namespace kvm::exec
