// Power cuts and failing disks under the SQLite outbox. The store runs on
// real files through FaultVfs, a disk that forgets what was not synced and
// fails on command. A small scenario (producers appending, a consumer
// leasing, acking, dead-lettering and resetting leases, the store closed and
// reopened once) runs again and again:
//  - with the power cut at every sync point in turn, before and after the
//    sync completes, then the files brought back as the disk kept them;
//  - with the Nth write, then the Nth sync, failing, for N = 1, 2, ... until
//    a run finishes without reaching N;
//  - with the disk full for a while.
// After each run the store is reopened with the faults off and must show:
// every acknowledged append present with its sequence and content (unless
// it was acked as delivered or dead-lettered), nothing of a failed call,
// unique sequences leased in (priority, sequence) order, no quarantine, and
// new sequences above every sequence ever acknowledged.
//
// Under an emulator (or with WS_CRASH_STRIDE=n) only every nth cut point and
// fault position is tried; the output says so.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "adapters/sqlite/sqlite_outbox.h"
#include "core/event.h"
#include "core/outbox.h"
#include "core/priority.h"
#include "platform/log.h"
#include "tests/crash/fault_vfs.h"
#include "tests/support/test_support.h"

namespace ws::testing {
namespace {

// A store that does not answer within this long is hung: the run fails
// instead of the whole test binary waiting for ctest's timeout.
constexpr auto kAnswerTimeout = std::chrono::seconds(60);

constexpr const char* kTopic = "waystation/lab/gw-crash/events/com.acme.crash";

bool UnderEmulator() { return !EmulatorPrefix().empty(); }

// Every `Stride()`th cut point / fault position is tried: 1 natively, 4
// under an emulator, or WS_CRASH_STRIDE.
int64_t Stride() {
  // Read on the test thread while no store thread runs.
  if (const char* s = std::getenv("WS_CRASH_STRIDE"); s != nullptr && *s != '\0') {  // NOLINT(concurrency-mt-unsafe)
    const long v = std::strtol(s, nullptr, 10);
    if (v >= 1) return v;
  }
  return UnderEmulator() ? 4 : 1;
}

// Waits for one completion callback. The state is shared with the callback,
// so a callback that arrives after a timeout touches nothing freed.
template <typename T>
class Completion {
 public:
  std::function<void(T)> Callback() {
    return [state = state_](T value) { state->set_value(std::move(value)); };
  }
  std::optional<T> Wait() {
    if (future_.wait_for(kAnswerTimeout) != std::future_status::ready) return std::nullopt;
    return future_.get();
  }

 private:
  std::shared_ptr<std::promise<T>> state_ = std::make_shared<std::promise<T>>();
  std::future<T> future_ = state_->get_future();
};

using AppendResult = Result<std::vector<AppendOutcome>>;
using LeaseResult = Result<std::vector<LeasedEvent>>;

struct SentEvent {
  Priority priority = Priority::kNormal;
  std::string stream;
  std::string data;
};

enum class Answer { kNone, kOk, kError };

// Everything the scenario asked of the store and what it answered, recorded
// inside the completion callbacks, i.e. at the moment the store answered.
struct Ledger {
  void Sent(const std::string& id, SentEvent e) {
    std::lock_guard<std::mutex> lock(mu);
    sent[id] = std::move(e);
    append_answer[id] = Answer::kNone;
  }
  void Appended(const std::vector<std::string>& ids, const AppendResult& r) {
    std::lock_guard<std::mutex> lock(mu);
    ++answers;
    // A commit that stored a new event fsync'd the WAL, and with it every
    // commit before it.
    if (r.ok()) {
      for (const AppendOutcome& o : *r) {
        if (!o.duplicate) last_synced_answer = answers;
      }
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      append_answer[ids[i]] = r.ok() ? Answer::kOk : Answer::kError;
      if (r.ok()) {
        if (i < r->size()) {
          acknowledged_sequence[ids[i]] = (*r)[i].sequence;
          max_acknowledged_sequence = std::max(max_acknowledged_sequence, (*r)[i].sequence);
          if ((*r)[i].id != ids[i]) notes.push_back("append answered for id " + (*r)[i].id + " in place of " + ids[i]);
        } else {
          notes.push_back("append of " + ids[i] + " answered OK without an outcome");
        }
      }
    }
  }
  void Delivered(const std::vector<int64_t>& sequences, const Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    ++answers;
    for (int64_t seq : sequences) {
      if (s.ok()) {
        delivered_ok.insert(seq);
        delivered_at[seq] = answers;
        ack_uncertain.erase(seq);
      }
    }
  }
  void DeadLettered(int64_t seq, const Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    ++answers;
    if (s.ok()) {
      dead_lettered_ok.insert(seq);
      last_synced_answer = answers;  // dead-lettering commits with an fsync
    }
  }
  // The store closed cleanly: its last checkpoint synced everything.
  void AllSynced() {
    std::lock_guard<std::mutex> lock(mu);
    last_synced_answer = answers;
  }
  // Acks commit without an fsync of their own; one is durable once a later
  // commit with an fsync answered. The disk just forgot what was not
  // synced, so an ack without such a commit after it may be undone: its
  // event may be back in the outbox (sent again: a duplicate, not a loss).
  void PowerCycled() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = delivered_at.begin(); it != delivered_at.end();) {
      if (it->second > last_synced_answer) {
        ack_uncertain.insert(it->first);
        delivered_ok.erase(it->first);
        it = delivered_at.erase(it);
      } else {
        ++it;
      }
    }
  }
  void Note(std::string n) {
    std::lock_guard<std::mutex> lock(mu);
    notes.push_back(std::move(n));
  }

