// SqliteOutbox against real SQLite files in a temporary folder. Time-based
// policy (TTL, retention) runs on a FakeClock; a disk that fills up on demand
// is an SQLite VFS that refuses writes while a flag is set.
#include "adapters/sqlite/sqlite_outbox.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "platform/clock.h"
#include "platform/process_stats.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

using AppendResult = Result<std::vector<AppendOutcome>>;
using LeaseResult = Result<std::vector<LeasedEvent>>;

// ---------------------------------------------------------------------------
// A VFS over SQLite's default one whose writes fail with SQLITE_FULL while
// g_disk_full is set: a disk that fills up and later has room again.

std::atomic<bool> g_disk_full{false};
sqlite3_vfs* g_real_vfs = nullptr;
constexpr const char* kFaultyVfs = "ws-test-disk-full";

struct FaultyFile {
  sqlite3_file base;
  sqlite3_file* real;  // SQLite's own file object, right behind this struct
};

sqlite3_file* Real(sqlite3_file* f) { return reinterpret_cast<FaultyFile*>(f)->real; }

int FaultyClose(sqlite3_file* f) { return Real(f)->pMethods->xClose(Real(f)); }
int FaultyRead(sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
  return Real(f)->pMethods->xRead(Real(f), buf, n, off);
}
int FaultyWrite(sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
  if (g_disk_full.load()) return SQLITE_FULL;
  return Real(f)->pMethods->xWrite(Real(f), buf, n, off);
}
int FaultyTruncate(sqlite3_file* f, sqlite3_int64 size) { return Real(f)->pMethods->xTruncate(Real(f), size); }
int FaultySync(sqlite3_file* f, int flags) { return Real(f)->pMethods->xSync(Real(f), flags); }
int FaultyFileSize(sqlite3_file* f, sqlite3_int64* size) { return Real(f)->pMethods->xFileSize(Real(f), size); }
int FaultyLock(sqlite3_file* f, int level) { return Real(f)->pMethods->xLock(Real(f), level); }
int FaultyUnlock(sqlite3_file* f, int level) { return Real(f)->pMethods->xUnlock(Real(f), level); }
int FaultyCheckReservedLock(sqlite3_file* f, int* out) {
  return Real(f)->pMethods->xCheckReservedLock(Real(f), out);
}
int FaultyFileControl(sqlite3_file* f, int op, void* arg) { return Real(f)->pMethods->xFileControl(Real(f), op, arg); }
int FaultySectorSize(sqlite3_file* f) { return Real(f)->pMethods->xSectorSize(Real(f)); }
int FaultyDeviceCharacteristics(sqlite3_file* f) { return Real(f)->pMethods->xDeviceCharacteristics(Real(f)); }
int FaultyShmMap(sqlite3_file* f, int region, int size, int extend, void volatile** out) {
  return Real(f)->pMethods->xShmMap(Real(f), region, size, extend, out);
}
int FaultyShmLock(sqlite3_file* f, int offset, int n, int flags) {
  return Real(f)->pMethods->xShmLock(Real(f), offset, n, flags);
}
void FaultyShmBarrier(sqlite3_file* f) { Real(f)->pMethods->xShmBarrier(Real(f)); }
int FaultyShmUnmap(sqlite3_file* f, int del) { return Real(f)->pMethods->xShmUnmap(Real(f), del); }
int FaultyFetch(sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
  return Real(f)->pMethods->xFetch(Real(f), off, n, out);
}
int FaultyUnfetch(sqlite3_file* f, sqlite3_int64 off, void* p) { return Real(f)->pMethods->xUnfetch(Real(f), off, p); }

const sqlite3_io_methods kFaultyMethods = {
    3,
    FaultyClose,
    FaultyRead,
    FaultyWrite,
    FaultyTruncate,
    FaultySync,
    FaultyFileSize,
    FaultyLock,
    FaultyUnlock,
    FaultyCheckReservedLock,
    FaultyFileControl,
    FaultySectorSize,
    FaultyDeviceCharacteristics,
    FaultyShmMap,
    FaultyShmLock,
    FaultyShmBarrier,
    FaultyShmUnmap,
    FaultyFetch,
    FaultyUnfetch,
};

int FaultyOpen(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  auto* ff = reinterpret_cast<FaultyFile*>(f);
  ff->real = reinterpret_cast<sqlite3_file*>(ff + 1);
  ff->real->pMethods = nullptr;
  const int rc = g_real_vfs->xOpen(g_real_vfs, name, ff->real, flags, out_flags);
  // SQLite calls xClose whenever pMethods is set, even after a failed open.
  ff->base.pMethods = ff->real->pMethods != nullptr ? &kFaultyMethods : nullptr;
  return rc;
}

void RegisterFaultyVfs() {
  static const bool registered = [] {
    g_real_vfs = sqlite3_vfs_find(nullptr);
    static sqlite3_vfs vfs = *g_real_vfs;  // the default's other methods work with a copy
    vfs.zName = kFaultyVfs;
    vfs.szOsFile = static_cast<int>(sizeof(FaultyFile)) + g_real_vfs->szOsFile;
    vfs.xOpen = FaultyOpen;
    vfs.pNext = nullptr;
    return sqlite3_vfs_register(&vfs, 0) == SQLITE_OK;
  }();
  ASSERT_TRUE(registered);
}

