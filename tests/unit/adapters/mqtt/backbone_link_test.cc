// BackboneLink against real parts: a mosquitto broker on a free loopback
// port, the SQLite outbox in a temporary folder, and mosquitto_sub as the
// subscriber on the backbone side. What is checked is what a user of the
// gateway notices: events arrive (once, in order, or at least once across a
// broker crash), leave the outbox, refused ones land in the dead-letter
// queue, and the presence topic tells whether the node is there.
//
// No timing assertions: every wait is for a condition, with a generous bound.
#include "adapters/mqtt/backbone_link.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "adapters/sqlite/sqlite_outbox.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

using testing::MosquittoBroker;
using testing::RunCommand;
using testing::Slurp;
using testing::Subprocess;
using testing::TempDir;

constexpr int kLongWaitMs = 90'000;
constexpr char kPrefix[] = "waystation/lab/gw1";

template <typename F>
bool WaitUntil(F probe, int timeout_ms = kLongWaitMs) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (probe()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return probe();
}

// An EventLoop running on its own thread, as the daemon's main loop does.
class LoopThread {
 public:
  LoopThread() {
    auto loop = EventLoop::Create();
    if (!loop.ok()) std::abort();
    loop_ = std::move(loop).value();
    thread_ = std::thread([this] {
      Status s = loop_->Run();
      if (!s.ok()) std::abort();
    });
  }
  ~LoopThread() {
    loop_->Stop();
    thread_.join();
  }
  EventLoop* loop() { return loop_.get(); }

  // Runs `fn` on the loop thread and returns its result.
  template <typename F>
  auto Call(F fn) -> decltype(fn()) {
    using R = decltype(fn());
    std::promise<R> done;
    std::future<R> result = done.get_future();
    loop_->Post([&] {
      if constexpr (std::is_void_v<R>) {
        fn();
        done.set_value();
      } else {
        done.set_value(fn());
      }
    });
    return result.get();
  }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

// Holds the loop thread inside one task until Release(): nothing of the link
// runs meanwhile. Lets a test change the world (kill and restart the broker,
// bring a subscriber up) at a point where the link cannot react yet.
class LoopGate {
 public:
  explicit LoopGate(EventLoop* loop) : loop_(loop) {}
  ~LoopGate() { Release(); }
  // Blocks the loop now (returns once the loop is held).
  void HoldNow() {
    loop_->Post([this] { Hold(); });
    held_.get_future().wait();
  }
  // Blocks the loop at the first check (every millisecond, on the loop
  // thread) where `when` is true, or after `timeout_ms` at the latest;
  // returns once the loop is held. The caller checks what it waited for.
  void HoldWhen(std::function<bool()> when, int timeout_ms = kLongWaitMs) {
    when_ = std::move(when);
    deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    loop_->Post([this] { Check(); });
    held_.get_future().wait();
  }
  void Release() {
    if (!released_) {
      released_ = true;
      release_.set_value();
    }
  }

 private:
  void Check() {
    if (when_() || std::chrono::steady_clock::now() >= deadline_) {
      Hold();
    } else {
      loop_->AddTimer(1, [this] { Check(); });
    }
  }
  void Hold() {
    std::future<void> go = release_.get_future();
    held_.set_value();
    go.wait();
  }

  EventLoop* loop_;
  std::function<bool()> when_;
  std::promise<void> held_;
  std::promise<void> release_;
  std::chrono::steady_clock::time_point deadline_;
  bool released_ = false;
};

// mosquitto_sub writing "topic \t content-type \t user-properties \t payload"
// lines to a file.
class Subscriber {
 public:
  Subscriber(uint16_t port, const std::string& path, bool mqtt5 = true)
      : port_(port),
        path_(path),
        proc_(std::make_unique<Subprocess>(
            std::vector<std::string>{"mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(port), "-V",
                                     mqtt5 ? "mqttv5" : "mqttv311", "-q", "1", "-t", "waystation/#", "-F",
                                     "%t\t%C\t%P\t%p"},
            path)) {}

  // True once the subscription is live: a marker published after it shows up.
  bool WaitSubscribed() {
    const std::string marker = "sync-" + std::to_string(++markers_);
    return WaitUntil(
        [&] {
          if (Slurp(path_).find(marker) != std::string::npos) return true;
          RunCommand({"mosquitto_pub", "-h", "127.0.0.1", "-p", std::to_string(port_), "-q", "1", "-t",
                      "waystation/sync", "-m", marker},
                     nullptr, 10000);
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
          return Slurp(path_).find(marker) != std::string::npos;
        },
        60000);
  }