  // For the self-check of Verify: claims that an id the store never saw was
  // acknowledged.
  void ForgeAcknowledged(const std::string& id, int64_t sequence) {
    std::lock_guard<std::mutex> lock(mu);
    sent[id] = SentEvent{Priority::kNormal, "forged", "{\"forged\":true}"};
    append_answer[id] = Answer::kOk;
    acknowledged_sequence[id] = sequence;
  }

  std::map<std::string, SentEvent> sent;
  std::map<std::string, Answer> append_answer;
  std::map<std::string, int64_t> acknowledged_sequence;  // by id
  std::set<int64_t> delivered_ok;
  std::map<int64_t, uint64_t> delivered_at;  // sequence -> number of the answer that acked it
  std::set<int64_t> ack_uncertain;           // acked, but the ack may have been undone by a power cut
  std::set<int64_t> dead_lettered_ok;
  uint64_t answers = 0;             // append, ack and dead-letter answers so far, in the store's order
  uint64_t last_synced_answer = 0;  // the last of them whose commit fsync'd
  int64_t max_acknowledged_sequence = 0;
  std::vector<std::string> notes;  // answers that break the contract by themselves
  mutable std::mutex mu;
};

Event MakeEvent(const std::string& id, const std::string& data) {
  Event e;
  e.id = id;
  e.source = "/crash/test";
  e.type = "com.acme.crash";
  e.data_kind = DataKind::kJson;
  e.data = data;
  return e;
}

OutboxEntry MakeEntry(const std::string& id, Priority priority, const std::string& stream, const std::string& data) {
  OutboxEntry entry;
  entry.event = MakeEvent(id, data);
  entry.topic = kTopic;
  entry.stream = stream;
  entry.priority = priority;
  return entry;
}

// Whether the stores of the scenario use the intake log (the default); a
// test that runs the scenario with every event written into the database
// turns it off for its duration.
bool g_intake_log = true;

SqliteOutboxOptions StoreOptions(const std::string& path) {
  SqliteOutboxOptions o;
  o.path = path;
  o.commit_window_us = 500;
  o.intake_log = g_intake_log;
  // The smallest the store takes, so that the WAL is checkpointed (by the
  // store's checkpoint thread, and its last frames by the committer) in the
  // middle of a scenario, and the power also goes at those syncs.
  o.wal_checkpoint_bytes = 64 * 1024;
  return o;
}

// One producer: `appends` calls, every third one a batch of two events. Its
// first producer writes high-priority events, the others normal ones.
void Produce(Outbox& store, Ledger& ledger, const std::string& tag, int producer, int appends) {
  const Priority priority = producer == 0 ? Priority::kHigh : Priority::kNormal;
  const std::string stream = tag + "-p" + std::to_string(producer);
  for (int i = 0; i < appends; ++i) {
    const int size = i % 3 == 2 ? 2 : 1;
    std::vector<OutboxEntry> entries;
    std::vector<std::string> ids;
    for (int j = 0; j < size; ++j) {
      const std::string id = stream + "-" + std::to_string(i) + "-" + std::to_string(j);
      const std::string data = "{\"producer\":" + std::to_string(producer) + ",\"n\":" + std::to_string(i) +
                               ",\"part\":" + std::to_string(j) + "}";
      ledger.Sent(id, SentEvent{priority, stream, data});
      entries.push_back(MakeEntry(id, priority, stream, data));
      ids.push_back(id);
    }
    Completion<AppendResult> c;
    auto done = c.Callback();
    store.Append(std::move(entries), [&ledger, ids, done](AppendResult r) {
      ledger.Appended(ids, r);
      done(std::move(r));
    });
    if (!c.Wait()) {
      ledger.Note("append of " + ids.front() + " got no answer");
      return;
    }
  }
}

