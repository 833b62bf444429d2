// SqliteOutbox against real SQLite files in a temporary folder. Time-based
// policy (TTL, retention) runs on a FakeClock; a disk that fills up on demand
// is an SQLite VFS that refuses writes while a flag is set.
#include "adapters/sqlite/sqlite_outbox.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "adapters/sqlite/outbox_db.h"
#include "platform/clock.h"
#include "platform/process_stats.h"
#include "tests/support/event_record_v1.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

using AppendResult = Result<std::vector<AppendOutcome>>;
using LeaseResult = Result<std::vector<LeasedEvent>>;

// The event a lease handed out, decoded from its record (an empty Event,
// and a failure, if it cannot be).
Event Decoded(const LeasedEvent& e) {
  Result<Event> event = DecodeEventRecord(e.record, e.id);
  EXPECT_TRUE(event.ok()) << e.id << ": " << event.status().ToString();
  return event.ok() ? std::move(event).value() : Event{};
}

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
int FaultyCheckReservedLock(sqlite3_file* f, int* out) { return Real(f)->pMethods->xCheckReservedLock(Real(f), out); }
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
  e.attributes = {{"time", "2026-11-21T10:00:00Z"},
                  {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}};
  e.data_kind = DataKind::kJson;
  e.data = data;
  return e;
}

OutboxEntry Entry(const std::string& id, Priority p = Priority::kNormal, const std::string& data = "{\"v\":1}",
                  int64_t ttl_us = 0) {
  OutboxEntry e;
  e.event = MakeEvent(id, data);
  e.topic = "waystation/plant-7/gw-1/events/com.acme.order.created";
  e.stream = "line-3";
  e.priority = p;
  e.ttl_us = ttl_us;
  return e;
}

// What an entry counts against the limits (record, topic and stream).
uint64_t StoredBytesOf(const OutboxEntry& e) {
  return EncodeEventRecord(e.event).size() + e.topic.size() + e.stream.size();
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
    for (const LeasedEvent& e : *r) ids.push_back(e.id);
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
  EXPECT_EQ(b.id, want.id);
  EXPECT_EQ(Decoded(b).source, want.source);
  EXPECT_EQ(Decoded(b).type, want.type);
  EXPECT_EQ(Decoded(b).attributes, want.attributes);
  EXPECT_EQ(Decoded(b).data_kind, want.data_kind);
  EXPECT_EQ(Decoded(b).data, want.data);

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

TEST_F(SqliteOutboxTest, AOneEventCallWithAKnownIdIsAnsweredFromTheIndexAndCountsNothing) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const int64_t first = AppendOne(*o, Entry("order-1"));
    for (int i = 0; i < 3; ++i) {
      AppendResult same = AppendSync(*o, {Entry("order-1")});
      ASSERT_TRUE(same.ok());
      EXPECT_TRUE((*same)[0].duplicate);
      EXPECT_EQ((*same)[0].sequence, first);
      AppendResult other = AppendSync(*o, {Entry("order-1", Priority::kNormal, "{\"v\":2}")});
      EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists);
    }
    // The next new event still gets the next sequence.
    EXPECT_EQ(AppendOne(*o, Entry("order-2")), first + 1);
    const OutboxStats s = o->Stats();
    EXPECT_EQ(BacklogCount(s), 2u);
    EXPECT_EQ(s.appended_events, 2u);
  }
  // The totals the triggers keep agree with the rows.
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 2);
  EXPECT_EQ(QueryFile(options.path, "SELECT sum(count) FROM totals WHERE bucket < 4"), 2);
  EXPECT_EQ(QueryFile(options.path, "SELECT sum(bytes) FROM totals WHERE bucket < 4"),
            QueryFile(options.path, "SELECT sum(bytes) FROM events"));
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
          o->Append({Entry(Numbered("t", t, i))}, [p](AppendResult r) { p->set_value(std::move(r)); });
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
    ids.push_back(e.id);
    EXPECT_EQ(e.attempts, 1) << e.id;
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
  AppendOne(*o, Entry("short", Priority::kNormal, "{}", 1'000'000));
  AppendOne(*o, Entry("forever", Priority::kNormal, "{}", 0));
  AppendOne(*o, Entry("longer", Priority::kHigh, "{}", 10'000'000));

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
  AppendOne(*o, Entry("ttl", Priority::kNormal, "{}", 1'000'000));
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
    AppendResult two =
        AppendSync(*o, {Entry("x1", Priority::kNormal, payload), Entry("x2", Priority::kNormal, payload)});
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
  options.intake_log = false;  // the database's own disk-full path
  int64_t second = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const int64_t first = AppendOne(*o, Entry("before"));
    const OutboxStats before = o->Stats();

    g_disk_full = true;
    AppendResult r =
        AppendSync(*o, {Entry("while-full-1"), Entry("while-full-2", Priority::kNormal, std::string(20000, 'z'))});
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
  EXPECT_EQ(ws::testing::Slurp(dir_.File(std::string("outbox.db.corrupt-") + kFakeStamp + "-wal")), "not a wal either");
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

TEST_F(SqliteOutboxTest, ACheckpointSizeOutOfRangeIsRefusedBeforeAnythingIsWritten) {
  auto options = Options(dir_, &clock_);
  options.wal_checkpoint_bytes = 4096;  // a checkpoint every few commits
  auto r = SqliteOutbox::Open(options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find("wal_checkpoint_bytes"), std::string::npos) << r.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(options.path));
  options.wal_checkpoint_bytes = (int64_t{256} << 20) + 1;  // a WAL to rival the store
  r = SqliteOutbox::Open(options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(options.path));
  options.wal_checkpoint_bytes = 64 * 1024;
  EXPECT_TRUE(SqliteOutbox::Open(options).ok());
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

// ---- class limits and overflow ----

using ListResult = Result<std::vector<DeadLetter>>;

Status NackSync(Outbox& o, std::vector<int64_t> seqs, int64_t retry_in_us) {
  std::promise<Status> p;
  auto f = p.get_future();
  o.Nack(std::move(seqs), retry_in_us, [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

ListResult ListSync(Outbox& o, int64_t after, size_t limit) {
  std::promise<ListResult> p;
  auto f = p.get_future();
  o.ListDeadLetters(after, limit, [&p](ListResult r) { p.set_value(std::move(r)); });
  return f.get();
}

Result<AppendOutcome> RetrySync(Outbox& o, int64_t seq, std::string id) {
  std::promise<Result<AppendOutcome>> p;
  auto f = p.get_future();
  o.RetryDeadLetter(seq, std::move(id), [&p](Result<AppendOutcome> r) { p.set_value(std::move(r)); });
  return f.get();
}

Result<uint64_t> PurgeSync(Outbox& o, int64_t seq, std::string id) {
  std::promise<Result<uint64_t>> p;
  auto f = p.get_future();
  o.PurgeDeadLetters(seq, std::move(id), [&p](Result<uint64_t> r) { p.set_value(std::move(r)); });
  return f.get();
}

Result<uint64_t> ReplaySync(Outbox& o, const ReplayRange& range) {
  std::promise<Result<uint64_t>> p;
  auto f = p.get_future();
  o.Replay(range, [&p](Result<uint64_t> r) { p.set_value(std::move(r)); });
  return f.get();
}

ClassLimits& Limits(SqliteOutboxOptions& o, Priority p) { return o.classes[static_cast<size_t>(p)]; }

const ClassBacklog& Backlog(const OutboxStats& s, Priority p) { return s.backlog[static_cast<size_t>(p)]; }

TEST_F(SqliteOutboxTest, ClassMaxCountWithRejectNewRefusesTheCallAndWritesNothing) {
  auto options = Options(dir_, &clock_);
  Limits(options, Priority::kNormal).max_count = 2;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("n1"));
  AppendOne(*o, Entry("n2"));
  AppendResult r = AppendSync(*o, {Entry("h1", Priority::kHigh), Entry("n3")});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("class normal is at max_count 2"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("\"n3\""), std::string::npos) << r.status().message();
  const OutboxStats s = o->Stats();
  EXPECT_EQ(Backlog(s, Priority::kNormal).count, 2u);
  EXPECT_EQ(Backlog(s, Priority::kHigh).count, 0u) << "the refused call stored part of itself";
  EXPECT_EQ(s.rejected_full, 2u);
  EXPECT_EQ(s.removed_dropped_overflow, 0u);
  // Other classes still have room.
  AppendOne(*o, Entry("h2", Priority::kHigh));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"h2", "n1", "n2"}));
}

TEST_F(SqliteOutboxTest, DropOldestMakesRoomFromTheSameClassOnly) {
  auto options = Options(dir_, &clock_);
  Limits(options, Priority::kBulk).max_count = 3;  // bulk drops oldest by default
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendOne(*o, Entry("n1"));
    for (int i = 1; i <= 5; ++i) AppendOne(*o, Entry(Numbered("b", i), Priority::kBulk));
    const OutboxStats s = o->Stats();
    EXPECT_EQ(Backlog(s, Priority::kBulk).count, 3u);
    EXPECT_EQ(Backlog(s, Priority::kNormal).count, 1u);
    EXPECT_EQ(s.removed_dropped_overflow, 2u);
    EXPECT_EQ(s.rejected_full, 0u);
    EXPECT_EQ(s.appended_events, 6u);
    // The oldest of the class is now b3: its accepted time is the class's oldest.
    EXPECT_EQ(Backlog(s, Priority::kBulk).oldest_accepted_us, clock_.WallMicros());
    // Several in one call: the call's own earlier events may be the oldest.
    ASSERT_TRUE(AppendSync(*o, {Entry("b6", Priority::kBulk), Entry("b7", Priority::kBulk)}).ok());
    EXPECT_EQ(o->Stats().removed_dropped_overflow, 4u);
  }
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE priority = 3"), 3);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(Backlog(o->Stats(), Priority::kBulk).count, 3u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"n1", "b5", "b6", "b7"}));
}

TEST_F(SqliteOutboxTest, DropOldestIsUndoneWithARefusedCall) {
  auto options = Options(dir_, &clock_);
  Limits(options, Priority::kBulk).max_count = 2;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("n1"));
  AppendOne(*o, Entry("b1", Priority::kBulk));
  AppendOne(*o, Entry("b2", Priority::kBulk));
  // The first entry would drop b1; the second is refused, so neither happens.
  AppendResult r = AppendSync(*o, {Entry("b3", Priority::kBulk), Entry("n1", Priority::kNormal, "{\"other\":1}")});
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
  const OutboxStats s = o->Stats();
  EXPECT_EQ(s.removed_dropped_overflow, 0u);
  EXPECT_EQ(Backlog(s, Priority::kBulk).count, 2u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"n1", "b1", "b2"}));
}

TEST_F(SqliteOutboxTest, ClassMaxBytesDropsByBytes) {
  auto options = Options(dir_, &clock_);
  const std::string payload(300, 'p');
  const uint64_t one = StoredBytesOf(Entry("b0", Priority::kBulk, payload));
  Limits(options, Priority::kBulk).max_bytes = 3 * one + one / 2;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  for (int i = 0; i < 6; ++i) AppendOne(*o, Entry(Numbered("b", i), Priority::kBulk, payload));
  const OutboxStats s = o->Stats();
  EXPECT_EQ(Backlog(s, Priority::kBulk).count, 3u);
  EXPECT_LE(Backlog(s, Priority::kBulk).bytes, 3 * one + one / 2);
  EXPECT_EQ(s.removed_dropped_overflow, 3u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"b3", "b4", "b5"}));
}

TEST_F(SqliteOutboxTest, ControlReserveKeepsRoomForControlWhenTheStoreIsFull) {
  auto options = Options(dir_, &clock_);
  options.max_bytes = 6000;
  options.control_reserve_bytes = 2000;
  const std::string payload(400, 'p');
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  int stored = 0;
  AppendResult r = AppendSync(*o, {Entry("n0", Priority::kNormal, payload)});
  while (r.ok()) {
    ASSERT_LT(++stored, 20) << "max_bytes is not enforced";
    r = AppendSync(*o, {Entry(Numbered("n", stored), Priority::kNormal, payload)});
  }
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("reserved for control"), std::string::npos) << r.status().message();
  EXPECT_LE(Backlog(o->Stats(), Priority::kNormal).bytes, 4000u);
  // A status reply still fits, and another.
  AppendOne(*o, Entry("status-1", Priority::kControl, payload));
  AppendOne(*o, Entry("status-2", Priority::kControl, payload));
  EXPECT_EQ(Backlog(o->Stats(), Priority::kControl).count, 2u);
}

TEST_F(SqliteOutboxTest, AFullStoreDropsOldestBulkForBulkButRefusesNormal) {
  auto options = Options(dir_, &clock_);
  options.max_bytes = 5000;
  const std::string payload(400, 'p');
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("b0", Priority::kBulk, payload));
  AppendOne(*o, Entry("b1", Priority::kBulk, payload));
  int n = 0;
  while (AppendSync(*o, {Entry(Numbered("n", n), Priority::kNormal, payload)}).ok()) ASSERT_LT(++n, 20);
  // Bulk makes room from bulk.
  AppendOne(*o, Entry("b2", Priority::kBulk, payload));
  EXPECT_EQ(o->Stats().removed_dropped_overflow, 1u);
  AppendOne(*o, Entry("b3", Priority::kBulk, payload));
  EXPECT_EQ(o->Stats().removed_dropped_overflow, 2u);
  // Normal does not.
  EXPECT_EQ(AppendSync(*o, {Entry("n-late", Priority::kNormal, payload)}).status().code(),
            StatusCode::kResourceExhausted);
  std::vector<std::string> ids = LeaseIds(*o, 100);
  EXPECT_EQ(ids.size(), static_cast<size_t>(n) + 2);
  EXPECT_EQ(ids[ids.size() - 2], "b2");
  EXPECT_EQ(ids.back(), "b3");
}

TEST_F(SqliteOutboxTest, MaxAgeRemovesOldEventsOfThatClassOnly) {
  auto options = Options(dir_, &clock_);
  Limits(options, Priority::kBulk).max_age_s = 60;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("b-old-1", Priority::kBulk));
  AppendOne(*o, Entry("b-old-2", Priority::kBulk));
  AppendOne(*o, Entry("n-old", Priority::kNormal));
  clock_.AdvanceMillis(30'000);
  AppendOne(*o, Entry("b-young", Priority::kBulk));
  clock_.AdvanceMillis(30'000);  // the first two are exactly 60 s old now
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"n-old", "b-young"}));
  OutboxStats s = o->Stats();
  EXPECT_EQ(s.removed_expired, 2u);
  EXPECT_EQ(Backlog(s, Priority::kBulk).count, 1u);
  EXPECT_EQ(Backlog(s, Priority::kBulk).oldest_accepted_us, clock_.WallMicros() - 30'000'000);
  clock_.AdvanceMillis(31'000);
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"n-old"}));
  EXPECT_EQ(o->Stats().removed_expired, 3u);
}

// ---- nack ----

