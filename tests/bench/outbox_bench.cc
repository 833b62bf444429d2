// In-process benchmark of the SQLite outbox (no HTTP, no MQTT): how many
// durable appends per second many producers get through group commit, the
// append->acknowledge latency, bytes written to storage per event, RSS while
// holding a large backlog, reopen time with that backlog, the wait while the
// store moves that backlog's times after the wall clock was set forward, and
// lease+ack drain rate. Producers come in two forms: threads that each block on their
// append (loop_ figures aside), and producers multiplexed on one event loop
// the way the node's HTTP connections are (`loop_` figures): each has one
// append outstanding and sends the next when the store's answer was posted
// back to the loop. A last run (`delivering_` figures) adds a consumer on
// that loop that leases and acks every event as the link does, so the
// store keeps its new events in the intake log as with the link up; in
// the first two the store keeps everything (past the first few thousand, in
// the database), as during an outage. Prints one
// `name value unit` line per figure. Bounded by count and by time. Usage:
//   ws_outbox_bench DIR [producers=64] [events=200000] [backlog=1000000] [commit_window_us=the store's default]
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "adapters/sqlite/sqlite_outbox.h"
#include "platform/event_loop.h"
#include "platform/process_stats.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kTimeLimit = std::chrono::seconds(240);

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

ws::OutboxEntry MakeEntry(uint64_t n) {
  ws::OutboxEntry e;
  e.event.id = "bench-" + std::to_string(n);
  e.event.source = "/bench/line-1";
  e.event.type = "com.example.bench.reading";
  e.event.data_kind = ws::DataKind::kJson;
  // ~200 bytes of JSON data, like the events the comparisons use.
  e.event.data = "{\"seq\":" + std::to_string(n) + ",\"line\":\"line-1\",\"temp\":21.5,\"pad\":\"";
  e.event.data.append(200 - std::min<size_t>(e.event.data.size() + 2, 200), 'x');
  e.event.data += "\"}";
  e.topic = "waystation/bench/gw/events/com.example.bench.reading";
  e.stream = e.topic;
  return e;
}

// As the node's API hands events over: encoded by the producer, with only
// the id left of the parsed event.
ws::OutboxEntry MakeEncodedEntry(uint64_t n) {
  ws::OutboxEntry e = MakeEntry(n);
  e.record = ws::EncodeEventRecord(e.event);
  std::string id = std::move(e.event.id);
  e.event = ws::Event{};
  e.event.id = std::move(id);
  return e;
}

// Blocks until `fn(done)` calls done.
template <typename T, typename F>
T Await(F fn) {
  std::mutex mu;
  std::condition_variable cv;
  bool ready = false;
  T out{ws::Status(ws::StatusCode::kInternal, "no answer")};
  fn([&](T r) {
    std::lock_guard<std::mutex> lock(mu);
    out = std::move(r);
    ready = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return ready; });
  return out;
}

ws::Status AwaitStatus(const std::function<void(ws::Outbox::StatusDone)>& fn) {
  std::mutex mu;
  std::condition_variable cv;
  bool ready = false;
  ws::Status out;
  fn([&](ws::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    out = std::move(s);
    ready = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return ready; });
  return out;
}

uint64_t WriteBytes() {
  ws::Result<ws::ProcessStats> st = ws::ReadProcessStats();
  return st.ok() ? st->write_bytes : 0;
}
uint64_t RssBytes() {
  ws::Result<ws::ProcessStats> st = ws::ReadProcessStats();
  return st.ok() ? st->rss_bytes : 0;
}

int64_t g_commit_window_us = ws::SqliteOutboxOptions{}.commit_window_us;