// The consumer side: leases a few events at a time and acks two of every
// three, dead-letters one event once, and resets its leases now and then so
// unacked events come round again. Stops when the producers are done and
// nothing is left to lease or the store keeps failing (the disk is gone),
// or after a bounded number of rounds.
void Consume(Outbox& store, Ledger& ledger, const std::atomic<bool>& producers_done) {
  bool dead_lettered = false;
  int failures_in_a_row = 0;
  for (int round = 0; round < 400; ++round) {
    if (producers_done.load() && failures_in_a_row >= 3) return;
    Completion<LeaseResult> lease;
    store.Lease(3, lease.Callback());
    std::optional<LeaseResult> leased = lease.Wait();
    if (!leased) {
      ledger.Note("lease got no answer");
      return;
    }
    if (!leased->ok()) ++failures_in_a_row;
    const bool empty = !leased->ok() || (*leased)->empty();
    if (empty) {
      if (producers_done.load() && leased->ok()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    std::vector<int64_t> to_ack;
    for (size_t i = 0; i < (*leased)->size(); ++i) {
      const int64_t seq = (**leased)[i].sequence;
      if (!dead_lettered && i == 1) {
        dead_lettered = true;
        Completion<Status> dl;
        auto done = dl.Callback();
        store.DeadLetter(seq, "crash test: never deliverable", [&ledger, seq, done](Status s) {
          ledger.DeadLettered(seq, s);
          done(std::move(s));
        });
        if (!dl.Wait()) ledger.Note("dead-letter got no answer");
        continue;
      }
      if (i % 3 != 2) to_ack.push_back(seq);
    }
    if (!to_ack.empty()) {
      Completion<Status> ack;
      auto done = ack.Callback();
      store.Ack(to_ack, [&ledger, to_ack, done](Status s) {
        ledger.Delivered(to_ack, s);
        done(std::move(s));
      });
      std::optional<Status> acked = ack.Wait();
      if (!acked) {
        ledger.Note("ack got no answer");
        return;
      }
      failures_in_a_row = acked->ok() ? 0 : failures_in_a_row + 1;
    }
    if (round % 4 == 3) store.ResetLeases();
  }
}

struct ScenarioReport {
  bool first_open_ok = false;
  bool second_open_ok = false;
};

// Phase 1 creates the store, two producers append, the store closes.
// Phase 2 reopens it; three producers append while a consumer drains; the
// store closes. A fault may strike anywhere in it, including the opens and
// the closes; whatever fails is recorded, nothing stops early.
// `round` prefixes every id, so the scenario can run again on the same store.
ScenarioReport RunScenario(const std::string& path, Ledger& ledger, const std::string& round = "") {
  ScenarioReport report;
  {
    Result<std::unique_ptr<SqliteOutbox>> store = SqliteOutbox::Open(StoreOptions(path));
    report.first_open_ok = store.ok();
    if (store.ok()) {
      std::vector<std::thread> producers;
      producers.reserve(2);
      for (int p = 0; p < 2; ++p) {
        producers.emplace_back([&, p] { Produce(**store, ledger, round + "a", p, 3); });
      }
      for (std::thread& t : producers) t.join();
    }
  }
  {
    Result<std::unique_ptr<SqliteOutbox>> store = SqliteOutbox::Open(StoreOptions(path));
    report.second_open_ok = store.ok();
    if (store.ok()) {
      std::atomic<bool> producers_done{false};
      std::thread consumer([&] { Consume(**store, ledger, producers_done); });
      std::vector<std::thread> producers;
      producers.reserve(3);
      for (int p = 0; p < 3; ++p) {
        producers.emplace_back([&, p] { Produce(**store, ledger, round + "b", p, 5); });
      }
      for (std::thread& t : producers) t.join();
      producers_done.store(true);
      consumer.join();
    }
  }
  return report;
}

struct Verdict {
  std::vector<std::string> problems;
  size_t acknowledged = 0;   // appended events answered OK
  size_t present = 0;        // events found in the reopened store
  size_t expected_gone = 0;  // acknowledged but then delivered or dead-lettered
  size_t failed = 0;         // appended events answered with an error (all absent)
  size_t unsynced_acks_undone = 0;  // acked as delivered without a synced commit after, back after the cut
};

// Reopens the store with every fault off and checks it against the ledger.
// Finally appends one more event (recorded in the ledger, so a later Verify
// of the same store expects it) to see that sequences keep rising.
Verdict Verify(const std::string& path, Ledger& ledger) {
  Verdict v;
  auto problem = [&v](std::string p) { v.problems.push_back(std::move(p)); };

  Result<std::unique_ptr<SqliteOutbox>> opened = SqliteOutbox::Open(StoreOptions(path));
  if (!opened.ok()) {
    problem("the store does not open: " + opened.status().ToString());
    return v;
  }
  SqliteOutbox& store = **opened;
  const OutboxStats stats = store.Stats();
  if (stats.quarantined_at_start) problem("the store was quarantined after a mere power cut or I/O error");

  std::vector<LeasedEvent> all;
  for (int round = 0; round < 100; ++round) {
    Completion<LeaseResult> lease;
    store.Lease(64, lease.Callback());
    std::optional<LeaseResult> r = lease.Wait();
    if (!r) {
      problem("lease got no answer");
      return v;
    }
    if (!r->ok()) {
      problem("lease failed: " + r->status().ToString());
      return v;
    }
    if ((*r)->empty()) break;
    for (LeasedEvent& e : **r) all.push_back(std::move(e));
  }
  v.present = all.size();

  int64_t max_acknowledged = 0;
  {
    std::lock_guard<std::mutex> lock(ledger.mu);
    max_acknowledged = ledger.max_acknowledged_sequence;
    for (const std::string& n : ledger.notes) problem("during the run: " + n);

    // Order and uniqueness.
    std::set<int64_t> sequences;
    std::map<std::string, const LeasedEvent*> by_id;
    for (size_t i = 0; i < all.size(); ++i) {
      const LeasedEvent& e = all[i];
      if (!sequences.insert(e.sequence).second) problem("sequence " + std::to_string(e.sequence) + " leased twice");
      if (!by_id.emplace(e.id, &e).second) problem("id " + e.id + " leased twice");
      if (i > 0) {
        const LeasedEvent& prev = all[i - 1];
        const bool ordered = prev.priority < e.priority || (prev.priority == e.priority && prev.sequence < e.sequence);
        if (!ordered) {
          problem("lease order broken: sequence " + std::to_string(prev.sequence) + " (" +
                  std::string(PriorityName(prev.priority)) + ") before " + std::to_string(e.sequence) + " (" +
                  std::string(PriorityName(e.priority)) + ")");
        }
      }
    }

    // Everything present was sent, acknowledged, intact, and not removed.
    for (const LeasedEvent& e : all) {
      const std::string& id = e.id;
      auto sent = ledger.sent.find(id);
      if (sent == ledger.sent.end()) {
        problem("event " + id + " is in the store but was never appended");
        continue;
      }
      const Answer answer = ledger.append_answer.at(id);
      if (answer == Answer::kError) {
        problem("event " + id + " is in the store although its append reported an error");
      }
      if (answer == Answer::kNone) {
        problem("event " + id + " is in the store although its append was never answered");
      }
      auto seq = ledger.acknowledged_sequence.find(id);
      if (seq != ledger.acknowledged_sequence.end() && seq->second != e.sequence) {
        problem("event " + id + " was acknowledged with sequence " + std::to_string(seq->second) + " but has " +
                std::to_string(e.sequence));
      }
      Result<Event> event = DecodeEventRecord(e.record, e.id);
      if (!event.ok() || event->data != sent->second.data || e.stream != sent->second.stream ||
          e.priority != sent->second.priority || e.topic != kTopic || event->type != "com.acme.crash") {
        problem("event " + id + " came back altered");
      }
      if (ledger.delivered_ok.count(e.sequence) != 0) {
        problem("event " + id + " was acked as delivered (and synced), yet it is back in the outbox");
      }
      if (ledger.ack_uncertain.count(e.sequence) != 0) ++v.unsynced_acks_undone;
      if (ledger.dead_lettered_ok.count(e.sequence) != 0) {
        problem("event " + id + " was dead-lettered, yet it is back in the outbox");
      }
    }

    // Every acknowledged event is there, unless an acknowledged removal
    // took it out.
    for (const auto& [id, answer] : ledger.append_answer) {
      if (answer == Answer::kError) ++v.failed;
      if (answer != Answer::kOk) continue;
      ++v.acknowledged;
      auto seq = ledger.acknowledged_sequence.find(id);
      if (seq == ledger.acknowledged_sequence.end()) continue;  // already reported in notes
      if (ledger.delivered_ok.count(seq->second) != 0 || ledger.dead_lettered_ok.count(seq->second) != 0 ||
          ledger.ack_uncertain.count(seq->second) != 0) {
        ++v.expected_gone;
        continue;
      }
      if (by_id.count(id) == 0) {
        problem("LOST: event " + id + " (sequence " + std::to_string(seq->second) +
                ") was acknowledged but is not in the store");
      }
    }

    if (stats.dlq_count != ledger.dead_lettered_ok.size()) {
      problem("the dead-letter queue holds " + std::to_string(stats.dlq_count) + " events, " +
              std::to_string(ledger.dead_lettered_ok.size()) + " were dead-lettered");
    }
  }
  uint64_t backlog = 0;
  for (const ClassBacklog& b : stats.backlog) backlog += b.count;
  if (backlog != all.size()) {
    problem("Stats() counts " + std::to_string(backlog) + " events in the backlog, Lease returned " +
            std::to_string(all.size()));
  }

  // Sequences keep rising across the cut.
  const std::string id = "after-reopen-" + std::to_string(max_acknowledged);
  const std::string data = "{\"after\":true}";
  ledger.Sent(id, SentEvent{Priority::kNormal, "after", data});
  Completion<AppendResult> after;
  auto done = after.Callback();
  const std::vector<std::string> ids = {id};
  store.Append({MakeEntry(id, Priority::kNormal, "after", data)}, [&ledger, ids, done](AppendResult r) {
    ledger.Appended(ids, r);
    done(std::move(r));
  });
  std::optional<AppendResult> r = after.Wait();
  if (!r || !r->ok() || (*r)->size() != 1) {
    problem("append after reopening failed: " + (r ? r->status().ToString() : std::string("no answer")));
  } else if ((**r)[0].sequence <= max_acknowledged) {
    problem("sequence " + std::to_string((**r)[0].sequence) + " handed out again after reopening (acknowledged up to " +
            std::to_string(max_acknowledged) + ")");
  }
  return v;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += "  " + l + "\n";
  return out;
}

class PowerCutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The store logs every failed transaction; hundreds of runs of injected
    // faults would bury the test output. WS_CRASH_LOG=debug shows them.
    const char* level = std::getenv("WS_CRASH_LOG");  // NOLINT(concurrency-mt-unsafe): before any store thread
    LogLevel parsed = LogLevel::kError;
    if (level != nullptr && ParseLogLevel(level, &parsed)) {
      SetLogLevel(parsed);
    } else {
      SetLogLevel(LogLevel::kError);
    }
    Result<std::unique_ptr<FaultVfs>> vfs = FaultVfs::Install();
    ASSERT_TRUE(vfs.ok()) << vfs.status().ToString();
    vfs_ = std::move(vfs).value();
  }

  void TearDown() override {
    vfs_.reset();
    g_intake_log = true;
  }

  // One run in a fresh folder: `arm` plans the fault after the counters
  // start from zero; `power_cycle` restores the files as the disk kept them
  // before the check.
  struct Run {
    bool power_lost_in_every_round = false;
    ScenarioReport scenario;
    FaultVfsCounters counters;
    Verdict verdict;
  };
  Run RunOnce(const std::function<void(FaultVfs&)>& arm, bool power_cycle) { return RunRounds({arm}, power_cycle); }

  // The fewest sync points of three runs without a fault (each checked):
  // how far the cut points must reach. Group commit makes the count vary
  // with the machine's load, and a single run on a busy machine can sync
  // a third more often than the runs after it.
  int64_t CleanSyncPoints() {
    int64_t fewest = INT64_MAX;
    for (int i = 0; i < 3; ++i) {
      const Run clean = RunOnce([](FaultVfs&) {}, true);
      EXPECT_TRUE(clean.verdict.problems.empty()) << Join(clean.verdict.problems);
      fewest = std::min(fewest, clean.counters.syncs);
    }
    return fewest;
  }

  // The scenario once per entry of `arms` on the same store, each round
  // with its own fault and (with `power_cycle`) its own reboot, then the
  // check. `counters` are those of the last round.
  Run RunRounds(const std::vector<std::function<void(FaultVfs&)>>& arms, bool power_cycle) {
    Run run;
    TempDir dir;
    const std::string path = dir.File("var/outbox.db");
    Status reset = vfs_->Reset();
    EXPECT_TRUE(reset.ok()) << reset.ToString();
    Ledger ledger;
    for (size_t r = 0; r < arms.size(); ++r) {
      arms[r](*vfs_);
      run.scenario = RunScenario(path, ledger, r == 0 ? "" : "r" + std::to_string(r) + "-");
      run.counters = vfs_->Counters();
      run.power_lost_in_every_round = (r == 0 || run.power_lost_in_every_round) && run.counters.power_lost;
      if (!run.counters.power_lost && run.counters.faults_injected == 0) ledger.AllSynced();
      vfs_->ClearFaults();
      if (power_cycle) {
        Status s = vfs_->PowerCycle();
        EXPECT_TRUE(s.ok()) << s.ToString();
        ledger.PowerCycled();
      }
    }
    run.verdict = Verify(path, ledger);
    return run;
  }

  // Fails the Nth operation of one kind for N = 1, 2, ... (planned by
  // `arm`) until a run ends before reaching N. Every append answered OK must
  // be there afterwards and every append answered with an error entirely
  // absent.
  void FailEveryNth(const char* name, const std::function<void(FaultVfs&, int64_t)>& arm, bool power_cycle) {
    const int64_t stride = Stride();
    int64_t n = 1, injected_runs = 0, failed = 0, acknowledged = 0;
    for (; n <= 20000; n += stride) {
      const Run run = RunOnce([&](FaultVfs& v) { arm(v, n); }, power_cycle);
      if (run.counters.faults_injected == 0) break;
      ++injected_runs;
      acknowledged += static_cast<int64_t>(run.verdict.acknowledged);
      failed += static_cast<int64_t>(run.verdict.failed);
      if (!run.verdict.problems.empty()) ADD_FAILURE() << name << " " << n << ":\n" << Join(run.verdict.problems);
    }
    std::printf(
        "[faults] %s: N = 1..%lld%s; %lld runs with the fault injected; %lld acknowledged events checked "
        "present, %lld events of failed appends checked absent\n",
        name, static_cast<long long>(n - 1), stride == 1 ? "" : (" step " + std::to_string(stride)).c_str(),
        static_cast<long long>(injected_runs), static_cast<long long>(acknowledged), static_cast<long long>(failed));
    // The scenario has dozens of syncs and hundreds of writes: a fault that
    // struck in fewer runs than that was not injected where planned.
    EXPECT_GE(injected_runs * stride, 20) << name;
    EXPECT_LT(n, 20000) << name << ": the scenario never ran out of operations";
  }

  // Cuts the power at each sync point of the scenario in turn, before and
  // after the sync.
  void CutAtEverySyncPoint();

  std::unique_ptr<FaultVfs> vfs_;
};