TEST_F(SqliteOutboxTest, NackedEventComesBackOnlyAfterItsTimeWithTheAttemptCounted) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("a"));
  const int64_t b = AppendOne(*o, Entry("b"));
  AppendOne(*o, Entry("c"));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_TRUE(NackSync(*o, {b, 999999}, 10'000'000).ok());  // unknown ones are ignored
  EXPECT_EQ(o->Stats().nacked, 1u);
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
  // A reconnect before the time does not bring it back early.
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"a", "c"}));
  clock_.AdvanceMillis(10'000);
  LeaseResult again = LeaseSync(*o, 10);
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].id, "b");
  EXPECT_EQ((*again)[0].attempts, 1) << "the nack counts one attempt, the reset none more";
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
}

TEST_F(SqliteOutboxTest, NackedEventGoesAheadOfNewerEventsOfItsClass) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  const int64_t a = AppendOne(*o, Entry("a"));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"a"}));
  ASSERT_TRUE(NackSync(*o, {a}, 0).ok());  // retry at once
  AppendOne(*o, Entry("b"));
  AppendOne(*o, Entry("h", Priority::kHigh));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"h", "a", "b"}));
  ASSERT_TRUE(AckSync(*o, {a}).ok());
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"h", "b"}));
}

TEST_F(SqliteOutboxTest, RetryTimesSurviveAReopen) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const int64_t a = AppendOne(*o, Entry("a"));
    AppendOne(*o, Entry("b"));
    ASSERT_EQ(LeaseIds(*o, 10).size(), 2u);
    ASSERT_TRUE(NackSync(*o, {a}, 60'000'000).ok());
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"b"}));
  clock_.AdvanceMillis(60'000);
  LeaseResult r = LeaseSync(*o, 10);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id, "a");
  EXPECT_EQ((*r)[0].attempts, 1);
}

// ---- dead letters ----

TEST_F(SqliteOutboxTest, DeadLettersAreListedOldestFirstInPages) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  std::vector<int64_t> seqs;
  for (int i = 0; i < 3; ++i) seqs.push_back(AppendOne(*o, Entry(Numbered("d", i), Priority::kHigh)));
  ASSERT_EQ(LeaseIds(*o, 10).size(), 3u);
  o->ResetLeases();  // one attempt each
  clock_.AdvanceMillis(5000);
  for (int i = 2; i >= 0; --i) ASSERT_TRUE(DeadLetterSync(*o, seqs[static_cast<size_t>(i)], Numbered("why ", i)).ok());

  ListResult page = ListSync(*o, 0, 2);
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  ASSERT_EQ(page->size(), 2u);
  const DeadLetter& d = (*page)[0];
  EXPECT_EQ(d.sequence, seqs[0]);
  EXPECT_EQ(d.id, "d0");
  EXPECT_EQ(d.type, "com.acme.order.created");
  EXPECT_EQ(d.topic, Entry("x").topic);
  EXPECT_EQ(d.priority, Priority::kHigh);
  EXPECT_EQ(d.reason, "why 0");
  EXPECT_EQ(d.accepted_at_us, clock_.WallMicros() - 5'000'000);
  EXPECT_EQ(d.dead_lettered_at_us, clock_.WallMicros());
  EXPECT_EQ(d.attempts, 1);
  EXPECT_EQ((*page)[1].id, "d1");
  ListResult rest = ListSync(*o, (*page)[1].sequence, 10);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->size(), 1u);
  EXPECT_EQ((*rest)[0].id, "d2");
  EXPECT_TRUE(ListSync(*o, seqs[2], 10)->empty());
  EXPECT_TRUE(ListSync(*o, 0, 0)->empty());
}

TEST_F(SqliteOutboxTest, RetryDeadLetterQueuesItAgainUnderANewSequence) {
  const auto options = Options(dir_, &clock_);
  int64_t retried_seq = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    std::atomic<int> notified{0};
    o->SetAppendListener([&] { ++notified; });
    const int64_t a = AppendOne(*o, Entry("a"));
    const int64_t b = AppendOne(*o, Entry("b"));
    ASSERT_EQ(LeaseIds(*o, 10).size(), 2u);
    ASSERT_TRUE(DeadLetterSync(*o, a, "rejected by broker").ok());
    ASSERT_TRUE(DeadLetterSync(*o, b, "rejected by broker").ok());
    AppendOne(*o, Entry("c"));
    ASSERT_TRUE(ListSync(*o, 0, 1).ok());  // queued behind c's listener call
    const int before = notified.load();

    Result<AppendOutcome> r = RetrySync(*o, a, "");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->id, "a");
    EXPECT_FALSE(r->duplicate);
    EXPECT_GT(r->sequence, o->Stats().last_sequence - 1);
    EXPECT_EQ(r->sequence, o->Stats().last_sequence);
    retried_seq = r->sequence;
    LeaseResult leased = LeaseSync(*o, 10);
    ASSERT_TRUE(leased.ok());
    ASSERT_EQ(leased->size(), 2u);  // c, then a: it is sent after what was queued
    EXPECT_EQ((*leased)[0].id, "c");
    EXPECT_EQ((*leased)[1].id, "a");
    EXPECT_EQ((*leased)[1].sequence, retried_seq);
    EXPECT_EQ((*leased)[1].attempts, 0);
    EXPECT_EQ(notified.load(), before + 1);

    // By id.
    Result<AppendOutcome> by_id = RetrySync(*o, 0, "b");
    ASSERT_TRUE(by_id.ok()) << by_id.status().ToString();
    EXPECT_EQ(by_id->id, "b");
    const OutboxStats s = o->Stats();
    EXPECT_EQ(s.dlq_count, 0u);
    EXPECT_EQ(s.dead_letters_retried, 2u);
    EXPECT_EQ(BacklogCount(s), 3u);

    EXPECT_EQ(RetrySync(*o, a, "").status().code(), StatusCode::kNotFound);
    EXPECT_EQ(RetrySync(*o, 0, "nobody").status().code(), StatusCode::kNotFound);
    EXPECT_EQ(RetrySync(*o, 0, "").status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM dlq"), 0);
  EXPECT_EQ(QueryFile(options.path, Numbered("SELECT count(*) FROM events WHERE id = 'a' AND seq = ", retried_seq)), 1);
}

TEST_F(SqliteOutboxTest, RetryIntoAFullClassIsRefusedAndTheDeadLetterStays) {
  auto options = Options(dir_, &clock_);
  Limits(options, Priority::kNormal).max_count = 1;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const int64_t a = AppendOne(*o, Entry("a"));
  ASSERT_TRUE(DeadLetterSync(*o, a, "no").ok());
  AppendOne(*o, Entry("b"));
  Result<AppendOutcome> r = RetrySync(*o, a, "");
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(o->Stats().dlq_count, 1u);
  EXPECT_EQ(ListSync(*o, 0, 10)->size(), 1u);
  EXPECT_EQ(BacklogCount(o->Stats()), 1u);
}

TEST_F(SqliteOutboxTest, PurgeDeadLettersOneOrAll) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  std::vector<int64_t> seqs;
  for (int i = 0; i < 5; ++i) {
    seqs.push_back(AppendOne(*o, Entry(Numbered("p", i))));
    ASSERT_TRUE(DeadLetterSync(*o, seqs.back(), "no").ok());
  }
  Result<uint64_t> one = PurgeSync(*o, seqs[1], "");
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(*one, 1u);
  Result<uint64_t> by_id = PurgeSync(*o, 0, "p3");
  ASSERT_TRUE(by_id.ok());
  EXPECT_EQ(*by_id, 1u);
  EXPECT_EQ(PurgeSync(*o, seqs[1], "").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(PurgeSync(*o, 0, "nobody").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(o->Stats().dlq_count, 3u);
  Result<uint64_t> all = PurgeSync(*o, 0, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, 3u);
  const OutboxStats s = o->Stats();
  EXPECT_EQ(s.dlq_count, 0u);
  EXPECT_EQ(s.removed_purged, 5u);
  EXPECT_EQ(*PurgeSync(*o, 0, ""), 0u);  // nothing left: not an error
  // A purged id is forgotten: the producer may send it again.
  AppendResult again = AppendSync(*o, {Entry("p1")});
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE((*again)[0].duplicate);
}

TEST_F(SqliteOutboxTest, DeadLettersCountAgainstMaxBytesUntilPurged) {
  auto options = Options(dir_, &clock_);
  options.max_bytes = 3000;
  const std::string payload(400, 'p');
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  std::vector<int64_t> seqs;
  AppendResult r = AppendSync(*o, {Entry("d0", Priority::kNormal, payload)});
  while (r.ok()) {
    seqs.push_back((*r)[0].sequence);
    ASSERT_TRUE(DeadLetterSync(*o, seqs.back(), "no").ok());
    ASSERT_LT(seqs.size(), 20u);
    r = AppendSync(*o, {Entry(Numbered("d", seqs.size()), Priority::kNormal, payload)});
  }
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(PurgeSync(*o, 0, "").ok());
  EXPECT_TRUE(AppendSync(*o, {Entry("after-purge", Priority::kNormal, payload)}).ok());
}

// ---- replay ----

TEST_F(SqliteOutboxTest, ReplayRequeuesRetainedDeliveriesBySequenceOrTime) {
  auto options = Options(dir_, &clock_);
  options.retain_delivered_s = 3600;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  std::vector<int64_t> seqs;
  std::vector<int64_t> times;
  for (int i = 0; i < 4; ++i) {
    times.push_back(clock_.WallMicros());
    seqs.push_back(AppendOne(*o, Entry(Numbered("r", i), i == 3 ? Priority::kHigh : Priority::kNormal)));
    clock_.AdvanceMillis(1000);
  }
  ASSERT_TRUE(AckSync(*o, seqs).ok());
  EXPECT_EQ(BacklogCount(o->Stats()), 0u);

  Result<uint64_t> n = ReplaySync(*o, ReplayRange{seqs[1], seqs[2], 0, 0});
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 2u);
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok());
  ASSERT_EQ(leased->size(), 2u);
  EXPECT_EQ((*leased)[0].id, "r1");
  EXPECT_EQ((*leased)[0].replay_of, seqs[1]);
  EXPECT_GT((*leased)[0].sequence, seqs[3]);
  EXPECT_EQ((*leased)[1].id, "r2");
  EXPECT_EQ((*leased)[1].replay_of, seqs[2]);
  EXPECT_EQ(Decoded((*leased)[0]).data, MakeEvent("r1").data);
  EXPECT_EQ(o->Stats().replayed, 2u);

  // Still queued: a second replay of the same range adds nothing.
  n = ReplaySync(*o, ReplayRange{seqs[1], seqs[2], 0, 0});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);

  // By accepted time: r3 (high) only, and the open-ended form.
  n = ReplaySync(*o, ReplayRange{0, 0, times[3], 0});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"r3"}));
  // Everything: only r0 is not queued yet.
  n = ReplaySync(*o, ReplayRange{});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"r0"}));

  // A producer retrying an original id still gets its first answer.
  AppendResult retry = AppendSync(*o, {Entry("r1")});
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE((*retry)[0].duplicate);
  EXPECT_EQ((*retry)[0].sequence, seqs[1]);

  // Delivered again: the replay copy goes to retention too, and may be replayed once more.
  std::vector<int64_t> replayed;
  o->ResetLeases();
  LeaseResult all = LeaseSync(*o, 10);
  ASSERT_TRUE(all.ok());
  for (const LeasedEvent& e : *all) replayed.push_back(e.sequence);
  ASSERT_EQ(replayed.size(), 4u);
  ASSERT_TRUE(AckSync(*o, replayed).ok());
  n = ReplaySync(*o, ReplayRange{seqs[0], seqs[0], 0, 0});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
}

TEST_F(SqliteOutboxTest, ReplayRefusesBadRangesAndNeedsRetention) {
  {
    auto options = Options(dir_, &clock_);
    options.retain_delivered_s = 60;
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(ReplaySync(*o, ReplayRange{9, 5, 0, 0}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(ReplaySync(*o, ReplayRange{0, 0, -1, 0}).status().code(), StatusCode::kInvalidArgument);
    Result<uint64_t> none = ReplaySync(*o, ReplayRange{1, 100, 0, 0});
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(*none, 0u);
  }
  ws::testing::TempDir other;
  auto o = OpenStore(Options(other, &clock_));
  ASSERT_NE(o, nullptr);
  Result<uint64_t> r = ReplaySync(*o, ReplayRange{});
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("retain_delivered_s"), std::string::npos) << r.status().message();
}

TEST_F(SqliteOutboxTest, ReplayObeysClassLimitsAllOrNothing) {
  auto options = Options(dir_, &clock_);
  options.retain_delivered_s = 3600;
  Limits(options, Priority::kNormal).max_count = 2;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  std::vector<int64_t> seqs;
  for (int i = 0; i < 2; ++i) seqs.push_back(AppendOne(*o, Entry(Numbered("r", i))));
  ASSERT_TRUE(AckSync(*o, seqs).ok());
  AppendOne(*o, Entry("queued"));
  Result<uint64_t> r = ReplaySync(*o, ReplayRange{});
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(BacklogCount(o->Stats()), 1u);
  EXPECT_EQ(o->Stats().replayed, 0u);
}

// ---- stats ----

TEST_F(SqliteOutboxTest, AckLatencyHistogramObservesEveryAcknowledgedEvent) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("one"));
  ASSERT_TRUE(AppendSync(*o, {Entry("two"), Entry("three")}).ok());
  ASSERT_FALSE(AppendSync(*o, {Entry("one", Priority::kNormal, "{\"v\":9}")}).ok());  // refused: not observed
  const OutboxStats s = o->Stats();
  EXPECT_EQ(s.ack_latency_count, 3u);
  uint64_t in_buckets = 0;
  for (uint64_t b : s.ack_latency_buckets) in_buckets += b;
  EXPECT_EQ(in_buckets, 3u);
  EXPECT_GT(s.ack_latency_sum_us, 0u);  // every commit is fsync'd: never free
  EXPECT_EQ(s.appended_events, 3u);
  EXPECT_GE(s.commits, 1u);
}

// ---- integrity at open: full, structural, background ----

// What the header check says of a real store's first bytes, intact and
// damaged in the ways a flash card damages files.
TEST_F(SqliteOutboxTest, HeaderCheckCatchesTruncationAndGarbage) {
  const auto options = Options(dir_, &clock_);
  BuildStore(options, 50);
  const std::string bytes = ws::testing::Slurp(options.path);
  ASSERT_GT(bytes.size(), 100u);
  const std::string_view header(bytes.data(), 100);
  EXPECT_TRUE(sqlite::CheckDatabaseHeader(header, bytes.size()).ok());
  EXPECT_EQ(sqlite::CheckDatabaseHeader(header, bytes.size() - 4096).code(), StatusCode::kDataLoss);  // a page short
  EXPECT_EQ(sqlite::CheckDatabaseHeader(header, bytes.size() - 100).code(), StatusCode::kDataLoss);   // mid-page
  std::string zeroed(100, '\0');
  EXPECT_EQ(sqlite::CheckDatabaseHeader(zeroed, bytes.size()).code(), StatusCode::kDataLoss);
  std::string bad_page = std::string(header);
  bad_page[16] = 0x03;  // page size 0x03xx: not a power of two
  EXPECT_EQ(sqlite::CheckDatabaseHeader(bad_page, bytes.size()).code(), StatusCode::kDataLoss);
  EXPECT_EQ(sqlite::CheckDatabaseHeader(header.substr(0, 50), 50).code(), StatusCode::kDataLoss);
}