std::unique_ptr<ws::SqliteOutbox> OpenStore(const std::string& path, double* open_ms, ws::Clock* clock = nullptr) {
  ws::SqliteOutboxOptions o;
  o.path = path;
  o.clock = clock;
  o.commit_window_us = g_commit_window_us;
  o.max_bytes = uint64_t{4} << 30;
  auto t0 = Clock::now();
  ws::Result<std::unique_ptr<ws::SqliteOutbox>> s = ws::SqliteOutbox::Open(o);
  if (open_ms) *open_ms = Seconds(Clock::now() - t0) * 1000;
  if (!s.ok()) {
    std::fprintf(stderr, "open %s: %s\n", path.c_str(), s.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(s).value();
}

// Producers multiplexed on one event loop thread, the way the node's HTTP
// connections are: each has one append outstanding and sends the next when
// the store's answer was posted back to the loop. With `deliver`, a
// consumer on the same loop takes the events as the link does: it leases
// after every commit that added events (up to 1,024 at a time) and acks
// each lease at once, so the store holds only what is in flight, as with
// the link up. Prints its figures under `name`. False on a setup failure.
bool RunLoopAppends(const std::string& path, const std::string& name, int producers, uint64_t events,
                    Clock::time_point deadline, bool deliver) {
  std::filesystem::remove(path);
  std::unique_ptr<ws::SqliteOutbox> store = OpenStore(path, nullptr);
  ws::Result<std::unique_ptr<ws::EventLoop>> made = ws::EventLoop::Create();
  if (!made.ok()) {
    std::fprintf(stderr, "event loop: %s\n", made.status().ToString().c_str());
    return false;
  }
  ws::EventLoop* loop = made->get();
  uint64_t next = 0, acked = 0, failed = 0;
  int running = producers;
  std::vector<double> lat;
  lat.reserve(static_cast<size_t>(events));

  // The consumer (loop thread only): one lease at a time; a commit that
  // lands while one is out makes it lease again when it returns.
  uint64_t delivered = 0, ack_failures = 0;
  bool leasing = false, lease_again = false;
  std::function<void()> lease_next = [&] {
    if (leasing) {
      lease_again = true;
      return;
    }
    leasing = true;
    lease_again = false;
    store->Lease(1024, [&](ws::Result<std::vector<ws::LeasedEvent>> r) {
      loop->Post([&, r = std::move(r)]() mutable {
        leasing = false;
        if (r.ok() && !r->empty()) {
          std::vector<int64_t> seqs;
          seqs.reserve(r->size());
          for (const auto& e : *r) seqs.push_back(e.sequence);
          delivered += seqs.size();
          store->Ack(std::move(seqs), [&](ws::Status s) {
            if (!s.ok()) loop->Post([&] { ++ack_failures; });
          });
          lease_next();  // a full lease may have left more behind
        } else if (lease_again) {
          lease_next();
        }
      });
    });
  };
  if (deliver) store->SetAppendListener([&] { loop->Post([&] { lease_next(); }); });

  const uint64_t commits0 = store->Stats().commits;
  const uint64_t appended0 = store->Stats().appended_events;
  uint64_t wb0 = WriteBytes();
  auto t0 = Clock::now();
  std::function<void()> start_one = [&] {
    if (next >= events || Clock::now() > deadline) {
      if (--running == 0) loop->Stop();
      return;
    }
    std::vector<ws::OutboxEntry> one;
    one.push_back(MakeEncodedEntry(next++));
    auto s0 = Clock::now();
    store->Append(std::move(one), [&, s0](ws::Result<std::vector<ws::AppendOutcome>> r) {
      const bool ok = r.ok();
      loop->Post([&, s0, ok] {
        lat.push_back(Seconds(Clock::now() - s0) * 1e6);
        (ok ? acked : failed) += 1;
        start_one();
      });
    });
  };
  for (int p = 0; p < producers; ++p) loop->Post(start_one);
  if (ws::Status s = loop->Run(); !s.ok()) {
    std::fprintf(stderr, "event loop: %s\n", s.ToString().c_str());
    return false;
  }
  double secs = Seconds(Clock::now() - t0);
  uint64_t wb = WriteBytes() - wb0;
  // The store's last answers may still post to the loop: close it first.
  ws::OutboxStats st = store->Stats();
  store.reset();
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<size_t>(q * static_cast<double>(lat.size())))]; };
  const uint64_t commits = st.commits - commits0;
  const char* n = name.c_str();
  std::printf("%s_producers %d\n", n, producers);
  std::printf("%s_acked %llu events\n", n, static_cast<unsigned long long>(acked));
  std::printf("%s_failed %llu events\n", n, static_cast<unsigned long long>(failed));
  std::printf("%s_rate %.0f events/s\n", n, static_cast<double>(acked) / secs);
  std::printf("%s_commits %llu\n", n, static_cast<unsigned long long>(commits));
  std::printf("%s_events_per_commit %.1f\n", n,
              commits ? static_cast<double>(st.appended_events - appended0) / static_cast<double>(commits) : 0.0);
  std::printf("%s_ack_latency_p50 %.0f us\n", n, pct(0.50));
  std::printf("%s_ack_latency_p99 %.0f us\n", n, pct(0.99));
  std::printf("%s_write_bytes_per_event %.0f bytes\n", n, acked ? static_cast<double>(wb) / static_cast<double>(acked) : 0.0);
  if (deliver) {
    std::printf("%s_delivered %llu events (ack failures %llu)\n", n, static_cast<unsigned long long>(delivered),
                static_cast<unsigned long long>(ack_failures));
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [producers] [events] [backlog] [commit_window_us]\n", argv[0]);
    return 2;
  }
  std::string dir = argv[1];
  int producers = argc > 2 ? std::atoi(argv[2]) : 64;
  uint64_t events = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 200000;
  uint64_t backlog = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1000000;
  if (argc > 5) g_commit_window_us = std::atoll(argv[5]);
  std::printf("commit_window_us %lld\n", static_cast<long long>(g_commit_window_us));
  std::filesystem::create_directories(dir);
  auto deadline = Clock::now() + kTimeLimit;

  // 1. Durable append rate: every producer appends one event at a time and
  //    waits for its acknowledgement, as an HTTP producer waits for its 202.
  {
    std::string path = dir + "/append.db";
    std::filesystem::remove(path);
    std::unique_ptr<ws::SqliteOutbox> store = OpenStore(path, nullptr);
    std::atomic<uint64_t> next{0}, acked{0}, failed{0};
    std::vector<std::vector<double>> lat(static_cast<size_t>(producers));
    uint64_t wb0 = WriteBytes();
    auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&, p] {
        // The thread's own semaphore outlives every call, so the store's
        // thread can release it after the answer without a lock (one
        // futex wake) and without racing the waiter's return.
        std::binary_semaphore answered(0);
        for (;;) {
          uint64_t n = next.fetch_add(1);
          if (n >= events || Clock::now() > deadline) return;
          std::vector<ws::OutboxEntry> one;
          one.push_back(MakeEncodedEntry(n));
          auto s0 = Clock::now();
          ws::Result<std::vector<ws::AppendOutcome>> r{ws::Status(ws::StatusCode::kInternal, "no answer")};
          store->Append(std::move(one), [&](ws::Result<std::vector<ws::AppendOutcome>> answer) {
            r = std::move(answer);
            answered.release();
          });
          answered.acquire();
          lat[static_cast<size_t>(p)].push_back(Seconds(Clock::now() - s0) * 1e6);
          (r.ok() ? acked : failed).fetch_add(1);
        }
      });
    }
    for (auto& t : threads) t.join();
    double secs = Seconds(Clock::now() - t0);
    uint64_t wb = WriteBytes() - wb0;
    ws::OutboxStats st = store->Stats();
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    auto pct = [&](double q) { return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<size_t>(q * static_cast<double>(all.size())))]; };
    size_t payload = MakeEntry(0).event.data.size();
    std::printf("append_producers %d\n", producers);
    std::printf("append_acked %llu events\n", static_cast<unsigned long long>(acked.load()));
    std::printf("append_failed %llu events\n", static_cast<unsigned long long>(failed.load()));
    std::printf("append_rate %.0f events/s\n", static_cast<double>(acked.load()) / secs);
    std::printf("append_commits %llu\n", static_cast<unsigned long long>(st.commits));
    std::printf("append_events_per_commit %.1f\n",
                st.commits ? static_cast<double>(st.appended_events) / static_cast<double>(st.commits) : 0.0);
    std::printf("append_ack_latency_p50 %.0f us\n", pct(0.50));
    std::printf("append_ack_latency_p99 %.0f us\n", pct(0.99));
    std::printf("append_write_bytes_per_event %.0f bytes\n", acked ? static_cast<double>(wb) / static_cast<double>(acked.load()) : 0.0);
    std::printf("append_write_bytes_per_payload_byte %.2f\n",
                acked ? static_cast<double>(wb) / static_cast<double>(acked.load() * payload) : 0.0);
  }

  // 1b. The same with the producers on one event loop thread.
  if (!RunLoopAppends(dir + "/append-loop.db", "loop_append", producers, events, deadline, false)) return 1;

  // 2. A large backlog: RSS while holding it, reopen time, drain rate.
  if (backlog > 0) {
    std::string path = dir + "/backlog.db";
    std::filesystem::remove(path);
    uint64_t rss_before = RssBytes();
    std::unique_ptr<ws::SqliteOutbox> store = OpenStore(path, nullptr);
    auto t0 = Clock::now();
    uint64_t filled = 0;
    constexpr uint64_t kBatch = 1000;
    while (filled < backlog && Clock::now() < deadline) {
      std::vector<ws::OutboxEntry> batch;
      for (uint64_t i = 0; i < kBatch && filled + i < backlog; ++i) batch.push_back(MakeEncodedEntry(filled + i));
      size_t n = batch.size();
      auto r = Await<ws::Result<std::vector<ws::AppendOutcome>>>(
          [&](auto done) { store->Append(std::move(batch), std::move(done)); });
      if (!r.ok()) {
        std::fprintf(stderr, "fill: %s\n", r.status().ToString().c_str());
        return 1;
      }
      filled += n;
    }
    std::printf("backlog_events %llu\n", static_cast<unsigned long long>(filled));
    std::printf("backlog_fill_rate %.0f events/s (batches of 1000)\n", static_cast<double>(filled) / Seconds(Clock::now() - t0));
    std::printf("backlog_rss_holding %.1f MiB (growth %.1f MiB)\n", static_cast<double>(RssBytes()) / 1048576.0,
                static_cast<double>(RssBytes() - rss_before) / 1048576.0);
    // The daemon gives freed heap back every 5 s (malloc_trim over every
    // arena); this process's 64 producer threads left arenas of their own.
    ws::ReleaseFreeHeap();
    std::printf("backlog_rss_holding_after_trim %.1f MiB\n", static_cast<double>(RssBytes()) / 1048576.0);
    store.reset();
    double open_ms = 0;
    store = OpenStore(path, &open_ms);
    std::printf("backlog_reopen %.1f ms\n", open_ms);
    std::printf("backlog_rss_after_reopen %.1f MiB\n", static_cast<double>(RssBytes()) / 1048576.0);

    // The wall clock set forward by a day with this backlog: the next
    // operation (a lease of one event) waits while every stored time moves.
    {
      store.reset();
      ws::FakeClock clock(ws::SystemClock().WallMicros());
      store = OpenStore(path, nullptr, &clock);
      const uint64_t wb0 = WriteBytes();
      clock.SetWallMicros(clock.WallMicros() + int64_t{86400} * 1'000'000);
      auto s0 = Clock::now();
      auto leased = Await<ws::Result<std::vector<ws::LeasedEvent>>>(
          [&](auto done) { store->Lease(1, std::move(done)); });
      const double ms = Seconds(Clock::now() - s0) * 1000;
      const ws::OutboxStats st = store->Stats();
      if (!leased.ok() || st.clock_steps != 1 || st.clock_shift_pending) {
        std::fprintf(stderr, "clock shift: lease %s, %llu steps, pending %d\n", leased.status().ToString().c_str(),
                     static_cast<unsigned long long>(st.clock_steps), st.clock_shift_pending ? 1 : 0);
        return 1;
      }
      std::printf("backlog_clock_shift %.0f ms\n", ms);
      std::printf("backlog_clock_shift_write_bytes_per_event %.0f bytes\n",
                  static_cast<double>(WriteBytes() - wb0) / static_cast<double>(filled));
      store.reset();
      store = OpenStore(path, nullptr);
    }

    auto d0 = Clock::now();
    uint64_t drained = 0;
    while (drained < filled && Clock::now() < deadline) {
      auto leased = Await<ws::Result<std::vector<ws::LeasedEvent>>>(
          [&](auto done) { store->Lease(1000, std::move(done)); });
      if (!leased.ok() || leased->empty()) break;
      std::vector<int64_t> seqs;
      for (const auto& e : *leased) seqs.push_back(e.sequence);
      ws::Status s = AwaitStatus([&](ws::Outbox::StatusDone done) { store->Ack(std::move(seqs), std::move(done)); });
      if (!s.ok()) {
        std::fprintf(stderr, "ack: %s\n", s.ToString().c_str());
        return 1;
      }
      drained += leased->size();
    }
    std::printf("backlog_drain_rate %.0f events/s (lease+ack 1000 at a time)\n",
                static_cast<double>(drained) / Seconds(Clock::now() - d0));
    std::printf("backlog_rss_after_drain %.1f MiB\n", static_cast<double>(RssBytes()) / 1048576.0);
  }

  // 3. The appends of 1b with a consumer taking the events as the link
  //    does. Last, so that the heap it leaves does not count in the
  //    backlog's RSS above.
  if (!RunLoopAppends(dir + "/append-delivering.db", "delivering_append", producers, events, deadline, true)) return 1;
  return 0;
}