// ---------------------------------------------------------------------------
// Helpers.

// "prefix" + numbers joined by '-'. (Built with +=: g++ 12 warns falsely
// about `"literal" + std::to_string(n)` under optimisation.)
template <typename... Ints>
std::string Numbered(const char* prefix, Ints... n) {
  std::string s(prefix);
  const char* sep = "";
  ((s += sep, s += std::to_string(n), sep = "-"), ...);
  return s;
}

Event MakeEvent(const std::string& id, const std::string& data = "{\"v\":1}") {
  Event e;
  e.id = id;
  e.source = "/plant-7/line-3";
  e.type = "com.acme.order.created";
  e.attributes = {{"time", "2026-11-21T10:00:00Z"}, {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}};
  e.data_kind = DataKind::kJson;
  e.data = data;
  return e;
}

OutboxEntry Entry(const std::string& id, Priority p = Priority::kNormal, const std::string& data = "{\"v\":1}",
                  int64_t expires_at_us = 0) {
  OutboxEntry e;
  e.event = MakeEvent(id, data);
  e.topic = "waystation/plant-7/gw-1/events/com.acme.order.created";
  e.stream = "line-3";
  e.priority = p;
  e.expires_at_us = expires_at_us;
  return e;
}

SqliteOutboxOptions Options(const ws::testing::TempDir& dir, Clock* clock) {
  SqliteOutboxOptions o;
  o.path = dir.File("outbox.db");
  o.clock = clock;
  o.commit_window_us = 500;
  return o;
}

std::unique_ptr<SqliteOutbox> OpenStore(const SqliteOutboxOptions& options) {
  auto r = SqliteOutbox::Open(options);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

AppendResult AppendSync(Outbox& o, std::vector<OutboxEntry> entries) {
  std::promise<AppendResult> p;
  auto f = p.get_future();
  o.Append(std::move(entries), [&p](AppendResult r) { p.set_value(std::move(r)); });
  return f.get();
}

int64_t AppendOne(Outbox& o, OutboxEntry e) {
  AppendResult r = AppendSync(o, {std::move(e)});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok() || r->size() != 1) return -1;
  return (*r)[0].sequence;
}

LeaseResult LeaseSync(Outbox& o, size_t max) {
  std::promise<LeaseResult> p;
  auto f = p.get_future();
  o.Lease(max, [&p](LeaseResult r) { p.set_value(std::move(r)); });
  return f.get();
}

std::vector<std::string> LeaseIds(Outbox& o, size_t max) {
  LeaseResult r = LeaseSync(o, max);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  std::vector<std::string> ids;
  if (r.ok()) {
    for (const LeasedEvent& e : *r) ids.push_back(e.event.id);
  }
  return ids;
}