// Waits (bounded, not timed) for the background check to finish.
OutboxStats AfterBackgroundCheck(const SqliteOutbox& o) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  OutboxStats s = o.Stats();
  while (s.integrity_check_running && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    s = o.Stats();
  }
  EXPECT_FALSE(s.integrity_check_running);
  return s;
}

// Zeroes pages in the middle of the events table, away from the pages an
// open reads (header, schema, totals, the head and tail of each class).
std::string DamageMiddlePages(const std::string& path) {
  std::string bytes = ws::testing::Slurp(path);
  EXPECT_GT(bytes.size(), 64u * 4096);
  std::fill(bytes.begin() + 24 * 4096, bytes.begin() + 32 * 4096, '\0');
  WriteBytes(path, bytes);
  return bytes;
}

TEST_F(SqliteOutboxTest, CleanShutdownIsMarkedAndTheMarkIsGoneWhileOpen) {
  const auto options = Options(dir_, &clock_);
  BuildStore(options, 5);
  EXPECT_TRUE(std::filesystem::exists(options.path + ".clean"));
  EXPECT_FALSE(std::filesystem::exists(options.path + "-wal"));
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(std::filesystem::exists(options.path + ".clean")) << "a crash now would look clean";
}

// Without the intake log new events go into the file while it is checked,
// so damage the check finds stays in use until the next start.
TEST_F(SqliteOutboxTest, WithoutTheIntakeLogDamageFoundInTheBackgroundIsQuarantinedAtNextStart) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;  // every file counts as large
  options.intake_log = false;
  BuildStore(options, 200);
  const std::string damaged = DamageMiddlePages(options.path);
  {
    // Structural check only: the store opens and works...
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    EXPECT_FALSE(o->Stats().quarantined_at_start);
    // ...and the full check behind it raises the alarm and asks for a check.
    const OutboxStats s = AfterBackgroundCheck(*o);
    EXPECT_TRUE(s.integrity_failed);
    EXPECT_TRUE(std::filesystem::exists(options.path + ".needs-check"));
  }
  EXPECT_FALSE(std::filesystem::exists(options.path + ".clean")) << "a damaged store must not be marked clean";
  // The next start checks in full before accepting anything, and quarantines.
  ExpectQuarantinedAndFresh(dir_, options, damaged);
  EXPECT_FALSE(std::filesystem::exists(options.path + ".needs-check"));
}

TEST_F(SqliteOutboxTest, IntactLargeFilePassesTheBackgroundCheck) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  BuildStore(options, 200);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  // The committer works while the check reads.
  AppendOne(*o, Entry("during-check"));
  const OutboxStats s = AfterBackgroundCheck(*o);
  EXPECT_FALSE(s.integrity_failed);
  EXPECT_FALSE(std::filesystem::exists(options.path + ".needs-check"));
  EXPECT_EQ(BacklogCount(s), 201u);
}

TEST_F(SqliteOutboxTest, WithoutTheIntakeLogAndACleanMarkALargeFileIsCheckedInFullAtOpen) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  options.intake_log = false;
  BuildStore(options, 200);
  ASSERT_EQ(std::remove((options.path + ".clean").c_str()), 0);  // as after a crash
  const std::string damaged = DamageMiddlePages(options.path);
  ExpectQuarantinedAndFresh(dir_, options, damaged);
}

TEST_F(SqliteOutboxTest, AWalLeftBehindOverridesTheCleanMark) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  options.intake_log = false;
  BuildStore(options, 200);
  const std::string damaged = DamageMiddlePages(options.path);
  WriteBytes(options.path + "-wal", std::string(4096, 'w'));
  ExpectQuarantinedAndFresh(dir_, options, damaged);
}

TEST_F(SqliteOutboxTest, AFileChangedSinceItsCleanShutdownIsCheckedInFull) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  options.intake_log = false;
  BuildStore(options, 200);
  std::string bytes = DamageMiddlePages(options.path);
  bytes.resize(bytes.size() - 4096);  // one page shorter than at the clean shutdown
  WriteBytes(options.path, bytes);
  ExpectQuarantinedAndFresh(dir_, options, bytes);
}

// A run that dies without closing the store: a child process opens it,
// appends, reports that through a pipe and is killed with SIGKILL, as by
// kill -9. Its writes stay in the page cache, its WAL is left behind. False
// if the child failed before that.
bool CrashAfterAppending(const SqliteOutboxOptions& options, int n, const char* prefix = "crashed-") {
  int fds[2];
  if (::pipe(fds) != 0) return false;
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    ::close(fds[0]);
    Result<std::unique_ptr<SqliteOutbox>> o = SqliteOutbox::Open(options);
    if (!o.ok()) ::_exit(2);
    std::vector<OutboxEntry> entries;
    for (int i = 0; i < n; ++i) entries.push_back(Entry(Numbered(prefix, i)));
    if (!AppendSync(**o, std::move(entries)).ok()) ::_exit(3);
    const char done = 'y';
    if (::write(fds[1], &done, 1) != 1) ::_exit(4);
    ::raise(SIGKILL);  // no destructor, no exit handler: the store is never closed
    ::_exit(5);
  }
  ::close(fds[1]);
  char done = 'n';
  const bool appended = ::read(fds[0], &done, 1) == 1 && done == 'y';
  ::close(fds[0]);
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return false;
  return appended && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

// A large store (every file counts as large) of 200 events, closed
// cleanly, then a run that appends 5 more and is killed. False on a failure.
bool BuildAndCrash(const SqliteOutboxOptions& options) {
  EXPECT_EQ(options.full_check_max_bytes, 0u);
  BuildStore(options, 200);
  return !::testing::Test::HasFatalFailure() && CrashAfterAppending(options, 5);
}

// A boot marker naming another boot, as after a power cut.
constexpr const char* kOtherBootMarker =
    "waystation outbox open in boot\nboot_id=00000000-0000-4000-8000-000000000000\n";

TEST_F(SqliteOutboxTest, AnOpenStoreNamesItsBootUntilItClosesCleanly) {
  auto options = Options(dir_, &clock_);
  Result<std::string> boot = ws::KernelBootId();
  ASSERT_TRUE(boot.ok()) << boot.status().ToString();
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const std::string marker = ws::testing::Slurp(options.path + ".boot");
    EXPECT_NE(marker.find("boot_id=" + *boot + "\n"), std::string::npos) << marker;
  }
  EXPECT_TRUE(std::filesystem::exists(options.path + ".clean"));
  EXPECT_FALSE(std::filesystem::exists(options.path + ".boot"));
}

// After a crash whose events were still in the intake log: the store was
// quarantined at open, and those events went into the fresh store.
void ExpectQuarantinedWithTheCrashedEvents(const ws::testing::TempDir& dir, const SqliteOutboxOptions& options,
                                           const std::string& damaged_bytes) {
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_TRUE(o->Stats().quarantined_at_start);
  const std::string moved = std::string("outbox.db.corrupt-") + kFakeStamp;
  EXPECT_TRUE(ws::testing::Slurp(dir.File(moved)) == damaged_bytes) << "the quarantined file differs";
  EXPECT_TRUE(std::filesystem::exists(dir.File(moved + "-wal"))) << "the crashed run's WAL is evidence too";
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"crashed-0", "crashed-1", "crashed-2", "crashed-3", "crashed-4"}));
}

// Zeroes the root page of the index over event ids, which the structural
// check at open does not read and a lookup of an id does.
std::string DamageIdIndex(const std::string& path) {
  const int64_t root = QueryFile(path, "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_events_1'");
  const int64_t page_size = QueryFile(path, "PRAGMA page_size");
  EXPECT_GT(root, 1);
  std::string bytes = ws::testing::Slurp(path);
  const auto at = static_cast<size_t>((root - 1) * page_size);
  EXPECT_LE(at + static_cast<size_t>(page_size), bytes.size());
  const auto first = bytes.begin() + static_cast<std::ptrdiff_t>(at);
  std::fill(first, first + static_cast<std::ptrdiff_t>(page_size), '\0');
  WriteBytes(path, bytes);
  return bytes;
}

TEST_F(SqliteOutboxTest, ALargeFileLeftByACrashInThisBootIsCheckedInTheBackground) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  options.intake_log = false;  // the crashed run's events are in the WAL, not to be moved at open
  ASSERT_TRUE(BuildAndCrash(options));
  ASSERT_GT(std::filesystem::file_size(options.path + "-wal"), 0u) << "the child closed the store";
  EXPECT_FALSE(std::filesystem::exists(options.path + ".clean"));
  DamageMiddlePages(options.path);
  {
    // No power cut since the crash: open trusts the file as after a clean
    // shutdown, and the full check behind it raises the alarm.
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    EXPECT_FALSE(o->Stats().quarantined_at_start);
    const OutboxStats s = AfterBackgroundCheck(*o);
    EXPECT_TRUE(s.integrity_failed);
    EXPECT_TRUE(std::filesystem::exists(options.path + ".needs-check"));
  }
  // The next start checks in full and quarantines, whatever the boot.
  const std::string damaged = ws::testing::Slurp(options.path);
  ExpectQuarantinedAndFresh(dir_, options, damaged);
}

TEST_F(SqliteOutboxTest, DamageMetWhileMovingTheIntakeAfterACrashInThisBootQuarantinesAndKeepsTheEvents) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  ASSERT_TRUE(BuildAndCrash(options));  // the 5 are held in the intake log
  const std::string damaged = DamageIdIndex(options.path);
  ExpectQuarantinedWithTheCrashedEvents(dir_, options, damaged);
}

TEST_F(SqliteOutboxTest, WithoutTheIntakeLogALargeFileLeftByACrashInAnEarlierBootIsCheckedInFullAtOpen) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  ASSERT_TRUE(BuildAndCrash(options));
  // As after a power cut: the machine has booted since.
  WriteBytes(options.path + ".boot", kOtherBootMarker);
  const std::string damaged = DamageMiddlePages(options.path);
  options.intake_log = false;  // the log the crashed run left is still read back at open
  ExpectQuarantinedWithTheCrashedEvents(dir_, options, damaged);
}

TEST_F(SqliteOutboxTest, AfterACrashInThisBootNothingAcknowledgedIsMissing) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  ASSERT_TRUE(BuildAndCrash(options));
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const OutboxStats s = AfterBackgroundCheck(*o);
  EXPECT_FALSE(s.quarantined_at_start);
  EXPECT_FALSE(s.integrity_failed);
  EXPECT_EQ(BacklogCount(s), 205u);
}

// ---- the gate: new events wait in the intake log while the check runs ----

// Holds the background check before it reads a page, until Release (at
// most 60 s, so a failing test cannot hang its store's shutdown).
class CheckHold {
 public:
  std::function<void()> Hook() const {
    return [state = state_] {
      std::unique_lock<std::mutex> lock(state->mu);
      state->cv.wait_for(lock, std::chrono::seconds(60), [&state] { return state->open; });
    };
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->open = true;
    }
    state_->cv.notify_all();
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

std::future<LeaseResult> LeaseLater(Outbox& o, size_t max) {
  auto p = std::make_shared<std::promise<LeaseResult>>();
  std::future<LeaseResult> f = p->get_future();
  o.Lease(max, [p](LeaseResult r) { p->set_value(std::move(r)); });
  return f;
}

std::vector<std::string> IdsOf(const LeaseResult& r) {
  std::vector<std::string> ids;
  if (r.ok()) {
    for (const LeasedEvent& e : *r) ids.push_back(e.id);
  }
  return ids;
}

constexpr auto kNow = std::chrono::seconds(0);
constexpr auto kBounded = std::chrono::seconds(60);

TEST_F(SqliteOutboxTest, WhileTheBackgroundCheckRunsNewEventsWaitInTheIntakeLogAndEverythingElseWaitsForIt) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  BuildStore(options, 200);
  CheckHold hold;
  options.before_background_check = hold.Hook();
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  // Called in this order; the committer takes calls in order, so by the
  // time the plain append is answered, the other two were taken.
  std::future<LeaseResult> lease = LeaseLater(*o, 1000);
  auto ttl_done = std::make_shared<std::promise<AppendResult>>();
  std::future<AppendResult> ttl = ttl_done->get_future();
  o->Append({Entry("with-ttl", Priority::kNormal, "{\"v\":1}", 3'600'000'000)},
            [ttl_done](AppendResult r) { ttl_done->set_value(std::move(r)); });
  const int64_t during = AppendOne(*o, Entry("during-check"));
  EXPECT_EQ(lease.wait_for(kNow), std::future_status::timeout) << "a lease ran before the check";
  EXPECT_EQ(ttl.wait_for(kNow), std::future_status::timeout) << "an event with a TTL (never held) was stored";
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 200) << "the unchecked file took an event";

  hold.Release();
  ASSERT_EQ(lease.wait_for(kBounded), std::future_status::ready);
  const LeaseResult leased = lease.get();
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  // The file's events, then the one held: in sequence order.
  ASSERT_EQ(leased->size(), 201u);
  EXPECT_EQ(leased->front().id, "ev-0");
  EXPECT_EQ(leased->back().id, "during-check");
  EXPECT_EQ(leased->back().sequence, during);
  for (size_t i = 1; i < leased->size(); ++i) EXPECT_LT((*leased)[i - 1].sequence, (*leased)[i].sequence);
  ASSERT_EQ(ttl.wait_for(kBounded), std::future_status::ready);
  const AppendResult stored = ttl.get();
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  EXPECT_GT((*stored)[0].sequence, during) << "answered after it, so sent after it";
  const OutboxStats s = o->Stats();
  EXPECT_FALSE(s.quarantined_while_running);
  EXPECT_FALSE(s.integrity_failed);
  EXPECT_EQ(BacklogCount(s), 202u);
}

TEST_F(SqliteOutboxTest, DamageTheBackgroundCheckFindsIsMovedAsideAtOnceAndTheEventsHeldMeanwhileGoOn) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  BuildStore(options, 200);
  const std::string damaged = DamageMiddlePages(options.path);
  CheckHold hold;
  auto held_options = options;
  held_options.before_background_check = hold.Hook();
  int64_t last_held = 0;
  {
    auto o = OpenStore(held_options);
    ASSERT_NE(o, nullptr);
    EXPECT_FALSE(o->Stats().quarantined_at_start);
    // Answered from the intake log, or (when looking up the id meets the
    // damage) once the check ended: either way into the fresh store.
    std::vector<std::future<AppendResult>> appends;
    for (int i = 0; i < 2; ++i) {
      auto p = std::make_shared<std::promise<AppendResult>>();
      appends.push_back(p->get_future());
      o->Append({Entry(Numbered("during-check-", i))}, [p](AppendResult r) { p->set_value(std::move(r)); });
    }
    std::future<LeaseResult> lease = LeaseLater(*o, 1000);
    EXPECT_EQ(lease.wait_for(kNow), std::future_status::timeout) << "a lease ran before the check";
    EXPECT_FALSE(o->Stats().quarantined_while_running);

    hold.Release();
    for (std::future<AppendResult>& f : appends) {
      ASSERT_EQ(f.wait_for(kBounded), std::future_status::ready);
      const AppendResult r = f.get();
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      last_held = std::max(last_held, (*r)[0].sequence);
    }
    ASSERT_EQ(lease.wait_for(kBounded), std::future_status::ready);
    // The lease ran after the check, before or after the appends that
    // waited for it: what it did not get, the next one gets.
    std::vector<std::string> ids = IdsOf(lease.get());
    for (const std::string& id : LeaseIds(*o, 1000)) ids.push_back(id);
    EXPECT_EQ(ids, (std::vector<std::string>{"during-check-0", "during-check-1"}));
    const OutboxStats s = o->Stats();
    EXPECT_TRUE(s.quarantined_while_running);
    EXPECT_FALSE(s.integrity_failed);
    EXPECT_EQ(BacklogCount(s), 2u);
    // Moved aside exactly as found: nothing was written into it.
    const std::string moved = std::string("outbox.db.corrupt-") + kFakeStamp;
    EXPECT_TRUE(ws::testing::Slurp(dir_.File(moved)) == damaged) << "the quarantined file differs";
    EXPECT_FALSE(std::filesystem::exists(options.path + ".needs-check"));
    // The fresh store goes on above the held sequences.
    EXPECT_GT(AppendOne(*o, Entry("after")), last_held);
  }
  EXPECT_TRUE(std::filesystem::exists(options.path + ".clean"));
  auto again = OpenStore(options);
  ASSERT_NE(again, nullptr);
  const OutboxStats s = AfterBackgroundCheck(*again);
  EXPECT_FALSE(s.quarantined_at_start);
  EXPECT_FALSE(s.integrity_failed);
  EXPECT_EQ(LeaseIds(*again, 10), (std::vector<std::string>{"during-check-0", "during-check-1", "after"}));
}