  struct Message {
    std::string topic, content_type, user_properties, payload;
  };
  // Messages on event topics, in arrival order (a line still being written
  // is left for the next call).
  std::vector<Message> Events() const {
    std::vector<Message> out;
    std::string text = Slurp(path_);
    text.erase(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      std::vector<std::string> f;
      size_t start = 0;
      for (int i = 0; i < 3; ++i) {
        size_t tab = line.find('\t', start);
        if (tab == std::string::npos) break;
        f.push_back(line.substr(start, tab - start));
        start = tab + 1;
      }
      if (f.size() != 3) continue;
      if (f[0].find("/events/") == std::string::npos) continue;
      out.push_back({f[0], f[1], f[2], line.substr(start)});
    }
    return out;
  }
  std::string Raw() const { return Slurp(path_); }

 private:
  uint16_t port_;
  std::string path_;
  int markers_ = 0;
  std::unique_ptr<Subprocess> proc_;
};

// Event number n carries {"n":n} as data, in both modes.
int EventNumber(const std::string& payload) {
  size_t at = payload.find("{\"n\":");
  if (at == std::string::npos) return -1;
  return std::atoi(payload.c_str() + at + 5);
}

Event MakeEvent(int n) {
  Event e;
  e.id = "e" + std::to_string(n);
  e.source = "/test/line";
  e.type = "com.acme.test";
  e.SetAttribute("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  e.data_kind = DataKind::kJson;
  e.data = "{\"n\":" + std::to_string(n) + "}";
  return e;
}

std::string RetainedState(uint16_t port) {
  std::string out;
  int rc = RunCommand({"mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(port), "-t",
                       std::string(kPrefix) + "/state", "-C", "1", "-W", "3", "-F", "%r %p"},
                      &out, 20000);
  return rc == 0 ? out : "";
}

class BackboneLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteOutboxOptions o;
    o.path = dir_.File("var/outbox.db");
    o.commit_window_us = 500;
    auto outbox = SqliteOutbox::Open(o);
    ASSERT_TRUE(outbox.ok()) << outbox.status().ToString();
    outbox_ = std::move(outbox).value();
    // As the daemon wires it: the store's thread posts to the loop, where the
    // link lives.
    EventLoop* loop = loop_.loop();
    outbox_->SetAppendListener([this, loop] {
      loop->Post([this] {
        if (link_) link_->NotifyAppended();
      });
    });
  }

  void TearDown() override {
    if (link_) DestroyLink();
  }

  BackboneOptions Options(uint16_t port) const {
    BackboneOptions o;
    o.endpoints = {EndpointConfig{"primary", "127.0.0.1", port}};
    o.client_id = "waystation-gw1";
    o.node_id = "gw1";
    o.topic_prefix = kPrefix;
    o.version = "0.1.0-test";
    o.boot_id = "boot-1";
    o.inflight_window = 16;
    o.reconnect_min_ms = 50;
    o.reconnect_max_ms = 400;
    return o;
  }

  void StartLink(BackboneOptions o) {
    Status s = loop_.Call([&]() -> Status {
      auto link = BackboneLink::Create(loop_.loop(), outbox_.get(), std::move(o));
      if (!link.ok()) return link.status();
      link_ = std::move(link).value();
      link_->Start();
      return Status::Ok();
    });
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void DestroyLink() {
    loop_.Call([&] { link_.reset(); });
  }

  BackboneStats LinkStats() {
    return loop_.Call([&] { return link_->Stats(); });
  }

  bool WaitConnected() {
    return WaitUntil([&] { return LinkStats().state == LinkState::kConnected; });
  }

  // Appends events first..first+count-1 (one transaction) on `topic_of(n)`.
  void Append(int first, int count, const std::function<std::string(int)>& topic_of = {}) {
    std::vector<OutboxEntry> entries;
    for (int n = first; n < first + count; ++n) {
      OutboxEntry e;
      e.event = MakeEvent(n);
      e.topic = topic_of ? topic_of(n) : std::string(kPrefix) + "/events/com.acme.test";
      e.stream = "line";
      entries.push_back(std::move(e));
    }
    std::promise<Result<std::vector<AppendOutcome>>> done;
    auto result = done.get_future();
    outbox_->Append(std::move(entries), [&](Result<std::vector<AppendOutcome>> r) { done.set_value(std::move(r)); });
    auto r = result.get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->size(), static_cast<size_t>(count));
  }