Status AckSync(Outbox& o, std::vector<int64_t> seqs) {
  std::promise<Status> p;
  auto f = p.get_future();
  o.Ack(std::move(seqs), [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

Status DeadLetterSync(Outbox& o, int64_t seq, std::string reason) {
  std::promise<Status> p;
  auto f = p.get_future();
  o.DeadLetter(seq, std::move(reason), [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

uint64_t BacklogCount(const OutboxStats& s) {
  uint64_t n = 0;
  for (const ClassBacklog& b : s.backlog) n += b.count;
  return n;
}

// Runs one query returning an integer on the file itself (store closed).
int64_t QueryFile(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  int64_t value = -1;
  sqlite3_stmt* stmt = nullptr;
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  if (rc == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
  EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << sqlite3_errmsg(db);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

void ExecFile(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << sqlite3_errmsg(db);
  sqlite3_close(db);
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::vector<std::string> FilesStartingWith(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A store with `n` events of about 1 KiB, closed again (WAL checkpointed
// into the main file), so that its pages can be damaged on purpose.
void BuildStore(const SqliteOutboxOptions& options, int n) {
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  std::vector<OutboxEntry> entries;
  for (int i = 0; i < n; ++i) entries.push_back(Entry(Numbered("ev-", i), Priority::kNormal, std::string(1000, 'x')));
  ASSERT_TRUE(AppendSync(*o, std::move(entries)).ok());
}

// FakeClock's default wall time, 1'700'000'000 s, as the quarantine stamp.
constexpr const char* kFakeStamp = "20231114T221320Z";

class SqliteOutboxTest : public ::testing::Test {
 protected:
  ws::testing::TempDir dir_;
  FakeClock clock_;
};

// ---------------------------------------------------------------------------

TEST_F(SqliteOutboxTest, AppendLeaseAckRoundTrip) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);

  AppendResult r = AppendSync(*o, {Entry("a", Priority::kHigh), Entry("b", Priority::kNormal, "{\"v\":2}")});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].id, "a");
  EXPECT_EQ((*r)[1].id, "b");
  EXPECT_FALSE((*r)[0].duplicate);
  EXPECT_LT((*r)[0].sequence, (*r)[1].sequence);

  OutboxStats s = o->Stats();
  EXPECT_EQ(s.backlog[static_cast<int>(Priority::kHigh)].count, 1u);
  EXPECT_EQ(s.backlog[static_cast<int>(Priority::kNormal)].count, 1u);
  EXPECT_GT(s.backlog[static_cast<int>(Priority::kNormal)].bytes, 0u);
  EXPECT_EQ(s.backlog[static_cast<int>(Priority::kNormal)].oldest_accepted_us, clock_.WallMicros());
  EXPECT_EQ(s.appended_events, 2u);
  EXPECT_EQ(s.last_sequence, (*r)[1].sequence);

  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  ASSERT_EQ(leased->size(), 2u);
  const LeasedEvent& b = (*leased)[1];
  EXPECT_EQ(b.sequence, (*r)[1].sequence);
  EXPECT_EQ(b.priority, Priority::kNormal);
  EXPECT_EQ(b.topic, Entry("b").topic);
  EXPECT_EQ(b.stream, "line-3");
  EXPECT_EQ(b.attempts, 0);
  EXPECT_EQ(b.accepted_at_us, clock_.WallMicros());
  Event want = MakeEvent("b", "{\"v\":2}");
  EXPECT_EQ(b.event.id, want.id);
  EXPECT_EQ(b.event.source, want.source);
  EXPECT_EQ(b.event.type, want.type);
  EXPECT_EQ(b.event.attributes, want.attributes);
  EXPECT_EQ(b.event.data_kind, want.data_kind);
  EXPECT_EQ(b.event.data, want.data);

  ASSERT_TRUE(AckSync(*o, {(*r)[0].sequence, (*r)[1].sequence}).ok());
  s = o->Stats();
  EXPECT_EQ(BacklogCount(s), 0u);
  EXPECT_EQ(s.backlog[static_cast<int>(Priority::kNormal)].bytes, 0u);
  EXPECT_EQ(s.backlog[static_cast<int>(Priority::kNormal)].oldest_accepted_us, 0);
  EXPECT_EQ(s.removed_delivered, 2u);
  o->ResetLeases();
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
}

TEST_F(SqliteOutboxTest, SequencesStayMonotonicAcrossReopenAndAfterTheTableEmpties) {
  const auto options = Options(dir_, &clock_);
  int64_t last = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    std::vector<int64_t> seqs;
    for (int i = 0; i < 3; ++i) seqs.push_back(AppendOne(*o, Entry(Numbered("e", i))));
    EXPECT_LT(0, seqs[0]);
    EXPECT_LT(seqs[0], seqs[1]);
    EXPECT_LT(seqs[1], seqs[2]);
    ASSERT_TRUE(AckSync(*o, seqs).ok());
    EXPECT_EQ(BacklogCount(o->Stats()), 0u);
    last = seqs[2];
  }
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 0);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->Stats().last_sequence, last);
    const int64_t next = AppendOne(*o, Entry("after-reopen"));
    EXPECT_GT(next, last);
    last = next;
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_GT(AppendOne(*o, Entry("third-open")), last);
}

TEST_F(SqliteOutboxTest, SameIdSameContentAnswersTheFirstSequence) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  const int64_t first = AppendOne(*o, Entry("order-1"));

  AppendResult again = AppendSync(*o, {Entry("order-1")});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].sequence, first);
  EXPECT_TRUE((*again)[0].duplicate);

  // Twice within one call: the second is the first's answer again.
  AppendResult twice = AppendSync(*o, {Entry("order-2"), Entry("order-2")});
  ASSERT_TRUE(twice.ok()) << twice.status().ToString();
  EXPECT_FALSE((*twice)[0].duplicate);
  EXPECT_TRUE((*twice)[1].duplicate);
  EXPECT_EQ((*twice)[0].sequence, (*twice)[1].sequence);

  OutboxStats s = o->Stats();
  EXPECT_EQ(BacklogCount(s), 2u);
  EXPECT_EQ(s.appended_events, 2u);
  EXPECT_EQ(s.last_sequence, (*twice)[0].sequence);
}

TEST_F(SqliteOutboxTest, SameIdOtherContentFailsTheWholeCallAndWritesNothing) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const int64_t first = AppendOne(*o, Entry("order-1"));
    const OutboxStats before = o->Stats();

    AppendResult r = AppendSync(*o, {Entry("fresh-1"), Entry("order-1", Priority::kNormal, "{\"v\":\"changed\"}")});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
    EXPECT_NE(r.status().message().find("order-1"), std::string::npos) << r.status().message();

    const OutboxStats after = o->Stats();
    EXPECT_EQ(BacklogCount(after), BacklogCount(before));
    EXPECT_EQ(after.last_sequence, before.last_sequence);
    EXPECT_EQ(after.appended_events, before.appended_events);

    // "fresh-1" was not stored: appending it now is new, with the next sequence.
    AppendResult fresh = AppendSync(*o, {Entry("fresh-1")});
    ASSERT_TRUE(fresh.ok());
    EXPECT_FALSE((*fresh)[0].duplicate);
    EXPECT_EQ((*fresh)[0].sequence, first + 1);
  }
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 2);
}