// After a power cut (the boot marker names another boot) a large file is
// checked in the background too; what the crashed run left in the intake
// log, and what comes in while the check runs, wait in the log. A crash
// while they wait loses none of them.
TEST_F(SqliteOutboxTest, AfterAPowerCutTheCheckRunsInTheBackgroundAndEventsHeldMeanwhileSurviveACrash) {
  auto options = Options(dir_, &clock_);
  options.full_check_max_bytes = 0;
  ASSERT_TRUE(BuildAndCrash(options));  // 200 in the file, crashed-0..4 in the intake log
  WriteBytes(options.path + ".boot", kOtherBootMarker);
  auto never_checked = options;
  // The check never starts; the child is killed while everything waits.
  never_checked.before_background_check = [] {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  };
  ASSERT_TRUE(CrashAfterAppending(never_checked, 2, "while-held-"));
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events"), 200) << "the unchecked file took an event";

  WriteBytes(options.path + ".boot", kOtherBootMarker);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const OutboxStats s = AfterBackgroundCheck(*o);
  EXPECT_FALSE(s.quarantined_at_start);
  EXPECT_FALSE(s.quarantined_while_running);
  const std::vector<std::string> ids = LeaseIds(*o, 1000);
  ASSERT_EQ(ids.size(), 207u);
  EXPECT_EQ(std::vector<std::string>(ids.end() - 7, ids.end()),
            (std::vector<std::string>{"crashed-0", "crashed-1", "crashed-2", "crashed-3", "crashed-4", "while-held-0",
                                      "while-held-1"}));
}

// An event's record as builds before schema 4 wrote it, as an SQL blob
// literal.
std::string RecordV1Literal(const Event& e) {
  std::string hex = "X'";
  for (char byte : ws::testing::EventRecordV1(e)) {
    static constexpr char kDigits[] = "0123456789abcdef";
    const auto c = static_cast<unsigned char>(byte);
    hex += kDigits[c >> 4];
    hex += kDigits[c & 15];
  }
  return hex + "'";
}

TEST_F(SqliteOutboxTest, AVersionOneStoreIsMigratedWithItsEventsAndTotals) {
  const auto options = Options(dir_, &clock_);
  ASSERT_NE(OpenStore(options), nullptr);
  // Back to schema version 1 as an older build left it: the triggers that
  // kept the totals then, and three events as it wrote them, with records
  // of the first version and each topic as text.
  std::string sql =
      "DROP TABLE topics; DROP INDEX events_waiting; DROP INDEX delivered_by_accepted;"
      " ALTER TABLE events DROP COLUMN replay_of; ALTER TABLE events DROP COLUMN not_before_us;"
      " CREATE TRIGGER events_total_in AFTER INSERT ON events BEGIN"
      "   UPDATE totals SET count = count + 1, bytes = bytes + NEW.bytes WHERE bucket = NEW.priority; END;"
      " CREATE TRIGGER events_total_out AFTER DELETE ON events BEGIN"
      "   UPDATE totals SET count = count - 1, bytes = bytes - OLD.bytes WHERE bucket = OLD.priority; END;"
      " CREATE TRIGGER dlq_total_in AFTER INSERT ON dlq BEGIN"
      "   UPDATE totals SET count = count + 1, bytes = bytes + NEW.bytes WHERE bucket = 4; END;"
      " CREATE TRIGGER dlq_total_out AFTER DELETE ON dlq BEGIN"
      "   UPDATE totals SET count = count - 1, bytes = bytes - OLD.bytes WHERE bucket = 4; END;"
      " PRAGMA user_version = 1;";
  for (int i = 0; i < 3; ++i) {
    const OutboxEntry e = Entry(Numbered("old-", i));
    const std::string record = RecordV1Literal(e.event);
    const size_t bytes = (record.size() - 3) / 2 + e.topic.size() + e.stream.size();
    sql += "INSERT INTO events(seq, id, priority, stream, topic, accepted_us, expires_us, attempts, bytes, record)"
           " VALUES (" + std::to_string(i + 1) + ", '" + e.event.id + "', 2, '" + e.stream + "', '" + e.topic +
           "', 1, 0, 0, " + std::to_string(bytes) + ", " + record + ");";
  }
  ExecFile(options.path, sql + "UPDATE meta SET value = 3 WHERE key = 'last_sequence';");
  ASSERT_EQ(QueryFile(options.path, "PRAGMA user_version"), 1);
  ASSERT_EQ(QueryFile(options.path, "SELECT count FROM totals WHERE bucket = 2"), 3);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  EXPECT_EQ(BacklogCount(o->Stats()), 3u);
  LeaseResult r = LeaseSync(*o, 10);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const OutboxEntry want = Entry(Numbered("old-", i));
    const LeasedEvent& got = (*r)[static_cast<size_t>(i)];
    EXPECT_EQ(got.id, want.event.id);
    EXPECT_EQ(got.topic, want.topic);
    EXPECT_EQ(got.stream, want.stream);
    EXPECT_EQ(EncodeEventRecord(Decoded(got)), EncodeEventRecord(want.event));
  }
  // An old event sent again is the same event in the new record version,
  // and different content under its id is still a conflict.
  AppendResult again = AppendSync(*o, {Entry("old-1")});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE((*again)[0].duplicate);
  EXPECT_EQ((*again)[0].sequence, 2);
  EXPECT_EQ(AppendSync(*o, {Entry("old-1", Priority::kNormal, "{\"v\":2}")}).status().code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(NackSync(*o, {(*r)[0].sequence}, 1'000'000).ok());
  // The totals go on from what the triggers left: append, ack, dead-letter.
  AppendOne(*o, Entry("after-migration"));
  ASSERT_TRUE(AckSync(*o, {(*r)[1].sequence}).ok());
  ASSERT_TRUE(DeadLetterSync(*o, (*r)[2].sequence, "test").ok());
  EXPECT_EQ(BacklogCount(o->Stats()), 2u);
  EXPECT_EQ(o->Stats().dlq_count, 1u);
  ListResult dlq = ListSync(*o, 0, 10);
  ASSERT_TRUE(dlq.ok()) << dlq.status().ToString();
  ASSERT_EQ(dlq->size(), 1u);
  EXPECT_EQ((*dlq)[0].topic, Entry("x").topic);
  EXPECT_EQ((*dlq)[0].type, "com.acme.order.created");
  o.reset();
  EXPECT_EQ(QueryFile(options.path, "PRAGMA user_version"), 4);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"), 0);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE not_before_us > 0"), 1);
  // The new event's topic is a ref into the topics table; the old rows keep their text.
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE typeof(topic) = 'blob'"), 1);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM topics"), 1);
  EXPECT_EQ(QueryFile(options.path, "SELECT sum(count) FROM totals WHERE bucket < 4"),
            QueryFile(options.path, "SELECT count(*) FROM events"));
  EXPECT_EQ(QueryFile(options.path, "SELECT sum(bytes) FROM totals WHERE bucket < 4"),
            QueryFile(options.path, "SELECT sum(bytes) FROM events"));
  EXPECT_EQ(QueryFile(options.path, "SELECT count FROM totals WHERE bucket = 4"), 1);
  EXPECT_EQ(QueryFile(options.path, "SELECT bytes FROM totals WHERE bucket = 4"),
            QueryFile(options.path, "SELECT sum(bytes) FROM dlq"));
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
        entries.push_back(Entry(Numbered("big-", i), kAllPriorities[static_cast<size_t>(i % 4)], std::string(40, 'd')));
      }
      AppendResult r = AppendSync(*o, std::move(entries));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
    }
    auto after = ReadProcessStats();
    ASSERT_TRUE(after.ok());
    rss_after = after->rss_bytes;
    EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(n) + 1);
  }
  const auto since_us = [](std::chrono::steady_clock::time_point t) {
    return static_cast<double>(
               std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t).count()) /
           1000.0;
  };
  const unsigned long long file_kib = std::filesystem::file_size(options.path) / 1024;
  // After the clean shutdown above: a file over full_check_max_bytes opens
  // with the structural check and is checked in full in the background.
  {
    const auto t0 = std::chrono::steady_clock::now();
    auto o = OpenStore(options);
    const double open_ms = since_us(t0);
    ASSERT_NE(o, nullptr);
    const bool background = o->Stats().integrity_check_running;
    EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(n) + 1);
    LeaseResult first = LeaseSync(*o, 10);
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(first->size(), 10u);
    const double first_lease_ms = since_us(t0);
    const OutboxStats after_check = AfterBackgroundCheck(*o);
    EXPECT_FALSE(after_check.integrity_failed);
    std::printf(
        "[ measure  ] backlog %d events, file %llu KiB: open %.1f ms (%s), first lease at %.1f ms%s; "
        "RSS %+lld KiB while filling\n",
        n, file_kib, open_ms, background ? "structural check" : "full check", first_lease_ms,
        background ? (", background check done at " + std::to_string(since_us(t0)) + " ms").c_str() : "",
        (static_cast<long long>(rss_after) - static_cast<long long>(rss_before)) / 1024);
  }
  // The same file with the full check at open, as after an unclean shutdown.
  options.full_check_max_bytes = UINT64_MAX;
  const auto t0 = std::chrono::steady_clock::now();
  auto o = OpenStore(options);
  const double open_ms = since_us(t0);
  ASSERT_NE(o, nullptr);
  std::printf("[ measure  ] backlog %d events, file %llu KiB: open %.1f ms with the full check\n", n, file_kib,
              open_ms);
}

// ---- what each commit writes ----

TEST_F(SqliteOutboxTest, NewStoresUseSmallPagesAndAnOlderPageSizeKeepsWorking) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendOne(*o, Entry("a"));
  }
  EXPECT_EQ(QueryFile(options.path, "PRAGMA page_size"), 1024);

  // A file made with 4 KiB pages (as stores were before) keeps them.
  ws::testing::TempDir old_dir;
  auto old = Options(old_dir, &clock_);
  ExecFile(old.path, "PRAGMA page_size=4096; CREATE TABLE t(x); DROP TABLE t;");
  ASSERT_EQ(QueryFile(old.path, "PRAGMA page_size"), 4096);
  int64_t b = 0;
  {
    auto o = OpenStore(old);
    ASSERT_NE(o, nullptr);
    EXPECT_FALSE(o->Stats().quarantined_at_start);
    const int64_t a = AppendOne(*o, Entry("a"));
    b = AppendOne(*o, Entry("b", Priority::kNormal, "{\"big\":\"" + std::string(10000, 'x') + "\"}"));
    AppendOne(*o, Entry("c"));
    ASSERT_EQ(LeaseIds(*o, 10).size(), 3u);
    ASSERT_TRUE(AckSync(*o, {a}).ok());
  }
  EXPECT_EQ(QueryFile(old.path, "PRAGMA page_size"), 4096);
  auto o = OpenStore(old);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  LeaseResult r = LeaseSync(*o, 10);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].sequence, b);
  EXPECT_EQ(Decoded((*r)[0]).data.size(), 10010u);
  EXPECT_EQ((*r)[1].id, "c");
}

TEST_F(SqliteOutboxTest, AStreamEqualToTheTopicIsStoredOnceAndReadBackEverywhere) {
  auto options = Options(dir_, &clock_);
  options.retain_delivered_s = 3600;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  OutboxEntry same = Entry("same");
  same.stream = same.topic;
  OutboxEntry empty = Entry("empty");
  empty.stream.clear();
  const std::string topic = same.topic;
  ASSERT_TRUE(AppendSync(*o, {same, Entry("other"), empty}).ok());
  // Only the first is stored as the empty blob; the others as their text.
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE typeof(stream) = 'blob' AND length(stream) = 0"),
            1);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE typeof(stream) = 'text'"), 2);

  auto streams_of = [](const LeaseResult& r) {
    std::vector<std::string> s;
    if (r.ok()) {
      for (const LeasedEvent& e : *r) s.push_back(e.id + "=" + e.stream);
    }
    return s;
  };
  LeaseResult first = LeaseSync(*o, 10);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(streams_of(first), (std::vector<std::string>{"same=" + topic, "other=line-3", "empty="}));
  for (const LeasedEvent& e : *first) EXPECT_EQ(e.topic, topic);

  // Through the dead letters and back, and through delivered retention and
  // a replay: the column is copied as it is and still read as the topic.
  ASSERT_TRUE(DeadLetterSync(*o, (*first)[0].sequence, "test").ok());
  Result<AppendOutcome> retried = RetrySync(*o, (*first)[0].sequence, "");
  ASSERT_TRUE(retried.ok()) << retried.status().ToString();
  ASSERT_TRUE(AckSync(*o, {(*first)[1].sequence, (*first)[2].sequence}).ok());
  ReplayRange range;
  range.from_sequence = (*first)[1].sequence;
  range.to_sequence = (*first)[2].sequence;
  ASSERT_TRUE(ReplaySync(*o, range).ok());
  o->ResetLeases();
  EXPECT_EQ(streams_of(LeaseSync(*o, 10)), (std::vector<std::string>{"same=" + topic, "other=line-3", "empty="}));
}