// The scenario itself, without faults, passes the check; it goes through
// this VFS; and the check is able to see a lost event.
TEST_F(PowerCutTest, CleanRunPassesAndTheCheckCanSeeALoss) {
  TempDir dir;
  const std::string path = dir.File("var/outbox.db");
  ASSERT_TRUE(vfs_->Reset().ok());
  Ledger ledger;
  ScenarioReport scenario = RunScenario(path, ledger);
  ASSERT_TRUE(scenario.first_open_ok && scenario.second_open_ok);
  const FaultVfsCounters counters = vfs_->Counters();
  EXPECT_GT(counters.opens, 0) << "the store did not open its files through the FaultVfs";
  EXPECT_GT(counters.syncs, 10);
  EXPECT_GT(ledger.dead_lettered_ok.size(), 0u) << "the scenario should dead-letter one event";
  EXPECT_GT(ledger.delivered_ok.size(), 0u) << "the scenario should deliver events";
  ASSERT_TRUE(vfs_->PowerCycle().ok());

  Verdict clean = Verify(path, ledger);
  EXPECT_TRUE(clean.problems.empty()) << Join(clean.problems);
  EXPECT_EQ(clean.acknowledged, 26u);  // phase 1: 2 x (1+1+2); phase 2: 3 x (1+1+2+1+1)
  EXPECT_EQ(clean.present + clean.expected_gone, clean.acknowledged)
      << "present " << clean.present << ", delivered or dead-lettered " << clean.expected_gone;

  ledger.ForgeAcknowledged("never-stored", 999999);
  Verdict forged = Verify(path, ledger);
  ASSERT_EQ(forged.problems.size(), 1u) << Join(forged.problems);
  EXPECT_NE(forged.problems[0].find("LOST: event never-stored"), std::string::npos) << forged.problems[0];
}