TEST_F(SqliteOutboxTest, EightThreadsAppendingGetDistinctSequencesAndAllSurviveReopen) {
  const auto options = Options(dir_, &clock_);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 500;
  std::vector<std::vector<int64_t>> seqs(kThreads);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<std::future<AppendResult>> pending;
        std::vector<std::shared_ptr<std::promise<AppendResult>>> promises;
        for (int i = 0; i < kPerThread; ++i) {
          auto p = std::make_shared<std::promise<AppendResult>>();
          pending.push_back(p->get_future());
          o->Append({Entry(Numbered("t", t, i))},
                    [p](AppendResult r) { p->set_value(std::move(r)); });
        }
        for (auto& f : pending) {
          AppendResult r = f.get();
          if (!r.ok() || r->size() != 1 || (*r)[0].duplicate) {
            ++failures;
            continue;
          }
          seqs[static_cast<size_t>(t)].push_back((*r)[0].sequence);
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(o->Stats().appended_events, static_cast<uint64_t>(kThreads * kPerThread));
  }
  std::set<int64_t> distinct;
  for (const auto& v : seqs) {
    // One producer's calls are answered in its own call order.
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    distinct.insert(v.begin(), v.end());
  }
  EXPECT_EQ(distinct.size(), static_cast<size_t>(kThreads * kPerThread));

  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(kThreads * kPerThread));
  LeaseResult all = LeaseSync(*o, 10000);
  ASSERT_TRUE(all.ok());
  std::set<int64_t> leased;
  for (const LeasedEvent& e : *all) leased.insert(e.sequence);
  EXPECT_EQ(leased, distinct);
}

TEST_F(SqliteOutboxTest, OneFailingCallInABatchLeavesTheOthersCommitted) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  const int64_t existing = AppendOne(*o, Entry("existing"));

  // Hold the committer inside a callback so the next three calls queue up
  // and are taken as one batch.
  std::promise<void> entered, release;
  auto release_future = release.get_future();
  o->Append({Entry("holder")}, [&](AppendResult) {
    entered.set_value();
    release_future.wait();
  });
  entered.get_future().wait();
  const uint64_t commits_before = o->Stats().commits;

  std::promise<AppendResult> pa, pb, pc;
  o->Append({Entry("a1"), Entry("a2")}, [&](AppendResult r) { pa.set_value(std::move(r)); });
  o->Append({Entry("b1"), Entry("existing", Priority::kNormal, "{\"other\":true}")},
            [&](AppendResult r) { pb.set_value(std::move(r)); });
  o->Append({Entry("c1")}, [&](AppendResult r) { pc.set_value(std::move(r)); });
  release.set_value();

  AppendResult a = pa.get_future().get(), b = pb.get_future().get(), c = pc.get_future().get();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(o->Stats().commits, commits_before + 1);  // one transaction for a and c

  std::vector<std::string> ids = LeaseIds(*o, 100);
  EXPECT_EQ(ids, (std::vector<std::string>{"existing", "holder", "a1", "a2", "c1"}));
  // No sequence was spent on the refused call.
  EXPECT_EQ((*a)[0].sequence, existing + 2);
  EXPECT_EQ((*c)[0].sequence, existing + 4);
}

TEST_F(SqliteOutboxTest, LeaseFollowsPriorityThenSequenceAndResetStartsOver) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("bulk-1", Priority::kBulk));
  AppendOne(*o, Entry("normal-1", Priority::kNormal));
  const int64_t high1 = AppendOne(*o, Entry("high-1", Priority::kHigh));
  AppendOne(*o, Entry("control-1", Priority::kControl));
  AppendOne(*o, Entry("normal-2", Priority::kNormal));
  AppendOne(*o, Entry("high-2", Priority::kHigh));

  EXPECT_EQ(LeaseIds(*o, 2), (std::vector<std::string>{"control-1", "high-1"}));
  EXPECT_EQ(LeaseIds(*o, 3), (std::vector<std::string>{"high-2", "normal-1", "normal-2"}));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"bulk-1"}));
  EXPECT_TRUE(LeaseIds(*o, 10).empty());

  // Only what is new since is leased next.
  AppendOne(*o, Entry("normal-3", Priority::kNormal));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"normal-3"}));

  // After a reset everything undelivered comes again, oldest first, and each
  // unacked lease counts as an attempt.
  ASSERT_TRUE(AckSync(*o, {high1}).ok());
  o->ResetLeases();
  LeaseResult again = LeaseSync(*o, 100);
  ASSERT_TRUE(again.ok());
  std::vector<std::string> ids;
  for (const LeasedEvent& e : *again) {
    ids.push_back(e.event.id);
    EXPECT_EQ(e.attempts, 1) << e.event.id;
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"control-1", "high-2", "normal-1", "normal-2", "normal-3", "bulk-1"}));
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
}

TEST_F(SqliteOutboxTest, AckRemovesAndSurvivesReopen) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendOne(*o, Entry("one"));
    const int64_t two = AppendOne(*o, Entry("two"));
    AppendOne(*o, Entry("three"));
    ASSERT_TRUE(AckSync(*o, {two}).ok());
    ASSERT_TRUE(AckSync(*o, {two, 999999}).ok());  // unknown sequences are ignored
    EXPECT_EQ(o->Stats().removed_delivered, 1u);
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(BacklogCount(o->Stats()), 2u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"one", "three"}));
}