OutboxEntry EntryOnTopic(const std::string& id, const std::string& topic) {
  OutboxEntry e = Entry(id);
  e.topic = topic;
  return e;
}

TEST_F(SqliteOutboxTest, EachTopicIsStoredOnceAndReadBackAfterReopen) {
  auto options = Options(dir_, &clock_);
  options.intake_log = false;  // reads the database file while the store is open
  const std::string a = "waystation/b/gw/events/com.example.a", b = "waystation/b/gw/events/com.example.b";
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    ASSERT_TRUE(AppendSync(*o, {EntryOnTopic("1", a), EntryOnTopic("2", b), EntryOnTopic("3", a)}).ok());
    EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM topics"), 2);
    EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE typeof(topic) = 'blob'"), 3);
    // A row holds its topic in a byte or two.
    EXPECT_EQ(QueryFile(options.path, "SELECT max(length(topic)) FROM events"), 1);
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendOne(*o, EntryOnTopic("4", b));
  LeaseResult r = LeaseSync(*o, 10);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<std::string> topics;
  for (const LeasedEvent& e : *r) topics.push_back(e.topic);
  EXPECT_EQ(topics, (std::vector<std::string>{a, b, a, b}));
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM topics"), 2);
}

TEST_F(SqliteOutboxTest, ATopicFromARefusedCallIsForgottenWithIt) {
  const auto options = Options(dir_, &clock_);
  const std::string fresh = "waystation/b/gw/events/com.example.fresh";
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendOne(*o, Entry("taken"));
    // The new topic is stored, then the call is refused by the conflict
    // behind it: the topic's row goes with the rest of the call.
    AppendResult refused = AppendSync(*o, {EntryOnTopic("new", fresh), Entry("taken", Priority::kNormal, "{}")});
    ASSERT_EQ(refused.status().code(), StatusCode::kAlreadyExists);
    EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM topics WHERE topic = '" + fresh + "'"), 0);
    // Stored again, under a ref the table really holds.
    AppendOne(*o, EntryOnTopic("new", fresh));
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  LeaseResult r = LeaseSync(*o, 10);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[1].id, "new");
  EXPECT_EQ((*r)[1].topic, fresh);
}

TEST_F(SqliteOutboxTest, TopicsBeyondTheTablesCapKeepTheirText) {
  auto options = Options(dir_, &clock_);
  options.intake_log = false;  // reads the database file while the store is open
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  constexpr int kTopics = 1030;  // the table takes 1,024
  std::vector<OutboxEntry> entries;
  for (int i = 0; i < kTopics; ++i) entries.push_back(EntryOnTopic(Numbered("e", i), Numbered("t/", i)));
  ASSERT_TRUE(AppendSync(*o, entries).ok());
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM topics"), 1024);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE typeof(topic) = 'text'"), kTopics - 1024);
  LeaseResult r = LeaseSync(*o, kTopics);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), static_cast<size_t>(kTopics));
  for (int i = 0; i < kTopics; ++i) EXPECT_EQ((*r)[static_cast<size_t>(i)].topic, Numbered("t/", i));
}

TEST_F(SqliteOutboxTest, ARowThatCannotBeReadIsDeadLetteredAndStillListed) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    ASSERT_TRUE(AppendSync(*o, {Entry("good-1"), Entry("bad-record"), Entry("bad-topic"), Entry("good-2")}).ok());
  }
  // Damage that passes the integrity check: a record of an unknown version,
  // and a topic ref the topics table does not hold.
  ExecFile(options.path,
           "UPDATE events SET record = X'09' WHERE id = 'bad-record';"
           " UPDATE events SET topic = X'7f' WHERE id = 'bad-topic';");
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"good-1", "good-2"}));
  ListResult dlq = ListSync(*o, 0, 10);
  ASSERT_TRUE(dlq.ok()) << dlq.status().ToString();
  ASSERT_EQ(dlq->size(), 2u);
  EXPECT_EQ((*dlq)[0].id, "bad-record");
  EXPECT_NE((*dlq)[0].reason.find("record unreadable"), std::string::npos) << (*dlq)[0].reason;
  EXPECT_EQ((*dlq)[1].id, "bad-topic");
  EXPECT_NE((*dlq)[1].reason.find("topic 127"), std::string::npos) << (*dlq)[1].reason;
  EXPECT_EQ((*dlq)[1].topic, "");
}

TEST_F(SqliteOutboxTest, TheSequenceCeilingCoversEverySequenceSoACrashCopyNeverReusesOne) {
  auto options = Options(dir_, &clock_);
  options.intake_log = false;  // reads the database file while the store is open
  ws::testing::TempDir crash_dir;
  const std::string copy = crash_dir.File("outbox.db");
  int64_t last = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    for (int i = 0; i < 5; ++i) last = AppendOne(*o, Entry(Numbered("e", i)));
    ASSERT_TRUE(AckSync(*o, {last}).ok());  // the highest sequence is no longer in any table
    // The files as a power cut right now would leave them (every commit
    // so far returned, nothing is half-written).
    std::filesystem::copy_file(options.path, copy);
    std::filesystem::copy_file(options.path + "-wal", copy + "-wal");
    EXPECT_GE(QueryFile(options.path, "SELECT value FROM meta WHERE key = 'last_sequence'"), last);
  }
  // A clean shutdown leaves the exact value: no gap after a restart.
  EXPECT_EQ(QueryFile(options.path, "SELECT value FROM meta WHERE key = 'last_sequence'"), last);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->Stats().last_sequence, last);
    EXPECT_EQ(AppendOne(*o, Entry("after-clean")), last + 1);
  }
  // After the crash the sequence goes on above every one handed out.
  auto crash_options = Options(crash_dir, &clock_);
  auto o = OpenStore(crash_options);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  EXPECT_GE(o->Stats().last_sequence, last);
  EXPECT_GT(AppendOne(*o, Entry("after-crash")), last);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"e0", "e1", "e2", "e3", "after-crash"}));
}

// The totals table against the rows themselves, read from the file (the
// store may be open: a reader sees what was committed).
void ExpectTotalsMatchRows(const std::string& path, const char* when) {
  for (int p = 0; p < kPriorityCount; ++p) {
    const std::string bucket = Numbered(" WHERE bucket = ", p);
    const std::string rows = Numbered(" FROM events WHERE priority = ", p);
    EXPECT_EQ(QueryFile(path, "SELECT count" + std::string(" FROM totals") + bucket),
              QueryFile(path, "SELECT count(*)" + rows))
        << when << ", class " << p;
    EXPECT_EQ(QueryFile(path, "SELECT bytes FROM totals" + bucket), QueryFile(path, "SELECT coalesce(sum(bytes), 0)" + rows))
        << when << ", class " << p;
  }
  EXPECT_EQ(QueryFile(path, "SELECT count FROM totals WHERE bucket = 4"), QueryFile(path, "SELECT count(*) FROM dlq"))
      << when;
  EXPECT_EQ(QueryFile(path, "SELECT bytes FROM totals WHERE bucket = 4"),
            QueryFile(path, "SELECT coalesce(sum(bytes), 0) FROM dlq"))
      << when;
}

TEST_F(SqliteOutboxTest, TheTotalsFollowEveryWayRowsComeAndGo) {
  auto options = Options(dir_, &clock_);
  options.retain_delivered_s = 3600;
  Limits(options, Priority::kBulk).max_count = 3;  // drop_oldest
  Limits(options, Priority::kHigh).max_age_s = 60;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const std::string& path = options.path;

  std::vector<OutboxEntry> batch;
  for (int i = 0; i < 12; ++i) {
    batch.push_back(Entry(Numbered("e", i), kAllPriorities[static_cast<size_t>(i % 4)],
                          std::string(static_cast<size_t>(5 + i), 'x'), i == 1 ? 1'000'000 : 0));
  }
  AppendResult r = AppendSync(*o, batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectTotalsMatchRows(path, "after a batch");
  for (int i = 0; i < 3; ++i) AppendOne(*o, Entry(Numbered("bulk", i), Priority::kBulk));  // drops the oldest bulk
  EXPECT_GT(o->Stats().removed_dropped_overflow, 0u);
  ExpectTotalsMatchRows(path, "after drop_oldest");
  // A refused call (a known id with other content) changes nothing.
  EXPECT_FALSE(AppendSync(*o, {Entry("new-1"), Entry("e0", Priority::kControl, "{\"v\":9}")}).ok());
  ExpectTotalsMatchRows(path, "after a refused call");

  LeaseResult leased = LeaseSync(*o, 100);
  ASSERT_TRUE(leased.ok());
  ASSERT_GE(leased->size(), 8u);
  ASSERT_TRUE(AckSync(*o, {(*leased)[0].sequence, (*leased)[1].sequence}).ok());  // kept for replay
  ExpectTotalsMatchRows(path, "after acks with retention");
  ASSERT_TRUE(DeadLetterSync(*o, (*leased)[2].sequence, "test").ok());
  ASSERT_TRUE(DeadLetterSync(*o, (*leased)[3].sequence, "test").ok());
  ASSERT_TRUE(DeadLetterSync(*o, (*leased)[4].sequence, "test").ok());
  ExpectTotalsMatchRows(path, "after dead letters");
  ASSERT_TRUE(RetrySync(*o, (*leased)[2].sequence, "").ok());
  ExpectTotalsMatchRows(path, "after a retry");
  ASSERT_TRUE(PurgeSync(*o, (*leased)[3].sequence, "").ok());
  ExpectTotalsMatchRows(path, "after purging one");
  ASSERT_TRUE(NackSync(*o, {(*leased)[5].sequence}, 5'000'000).ok());
  ExpectTotalsMatchRows(path, "after a nack");
  ReplayRange range;
  range.from_sequence = (*leased)[0].sequence;
  range.to_sequence = (*leased)[1].sequence;
  ASSERT_TRUE(ReplaySync(*o, range).ok());
  ExpectTotalsMatchRows(path, "after a replay");

  clock_.AdvanceMillis(61'000);  // the TTL of e1 and the high class's max_age
  o->ResetLeases();
  ASSERT_TRUE(LeaseSync(*o, 100).ok());
  EXPECT_GT(o->Stats().removed_expired, 0u);
  ExpectTotalsMatchRows(path, "after expiry");
  ASSERT_TRUE(PurgeSync(*o, 0, "").ok());
  ExpectTotalsMatchRows(path, "after purging all");

  // And the store reads the same totals back.
  const OutboxStats before = o->Stats();
  o.reset();
  o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  for (int p = 0; p < kPriorityCount; ++p) {
    EXPECT_EQ(o->Stats().backlog[p].count, before.backlog[p].count);
    EXPECT_EQ(o->Stats().backlog[p].bytes, before.backlog[p].bytes);
  }
  EXPECT_EQ(o->Stats().dlq_count, 0u);
}

TEST_F(SqliteOutboxTest, LeaseReadsAreNotRecompiledForEachNewTime) {
  sqlite::OutboxDbOptions options;
  options.path = dir_.File("direct.db");
  sqlite::OpenReport report;
  auto db = sqlite::OutboxDb::Open(options, &report);
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  const std::string record = EncodeEventRecord(MakeEvent("x"));
  ASSERT_TRUE((*db)->Begin().ok());
  for (int64_t seq = 1; seq <= 3; ++seq) {
    const std::string id = Numbered("id-", seq);
    const int64_t expires = seq == 2 ? 5000 : 0;  // the second one has a TTL
    ASSERT_TRUE(
        (*db)
            ->InsertEvent(sqlite::NewEventRow{seq, id, Priority::kNormal, "s", "t", 1000, expires, 10, record, 0})
            .ok());
  }
  ASSERT_TRUE((*db)->Commit().ok());
  const int64_t before = (*db)->Recompilations();
  for (int64_t now = 1000; now < 1020; ++now) {
    std::vector<LeasedEvent> out;
    std::vector<std::pair<int64_t, Status>> unreadable;
    int64_t last_seen = 0;
    ASSERT_TRUE((*db)->ReadLeasable(Priority::kNormal, 0, INT64_MAX, now, 10, &out, &unreadable, &last_seen).ok());
    ASSERT_TRUE((*db)->ReadLeasableBySequence(2, now, &out, &unreadable).ok());
    EXPECT_EQ(out.size(), 4u);
  }
  // The filters still work: past its expiry the second event is left out.
  std::vector<LeasedEvent> out;
  std::vector<std::pair<int64_t, Status>> unreadable;
  int64_t last_seen = 0;
  ASSERT_TRUE((*db)->ReadLeasable(Priority::kNormal, 0, INT64_MAX, 6000, 10, &out, &unreadable, &last_seen).ok());
  ASSERT_TRUE((*db)->ReadLeasableBySequence(2, 6000, &out, &unreadable).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].sequence, 1);
  EXPECT_EQ(out[1].sequence, 3);
  EXPECT_EQ((*db)->Recompilations(), before);
}

TEST_F(SqliteOutboxTest, AnAckQueuedBeforeAnAppendFreesItsRoomInTheSameTransaction) {
  auto options = Options(dir_, &clock_);
  options.commit_window_us = 20000;                // room for the append to join the ack
  Limits(options, Priority::kBulk).max_count = 2;  // bulk drops oldest by default
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  // Many rounds, so that most acks meet their append in one transaction
  // (the committer waits for appends after an ack while producers append).
  for (int round = 0; round < 30; ++round) {
    const int64_t a = AppendOne(*o, Entry(Numbered("a", round), Priority::kBulk));
    const int64_t b = AppendOne(*o, Entry(Numbered("b", round), Priority::kBulk));
    ASSERT_EQ(LeaseSync(*o, 10)->size(), 2u);
    std::promise<Status> acked;
    std::promise<AppendResult> appended;
    o->Ack({a}, [&](Status s) { acked.set_value(std::move(s)); });
    o->Append({Entry(Numbered("c", round), Priority::kBulk)},
              [&](AppendResult r) { appended.set_value(std::move(r)); });
    ASSERT_TRUE(acked.get_future().get().ok());
    AppendResult c = appended.get_future().get();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    // The ack made the room: b was not dropped for c.
    const OutboxStats s = o->Stats();
    ASSERT_EQ(s.removed_dropped_overflow, 0u) << "round " << round;
    ASSERT_EQ(Backlog(s, Priority::kBulk).count, 2u);
    o->ResetLeases();
    LeaseResult r = LeaseSync(*o, 10);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->size(), 2u);
    EXPECT_EQ((*r)[0].sequence, b);
    EXPECT_EQ((*r)[1].id, Numbered("c", round));
    ASSERT_TRUE(AckSync(*o, {(*r)[0].sequence, (*r)[1].sequence}).ok());
  }
  EXPECT_EQ(o->Stats().removed_delivered, 90u);
  EXPECT_EQ(BacklogCount(o->Stats()), 0u);
}

// One call large enough to keep the committer busy while the test queues
// more calls behind it.
std::vector<OutboxEntry> ManyEntries() {
  std::vector<OutboxEntry> many;
  for (int i = 0; i < 5000; ++i) many.push_back(Entry(Numbered("m", i)));
  return many;
}