// A plain SQLite database on the same VFS: with synchronous=NORMAL (no sync
// at commit in WAL mode) committed rows vanish in the power cut; with FULL
// they survive. This is what makes the outbox's survival mean something.
// Acks commit without an fsync of their own; with no append to sync them,
// the store syncs the WAL within about a second. A cut right after the ack
// undoes it (the event is sent again: the control, showing that this test
// can see an ack undone); a cut after that second keeps it.
TEST_F(PowerCutTest, AnAckIsDurableWithinAboutASecondWithoutAnotherAppend) {
  // Whether the acked event is back in the outbox after the cut.
  auto event_back_after_cut = [&](std::chrono::milliseconds wait_after_ack) -> std::optional<bool> {
    TempDir dir;
    const std::string path = dir.File("outbox.db");
    EXPECT_TRUE(vfs_->Reset().ok());
    {
      Result<std::unique_ptr<SqliteOutbox>> store = SqliteOutbox::Open(StoreOptions(path));
      if (!store.ok()) {
        ADD_FAILURE() << store.status().ToString();
        return std::nullopt;
      }
      Completion<AppendResult> appended;
      (*store)->Append({MakeEntry("acked-1", Priority::kNormal, "s", "{\"n\":1}")}, appended.Callback());
      std::optional<AppendResult> a = appended.Wait();
      if (!a || !a->ok()) return std::nullopt;
      Completion<LeaseResult> lease;
      (*store)->Lease(1, lease.Callback());
      std::optional<LeaseResult> leased = lease.Wait();
      if (!leased || !leased->ok() || (*leased)->size() != 1) return std::nullopt;
      Completion<Status> ack;
      (*store)->Ack({(**leased)[0].sequence}, ack.Callback());
      std::optional<Status> acked = ack.Wait();
      if (!acked || !acked->ok()) return std::nullopt;
      std::this_thread::sleep_for(wait_after_ack);
      // The next sync is the close's (the commit of the exact last
      // sequence, then the checkpoint): the power goes there.
      vfs_->CutPowerAtSync(1, CutTiming::kBeforeSync);
    }
    EXPECT_TRUE(vfs_->Counters().power_lost);
    vfs_->ClearFaults();
    EXPECT_TRUE(vfs_->PowerCycle().ok());
    Result<std::unique_ptr<SqliteOutbox>> reopened = SqliteOutbox::Open(StoreOptions(path));
    if (!reopened.ok()) {
      ADD_FAILURE() << reopened.status().ToString();
      return std::nullopt;
    }
    Completion<LeaseResult> lease;
    (*reopened)->Lease(10, lease.Callback());
    std::optional<LeaseResult> leased = lease.Wait();
    if (!leased || !leased->ok()) return std::nullopt;
    return !(*leased)->empty();
  };
  EXPECT_EQ(event_back_after_cut(std::chrono::milliseconds(0)), std::optional<bool>(true))
      << "an ack survived a cut right after it: this test cannot tell a synced ack from an unsynced one";
  EXPECT_EQ(event_back_after_cut(std::chrono::milliseconds(2500)), std::optional<bool>(false))
      << "an ack was undone although the store had two and a half seconds to sync it";
}