TEST_F(SqliteOutboxTest, RetainedDeliveriesAreKeptThenPurgedAfterRetention) {
  auto options = Options(dir_, &clock_);
  options.retain_delivered_s = 3600;
  int64_t seq = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    seq = AppendOne(*o, Entry("kept"));
    ASSERT_TRUE(AckSync(*o, {seq}).ok());
    OutboxStats s = o->Stats();
    EXPECT_EQ(BacklogCount(s), 0u);
    EXPECT_EQ(s.removed_delivered, 1u);
    // Still known by id: a producer's retry is answered, not stored again.
    AppendResult retry = AppendSync(*o, {Entry("kept")});
    ASSERT_TRUE(retry.ok());
    EXPECT_TRUE((*retry)[0].duplicate);
    EXPECT_EQ((*retry)[0].sequence, seq);
    EXPECT_TRUE(LeaseIds(*o, 10).empty());
  }
  EXPECT_EQ(QueryFile(options.path, Numbered("SELECT count(*) FROM delivered WHERE seq = ", seq)), 1);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 0);

  clock_.AdvanceMillis(2 * 3600 * 1000);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_TRUE(LeaseIds(*o, 10).empty());  // leasing runs the retention purge
  AppendResult later = AppendSync(*o, {Entry("kept")});
  ASSERT_TRUE(later.ok());
  EXPECT_FALSE((*later)[0].duplicate);
  EXPECT_GT((*later)[0].sequence, seq);
}

TEST_F(SqliteOutboxTest, DeadLetterMovesTheEventAside) {
  const auto options = Options(dir_, &clock_);
  int64_t bad = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    bad = AppendOne(*o, Entry("too-large-for-broker"));
    AppendOne(*o, Entry("fine"));
    ASSERT_TRUE(DeadLetterSync(*o, bad, "broker: payload too large").ok());
    Status missing = DeadLetterSync(*o, 424242, "nothing");
    EXPECT_EQ(missing.code(), StatusCode::kNotFound);

    OutboxStats s = o->Stats();
    EXPECT_EQ(s.dlq_count, 1u);
    EXPECT_EQ(s.removed_dead_lettered, 1u);
    EXPECT_EQ(BacklogCount(s), 1u);
    EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"fine"}));
    // A retry of a dead-lettered event is answered, not stored again.
    AppendResult retry = AppendSync(*o, {Entry("too-large-for-broker")});
    ASSERT_TRUE(retry.ok());
    EXPECT_TRUE((*retry)[0].duplicate);
    EXPECT_EQ((*retry)[0].sequence, bad);
  }
  EXPECT_EQ(QueryFile(options.path, Numbered("SELECT count(*) FROM dlq WHERE seq = ", bad) +
                                        " AND reason = 'broker: payload too large'"),
            1);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->Stats().dlq_count, 1u);
  EXPECT_EQ(BacklogCount(o->Stats()), 1u);
}

TEST_F(SqliteOutboxTest, ExpiredEventsAreRemovedAndCountedNotLeased) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  const int64_t now = clock_.WallMicros();
  AppendOne(*o, Entry("short", Priority::kNormal, "{}", now + 1'000'000));
  AppendOne(*o, Entry("forever", Priority::kNormal, "{}", 0));
  AppendOne(*o, Entry("longer", Priority::kHigh, "{}", now + 10'000'000));

  clock_.AdvanceMillis(2000);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"longer", "forever"}));
  OutboxStats s = o->Stats();
  EXPECT_EQ(s.removed_expired, 1u);
  EXPECT_EQ(BacklogCount(s), 2u);

  clock_.AdvanceMillis(10'000);
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"forever"}));
  s = o->Stats();
  EXPECT_EQ(s.removed_expired, 2u);
  EXPECT_EQ(BacklogCount(s), 1u);
  EXPECT_EQ(s.backlog[static_cast<int>(Priority::kHigh)].count, 0u);
}

TEST_F(SqliteOutboxTest, ExpiryRunsWhileNobodyLeasesEvenUnderSteadyAppends) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("ttl", Priority::kNormal, "{}", clock_.WallMicros() + 1'000'000));
  clock_.AdvanceMillis(5000);
  // Keep the queue busy the way producers on an offline gateway would. The
  // bound only stops a broken build from hanging; nothing here is timed.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int n = 0;
  while (o->Stats().removed_expired == 0 && std::chrono::steady_clock::now() < give_up) {
    AppendOne(*o, Entry(Numbered("steady-", n++)));
  }
  EXPECT_EQ(o->Stats().removed_expired, 1u);
  EXPECT_EQ(o->Stats().backlog[static_cast<int>(Priority::kNormal)].count, static_cast<uint64_t>(n));
}

TEST_F(SqliteOutboxTest, MaxBytesRefusesAppendsAndWritesNothing) {
  auto options = Options(dir_, &clock_);
  options.max_bytes = 2000;
  const std::string payload(400, 'p');
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    std::vector<int64_t> stored;
    AppendResult r = AppendSync(*o, {Entry("first", Priority::kNormal, payload)});
    while (r.ok()) {
      stored.push_back((*r)[0].sequence);
      ASSERT_LT(stored.size(), 10u) << "max_bytes is not enforced";
      r = AppendSync(*o, {Entry(Numbered("e", stored.size()), Priority::kNormal, payload)});
    }
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
    EXPECT_NE(r.status().message().find("max_bytes"), std::string::npos) << r.status().message();
    OutboxStats s = o->Stats();
    EXPECT_EQ(BacklogCount(s), stored.size());
    EXPECT_LE(s.backlog[static_cast<int>(Priority::kNormal)].bytes, options.max_bytes);
    EXPECT_EQ(s.rejected_full, 1u);
    EXPECT_EQ(s.last_sequence, stored.back());

    // Room for one more event, but not for this call's two: nothing of it.
    ASSERT_TRUE(AckSync(*o, {stored[0]}).ok());
    AppendResult two = AppendSync(*o, {Entry("x1", Priority::kNormal, payload), Entry("x2", Priority::kNormal, payload)});
    EXPECT_EQ(two.status().code(), StatusCode::kResourceExhausted);
    EXPECT_EQ(o->Stats().rejected_full, 3u);
    EXPECT_EQ(BacklogCount(o->Stats()), stored.size() - 1);
    AppendResult x1 = AppendSync(*o, {Entry("x1", Priority::kNormal, payload)});
    ASSERT_TRUE(x1.ok()) << x1.status().ToString();
    EXPECT_FALSE((*x1)[0].duplicate);  // the refused call left nothing behind
    EXPECT_EQ((*x1)[0].sequence, stored.back() + 1);
  }
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 3);
  // The limit holds across a restart: the totals come back from the file.
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendResult r = AppendSync(*o, {Entry("after-restart", Priority::kNormal, payload)});
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
}