  void AppendEntry(OutboxEntry entry) {
    std::vector<OutboxEntry> entries;
    entries.push_back(std::move(entry));
    std::promise<Status> done;
    auto result = done.get_future();
    outbox_->Append(std::move(entries), [&](Result<std::vector<AppendOutcome>> r) { done.set_value(r.status()); });
    Status s = result.get();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  uint64_t Backlog() const {
    OutboxStats st = outbox_->Stats();
    uint64_t n = 0;
    for (const ClassBacklog& b : st.backlog) n += b.count;
    return n;
  }

  // Event number -> how many times it arrived.
  static std::map<int, int> Counts(const std::vector<Subscriber::Message>& messages) {
    std::map<int, int> counts;
    for (const auto& m : messages) ++counts[EventNumber(m.payload)];
    return counts;
  }

  static bool AllArrived(const std::vector<Subscriber::Message>& messages, int first, int last) {
    std::map<int, int> counts = Counts(messages);
    for (int n = first; n <= last; ++n) {
      if (counts[n] == 0) return false;
    }
    return true;
  }

  TempDir dir_;
  LoopThread loop_;
  std::unique_ptr<SqliteOutbox> outbox_;
  std::unique_ptr<BackboneLink> link_;  // lives on the loop thread
};

TEST(BackboneLinkBasics, CreateRefusesIncompleteOptionsAndReportsTheLibraryVersion) {
  EXPECT_EQ(MosquittoLibraryVersion().rfind("2.", 0), 0u) << MosquittoLibraryVersion();
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  TempDir dir;
  SqliteOutboxOptions so;
  so.path = dir.File("o.db");
  auto outbox = SqliteOutbox::Open(so);
  ASSERT_TRUE(outbox.ok());

  BackboneOptions o;
  o.client_id = "c";
  o.topic_prefix = "waystation/a/b";
  auto no_endpoint = BackboneLink::Create(loop->get(), outbox->get(), o);
  EXPECT_EQ(no_endpoint.status().code(), StatusCode::kInvalidArgument);

  o.endpoints = {EndpointConfig{"x", "127.0.0.1", 1883}};
  o.topic_prefix = "waystation/+/b";
  EXPECT_EQ(BackboneLink::Create(loop->get(), outbox->get(), o).status().code(), StatusCode::kInvalidArgument);
  o.topic_prefix = "waystation/a/b";
  o.inflight_window = 0;
  EXPECT_EQ(BackboneLink::Create(loop->get(), outbox->get(), o).status().code(), StatusCode::kInvalidArgument);
  o.inflight_window = 10;
  EXPECT_TRUE(BackboneLink::Create(loop->get(), outbox->get(), o).ok());

  EXPECT_EQ(LinkStateName(LinkState::kConnected), "connected");
  EXPECT_EQ(LinkStateName(LinkState::kStopped), "stopped");
}

TEST_F(BackboneLinkTest, DeliversEventsOnceInOrderAndEmptiesTheOutbox) {
  MosquittoBroker broker;
  ASSERT_TRUE(broker.running());
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  StartLink(Options(broker.port()));
  ASSERT_TRUE(WaitConnected()) << Slurp(broker.log_path());

  Append(1, 100);
  Append(101, 100);
  ASSERT_TRUE(WaitUntil([&] { return AllArrived(sub.Events(), 1, 200); })) << sub.Raw();
  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; })) << "backlog " << Backlog();

  // No reconnect happened, so no duplicates; arrival order is append order.
  auto events = sub.Events();
  ASSERT_EQ(events.size(), 200u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(EventNumber(events[i].payload), static_cast<int>(i + 1));
  BackboneStats st = LinkStats();
  EXPECT_EQ(st.acked, 200u);
  EXPECT_EQ(st.dead_lettered, 0u);
  EXPECT_EQ(st.connects, 1u);
  EXPECT_EQ(st.endpoint, "primary");
  EXPECT_EQ(outbox_->Stats().removed_delivered, 200u);
}