TEST_F(PowerCutTest, TheDiskForgetsWhatWasNotSynced) {
  struct Db {
    sqlite3* db = nullptr;
    ~Db() {
      if (db != nullptr) {
        EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
      }
    }
  };
  auto exec = [](sqlite3* db, const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err != nullptr ? err : "";
    sqlite3_free(err);
    EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << msg;
    return rc == SQLITE_OK;
  };
  auto rows_after_cut = [&](const char* synchronous) -> int {
    TempDir dir;
    const std::string path = dir.File("plain.db");
    EXPECT_TRUE(vfs_->Reset().ok());
    {
      Db d;
      EXPECT_EQ(sqlite3_open_v2(path.c_str(), &d.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr), SQLITE_OK);
      if (!exec(d.db, "PRAGMA journal_mode=WAL; CREATE TABLE t(x)")) return -1;
      if (!exec(d.db, std::string("PRAGMA synchronous=") + synchronous)) return -1;
      for (int i = 0; i < 5; ++i) {
        if (!exec(d.db, "INSERT INTO t VALUES (" + std::to_string(i) + ")")) return -1;
      }
      // The power goes at the next sync: the checkpoint when the
      // connection closes.
      vfs_->CutPowerAtSync(1, CutTiming::kBeforeSync);
    }
    EXPECT_TRUE(vfs_->Counters().power_lost);
    EXPECT_TRUE(vfs_->PowerCycle().ok());
    Db d;
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &d.db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(d.db, "SELECT count(*) FROM t", -1, &stmt, nullptr);
    EXPECT_EQ(rc, SQLITE_OK) << sqlite3_errmsg(d.db);
    int rows = -1;
    if (rc == SQLITE_OK) {
      rc = sqlite3_step(stmt);
      EXPECT_EQ(rc, SQLITE_ROW) << sqlite3_errmsg(d.db);
      if (rc == SQLITE_ROW) rows = sqlite3_column_int(stmt, 0);
    }
    EXPECT_EQ(sqlite3_finalize(stmt), rc == SQLITE_ROW ? SQLITE_OK : rc);
    return rows;
  };
  EXPECT_EQ(rows_after_cut("NORMAL"), 0);
  EXPECT_EQ(rows_after_cut("FULL"), 5);
}

TEST_F(PowerCutTest, NoAcknowledgedEventIsLostWhereverThePowerIsCut) { CutAtEverySyncPoint(); }

// The same with the intake log off: every append commits into the database.
TEST_F(PowerCutTest, NoAcknowledgedEventIsLostWhereverThePowerIsCutWithoutTheIntakeLog) {
  g_intake_log = false;
  CutAtEverySyncPoint();
  g_intake_log = true;
}