TEST_F(SqliteOutboxTest, DiskFullFailsCleanlyAndRecoversByItself) {
  RegisterFaultyVfs();
  auto options = Options(dir_, &clock_);
  options.vfs = kFaultyVfs;
  int64_t second = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const int64_t first = AppendOne(*o, Entry("before"));
    const OutboxStats before = o->Stats();

    g_disk_full = true;
    AppendResult r = AppendSync(*o, {Entry("while-full-1"), Entry("while-full-2", Priority::kNormal, std::string(20000, 'z'))});
    Status ack = AckSync(*o, {first});
    g_disk_full = false;

    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
    EXPECT_NE(r.status().message().find("disk full"), std::string::npos) << r.status().message();
    EXPECT_FALSE(ack.ok());
    const OutboxStats during = o->Stats();
    EXPECT_EQ(BacklogCount(during), BacklogCount(before));
    EXPECT_EQ(during.last_sequence, before.last_sequence);
    EXPECT_EQ(during.appended_events, before.appended_events);

    // Space is back: the next append just works, with the next sequence.
    second = AppendOne(*o, Entry("after"));
    EXPECT_EQ(second, first + 1);
    EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"before", "after"}));
  }
  options.vfs.clear();
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"before", "after"}));
  EXPECT_EQ(o->Stats().last_sequence, second);
}

// ---- corruption ----

// Opens a damaged store and checks the promise: it starts, fresh, with the
// damaged file kept byte for byte under the quarantine name.
void ExpectQuarantinedAndFresh(const ws::testing::TempDir& dir, const SqliteOutboxOptions& options,
                               const std::string& damaged_bytes) {
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  OutboxStats s = o->Stats();
  EXPECT_TRUE(s.quarantined_at_start);
  EXPECT_EQ(BacklogCount(s), 0u);

  const std::string moved = std::string("outbox.db.corrupt-") + kFakeStamp;
  std::vector<std::string> names = FilesStartingWith(dir.path(), "outbox.db.corrupt-");
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names[0], moved);
  const std::string kept = ws::testing::Slurp(dir.File(moved));
  EXPECT_EQ(kept.size(), damaged_bytes.size());
  EXPECT_TRUE(kept == damaged_bytes) << "the quarantined file differs from the damaged one";

  const int64_t seq = AppendOne(*o, Entry("fresh"));
  EXPECT_EQ(seq, 1);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"fresh"}));
}

TEST_F(SqliteOutboxTest, GarbageFileIsQuarantinedWithItsWal) {
  const auto options = Options(dir_, &clock_);
  std::string garbage(8192, '\0');
  uint32_t x = 12345;
  for (char& c : garbage) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  WriteBytes(options.path, garbage);
  WriteBytes(options.path + "-wal", "not a wal either");
  ExpectQuarantinedAndFresh(dir_, options, garbage);
  EXPECT_EQ(ws::testing::Slurp(dir_.File(std::string("outbox.db.corrupt-") + kFakeStamp + "-wal")),
            "not a wal either");
}

TEST_F(SqliteOutboxTest, TruncatedStoreIsQuarantined) {
  const auto options = Options(dir_, &clock_);
  BuildStore(options, 200);
  std::string bytes = ws::testing::Slurp(options.path);
  ASSERT_GT(bytes.size(), 100u * 1024);
  bytes.resize(bytes.size() / 2 + 1000);
  WriteBytes(options.path, bytes);
  ExpectQuarantinedAndFresh(dir_, options, bytes);
}

TEST_F(SqliteOutboxTest, ZeroedPagesInARealStoreAreQuarantined) {
  const auto options = Options(dir_, &clock_);
  BuildStore(options, 200);
  std::string bytes = ws::testing::Slurp(options.path);
  ASSERT_GT(bytes.size(), 16u * 4096);
  std::fill(bytes.begin() + 4 * 4096, bytes.begin() + 12 * 4096, '\0');
  WriteBytes(options.path, bytes);
  ExpectQuarantinedAndFresh(dir_, options, bytes);
}

TEST_F(SqliteOutboxTest, ForeignDatabaseIsQuarantinedNotUsed) {
  const auto options = Options(dir_, &clock_);
  ExecFile(options.path, "CREATE TABLE events(x); INSERT INTO events VALUES (1);");
  const std::string bytes = ws::testing::Slurp(options.path);
  ExpectQuarantinedAndFresh(dir_, options, bytes);
}