TEST_F(BackboneLinkTest, EventsAppendedWhileTheBrokerIsDownArriveInOrderOnceItStarts) {
  MosquittoBroker broker;
  broker.Kill();
  StartLink(Options(broker.port()));
  Append(1, 150);
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().connect_failures >= 2; }));
  EXPECT_EQ(Backlog(), 150u);

  // The link must not reach the broker before the subscriber does.
  auto gate = std::make_unique<LoopGate>(loop_.loop());
  gate->HoldNow();
  ASSERT_TRUE(broker.Start());
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  gate.reset();

  ASSERT_TRUE(WaitUntil([&] { return AllArrived(sub.Events(), 1, 150); })) << sub.Raw();
  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; }));
  auto events = sub.Events();
  ASSERT_EQ(events.size(), 150u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(EventNumber(events[i].payload), static_cast<int>(i + 1));
  EXPECT_GE(LinkStats().connect_failures, 2u);
}

TEST_F(BackboneLinkTest, BrokerCrashMidStreamLosesNothingAndDuplicatesStayWithinTheWindow) {
  MosquittoBroker broker;
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  BackboneOptions o = Options(broker.port());
  o.inflight_window = 8;
  StartLink(o);
  ASSERT_TRUE(WaitConnected());
  constexpr int kTotal = 3000;
  Append(1, kTotal);

  // Hold the loop at the point where 200 events are acknowledged and the
  // rest are still to go, then crash the broker under it.
  LoopGate gate(loop_.loop());
  BackboneStats at_crash;
  gate.HoldWhen([&] {
    at_crash = link_->Stats();
    return at_crash.acked >= 200;
  });
  ASSERT_GE(at_crash.acked, 200u) << "the link did not get going";
  broker.Kill();
  ASSERT_TRUE(broker.Start());
  // mosquitto_sub reconnects and subscribes again by itself; the link may
  // go on only once it has.
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  gate.Release();

  ASSERT_LT(at_crash.acked, static_cast<uint64_t>(kTotal)) << "the crash was meant to happen mid-stream";
  ASSERT_TRUE(WaitUntil([&] { return AllArrived(sub.Events(), 1, kTotal); }))
      << "missing events; link log and broker log:\n" << Slurp(broker.log_path());
  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; }));

  std::map<int, int> counts = Counts(sub.Events());
  int duplicates = 0;
  for (const auto& [n, c] : counts) {
    EXPECT_GE(n, 1);
    EXPECT_LE(n, kTotal);
    duplicates += c - 1;
  }
  EXPECT_LE(duplicates, 8) << "duplicates beyond the in-flight window";
  BackboneStats st = LinkStats();
  EXPECT_GE(st.connects, 2u);
  EXPECT_GE(st.disconnects, 1u);
  EXPECT_EQ(st.dead_lettered, 0u);
}

TEST_F(BackboneLinkTest, Mqtt5BinaryModeCarriesAttributesAsUserPropertiesAndContentType) {
  MosquittoBroker broker;
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  StartLink(Options(broker.port()));
  Append(1, 1);
  OutboxEntry bin;
  bin.event.id = "bin-1";
  bin.event.source = "/cam/2";
  bin.event.type = "com.acme.frame";
  bin.event.SetAttribute("datacontenttype", "application/octet-stream");
  bin.event.SetAttribute("subject", "frame-7");
  bin.event.data_kind = DataKind::kBinary;
  bin.event.data = "raw-bytes";
  bin.topic = std::string(kPrefix) + "/events/com.acme.frame";
  AppendEntry(std::move(bin));

  ASSERT_TRUE(WaitUntil([&] { return sub.Events().size() >= 2; })) << sub.Raw();
  auto events = sub.Events();
  const auto& json = events[0];
  EXPECT_EQ(json.topic, std::string(kPrefix) + "/events/com.acme.test");
  EXPECT_EQ(json.content_type, "application/json");
  EXPECT_EQ(json.payload, "{\"n\":1}");
  for (const char* want : {"specversion:1.0", "id:e1", "source:/test/line", "type:com.acme.test",
                           "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) {
    EXPECT_NE(json.user_properties.find(want), std::string::npos) << want << " in " << json.user_properties;
  }
  const auto& frame = events[1];
  EXPECT_EQ(frame.content_type, "application/octet-stream");
  EXPECT_EQ(frame.payload, "raw-bytes");
  EXPECT_NE(frame.user_properties.find("id:bin-1"), std::string::npos) << frame.user_properties;
  EXPECT_NE(frame.user_properties.find("subject:frame-7"), std::string::npos) << frame.user_properties;
  EXPECT_EQ(frame.user_properties.find("datacontenttype"), std::string::npos) << frame.user_properties;
}

TEST_F(BackboneLinkTest, Mqtt311StructuredModeCarriesCloudEventsJson) {
  MosquittoBroker broker;
  Subscriber sub(broker.port(), dir_.File("sub.out"), /*mqtt5=*/false);
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  BackboneOptions o = Options(broker.port());
  o.protocol = MqttProtocol::kMqtt311;
  StartLink(o);
  Append(1, 1);
  OutboxEntry bin;
  bin.event.id = "bin-1";
  bin.event.source = "/cam/2";
  bin.event.type = "com.acme.frame";
  bin.event.data_kind = DataKind::kBinary;
  bin.event.data = "foobar";
  bin.topic = std::string(kPrefix) + "/events/com.acme.frame";
  AppendEntry(std::move(bin));

  ASSERT_TRUE(WaitUntil([&] { return sub.Events().size() >= 2; })) << sub.Raw();
  auto events = sub.Events();
  EXPECT_EQ(events[0].payload,
            R"({"specversion":"1.0","id":"e1","source":"/test/line","type":"com.acme.test",)"
            R"("traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","data":{"n":1}})");
  EXPECT_EQ(events[1].payload,
            R"({"specversion":"1.0","id":"bin-1","source":"/cam/2","type":"com.acme.frame","data_base64":"Zm9vYmFy"})");
  EXPECT_EQ(events[0].user_properties, "");  // 3.1.1 has no properties
  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; }));
}