void PowerCutTest::CutAtEverySyncPoint() {
  const int64_t sync_points = CleanSyncPoints();
  ASSERT_GT(sync_points, 0);
  const int64_t stride = Stride();
  std::printf("[power cut] the clean runs have at least %lld sync points; cutting at %s%s\n",
              static_cast<long long>(sync_points),
              stride == 1 ? "each in turn" : ("every " + std::to_string(stride) + "th").c_str(),
              UnderEmulator() ? " (reduced under the emulator)" : "");

  for (CutTiming timing : {CutTiming::kBeforeSync, CutTiming::kAfterSync}) {
    const char* name = timing == CutTiming::kBeforeSync ? "cut before sync" : "cut after sync";
    int64_t runs = 0, reached = 0, missed = 0, acknowledged = 0, present = 0, failed = 0, open_failures = 0, undone = 0;
    // Group commit makes the count vary a little from run to run; going on
    // until a run no longer reaches its cut point covers the longer runs.
    for (int64_t k = 1; k <= 4 * sync_points + 50; k += stride) {
      const Run run = RunOnce([&](FaultVfs& v) { v.CutPowerAtSync(k, timing); }, true);
      ++runs;
      if (run.counters.power_lost) ++reached;
      // A run that synced k times without losing power: the cut failed.
      if (!run.counters.power_lost && run.counters.syncs >= k) ++missed;
      if (!run.scenario.first_open_ok) ++open_failures;
      acknowledged += static_cast<int64_t>(run.verdict.acknowledged);
      present += static_cast<int64_t>(run.verdict.present);
      failed += static_cast<int64_t>(run.verdict.failed);
      undone += static_cast<int64_t>(run.verdict.unsynced_acks_undone);
      if (!run.verdict.problems.empty()) ADD_FAILURE() << name << " " << k << ":\n" << Join(run.verdict.problems);
      if (!run.counters.power_lost && k > sync_points) break;
    }
    std::printf(
        "[power cut] %s: %lld runs, power cut reached in %lld (%lld during the store's creation); "
        "%lld acknowledged events checked, %lld found after the reboot, %lld events of failed "
        "appends checked absent, %lld unsynced delivery acks undone (sent again)\n",
        name, static_cast<long long>(runs), static_cast<long long>(reached), static_cast<long long>(open_failures),
        static_cast<long long>(acknowledged), static_cast<long long>(present), static_cast<long long>(failed),
        static_cast<long long>(undone));
    // The cut struck in every run that reached its sync point, and in
    // (nearly) every run up to the clean runs' count; group commit makes
    // the count vary by a few from run to run.
    EXPECT_EQ(missed, 0) << name;
    EXPECT_GE(reached * stride * 4, sync_points * 3) << name;
  }
}

// The power fails, the node reboots, and the power fails again while the
// store recovers and takes new events: for every first cut point, a second
// cut at one of the first five sync points after the reboot.
TEST_F(PowerCutTest, NoAcknowledgedEventIsLostWhenThePowerFailsAgainAfterTheReboot) {
  const int64_t sync_points = CleanSyncPoints();
  const int64_t stride = Stride();
  int64_t runs = 0, both_reached = 0, acknowledged = 0;
  for (int64_t k = 1; k <= sync_points; k += stride) {
    const int64_t j = 1 + k % 5;  // the second cut: sync 1 to 5 after the reboot
    const Run run = RunRounds({[&](FaultVfs& v) { v.CutPowerAtSync(k, CutTiming::kBeforeSync); },
                               [&](FaultVfs& v) { v.CutPowerAtSync(j, CutTiming::kAfterSync); }},
                              true);
    ++runs;
    if (run.power_lost_in_every_round) ++both_reached;
    acknowledged += static_cast<int64_t>(run.verdict.acknowledged);
    if (!run.verdict.problems.empty()) {
      ADD_FAILURE() << "cut before sync " << k << ", reboot, cut after sync " << j << ":\n"
                    << Join(run.verdict.problems);
    }
  }
  std::printf("[power cut] twice: %lld runs, both cuts reached in %lld; %lld acknowledged events checked%s\n",
              static_cast<long long>(runs), static_cast<long long>(both_reached), static_cast<long long>(acknowledged),
              stride == 1 ? "" : " (reduced)");
  // A first cut point beyond a run's own sync count (they vary a little)
  // is not reached; the rest are.
  EXPECT_GE(both_reached * 4, runs * 3);
}

TEST_F(PowerCutTest, AFailedWriteLeavesEachAppendAllOrNothing) {
  FailEveryNth(
      "fail write", [](FaultVfs& v, int64_t n) { v.FailWrite(n, FaultError::kIoError); }, false);
}

TEST_F(PowerCutTest, AFailedSyncLeavesEachAppendAllOrNothing) {
  FailEveryNth(
      "fail sync", [](FaultVfs& v, int64_t n) { v.FailSync(n, FaultError::kIoError); }, false);
}

// A failed sync followed by a power cut: whatever the failed sync did not
// make durable may be gone, and still nothing acknowledged is.
TEST_F(PowerCutTest, AFailedSyncThenAPowerCutLosesNothingAcknowledged) {
  FailEveryNth(
      "fail sync, then power cut", [](FaultVfs& v, int64_t n) { v.FailSync(n, FaultError::kIoError); }, true);
}

TEST_F(PowerCutTest, DiskFullRefusesTheAppendAndLaterAppendsSucceedWhenSpaceReturns) {
  TempDir dir;
  const std::string path = dir.File("var/outbox.db");
  ASSERT_TRUE(vfs_->Reset().ok());
  Ledger ledger;
  std::unique_ptr<SqliteOutbox> store;
  auto append = [&](const std::string& id) -> AppendResult {
    ledger.Sent(id, SentEvent{Priority::kNormal, "full", "{\"id\":\"" + id + "\"}"});
    Completion<AppendResult> c;
    auto done = c.Callback();
    std::vector<std::string> ids = {id};
    store->Append({MakeEntry(id, Priority::kNormal, "full", "{\"id\":\"" + id + "\"}")},
                  [&ledger, ids, done](AppendResult r) {
                    ledger.Appended(ids, r);
                    done(std::move(r));
                  });
    std::optional<AppendResult> r = c.Wait();
    if (!r) return Status(StatusCode::kDeadlineExceeded, "no answer");
    return std::move(*r);
  };
  {
    Result<std::unique_ptr<SqliteOutbox>> opened = SqliteOutbox::Open(StoreOptions(path));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    store = std::move(opened).value();
    for (int i = 0; i < 3; ++i) {
      AppendResult r = append("before-" + std::to_string(i));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
    }
    // The disk fills up: every write fails until space returns.
    vfs_->FailWrite(1, FaultError::kDiskFull, /*persistent=*/true);
    for (int i = 0; i < 2; ++i) {
      AppendResult r = append("while-full-" + std::to_string(i));
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
    }
    EXPECT_GE(vfs_->Counters().faults_injected, 2);
    vfs_->ClearFaults();
    for (int i = 0; i < 3; ++i) {
      AppendResult r = append("after-" + std::to_string(i));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
    }
    store.reset();
  }
  ASSERT_TRUE(vfs_->PowerCycle().ok());
  Verdict v = Verify(path, ledger);
  EXPECT_TRUE(v.problems.empty()) << Join(v.problems);
  EXPECT_EQ(v.acknowledged, 6u);
  EXPECT_EQ(v.present, 6u);
}