TEST_F(SqliteOutboxTest, QuarantineNeverOverwritesEarlierEvidence) {
  const auto options = Options(dir_, &clock_);
  WriteBytes(options.path, std::string(4096, 'A'));
  { ASSERT_NE(OpenStore(options), nullptr); }
  std::remove(options.path.c_str());
  std::remove((options.path + "-wal").c_str());
  std::remove((options.path + "-shm").c_str());
  WriteBytes(options.path, std::string(4096, 'B'));
  { ASSERT_NE(OpenStore(options), nullptr); }  // same FakeClock second
  std::vector<std::string> names = FilesStartingWith(dir_.path(), "outbox.db.corrupt-");
  std::vector<std::string> mains;
  for (const auto& n : names) {
    if (n.find("-wal") == std::string::npos && n.find("-shm") == std::string::npos) mains.push_back(n);
  }
  ASSERT_EQ(mains.size(), 2u);
  EXPECT_EQ(ws::testing::Slurp(dir_.File(mains[0])), std::string(4096, 'A'));
  EXPECT_EQ(ws::testing::Slurp(dir_.File(mains[1])), std::string(4096, 'B'));
}

TEST_F(SqliteOutboxTest, NewerSchemaIsRefusedAndLeftAlone) {
  const auto options = Options(dir_, &clock_);
  BuildStore(options, 3);
  ExecFile(options.path, "PRAGMA user_version = 99");
  auto r = SqliteOutbox::Open(options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(FilesStartingWith(dir_.path(), "outbox.db.corrupt-").empty());
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 3);
}

TEST_F(SqliteOutboxTest, UnusableFolderFailsOpenInsteadOfQuarantining) {
  // The parent "folder" is a regular file.
  WriteBytes(dir_.File("not-a-folder"), "x");
  auto options = Options(dir_, &clock_);
  options.path = dir_.File("not-a-folder/outbox.db");
  auto r = SqliteOutbox::Open(options);
  EXPECT_FALSE(r.ok());

  // The path is a folder.
  ASSERT_EQ(::mkdir(dir_.File("a-folder").c_str(), 0755), 0);
  options.path = dir_.File("a-folder");
  r = SqliteOutbox::Open(options);
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(std::filesystem::is_directory(dir_.File("a-folder")));
  EXPECT_TRUE(FilesStartingWith(dir_.path(), "a-folder.corrupt-").empty());
}

TEST_F(SqliteOutboxTest, FolderWithoutWritePermissionFailsOpen) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
  ASSERT_EQ(::mkdir(dir_.File("read-only").c_str(), 0555), 0);
  auto options = Options(dir_, &clock_);
  options.path = dir_.File("read-only/outbox.db");
  auto r = SqliteOutbox::Open(options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << r.status().ToString();
}

// ---- group commit, callbacks, shutdown ----

TEST_F(SqliteOutboxTest, GroupCommitPutsConcurrentProducersInFewerTransactions) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  constexpr int kProducers = 64;
  constexpr int kEach = 10;
  std::atomic<int> failures{0};
  std::vector<std::thread> producers;
  for (int t = 0; t < kProducers; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        AppendResult r = AppendSync(*o, {Entry(Numbered("p", t, i))});
        if (!r.ok()) ++failures;
      }
    });
  }
  for (auto& th : producers) th.join();
  EXPECT_EQ(failures.load(), 0);
  OutboxStats s = o->Stats();
  EXPECT_EQ(s.appended_events, static_cast<uint64_t>(kProducers * kEach));
  EXPECT_LT(s.commits, s.appended_events);
  std::printf("[ measure  ] %d producers x %d appends: %llu commits for %llu events\n", kProducers, kEach,
              static_cast<unsigned long long>(s.commits), static_cast<unsigned long long>(s.appended_events));
}

TEST_F(SqliteOutboxTest, CallbacksAndListenerRunOnTheCommitterAfterCommit) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  std::atomic<int> notified{0};
  std::atomic<uint64_t> backlog_seen{0};
  std::thread::id listener_thread;
  o->SetAppendListener([&] {
    listener_thread = std::this_thread::get_id();
    backlog_seen = BacklogCount(o->Stats());
    ++notified;
  });
  std::thread::id done_thread;
  std::promise<void> done;
  o->Append({Entry("x")}, [&](AppendResult r) {
    EXPECT_TRUE(r.ok());
    done_thread = std::this_thread::get_id();
    done.set_value();
  });
  done.get_future().wait();
  // The listener follows the callbacks of the same commit; a lease queued
  // now runs after it.
  ASSERT_TRUE(LeaseSync(*o, 1).ok());
  EXPECT_EQ(notified.load(), 1);
  EXPECT_EQ(backlog_seen.load(), 1u);
  EXPECT_NE(done_thread, std::this_thread::get_id());
  EXPECT_EQ(listener_thread, done_thread);

  // A call that stores nothing new notifies nobody.
  ASSERT_TRUE(AppendSync(*o, {Entry("x")}).ok());
  ASSERT_TRUE(LeaseSync(*o, 1).ok());
  EXPECT_EQ(notified.load(), 1);
}