TEST_F(SqliteOutboxTest, ALeaseBetweenAppendsDoesNotSplitTheirCommit) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  // A large call keeps the committer busy while an append, a lease and
  // another append queue up behind it.
  std::promise<AppendResult> big, first, second;
  std::promise<LeaseResult> leased;
  o->Append(ManyEntries(), [&](AppendResult r) { big.set_value(std::move(r)); });
  o->Append({Entry("first")}, [&](AppendResult r) { first.set_value(std::move(r)); });
  o->Lease(3, [&](LeaseResult r) { leased.set_value(std::move(r)); });
  o->Append({Entry("second")}, [&](AppendResult r) { second.set_value(std::move(r)); });
  ASSERT_TRUE(big.get_future().get().ok());
  AppendResult a = first.get_future().get();
  AppendResult b = second.get_future().get();
  ASSERT_TRUE(a.ok() && b.ok());
  LeaseResult r = leased.get_future().get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].id, "m0");
  // The lease ran while the two appends were gathered: one commit for both.
  EXPECT_EQ(o->Stats().commits, 2u);
  EXPECT_EQ((*b)[0].sequence, (*a)[0].sequence + 1);
}

// A batch closes at max_batch_events: calls queued behind a busy committer
// are split over as many commits as that takes.
TEST_F(SqliteOutboxTest, ABatchClosesAtMaxBatchEvents) {
  SqliteOutboxOptions options = Options(dir_, &clock_);
  options.max_batch_events = 2;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  std::vector<std::promise<AppendResult>> done(5);
  o->Append(ManyEntries(), [&](AppendResult r) { done[0].set_value(std::move(r)); });  // goes alone
  for (int i = 1; i <= 4; ++i) {
    o->Append({Entry(Numbered("one", i))},
              [&, i](AppendResult r) { done[static_cast<size_t>(i)].set_value(std::move(r)); });
  }
  for (auto& d : done) ASSERT_TRUE(d.get_future().get().ok());
  EXPECT_EQ(o->Stats().commits, 3u);
}

// A new store does not wait for more events in its first 16 batches (a
// crowd of producers that each wait for their answer would only be delayed
// by it); these appends, one at a time, use them up.
void PassTheFirstBatches(Outbox& o) {
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(AppendSync(o, {Entry(Numbered("warm", i))}).ok());
}

// A store whose batches may wait up to 1 s for more events.
std::unique_ptr<SqliteOutbox> OpenWithLongWindow(const ws::testing::TempDir& dir, Clock* clock) {
  SqliteOutboxOptions options = Options(dir, clock);
  options.commit_window_us = 1'000'000;
  return OpenStore(options);
}

// One event appended 250 ms after another, without waiting for its answer,
// in a store with a window of 1 s: the number of commits tells whether the
// first batch waited for the second event.
uint64_t CommitsForTwoEventsApart(Outbox& o) {
  std::promise<AppendResult> first, second;
  o.Append({Entry("first")}, [&](AppendResult r) { first.set_value(std::move(r)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  o.Append({Entry("second")}, [&](AppendResult r) { second.set_value(std::move(r)); });
  EXPECT_TRUE(first.get_future().get().ok());
  EXPECT_TRUE(second.get_future().get().ok());
  return o.Stats().commits;
}

TEST_F(SqliteOutboxTest, ANewStoreCommitsItsFirstBatchesAtOnce) {
  auto o = OpenWithLongWindow(dir_, &clock_);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(CommitsForTwoEventsApart(*o), 2u);
}

// Events that arrive on their own, not as answers come back (sensors, a
// trickle from many producers), share a commit when one comes within the
// window: each commit writes whole pages, however few events it holds.
TEST_F(SqliteOutboxTest, AnEventThatArrivesWithinTheWindowSharesTheWaitingCommit) {
  auto o = OpenWithLongWindow(dir_, &clock_);
  ASSERT_NE(o, nullptr);
  PassTheFirstBatches(*o);
  EXPECT_EQ(CommitsForTwoEventsApart(*o), 16u + 1u);
}

// A wait that gained nothing (a lone producer waits for its answer) is not
// repeated for the next batch: that one commits at once, and an event sent
// after it gets a commit of its own.
TEST_F(SqliteOutboxTest, AfterAWaitThatGainedNothingTheNextBatchCommitsAtOnce) {
  auto o = OpenWithLongWindow(dir_, &clock_);
  ASSERT_NE(o, nullptr);
  PassTheFirstBatches(*o);
  ASSERT_TRUE(AppendSync(*o, {Entry("alone")}).ok());  // waits the window out for nothing
  ASSERT_EQ(o->Stats().commits, 17u);
  EXPECT_EQ(CommitsForTwoEventsApart(*o), 17u + 2u);
}

// Appends `id` without waiting for the answer, in a store whose batch then
// waits (up to its window of 1 s) for more events, and gives the batch
// time to open its transaction and store the event.
std::future<AppendResult> AppendIntoWaitingBatch(Outbox& o, std::promise<AppendResult>& answer, OutboxEntry e) {
  o.Append({std::move(e)}, [&answer](AppendResult r) { answer.set_value(std::move(r)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return answer.get_future();
}

// After the first batches of a new store: what a lease of up to 100 events
// answered while a batch holding "waiting" still waited for more.
struct LeaseDuringBatch {
  std::vector<std::string> ids;
  bool before_commit = false;  // the lease was answered before the batch committed
  AppendResult waiting = Status(StatusCode::kInternal, "no answer");  // after the commit
};
LeaseDuringBatch LeaseWhileABatchWaits(Outbox& o) {
  PassTheFirstBatches(o);
  std::promise<AppendResult> answer;
  std::future<AppendResult> waiting = AppendIntoWaitingBatch(o, answer, Entry("waiting"));
  LeaseDuringBatch r;
  r.ids = LeaseIds(o, 100);
  r.before_commit = waiting.wait_for(std::chrono::seconds(0)) == std::future_status::timeout;
  r.waiting = waiting.get();
  return r;
}

// A batch stores each event as it takes it, in a transaction that stays
// open while the batch waits for more. A lease in that time runs at once
// but sees only committed events: the batch's own are not acknowledged,
// and would be gone again if its commit failed.
TEST_F(SqliteOutboxTest, ALeaseWhileABatchWaitsSeesOnlyCommittedEvents) {
  auto o = OpenWithLongWindow(dir_, &clock_);
  ASSERT_NE(o, nullptr);
  const LeaseDuringBatch during = LeaseWhileABatchWaits(*o);
  // Answered while the batch still waits, without "waiting".
  EXPECT_TRUE(during.before_commit);
  EXPECT_EQ(during.ids.size(), 16u);
  for (const std::string& id : during.ids) EXPECT_NE(id, "waiting");
  ASSERT_TRUE(during.waiting.ok());
  EXPECT_EQ(LeaseIds(*o, 100), std::vector<std::string>{"waiting"});
  EXPECT_EQ(o->Stats().commits, 16u + 1u);  // the lease did not end the batch
}

// An ack that comes while a batch waits is applied in its transaction and
// answered after its commit.
TEST_F(SqliteOutboxTest, AnAckWhileABatchWaitsCommitsWithIt) {
  auto o = OpenWithLongWindow(dir_, &clock_);
  ASSERT_NE(o, nullptr);
  PassTheFirstBatches(*o);
  LeaseResult leased = LeaseSync(*o, 1);
  ASSERT_TRUE(leased.ok() && leased->size() == 1u);
  std::promise<AppendResult> answer;
  std::future<AppendResult> waiting = AppendIntoWaitingBatch(*o, answer, Entry("waiting"));
  std::promise<Status> acked;
  o->Ack({(*leased)[0].sequence}, [&](Status s) { acked.set_value(std::move(s)); });
  ASSERT_TRUE(waiting.get().ok());
  ASSERT_TRUE(acked.get_future().get().ok());
  const OutboxStats s = o->Stats();
  EXPECT_EQ(s.commits, 16u + 1u);
  EXPECT_EQ(s.removed_delivered, 1u);
  EXPECT_EQ(Backlog(s, Priority::kNormal).count, 16u);
  ExpectTotalsMatchRows(dir_.File("outbox.db"), "after an ack inside a waiting batch");
}

// A batch that dropped events to make room ends before a lease: the lease
// must not pass rows whose removal is not committed yet.
TEST_F(SqliteOutboxTest, ALeaseEndsABatchThatDroppedEvents) {
  SqliteOutboxOptions options = Options(dir_, &clock_);
  options.commit_window_us = 1'000'000;
  Limits(options, Priority::kNormal).max_count = 16;
  Limits(options, Priority::kNormal).overflow = OverflowPolicy::kDropOldest;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const LeaseDuringBatch during = LeaseWhileABatchWaits(*o);  // "waiting" drops warm0
  ASSERT_TRUE(during.waiting.ok());
  const std::vector<std::string>& ids = during.ids;
  ASSERT_EQ(ids.size(), 16u);
  EXPECT_EQ(ids.front(), "warm1");
  EXPECT_EQ(ids.back(), "waiting");
  EXPECT_EQ(o->Stats().removed_dropped_overflow, 1u);
}

// Dead-lettering needs a transaction of its own: a damaged row that a lease
// finds while a batch waits is parked right after that batch.
TEST_F(SqliteOutboxTest, ARowFoundUnreadableWhileABatchWaitsIsDeadLetteredAfterIt) {
  SqliteOutboxOptions options = Options(dir_, &clock_);
  options.commit_window_us = 1'000'000;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    ASSERT_TRUE(AppendSync(*o, {Entry("good"), Entry("bad-record")}).ok());
  }
  ExecFile(options.path, "UPDATE events SET record = X'09' WHERE id = 'bad-record';");
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const LeaseDuringBatch during = LeaseWhileABatchWaits(*o);
  EXPECT_TRUE(during.before_commit);
  ASSERT_EQ(during.ids.size(), 17u);
  EXPECT_EQ(during.ids.front(), "good");
  ASSERT_TRUE(during.waiting.ok());
  ListResult dlq = ListSync(*o, 0, 10);
  ASSERT_TRUE(dlq.ok()) << dlq.status().ToString();
  ASSERT_EQ(dlq->size(), 1u);
  EXPECT_EQ((*dlq)[0].id, "bad-record");
  EXPECT_NE((*dlq)[0].reason.find("record unreadable"), std::string::npos) << (*dlq)[0].reason;
}

// Past its checkpoint size the WAL is copied into the file by the store's
// own checkpoint thread while commits go on; the committer copies the last
// frames (or, should that thread fall behind, everything once the WAL holds
// four times the size), so the WAL starts over instead of growing with
// what was written.
TEST_F(SqliteOutboxTest, CheckpointsRunBesideTheCommitsAndTheWalStartsOver) {
  SqliteOutboxOptions options = Options(dir_, &clock_);
  options.wal_checkpoint_bytes = int64_t{4} << 20;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const std::string data = "{\"pad\":\"" + std::string(1000, 'x') + "\"}";
  constexpr int kCalls = 48, kPerCall = 500;  // about 6 times the checkpoint size
  for (int c = 0; c < kCalls; ++c) {
    std::vector<OutboxEntry> entries;
    for (int i = 0; i < kPerCall; ++i) entries.push_back(Entry(Numbered("c", c, i), Priority::kNormal, data));
    ASSERT_TRUE(AppendSync(*o, std::move(entries)).ok());
  }
  const OutboxStats s = o->Stats();
  EXPECT_GT(s.checkpoints_background, 0u);
  EXPECT_GT(s.checkpoints_committer, 0u);
  const auto wal = std::filesystem::file_size(options.path + "-wal");
  EXPECT_LE(wal, static_cast<uintmax_t>(4 * options.wal_checkpoint_bytes + (int64_t{1} << 20)));
  EXPECT_EQ(Backlog(s, Priority::kNormal).count, static_cast<uint64_t>(kCalls * kPerCall));
}

// The two salts in a WAL file's header (bytes 16-23): new ones each time
// the WAL starts over.
std::string WalSalts(const std::string& wal) {
  std::ifstream in(wal, std::ios::binary);
  std::string salts(8, '\0');
  in.seekg(16);
  in.read(salts.data(), 8);
  return in.gcount() == 8 ? salts : std::string();
}

// After a checkpoint the WAL starts over and SQLite cuts the -wal file back
// to journal_size_limit. At the checkpoint size (4 MiB here), a WAL that
// peaked a little above it was cut back and regrown in every cycle; the
// limit is twice that, so a file of 5-6 MiB is overwritten in place.
TEST_F(SqliteOutboxTest, TheWalFileIsNotCutBackBelowTwiceTheCheckpointSize) {
  SqliteOutboxOptions options = Options(dir_, &clock_);
  options.intake_log = false;  // the WAL of commits into the database
  options.wal_checkpoint_bytes = int64_t{4} << 20;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const std::string data = "{\"pad\":\"" + std::string(1000, 'x') + "\"}";
  std::vector<OutboxEntry> entries;
  for (int i = 0; i < 5000; ++i) entries.push_back(Entry(Numbered("big", i), Priority::kNormal, data));
  ASSERT_TRUE(AppendSync(*o, std::move(entries)).ok());  // one transaction
  const std::string wal = options.path + "-wal";
  const auto peak = std::filesystem::file_size(wal);
  ASSERT_GT(peak, static_cast<uintmax_t>(options.wal_checkpoint_bytes));
  // Small commits until the WAL has started over (a checkpoint, by the
  // committer or in the background, copied it all, and the next commit
  // began the file anew with new salts in its header), then a few more:
  // the first commit after the restart is where SQLite cuts the file back.
  const std::string first_salts = WalSalts(wal);
  ASSERT_EQ(first_salts.size(), 8u);
  int n = 0;
  for (; n < 4000 && WalSalts(wal) == first_salts; ++n) {
    ASSERT_GT(AppendOne(*o, Entry(Numbered("small", n))), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_NE(WalSalts(wal), first_salts) << "the WAL never started over in " << n << " commits";
  EXPECT_GT(o->Stats().checkpoints_committer + o->Stats().checkpoints_background, 0u);
  for (int i = 0; i < 3; ++i) ASSERT_GT(AppendOne(*o, Entry(Numbered("after", i))), 0);
  EXPECT_GE(std::filesystem::file_size(wal), peak);
  EXPECT_LE(std::filesystem::file_size(wal),
            static_cast<uintmax_t>(sqlite::WalSizeLimitBytes(options.wal_checkpoint_bytes)));
}

// ---- compaction ----

// Small limits, so that a few thousand events make a backlog worth
// compacting once it drains.
SqliteOutboxOptions CompactingOptions(const ws::testing::TempDir& dir, Clock* clock) {
  SqliteOutboxOptions o = Options(dir, clock);
  o.compact_min_free_bytes = 512 * 1024;
  o.compact_max_live_bytes = 256 * 1024;
  o.intake_log = false;  // the backlog must be written into the database
  return o;
}

// Appends `n` events of about 700 bytes ("<prefix>-<i>") in calls of 500;
// their sequences in order.
std::vector<int64_t> AppendMany(Outbox& o, const char* prefix, int n) {
  std::vector<int64_t> seqs;
  for (int done = 0; done < n;) {
    std::vector<OutboxEntry> entries;
    for (; done < n && entries.size() < 500; ++done) {
      entries.push_back(Entry(Numbered(prefix, done), Priority::kNormal, std::string(700, 'x')));
    }
    AppendResult r = AppendSync(o, std::move(entries));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return seqs;
    for (const AppendOutcome& a : *r) seqs.push_back(a.sequence);
  }
  return seqs;
}

// Leases everything and acks the first `n` of `seqs`.
void DeliverFirst(Outbox& o, const std::vector<int64_t>& seqs, size_t n) {
  LeaseResult leased = LeaseSync(o, seqs.size());
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  ASSERT_EQ(leased->size(), seqs.size());
  ASSERT_TRUE(AckSync(o, std::vector<int64_t>(seqs.begin(), seqs.begin() + static_cast<std::ptrdiff_t>(n))).ok());
}

// Waits (up to `limit`) for the once-a-second maintenance to compact.
uint64_t WaitForCompactions(Outbox& o, uint64_t want, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (o.Stats().compactions < want && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return o.Stats().compactions;
}

// A drained backlog leaves its pages free in the file. Once few are in use,
// maintenance rewrites the file without them: the disk gets the space
// back, and what is still stored keeps its sequences, its order, its ids.
TEST_F(SqliteOutboxTest, ADrainedBacklogGivesItsDiskSpaceBackAndKeepsWhatIsLeft) {
  const SqliteOutboxOptions options = CompactingOptions(dir_, &clock_);
  int64_t last = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    const std::vector<int64_t> drained = AppendMany(*o, "drained-", 3000);
    std::vector<int64_t> kept;
    for (int i = 0; i < 5; ++i) kept.push_back(AppendOne(*o, Entry(Numbered("kept-", i))));
    std::vector<int64_t> all = drained;
    all.insert(all.end(), kept.begin(), kept.end());
    last = all.back();
    DeliverFirst(*o, all, drained.size());
    ASSERT_EQ(WaitForCompactions(*o, 1, std::chrono::seconds(10)), 1u) << "no compaction within 10 s";
    const OutboxStats s = o->Stats();
    EXPECT_GE(s.compacted_bytes, options.compact_min_free_bytes);
    EXPECT_EQ(BacklogCount(s), 5u);
    // Once the rewrite is checkpointed (right after it, or by the store's
    // checkpoint thread should that one be running) the file is small again.
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::filesystem::file_size(options.path) >= options.compact_max_live_bytes &&
           std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_LT(std::filesystem::file_size(options.path), options.compact_max_live_bytes);
    // Still the same store: the next sequence, and a known id is known.
    EXPECT_EQ(AppendOne(*o, Entry("after")), last + 1);
    AppendResult again = AppendSync(*o, {Entry(Numbered("kept-", 0))});
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_TRUE((*again)[0].duplicate);
    EXPECT_EQ((*again)[0].sequence, kept[0]);
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  EXPECT_EQ(LeaseIds(*o, 100),
            (std::vector<std::string>{"kept-0", "kept-1", "kept-2", "kept-3", "kept-4", "after"}));
  EXPECT_EQ(o->Stats().last_sequence, last + 1);
}

// While more than compact_max_live_bytes is stored the file is left alone
// (a rewrite would copy all of it); once that is delivered too, it is
// compacted (which shows the wait below was long enough to see one).
TEST_F(SqliteOutboxTest, NoCompactionWhileMoreThanTheLiveLimitIsStored) {
  const SqliteOutboxOptions options = CompactingOptions(dir_, &clock_);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const std::vector<int64_t> seqs = AppendMany(*o, "ev-", 3000);
  ASSERT_EQ(seqs.size(), 3000u);
  DeliverFirst(*o, seqs, 1500);
  const auto size = std::filesystem::file_size(options.path);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(o->Stats().compactions, 0u);
  EXPECT_GE(std::filesystem::file_size(options.path), size);
  ASSERT_TRUE(AckSync(*o, std::vector<int64_t>(seqs.begin() + 1500, seqs.end())).ok());
  EXPECT_EQ(WaitForCompactions(*o, 1, std::chrono::seconds(10)), 1u);
  EXPECT_EQ(BacklogCount(o->Stats()), 0u);
}

// Either limit at 0 turns compaction off.
TEST_F(SqliteOutboxTest, CompactionCanBeTurnedOff) {
  SqliteOutboxOptions options = CompactingOptions(dir_, &clock_);
  options.compact_min_free_bytes = 0;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const std::vector<int64_t> seqs = AppendMany(*o, "ev-", 3000);
  DeliverFirst(*o, seqs, seqs.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(o->Stats().compactions, 0u);
}

// A disk that is full during the rewrite: the compaction fails and changes
// nothing; the store goes on, and what it held is still there.
TEST_F(SqliteOutboxTest, AFailedCompactionChangesNothing) {
  RegisterFaultyVfs();
  SqliteOutboxOptions options = CompactingOptions(dir_, &clock_);
  options.vfs = kFaultyVfs;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    std::vector<int64_t> seqs = AppendMany(*o, "ev-", 3000);
    seqs.push_back(AppendOne(*o, Entry("kept")));
    LeaseResult leased = LeaseSync(*o, seqs.size());
    ASSERT_TRUE(leased.ok()) << leased.status().ToString();
    // The disk fills up as the acks commit: their answer runs on the
    // committer thread before it next looks at the file, so no compaction
    // can slip in between.
    std::promise<Status> acked;
    o->Ack(std::vector<int64_t>(seqs.begin(), seqs.end() - 1), [&acked](Status s) {
      g_disk_full = true;
      acked.set_value(std::move(s));
    });
    ASSERT_TRUE(acked.get_future().get().ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    g_disk_full = false;
    EXPECT_EQ(o->Stats().compactions, 0u);
    EXPECT_EQ(BacklogCount(o->Stats()), 1u);
    EXPECT_EQ(AppendOne(*o, Entry("after")), seqs.back() + 1);
  }
  options.vfs.clear();
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"kept", "after"}));
}

// ---------------------------------------------------------------------------
// The wall clock being set: stored times follow it.

constexpr int64_t kSecondUs = 1'000'000;
// A time the clock is set to, past kEarliestPlausibleWallUs (2027-01-15).
constexpr int64_t kSetToUs = int64_t{1'800'000'000} * kSecondUs;

SqliteOutboxOptions BulkMaxAgeOptions(const ws::testing::TempDir& dir, Clock* clock, int64_t max_age_s) {
  SqliteOutboxOptions o = Options(dir, clock);
  o.classes[static_cast<size_t>(Priority::kBulk)].max_age_s = max_age_s;
  return o;
}

TEST_F(SqliteOutboxTest, AClockSetForwardDoesNotAgeWhatWasStoredBeforeIt) {
  // A gateway without a clock battery boots in 1970; NTP sets the time later.
  FakeClock clock(120 * kSecondUs);
  auto o = OpenStore(BulkMaxAgeOptions(dir_, &clock, 3600));
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("ttl-10min", Priority::kNormal, "{}", 600 * kSecondUs));
  AppendOne(*o, Entry("bulk", Priority::kBulk));
  clock.AdvanceMillis(60'000);
  clock.SetWallMicros(kSetToUs);

  // A minute old, not 57 years: nothing expires.
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"ttl-10min", "bulk"}));
  OutboxStats s = o->Stats();
  EXPECT_EQ(s.removed_expired, 0u);
  EXPECT_EQ(s.clock_steps, 1u);
  EXPECT_FALSE(s.clock_shift_pending);
  EXPECT_EQ(Backlog(s, Priority::kBulk).oldest_accepted_us, kSetToUs - 60 * kSecondUs);

  // The TTL and max_age_s count the time that passed.
  clock.AdvanceMillis(539'000);  // 599 s after acceptance
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"ttl-10min", "bulk"}));
  clock.AdvanceMillis(2'000);
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"bulk"}));
  EXPECT_EQ(o->Stats().removed_expired, 1u);
  clock.AdvanceMillis(3'000'000);  // 3601 s
  o->ResetLeases();
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
  EXPECT_EQ(o->Stats().removed_expired, 2u);
  EXPECT_EQ(o->Stats().clock_steps, 1u);
}