TEST_F(BackboneLinkTest, RetainedOnlineStateOnConnectAndOfflineAfterStop) {
  MosquittoBroker broker;
  Append(1, 3);  // the birth message reports the backlog at connect time
  StartLink(Options(broker.port()));
  std::string state;
  ASSERT_TRUE(WaitUntil([&] {
    state = RetainedState(broker.port());
    return state.find("online") != std::string::npos;
  })) << state;
  // The first subscriber may have arrived before the birth message and got it
  // live; one that arrives now must get it as a retained message.
  state = RetainedState(broker.port());
  EXPECT_EQ(state.rfind("1 ", 0), 0u) << "not retained: " << state;
  EXPECT_NE(state.find(R"("node":"gw1")"), std::string::npos) << state;
  EXPECT_NE(state.find(R"("version":"0.1.0-test")"), std::string::npos) << state;
  EXPECT_NE(state.find(R"("boot_id":"boot-1")"), std::string::npos) << state;
  EXPECT_NE(state.find(R"("backlog":)"), std::string::npos) << state;
  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; }));

  std::promise<void> stopped;
  loop_.Call([&] { link_->Stop([&] { stopped.set_value(); }); });
  ASSERT_EQ(stopped.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  EXPECT_EQ(LinkStats().state, LinkState::kStopped);
  state = RetainedState(broker.port());
  EXPECT_EQ(state.rfind("1 ", 0), 0u) << state;
  EXPECT_NE(state.find(R"("state":"offline")"), std::string::npos) << state;
  EXPECT_NE(state.find(R"("node":"gw1")"), std::string::npos) << state;
}

TEST_F(BackboneLinkTest, LastWillSaysOfflineWhenTheConnectionDropsWithoutStop) {
  MosquittoBroker broker;
  StartLink(Options(broker.port()));
  ASSERT_TRUE(WaitUntil([&] { return RetainedState(broker.port()).find("online") != std::string::npos; }));
  // Destroying the link closes its socket without a DISCONNECT, as a crash
  // or a cut cable would: the broker publishes the Will.
  DestroyLink();
  std::string state;
  ASSERT_TRUE(WaitUntil([&] {
    state = RetainedState(broker.port());
    return state.find("offline") != std::string::npos;
  })) << state << Slurp(broker.log_path());
  EXPECT_NE(state.find(R"("node":"gw1")"), std::string::npos) << state;
}

TEST_F(BackboneLinkTest, StopWhileTheBrokerIsDownFinishesAndKeepsTheEvents) {
  MosquittoBroker broker;
  broker.Kill();
  StartLink(Options(broker.port()));
  Append(1, 5);
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().connect_failures >= 1; }));
  std::promise<void> stopped;
  loop_.Call([&] { link_->Stop([&] { stopped.set_value(); }); });
  ASSERT_EQ(stopped.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  EXPECT_EQ(LinkStats().state, LinkState::kStopped);
  EXPECT_EQ(Backlog(), 5u);
}