TEST_F(SqliteOutboxTest, ShutdownFinishesQueuedWorkThenRefusesNewCalls) {
  const auto options = Options(dir_, &clock_);
  constexpr int kQueued = 100;
  std::atomic<int> ok{0};
  std::atomic<int> cancelled_inline{0};
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    Outbox* raw = o.get();
    std::promise<void> entered, release;
    auto release_future = release.get_future();
    o->Append({Entry("holder")}, [&](AppendResult) {
      entered.set_value();
      release_future.wait();
      // Destruction has begun once a call is refused; until then calls are
      // queued (and still run). Bounded so a defect cannot hang the test.
      for (int i = 0; i < 100000 && cancelled_inline.load() == 0; ++i) {
        raw->Lease(0, [&](LeaseResult r) {
          if (!r.ok() && r.status().code() == StatusCode::kCancelled) ++cancelled_inline;
        });
        if (cancelled_inline.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    entered.get_future().wait();
    for (int i = 0; i < kQueued; ++i) {
      o->Append({Entry(Numbered("q", i))}, [&](AppendResult r) {
        if (r.ok()) ++ok;
      });
    }
    std::thread closer([&] { o.reset(); });
    release.set_value();
    closer.join();
  }
  EXPECT_EQ(ok.load(), kQueued);
  EXPECT_EQ(cancelled_inline.load(), 1);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), kQueued + 1);
}

TEST_F(SqliteOutboxTest, StatsMatchTheRowsAfterMixedWorkAndReopen) {
  const auto options = Options(dir_, &clock_);
  OutboxStats before;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    std::vector<int64_t> seqs;
    for (int i = 0; i < 40; ++i) {
      seqs.push_back(AppendOne(*o, Entry(Numbered("m", i), kAllPriorities[static_cast<size_t>(i % 4)],
                                         std::string(static_cast<size_t>(10 + i), 'd'))));
    }
    ASSERT_TRUE(AckSync(*o, {seqs[0], seqs[5], seqs[10]}).ok());
    ASSERT_TRUE(DeadLetterSync(*o, seqs[7], "rejected").ok());
    before = o->Stats();
  }
  for (int p = 0; p < kPriorityCount; ++p) {
    const std::string where = Numbered(" FROM events WHERE priority = ", p);
    EXPECT_EQ(static_cast<uint64_t>(QueryFile(options.path, "SELECT count(*)" + where)), before.backlog[p].count);
    EXPECT_EQ(static_cast<uint64_t>(QueryFile(options.path, "SELECT coalesce(sum(bytes), 0)" + where)),
              before.backlog[p].bytes);
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  OutboxStats after = o->Stats();
  for (int p = 0; p < kPriorityCount; ++p) {
    EXPECT_EQ(after.backlog[p].count, before.backlog[p].count);
    EXPECT_EQ(after.backlog[p].bytes, before.backlog[p].bytes);
    EXPECT_EQ(after.backlog[p].oldest_accepted_us, before.backlog[p].oldest_accepted_us);
  }
  EXPECT_EQ(after.dlq_count, 1u);
  EXPECT_EQ(after.last_sequence, before.last_sequence);
}

TEST_F(SqliteOutboxTest, LibraryVersionIsSqlites) {
  EXPECT_EQ(SqliteOutbox::LibraryVersion(), std::string(sqlite3_libversion()));
  EXPECT_FALSE(SqliteOutbox::LibraryVersion().empty());
}

// Not a timed test: it prints how long opening a large backlog takes and how
// far RSS grew while filling it. WS_SQLITE_BACKLOG_EVENTS sets the size
// (default 50000; the figure in docs uses 1000000 on a release build).
TEST_F(SqliteOutboxTest, LargeBacklogOpenIsMeasured) {
  const char* env = std::getenv("WS_SQLITE_BACKLOG_EVENTS");
  const int n = env != nullptr ? std::atoi(env) : 50000;
  ASSERT_GT(n, 0);
  auto options = Options(dir_, nullptr);
  options.max_bytes = uint64_t{1} << 40;
  constexpr int kPerCall = 1000;
  uint64_t rss_before = 0, rss_after = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    // Fill a little first so allocator and cache warm-up are not counted.
    ASSERT_TRUE(AppendSync(*o, {Entry("warm-up", Priority::kNormal, std::string(120, 'w'))}).ok());
    auto before = ReadProcessStats();
    ASSERT_TRUE(before.ok());
    rss_before = before->rss_bytes;
    for (int done = 0; done < n; done += kPerCall) {
      std::vector<OutboxEntry> entries;
      for (int i = done; i < std::min(n, done + kPerCall); ++i) {
        // About 200 bytes per event: the record plus topic and stream.
        entries.push_back(Entry(Numbered("big-", i), kAllPriorities[static_cast<size_t>(i % 4)],
                                std::string(40, 'd')));
      }
      AppendResult r = AppendSync(*o, std::move(entries));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
    }
    auto after = ReadProcessStats();
    ASSERT_TRUE(after.ok());
    rss_after = after->rss_bytes;
    EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(n) + 1);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto o = OpenStore(options);
  const auto open_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(n) + 1);
  LeaseResult first = LeaseSync(*o, 10);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->size(), 10u);
  std::printf("[ measure  ] backlog %d events, file %llu KiB: open %.1f ms; RSS %+lld KiB while filling\n", n,
              static_cast<unsigned long long>(std::filesystem::file_size(options.path) / 1024),
              static_cast<double>(open_us) / 1000.0,
              (static_cast<long long>(rss_after) - static_cast<long long>(rss_before)) / 1024);
}

}  // namespace
}  // namespace ws