TEST_F(SqliteOutboxTest, AClockSetBackHoldsNoRetryAndStretchesNoTtl) {
  auto o = OpenStore(Options(dir_, &clock_));
  ASSERT_NE(o, nullptr);
  const int64_t retried = AppendOne(*o, Entry("retried"));
  AppendOne(*o, Entry("ttl-1min", Priority::kHigh, "{}", 60 * kSecondUs));
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"ttl-1min", "retried"}));
  ASSERT_TRUE(NackSync(*o, {retried}, 10 * kSecondUs).ok());

  clock_.SetWallMicros(clock_.WallMicros() - 86400 * kSecondUs);  // set back by a day
  clock_.AdvanceMillis(10'000);
  // Due after the ten seconds that passed, not a day later.
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"retried"}));

  clock_.AdvanceMillis(51'000);  // 61 s after acceptance
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"retried"}));
  EXPECT_EQ(o->Stats().removed_expired, 1u);
  EXPECT_EQ(o->Stats().clock_steps, 1u);
}

TEST_F(SqliteOutboxTest, TimesStampedBeforeTheClockWasSetMoveToThePresentAtTheNextOpen) {
  FakeClock clock(300 * kSecondUs);  // booted without the time
  const SqliteOutboxOptions options = BulkMaxAgeOptions(dir_, &clock, 3600);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendOne(*o, Entry("bulk", Priority::kBulk));
    clock.AdvanceMillis(30'000);
    AppendOne(*o, Entry("ttl-10min", Priority::kNormal, "{}", 600 * kSecondUs));
  }
  // The node restarts after the time was set.
  clock.SetWallMicros(kSetToUs);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  OutboxStats s = o->Stats();
  EXPECT_EQ(s.clock_steps, 1u);
  // The newest of them is now; they keep their distance.
  EXPECT_EQ(Backlog(s, Priority::kNormal).oldest_accepted_us, kSetToUs);
  EXPECT_EQ(Backlog(s, Priority::kBulk).oldest_accepted_us, kSetToUs - 30 * kSecondUs);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"ttl-10min", "bulk"}));
  EXPECT_EQ(o->Stats().removed_expired, 0u);

  clock.AdvanceMillis(601'000);
  o->ResetLeases();
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"bulk"}));
  EXPECT_EQ(o->Stats().removed_expired, 1u);

  // Moved once: the next open finds nothing before the floor.
  o.reset();
  o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->Stats().clock_steps, 0u);
  EXPECT_EQ(Backlog(o->Stats(), Priority::kBulk).oldest_accepted_us, kSetToUs - 30 * kSecondUs);
}

TEST_F(SqliteOutboxTest, AClockShiftOverManyTransactionsMovesEveryStoredTimeOnce) {
  SqliteOutboxOptions options = Options(dir_, &clock_);
  options.retain_delivered_s = 86400;
  const int64_t accepted = clock_.WallMicros();
  constexpr int kEvents = 20'000;  // three transactions of 8,192 sequences
  int64_t retried = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    for (int done = 0; done < kEvents; done += 1000) {
      std::vector<OutboxEntry> entries;
      for (int i = done; i < done + 1000; ++i) entries.push_back(Entry(Numbered("e", i)));
      ASSERT_TRUE(AppendSync(*o, std::move(entries)).ok());
    }
    // One delivered and one dead letter among them, and a retry time.
    LeaseResult r = LeaseSync(*o, 3);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->size(), 3u);
    ASSERT_TRUE(AckSync(*o, {(*r)[0].sequence}).ok());
    ASSERT_TRUE(DeadLetterSync(*o, (*r)[1].sequence, "refused").ok());
    retried = (*r)[2].sequence;
    ASSERT_TRUE(NackSync(*o, {retried}, 30 * kSecondUs).ok());

    clock_.SetWallMicros(accepted + 7200 * kSecondUs);
    o->ResetLeases();
    LeaseResult again = LeaseSync(*o, 1);  // after the move
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(o->Stats().clock_steps, 1u);
    EXPECT_FALSE(o->Stats().clock_shift_pending);
  }
  const std::string shifted = std::to_string(accepted + 7200 * kSecondUs);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM events WHERE accepted_us = " + shifted), kEvents - 2);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM delivered WHERE accepted_us = " + shifted +
                                        " AND delivered_us = " + shifted),
            1);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM dlq WHERE accepted_us = " + shifted +
                                        " AND dead_lettered_us = " + shifted),
            1);
  EXPECT_EQ(QueryFile(options.path, "SELECT not_before_us FROM events WHERE seq = " + std::to_string(retried)),
            accepted + 7230 * kSecondUs);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM meta WHERE key LIKE 'clock_shift_%'"), 0);
}

TEST_F(SqliteOutboxTest, AClockShiftARestartInterruptedIsFinishedOnceAtOpen) {
  const SqliteOutboxOptions options = Options(dir_, &clock_);
  const int64_t accepted = clock_.WallMicros();
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendOne(*o, Entry("a"));
    AppendOne(*o, Entry("b", Priority::kNormal, "{}", 600 * kSecondUs));
    AppendOne(*o, Entry("c"));
  }
  // The clock was set forward by an hour and the move got as far as
  // sequence 1 when the power went.
  const int64_t step = 3600 * kSecondUs;
  ExecFile(options.path, "UPDATE events SET accepted_us = accepted_us + " + std::to_string(step) +
                             " WHERE seq <= 1; INSERT INTO meta(key, value) VALUES ('clock_shift_delta_us', " +
                             std::to_string(step) +
                             "), ('clock_shift_up_to', 3), ('clock_shift_done_up_to', 1),"
                             " ('clock_shift_only_before_us', 0)");
  clock_.SetWallMicros(accepted + step);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(o->Stats().removed_expired, 0u);
  }
  for (int seq = 1; seq <= 3; ++seq) {
    EXPECT_EQ(QueryFile(options.path, "SELECT accepted_us FROM events WHERE seq = " + std::to_string(seq)),
              accepted + step)
        << seq;
  }
  EXPECT_EQ(QueryFile(options.path, "SELECT expires_us FROM events WHERE seq = 2"), accepted + step + 600 * kSecondUs);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM meta WHERE key LIKE 'clock_shift_%'"), 0);
}