// A drained backlog makes the store compact its file (VACUUM, a checkpoint
// that copies the rewrite and cuts the file back). The power goes at each
// sync from the acks on in turn, before and after it: the store opens
// again undamaged, with every event that was not delivered, in order
// (delivered ones may be back: their acks may be undone, a duplicate).
TEST_F(PowerCutTest, NoEventIsLostWhereverThePowerIsCutDuringACompaction) {
  constexpr int kDrained = 600, kKept = 5;
  int64_t cuts = 0, compacted_runs = 0;
  for (CutTiming timing : {CutTiming::kBeforeSync, CutTiming::kAfterSync}) {
    const char* name = timing == CutTiming::kBeforeSync ? "cut before sync" : "cut after sync";
    int64_t n = 1;
    for (; n <= 60; ++n) {
      TempDir dir;
      const std::string path = dir.File("outbox.db");
      ASSERT_TRUE(vfs_->Reset().ok());
      SqliteOutboxOptions options = StoreOptions(path);
      options.compact_min_free_bytes = 256 * 1024;
      options.compact_max_live_bytes = 64 * 1024;
      options.intake_log = false;  // the backlog must be written into the database
      bool compacted = false;
      {
        Result<std::unique_ptr<SqliteOutbox>> opened = SqliteOutbox::Open(options);
        ASSERT_TRUE(opened.ok()) << opened.status().ToString();
        SqliteOutbox& store = **opened;
        std::vector<OutboxEntry> entries;
        for (int i = 0; i < kDrained + kKept; ++i) {
          const std::string id = (i < kDrained ? "drained-" : "kept-") + std::to_string(i);
          entries.push_back(MakeEntry(id, Priority::kNormal, "s", "{\"pad\":\"" + std::string(700, 'x') + "\"}"));
        }
        Completion<AppendResult> appended;
        store.Append(std::move(entries), appended.Callback());
        std::optional<AppendResult> a = appended.Wait();
        ASSERT_TRUE(a && a->ok());
        Completion<LeaseResult> lease;
        store.Lease(kDrained + kKept, lease.Callback());
        std::optional<LeaseResult> leased = lease.Wait();
        ASSERT_TRUE(leased && leased->ok() && (*leased)->size() == static_cast<size_t>(kDrained + kKept));
        std::vector<int64_t> delivered;
        for (int i = 0; i < kDrained; ++i) delivered.push_back((**leased)[static_cast<size_t>(i)].sequence);
        Completion<Status> ack;
        store.Ack(delivered, ack.Callback());
        std::optional<Status> acked = ack.Wait();
        ASSERT_TRUE(acked && acked->ok());
        // The next syncs: the maintenance's sync of those acks, the
        // compaction's, then the close's.
        vfs_->CutPowerAtSync(n, timing);
        const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (store.Stats().compactions == 0 && !vfs_->Counters().power_lost &&
               std::chrono::steady_clock::now() < end) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        compacted = store.Stats().compactions > 0;
      }
      const bool power_lost = vfs_->Counters().power_lost;
      vfs_->ClearFaults();
      ASSERT_TRUE(vfs_->PowerCycle().ok());
      if (compacted) ++compacted_runs;

      Result<std::unique_ptr<SqliteOutbox>> reopened = SqliteOutbox::Open(StoreOptions(path));
      ASSERT_TRUE(reopened.ok()) << name << " " << n << ": " << reopened.status().ToString();
      EXPECT_FALSE((*reopened)->Stats().quarantined_at_start) << name << " " << n;
      Completion<LeaseResult> lease;
      (*reopened)->Lease(kDrained + kKept + 1, lease.Callback());
      std::optional<LeaseResult> leased = lease.Wait();
      ASSERT_TRUE(leased && leased->ok()) << name << " " << n;
      std::vector<std::string> kept;
      for (const LeasedEvent& e : **leased) {
        if (e.id.rfind("kept-", 0) == 0) {
          kept.push_back(e.id);
        } else if (e.id.rfind("drained-", 0) != 0) {
          ADD_FAILURE() << name << " " << n << ": unknown event " << e.id;
        }
      }
      std::vector<std::string> want;
      for (int i = kDrained; i < kDrained + kKept; ++i) want.push_back("kept-" + std::to_string(i));
      EXPECT_EQ(kept, want) << name << " " << n << ": an event that was not delivered is missing";
      if (!power_lost) break;
      ++cuts;
    }
    EXPECT_LE(n, 60) << name << ": the compaction never ran out of sync points";
    std::printf("[power cut] compaction, %s: %lld sync points cut\n", name, static_cast<long long>(n - 1));
  }
  // Each timing: the acks' sync, the rewrite's commit, the checkpoint's two.
  EXPECT_GE(cuts, 8);
  EXPECT_GE(compacted_runs, 2) << "the runs without a cut did not compact: the cuts missed the compaction";
}

}  // namespace
}  // namespace ws::testing