TEST_F(BackboneLinkTest, EventsTheBrokerRefusesAreDeadLetteredAndTheRestDelivered) {
  TempDir acl_dir;
  std::string acl = acl_dir.File("acl");
  std::ofstream(acl) << "topic write waystation/+/+/events/allowed/#\n"
                        "topic write waystation/+/+/state\n"
                        "topic write waystation/sync\n"
                        "topic read #\n";
  // Started as root, mosquitto reads the ACL file after dropping to its own
  // user: the folder and file must be readable to others.
  std::filesystem::permissions(acl_dir.path(), std::filesystem::perms(0755));
  std::filesystem::permissions(acl, std::filesystem::perms(0644));
  // mosquitto 2.0.11 drops a client after every refused QoS 1 PUBLISH while
  // max_queued_messages is 0 (as the shared test broker sets it): a broker
  // quirk that would blur what this test looks at, so lift that limit here.
  MosquittoBroker broker("acl_file " + acl + "\nmax_queued_messages 1000\n");
  ASSERT_TRUE(broker.running());
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw() << Slurp(broker.log_path());
  StartLink(Options(broker.port()));
  // Odd events to an allowed topic, even ones to a refused topic.
  Append(1, 40, [](int n) {
    return std::string(kPrefix) + (n % 2 == 1 ? "/events/allowed/com.acme.test" : "/events/denied/com.acme.test");
  });

  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; })) << "backlog " << Backlog();
  OutboxStats os = outbox_->Stats();
  EXPECT_EQ(os.removed_dead_lettered, 20u);
  EXPECT_EQ(os.dlq_count, 20u);
  EXPECT_EQ(os.removed_delivered, 20u);
  ASSERT_TRUE(WaitUntil([&] {
    std::map<int, int> counts = Counts(sub.Events());
    for (int n = 1; n < 40; n += 2) {
      if (counts[n] == 0) return false;
    }
    return true;
  })) << sub.Raw();
  auto events = sub.Events();
  EXPECT_EQ(events.size(), 20u);
  for (const auto& m : events) EXPECT_EQ(EventNumber(m.payload) % 2, 1) << m.topic;
  BackboneStats st = LinkStats();
  EXPECT_EQ(st.connects, 1u);
  EXPECT_EQ(st.dead_lettered, 20u);
  EXPECT_EQ(st.acked, 20u);
  EXPECT_EQ(st.transient_failures, 0u);
}

TEST_F(BackboneLinkTest, EventsOverTheBrokersMaximumPacketSizeAreDeadLetteredBeforeSending) {
  MosquittoBroker broker("max_packet_size 2048\n");
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  StartLink(Options(broker.port()));
  Append(1, 1);
  OutboxEntry big;
  big.event = MakeEvent(2);
  big.event.data = "{\"n\":2,\"pad\":\"" + std::string(4000, 'x') + "\"}";
  big.topic = std::string(kPrefix) + "/events/com.acme.test";
  AppendEntry(std::move(big));
  Append(3, 1);

  ASSERT_TRUE(WaitUntil([&] { return Backlog() == 0; }));
  EXPECT_EQ(outbox_->Stats().dlq_count, 1u);
  ASSERT_TRUE(WaitUntil([&] { return AllArrived(sub.Events(), 3, 3); })) << sub.Raw();
  EXPECT_EQ(Counts(sub.Events())[2], 0);
  EXPECT_EQ(Counts(sub.Events())[1], 1);
  BackboneStats st = LinkStats();
  EXPECT_EQ(st.broker_max_packet, 2048u);
  EXPECT_EQ(st.dead_lettered, 1u);
  EXPECT_EQ(st.connects, 1u);  // refused before sending: the broker never saw it
}

TEST_F(BackboneLinkTest, FailsOverToTheNextEndpointWhenTheFirstIsUnreachable) {
  MosquittoBroker broker;
  Subscriber sub(broker.port(), dir_.File("sub.out"));
  ASSERT_TRUE(sub.WaitSubscribed()) << sub.Raw();
  BackboneOptions o = Options(broker.port());
  o.endpoints = {EndpointConfig{"dead", "127.0.0.1", testing::FreeLoopbackPort()},
                 EndpointConfig{"alive", "127.0.0.1", broker.port()}};
  StartLink(o);
  Append(1, 10);
  ASSERT_TRUE(WaitUntil([&] { return AllArrived(sub.Events(), 1, 10); })) << sub.Raw();
  BackboneStats st = LinkStats();
  EXPECT_EQ(st.endpoint, "alive");
  EXPECT_GE(st.failovers, 1u);
  EXPECT_GE(st.connect_failures, 1u);
}

}  // namespace
}  // namespace ws