TEST_F(SqliteOutboxTest, AClockShiftThatCannotBeWrittenExpiresNothingAndFinishesWhenSpaceReturns) {
  RegisterFaultyVfs();
  FakeClock clock(120 * kSecondUs);
  SqliteOutboxOptions options = BulkMaxAgeOptions(dir_, &clock, 3600);
  options.vfs = kFaultyVfs;
  options.intake_log = false;  // a shift the database cannot write
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendOne(*o, Entry("ttl-10min", Priority::kNormal, "{}", 600 * kSecondUs));
  AppendOne(*o, Entry("bulk", Priority::kBulk));

  g_disk_full = true;
  clock.SetWallMicros(kSetToUs);
  // Judged by the clock as it was until the move is written.
  std::vector<std::string> leased = LeaseIds(*o, 10);
  OutboxStats during = o->Stats();
  g_disk_full = false;
  EXPECT_EQ(leased, (std::vector<std::string>{"ttl-10min", "bulk"}));
  EXPECT_TRUE(during.clock_shift_pending);
  EXPECT_EQ(during.removed_expired, 0u);

  o->ResetLeases();  // the next call finishes the move
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"ttl-10min", "bulk"}));
  OutboxStats after = o->Stats();
  EXPECT_FALSE(after.clock_shift_pending);
  EXPECT_EQ(after.removed_expired, 0u);
  EXPECT_EQ(after.clock_steps, 1u);
  EXPECT_EQ(Backlog(after, Priority::kBulk).oldest_accepted_us, kSetToUs);
}

// ---------------------------------------------------------------------------
// ---- intake log ----
//
// New events wait in `<path>-intake` and in memory ("held"); the database
// sees only those the link has not delivered within a second, or that need
// it. QueryFile reads the database as committed while the store is open.

constexpr const char* kCountEvents = "SELECT count(*) FROM events";

std::vector<OutboxEntry> Entries(const char* prefix, int n) {
  std::vector<OutboxEntry> entries;
  for (int i = 0; i < n; ++i) entries.push_back(Entry(Numbered(prefix, i)));
  return entries;
}

std::vector<int64_t> SequencesOf(const std::vector<AppendOutcome>& outcomes) {
  std::vector<int64_t> seqs;
  for (const AppendOutcome& a : outcomes) seqs.push_back(a.sequence);
  return seqs;
}

std::vector<std::pair<std::string, int64_t>> IdsAndSequences(const std::vector<LeasedEvent>& leased) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const LeasedEvent& e : leased) out.emplace_back(e.id, e.sequence);
  return out;
}

// The store's files as a kill -9 right now would leave them: every append
// answered so far had its intake chunk synced.
void CopyStoreFiles(const std::string& path, const std::string& to) {
  std::filesystem::copy_file(path, to);
  if (std::filesystem::exists(path + "-wal")) std::filesystem::copy_file(path + "-wal", to + "-wal");
  ASSERT_TRUE(std::filesystem::exists(path + "-intake"));
  std::filesystem::copy_file(path + "-intake", to + "-intake");
}

TEST_F(SqliteOutboxTest, IntakeDeliveredEventsNeverReachTheDatabase) {
  constexpr int kN = 5;
  const auto options = Options(dir_, &clock_);
  ASSERT_TRUE(options.intake_log);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendResult r = AppendSync(*o, Entries("d", kN));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(QueryFile(options.path, kCountEvents), 0) << "an appended event was written into the database";
    EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(kN));

    LeaseResult leased = LeaseSync(*o, 10);
    ASSERT_TRUE(leased.ok()) << leased.status().ToString();
    ASSERT_EQ(leased->size(), static_cast<size_t>(kN));
    std::vector<int64_t> seqs;
    for (const LeasedEvent& e : *leased) seqs.push_back(e.sequence);
    EXPECT_EQ(seqs, SequencesOf(*r));
    ASSERT_TRUE(AckSync(*o, seqs).ok());

    EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
    const OutboxStats s = o->Stats();
    EXPECT_EQ(s.removed_delivered, static_cast<uint64_t>(kN));
    EXPECT_EQ(BacklogCount(s), 0u);
    o->ResetLeases();
    EXPECT_TRUE(LeaseIds(*o, 10).empty());
  }
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(BacklogCount(o->Stats()), 0u);
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
}

TEST_F(SqliteOutboxTest, IntakeUndeliveredEventsAreInTheDatabaseAfterACleanClose) {
  constexpr int kN = 4;
  const auto options = Options(dir_, &clock_);
  std::vector<int64_t> seqs;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendResult r = AppendSync(*o, Entries("u", kN));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    seqs = SequencesOf(*r);
    EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  }
  EXPECT_EQ(QueryFile(options.path, kCountEvents), kN);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(BacklogCount(o->Stats()), static_cast<uint64_t>(kN));
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  EXPECT_EQ(IdsAndSequences(*leased), (std::vector<std::pair<std::string, int64_t>>{
                                          {"u0", seqs[0]}, {"u1", seqs[1]}, {"u2", seqs[2]}, {"u3", seqs[3]}}));
}

TEST_F(SqliteOutboxTest, IntakeHeldEventsSurviveACrashCopyAndSequencesGoOnAboveThem) {
  const auto options = Options(dir_, &clock_);
  ws::testing::TempDir crash_dir;
  const std::string copy = crash_dir.File("outbox.db");
  std::vector<int64_t> seqs;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendResult first = AppendSync(*o, Entries("c", 3));
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    seqs = SequencesOf(*first);
    seqs.push_back(AppendOne(*o, Entry("c3")));  // a second chunk
    EXPECT_EQ(QueryFile(options.path, kCountEvents), 0) << "the events must be only in the intake log";
    CopyStoreFiles(options.path, copy);
  }
  auto o = OpenStore(Options(crash_dir, &clock_));
  ASSERT_NE(o, nullptr);
  EXPECT_FALSE(o->Stats().quarantined_at_start);
  EXPECT_EQ(BacklogCount(o->Stats()), 4u);
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  EXPECT_EQ(IdsAndSequences(*leased), (std::vector<std::pair<std::string, int64_t>>{
                                          {"c0", seqs[0]}, {"c1", seqs[1]}, {"c2", seqs[2]}, {"c3", seqs[3]}}));
  EXPECT_GT(AppendOne(*o, Entry("after-crash")), seqs.back());
}

TEST_F(SqliteOutboxTest, IntakeAcksCarriedByALaterChunkKeepDeliveredEventsOutOfACrashCopy) {
  const auto options = Options(dir_, &clock_);
  ws::testing::TempDir crash_dir;
  const std::string copy = crash_dir.File("outbox.db");
  std::vector<int64_t> seqs;
  int64_t later = 0;
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendResult r = AppendSync(*o, Entries("k", 4));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    seqs = SequencesOf(*r);
    ASSERT_TRUE(AckSync(*o, {seqs[0], seqs[2]}).ok());
    later = AppendOne(*o, Entry("later"));  // its chunk carries the two acks
    EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
    CopyStoreFiles(options.path, copy);
  }
  auto o = OpenStore(Options(crash_dir, &clock_));
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(BacklogCount(o->Stats()), 3u);
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  EXPECT_EQ(IdsAndSequences(*leased), (std::vector<std::pair<std::string, int64_t>>{
                                          {"k1", seqs[1]}, {"k3", seqs[3]}, {"later", later}}));
  EXPECT_GT(AppendOne(*o, Entry("after-crash")), later);
}

TEST_F(SqliteOutboxTest, IntakeEventsHeldForASecondSettleIntoTheDatabaseAtTheNextLease) {
  const auto options = Options(dir_, &clock_);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendResult r = AppendSync(*o, Entries("s", 3));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const std::vector<int64_t> seqs = SequencesOf(*r);

  clock_.AdvanceMillis(500);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"s0", "s1", "s2"}));
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0) << "settled before the events were a second old";
  o->ResetLeases();

  clock_.AdvanceMillis(1000);
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  EXPECT_EQ(IdsAndSequences(*leased),
            (std::vector<std::pair<std::string, int64_t>>{{"s0", seqs[0]}, {"s1", seqs[1]}, {"s2", seqs[2]}}));
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 3);
  EXPECT_EQ(BacklogCount(o->Stats()), 3u);

  ASSERT_TRUE(AckSync(*o, seqs).ok());
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  EXPECT_EQ(o->Stats().removed_delivered, 3u);
  EXPECT_EQ(BacklogCount(o->Stats()), 0u);
  o->ResetLeases();
  EXPECT_TRUE(LeaseIds(*o, 10).empty());
}

TEST_F(SqliteOutboxTest, IntakeAnEventWithATtlSettlesTheHeldOnesFirstAndOrderIsKept) {
  const auto options = Options(dir_, &clock_);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const int64_t a = AppendOne(*o, Entry("a"));
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  const int64_t ttl = AppendOne(*o, Entry("ttl", Priority::kNormal, "{}", 600 * kSecondUs));
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 2) << "the TTL event and the held one go into the database";
  const int64_t c = AppendOne(*o, Entry("c"));
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 2) << "an event without a TTL is held again";
  EXPECT_LT(a, ttl);
  EXPECT_LT(ttl, c);

  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  EXPECT_EQ(IdsAndSequences(*leased),
            (std::vector<std::pair<std::string, int64_t>>{{"a", a}, {"ttl", ttl}, {"c", c}}));
}

TEST_F(SqliteOutboxTest, IntakeAHeldIdIsKnownUntilItIsDelivered) {
  const auto options = Options(dir_, &clock_);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const int64_t first = AppendOne(*o, Entry("x"));

  AppendResult same = AppendSync(*o, {Entry("x")});
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  ASSERT_EQ(same->size(), 1u);
  EXPECT_TRUE((*same)[0].duplicate);
  EXPECT_EQ((*same)[0].sequence, first);

  AppendResult other = AppendSync(*o, {Entry("x", Priority::kNormal, "{\"v\":2}")});
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0) << "the answers must come from the held event";
  EXPECT_EQ(BacklogCount(o->Stats()), 1u);
  EXPECT_EQ(o->Stats().appended_events, 1u);

  ASSERT_TRUE(AckSync(*o, {first}).ok());
  AppendResult again = AppendSync(*o, {Entry("x", Priority::kNormal, "{\"v\":3}")});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_FALSE((*again)[0].duplicate);
  EXPECT_GT((*again)[0].sequence, first);
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  ASSERT_EQ(leased->size(), 1u);
  EXPECT_EQ((*leased)[0].sequence, (*again)[0].sequence);
  EXPECT_EQ(Decoded((*leased)[0]).data, "{\"v\":3}");
}

// The intake skips the database's id lookup while the outbox table is
// empty; an id settled into the database must still be found.
TEST_F(SqliteOutboxTest, IntakeAnIdInTheDatabaseIsKnownToLaterAppends) {
  const auto options = Options(dir_, &clock_);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  const int64_t first = AppendOne(*o, Entry("x"));
  clock_.AdvanceMillis(1500);
  LeaseResult leased = LeaseSync(*o, 10);
  ASSERT_TRUE(leased.ok()) << leased.status().ToString();
  ASSERT_EQ(QueryFile(options.path, kCountEvents), 1) << "the held event did not settle";
  o->ResetLeases();

  // In one call with a new event, which goes to the intake first.
  AppendResult same = AppendSync(*o, {Entry("y"), Entry("x")});
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  ASSERT_EQ(same->size(), 2u);
  EXPECT_FALSE((*same)[0].duplicate);
  EXPECT_TRUE((*same)[1].duplicate);
  EXPECT_EQ((*same)[1].sequence, first);
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 1) << "y belongs in the intake";

  AppendResult other = AppendSync(*o, {Entry("x", Priority::kNormal, "{\"v\":2}")});
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(BacklogCount(o->Stats()), 2u);

  // Delivered and gone from the database: the id is new again.
  ASSERT_TRUE(AckSync(*o, {first}).ok());
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  AppendResult again = AppendSync(*o, {Entry("x", Priority::kNormal, "{\"v\":3}")});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_FALSE((*again)[0].duplicate);
  EXPECT_GT((*again)[0].sequence, first);
}

TEST_F(SqliteOutboxTest, IntakeDeadLetteringAHeldEventSettlesItWithItsAttempts) {
  const auto options = Options(dir_, &clock_);
  {
    auto o = OpenStore(options);
    ASSERT_NE(o, nullptr);
    AppendResult r = AppendSync(*o, {Entry("bad", Priority::kHigh), Entry("fine", Priority::kHigh)});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const std::vector<int64_t> seqs = SequencesOf(*r);
    ASSERT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"bad", "fine"}));
    o->ResetLeases();  // one attempt each
    EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);

    ASSERT_TRUE(DeadLetterSync(*o, seqs[0], "broker: payload too large").ok());
    EXPECT_EQ(DeadLetterSync(*o, 424242, "nothing").code(), StatusCode::kNotFound);
    const OutboxStats s = o->Stats();
    EXPECT_EQ(s.dlq_count, 1u);
    EXPECT_EQ(s.removed_dead_lettered, 1u);
    EXPECT_EQ(BacklogCount(s), 1u);

    ListResult dead = ListSync(*o, 0, 10);
    ASSERT_TRUE(dead.ok()) << dead.status().ToString();
    ASSERT_EQ(dead->size(), 1u);
    EXPECT_EQ((*dead)[0].sequence, seqs[0]);
    EXPECT_EQ((*dead)[0].id, "bad");
    EXPECT_EQ((*dead)[0].priority, Priority::kHigh);
    EXPECT_EQ((*dead)[0].reason, "broker: payload too large");
    EXPECT_EQ((*dead)[0].accepted_at_us, clock_.WallMicros());
    EXPECT_EQ((*dead)[0].attempts, 1);

    // The other held event settled with it, its attempt counted too.
    EXPECT_EQ(QueryFile(options.path, kCountEvents), 1);
    EXPECT_EQ(QueryFile(options.path, Numbered("SELECT attempts FROM events WHERE seq = ", seqs[1])), 1);
    LeaseResult leased = LeaseSync(*o, 10);
    ASSERT_TRUE(leased.ok()) << leased.status().ToString();
    ASSERT_EQ(leased->size(), 1u);
    EXPECT_EQ((*leased)[0].id, "fine");
    EXPECT_EQ((*leased)[0].sequence, seqs[1]);
    EXPECT_EQ((*leased)[0].attempts, 1);
  }
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->Stats().dlq_count, 1u);
  EXPECT_EQ(LeaseIds(*o, 10), (std::vector<std::string>{"fine"}));
}

TEST_F(SqliteOutboxTest, IntakeTurnedOffWritesAppendsIntoTheDatabase) {
  constexpr int kN = 5;
  auto options = Options(dir_, &clock_);
  options.intake_log = false;
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendResult r = AppendSync(*o, Entries("d", kN));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(QueryFile(options.path, kCountEvents), kN);
  ASSERT_TRUE(AckSync(*o, SequencesOf(*r)).ok());
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  EXPECT_EQ(o->Stats().removed_delivered, static_cast<uint64_t>(kN));
}

TEST_F(SqliteOutboxTest, IntakeIsOffWhileDeliveredEventsAreRetained) {
  constexpr int kN = 5;
  auto options = Options(dir_, &clock_);
  options.retain_delivered_s = 3600;
  ASSERT_TRUE(options.intake_log);
  auto o = OpenStore(options);
  ASSERT_NE(o, nullptr);
  AppendResult r = AppendSync(*o, Entries("d", kN));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(QueryFile(options.path, kCountEvents), kN);
  ASSERT_TRUE(AckSync(*o, SequencesOf(*r)).ok());
  EXPECT_EQ(QueryFile(options.path, kCountEvents), 0);
  EXPECT_EQ(QueryFile(options.path, "SELECT count(*) FROM delivered"), kN);
}

}  // namespace
}  // namespace ws
