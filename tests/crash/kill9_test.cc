// kill -9 of the real daemon under load, again and again, and then proof that
// nothing acknowledged was lost. A real mosquitto broker is started and
// killed, so the backbone link is down and events pile up in the outbox.
// Producers (keep-alive HTTP/1.1 clients on plain sockets) post structured
// CloudEvents with unique ids; each records the ids answered 202 and retries
// an id whose answer never came. The daemon is killed with SIGKILL at a random
// moment 50-500 ms into the load and restarted, many times. Then the broker
// comes back with a subscriber on it, the daemon drains its backlog (killed a
// few more times while it delivers), and every id that got a 202 must have
// reached the subscriber, each producer's events in the order they were
// acknowledged. Duplicates are allowed, bounded by restarts x in-flight
// window, and reported.
//
// Under an emulator the test makes fewer restarts and says so.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "platform/unique_fd.h"
#include "tests/support/test_support.h"

namespace ws::testing {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kProducers = 4;
constexpr int kMaxEventsPerProducer = 100000;
constexpr uint32_t kInflightWindow = 64;
constexpr const char* kNode = "gw-k9";
constexpr const char* kSite = "lab";

bool UnderEmulator() { return !EmulatorPrefix().empty(); }

void SleepMs(int ms) { std::this_thread::sleep_for(milliseconds(ms)); }

int64_t MsSince(SteadyClock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(SteadyClock::now() - start).count();
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

// HTTP/1.1 with keep-alive over one loopback TCP connection. Any failure
// (refused, reset, timeout, malformed answer) closes the connection; the next
// request connects again.
class HttpClient {
 public:
  explicit HttpClient(uint16_t port) : port_(port) {}

  // Returns the status code, or -1 when no complete answer arrived.
  int Request(const std::string& method, const std::string& path, const std::string& content_type,
              const std::string& body, std::string* answer_body, int timeout_ms) {
    const auto deadline = SteadyClock::now() + milliseconds(timeout_ms);
    if (!fd_.valid() && !Connect()) return -1;
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    if (!content_type.empty()) req += "Content-Type: " + content_type + "\r\n";
    if (method == "POST") req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    req += "\r\n" + body;
    if (!SendAll(req, deadline)) return Fail();
    int status = -1;
    bool close_after = false;
    if (!ReadResponse(deadline, &status, answer_body, &close_after)) return Fail();
    if (close_after) fd_.Reset();
    return status;
  }

 private:
  int Fail() {
    fd_.Reset();
    buffer_.clear();
    return -1;
  }

  bool Connect() {
    buffer_.clear();
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port_);
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
    fd_ = std::move(fd);
    return true;
  }

  int RemainingMs(SteadyClock::time_point deadline) const {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
  }

  bool SendAll(const std::string& data, SteadyClock::time_point deadline) {
    size_t off = 0;
    while (off < data.size()) {
      pollfd p{fd_.get(), POLLOUT, 0};
      if (poll(&p, 1, RemainingMs(deadline)) <= 0) return false;
      const ssize_t n = send(fd_.get(), data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads more bytes into buffer_; false on EOF, error or timeout.
  bool ReadMore(SteadyClock::time_point deadline) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (poll(&p, 1, RemainingMs(deadline)) <= 0) return false;
    char chunk[4096];
    const ssize_t n = recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  bool ReadResponse(SteadyClock::time_point deadline, int* status, std::string* body, bool* close_after) {
    size_t head_end;
    while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (buffer_.size() > 65536 || !ReadMore(deadline)) return false;
    }
    const std::string head = buffer_.substr(0, head_end);
    buffer_.erase(0, head_end + 4);
    if (head.compare(0, 9, "HTTP/1.1 ") != 0 || head.size() < 12) return false;
    *status = std::atoi(head.c_str() + 9);
    size_t content_length = 0;
    bool chunked = false;
    std::istringstream lines(head);
    std::string line;
    std::getline(lines, line);  // status line
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      const std::string name = Lower(line.substr(0, colon));
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      if (name == "content-length") content_length = static_cast<size_t>(std::strtoull(value.c_str(), nullptr, 10));
      if (name == "transfer-encoding" && Lower(value).find("chunked") != std::string::npos) chunked = true;
      if (name == "connection" && Lower(value).find("close") != std::string::npos) *close_after = true;
    }
    body->clear();
    if (!chunked) {
      while (buffer_.size() < content_length) {
        if (!ReadMore(deadline)) return false;
      }
      body->assign(buffer_, 0, content_length);
      buffer_.erase(0, content_length);
      return true;
    }
    for (;;) {
      size_t eol;
      while ((eol = buffer_.find("\r\n")) == std::string::npos) {
        if (!ReadMore(deadline)) return false;
      }
      const size_t size = static_cast<size_t>(std::strtoull(buffer_.substr(0, eol).c_str(), nullptr, 16));
      while (buffer_.size() < eol + 2 + size + 2) {
        if (!ReadMore(deadline)) return false;
      }
      body->append(buffer_, eol + 2, size);
      buffer_.erase(0, eol + 2 + size + 2);
      if (size == 0) return true;
    }
  }

  uint16_t port_;
  UniqueFd fd_;
  std::string buffer_;  // bytes received past the last answer
};

// What one producer sent and what came back.
struct ProducerLog {
  std::vector<std::string> acknowledged;  // ids answered 202, in answer order
  std::vector<int64_t> sequences;         // the sequence of each, same order
  std::set<std::string> attempted;        // every id ever posted
  int64_t no_answer = 0;                  // requests cut off (daemon killed or down)
  int64_t duplicate_answers = 0;          // 202s for a retried id that was already stored
  int64_t unavailable = 0;                // 503: retried
  std::map<int, int64_t> unexpected;      // any other status
  std::string first_unexpected_body;
};

int64_t SequenceIn(const std::string& body) {
  const size_t at = body.find("\"sequence\":");
  if (at == std::string::npos) return -1;
  return std::strtoll(body.c_str() + at + 11, nullptr, 10);
}

// Posts events with fresh ids until told to stop; an id whose answer did
// not arrive is posted again (same id, same content) until it gets one, as
// a careful producer would.
void Produce(int index, uint16_t port, const std::atomic<bool>& stop, SteadyClock::time_point deadline,
             ProducerLog* log) {
  HttpClient client(port);
  const std::string type = "com.acme.kill9.p" + std::to_string(index);
  int n = 0;
  while (!stop.load() && SteadyClock::now() < deadline && n < kMaxEventsPerProducer) {
    const std::string id = "k9-p" + std::to_string(index) + "-" + std::to_string(n);
    std::string body = R"({"specversion":"1.0","id":")";
    body += id;
    body += R"(","source":"/kill9/p)";
    body += std::to_string(index);
    body += R"(","type":")";
    body += type;
    body += R"(","data":{"n":)";
    body += std::to_string(n);
    body += "}}";
    log->attempted.insert(id);
    std::string answer;
    const int status = client.Request("POST", "/v1/events", "application/cloudevents+json", body, &answer, 10000);
    if (status == 202) {
      log->acknowledged.push_back(id);
      log->sequences.push_back(SequenceIn(answer));
      if (answer.find("\"duplicate\":true") != std::string::npos) ++log->duplicate_answers;
      ++n;
    } else if (status < 0) {
      ++log->no_answer;
      SleepMs(5);
    } else if (status == 503) {
      ++log->unavailable;
      SleepMs(5);
    } else {
      if (log->unexpected.empty()) log->first_unexpected_body = answer;
      ++log->unexpected[status];
      ++n;  // a refusal is final; it must not be retried forever
    }
  }
}

// Ids that were acknowledged but never arrived.
std::vector<std::string> MissingIds(const std::vector<std::string>& acknowledged,
                                    const std::map<std::string, int64_t>& arrived) {
  std::vector<std::string> missing;
  for (const std::string& id : acknowledged) {
    if (arrived.count(id) == 0) missing.push_back(id);
  }
  return missing;
}

// One subscriber output line: "topic|key:value key:value ...". Returns the
// `id` user property of event messages, "" for anything else.
std::string EventIdOf(const std::string& line) {
  const size_t bar = line.find('|');
  if (bar == std::string::npos) return "";
  if (line.substr(0, bar).find("/events/") == std::string::npos) return "";
  std::istringstream props(line.substr(bar + 1));
  std::string prop;
  while (props >> prop) {
    if (prop.compare(0, 3, "id:") == 0) return prop.substr(3);
  }
  return "";
}

class Kill9Test : public ::testing::Test {
 protected:
  void WriteConfig() {
    api_port_ = FreeLoopbackPort();
    config_ = dir_.File("waystation.json");
    std::ofstream f(config_);
    f << R"({
  "node": { "id": ")"
      << kNode << R"(", "site": ")" << kSite << R"(" },
  "storage": { "path": ")"
      << dir_.File("var/outbox.db") << R"(" },
  "api": { "listen": ["127.0.0.1:)"
      << api_port_ << R"("] },
  "backbone": { "endpoints": [ { "name": "local", "host": "127.0.0.1", "port": )"
      << broker_.port() << R"( } ],
                "protocol": "mqtt5", "inflight_window": )"
      << kInflightWindow << R"( },
  "log": { "level": "info", "format": "text" }
})";
  }

  std::string DaemonLog() const { return Slurp(dir_.File("daemon.log")); }

  // Starts the daemon and waits until it answers /v1/health; false if it
  // died or never answered.
  bool StartDaemon() {
    daemon_ = std::make_unique<Subprocess>(DaemonArgv({"--config", config_}), dir_.File("daemon.log"));
    HttpClient probe(api_port_);
    std::string body;
    return WaitUntil(
               [&] { return !daemon_->running() || probe.Request("GET", "/v1/health", "", "", &body, 2000) == 200; },
               UnderEmulator() ? 120000 : 60000, 10) &&
           daemon_->running();
  }

  std::string StatusJson() {
    HttpClient c(api_port_);
    std::string body;
    if (c.Request("GET", "/v1/status", "", "", &body, 10000) != 200) return "";
    return body;
  }

  // True when /v1/status shows every backlog class at count 0.
  static bool BacklogEmpty(const std::string& status) {
    const size_t from = status.find("\"backlog\":");
    const size_t to = status.find("\"dlq\"", from);
    if (from == std::string::npos || to == std::string::npos) return false;
    const std::string backlog = status.substr(from, to - from);
    int classes = 0;
    for (size_t at = backlog.find("\"count\":"); at != std::string::npos; at = backlog.find("\"count\":", at + 1)) {
      ++classes;
      if (std::strtoll(backlog.c_str() + at + 8, nullptr, 10) != 0) return false;
    }
    return classes == 4;
  }

  // Starts a QoS 1 subscriber to everything the node publishes, on the
  // running broker, and waits until a probe published after it comes
  // through.
  void StartSubscriber() {
    sub_out_ = dir_.File("sub.out");
    sub_ = std::make_unique<Subprocess>(
        std::vector<std::string>{"mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(broker_.port()), "-V",
                                 "mqttv5", "-q", "1", "-i", "kill9-sub", "-t", "waystation/#", "-F", "%t|%P"},
        sub_out_);
    int probes = 0;
    ASSERT_TRUE(WaitUntil(
        [&] {
          ++probes;
          std::string ignored;
          const int rc = RunCommand({"mosquitto_pub", "-h", "127.0.0.1", "-p", std::to_string(broker_.port()), "-V",
                                     "mqttv5", "-q", "1", "-t", "waystation/probe", "-m", "probe", "-D", "publish",
                                     "user-property", "probe", std::to_string(probes)},
                                    &ignored, 10000);
          return rc == 0 && Slurp(sub_out_).find("waystation/probe|") != std::string::npos;
        },
        30000, 200))
        << Slurp(broker_.log_path());
  }

  // Runs kProducers producers and kills the daemon `load_kills` times (or
  // until `budget_ms` passed), each time `delay` ms after it answered its
  // first health check; then stops the producers and checks what they were
  // answered. Adds the kills to kills_.
  void KillUnderLoad(int load_kills, int64_t budget_ms, std::uniform_int_distribution<int> delay) {
    const auto started = SteadyClock::now();
    std::atomic<bool> stop{false};
    logs_.assign(kProducers, ProducerLog{});
    std::vector<std::thread> producers;
    producers.reserve(kProducers);
    const auto producer_deadline = started + milliseconds(budget_ms + 60000);
    for (int p = 0; p < kProducers; ++p) {
      producers.emplace_back(
          [&, p] { Produce(p, api_port_, stop, producer_deadline, &logs_[static_cast<size_t>(p)]); });
    }
    int kills = 0;
    bool up = true;
    for (int i = 0; i < load_kills && MsSince(started) < budget_ms; ++i) {
      up = StartDaemon();
      if (!up) break;
      const std::string status = StatusJson();
      EXPECT_EQ(status.find("store_quarantined"), std::string::npos) << "restart " << i << ": " << status;
      SleepMs(delay(rng_));
      daemon_->Kill();
      ++kills;
    }
    stop.store(true);
    for (std::thread& t : producers) t.join();
    kills_ += kills;
    ASSERT_TRUE(up) << "the daemon did not come up after kill -9 number " << kills << "\n" << DaemonLog();

    size_t acknowledged = 0, attempted = 0;
    int64_t no_answer = 0, duplicate_answers = 0;
    for (int p = 0; p < kProducers; ++p) {
      const ProducerLog& log = logs_[static_cast<size_t>(p)];
      acknowledged += log.acknowledged.size();
      attempted += log.attempted.size();
      no_answer += log.no_answer;
      duplicate_answers += log.duplicate_answers;
      EXPECT_TRUE(log.unexpected.empty())
          << "producer " << p << " got unexpected answers, first: " << log.first_unexpected_body;
      // Sequences rise in acknowledgement order, across restarts too.
      for (size_t i = 1; i < log.sequences.size(); ++i) {
        EXPECT_LT(log.sequences[i - 1], log.sequences[i])
            << "producer " << p << ": " << log.acknowledged[i - 1] << " then " << log.acknowledged[i];
      }
    }
    std::printf(
        "[kill9] %d kills under load in %lld ms; %zu ids posted, %zu acknowledged (202), %lld requests cut off by a "
        "kill or refused while down, %lld retried ids answered as already stored\n",
        kills, static_cast<long long>(MsSince(started)), attempted, acknowledged, static_cast<long long>(no_answer),
        static_cast<long long>(duplicate_answers));
    ASSERT_GE(kills, UnderEmulator() ? 2 : 10) << "too few kill cycles fit in the time budget";
    ASSERT_GT(acknowledged, 0u) << DaemonLog();
  }

  // Starts the daemon for the last time, waits until its backlog is empty
  // and stops it with SIGTERM; then every id that got a 202 must have
  // reached the subscriber, each producer's first in acknowledgement order,
  // with no more duplicates than kills x in-flight window.
  void DrainAndCheckArrivals() {
    ASSERT_TRUE(StartDaemon()) << DaemonLog();
    std::string status;
    ASSERT_TRUE(WaitUntil(
        [&] {
          status = StatusJson();
          return BacklogEmpty(status);
        },
        UnderEmulator() ? 600000 : 120000, 200))
        << "the backlog did not drain: " << status << "\n"
        << DaemonLog();
    EXPECT_EQ(status.find("store_quarantined"), std::string::npos) << status;

    std::vector<std::string> all_acknowledged;
    for (const ProducerLog& log : logs_) {
      all_acknowledged.insert(all_acknowledged.end(), log.acknowledged.begin(), log.acknowledged.end());
    }
    std::map<std::string, int64_t> arrived;
    std::vector<std::string> arrival_order;
    int64_t event_messages = 0;
    auto read_arrivals = [&] {
      arrived.clear();
      arrival_order.clear();
      event_messages = 0;
      std::istringstream lines(Slurp(sub_out_));
      std::string line;
      while (std::getline(lines, line)) {
        const std::string id = EventIdOf(line);
        if (id.empty()) continue;
        ++event_messages;
        if (arrived[id]++ == 0) arrival_order.push_back(id);
      }
    };
    // The broker forwards to the subscriber right after the PUBACK; give the
    // last messages a moment to arrive. Whether or not all arrive in time,
    // the comparison below says which did not.
    static_cast<void>(WaitUntil(
        [&] {
          read_arrivals();
          return MissingIds(all_acknowledged, arrived).empty();
        },
        30000, 200));

    ASSERT_TRUE(daemon_->Signal(SIGTERM));
    EXPECT_EQ(daemon_->Wait(60000), 0) << DaemonLog();
    read_arrivals();

    const std::vector<std::string> missing = MissingIds(all_acknowledged, arrived);
    std::string missing_list;
    for (size_t i = 0; i < missing.size() && i < 20; ++i) missing_list += " " + missing[i];
    EXPECT_TRUE(missing.empty()) << missing.size() << " acknowledged ids never arrived:" << missing_list;

    // Nothing arrived that was never posted.
    std::set<std::string> posted;
    for (const ProducerLog& log : logs_) posted.insert(log.attempted.begin(), log.attempted.end());
    for (const auto& [id, count] : arrived) {
      EXPECT_EQ(posted.count(id), 1u) << "arrived but never posted: " << id;
    }

    // Each producer is its own stream (its own type, so its own topic): its
    // acknowledged events arrive, first time each, in acknowledgement order.
    for (int p = 0; p < kProducers; ++p) {
      const ProducerLog& log = logs_[static_cast<size_t>(p)];
      const std::set<std::string> mine(log.acknowledged.begin(), log.acknowledged.end());
      std::vector<std::string> order;
      for (const std::string& id : arrival_order) {
        if (mine.count(id) != 0) order.push_back(id);
      }
      EXPECT_EQ(order, log.acknowledged) << "producer " << p << ": events arrived out of acknowledgement order";
    }

    const int64_t duplicates = event_messages - static_cast<int64_t>(arrived.size());
    const size_t unacknowledged_arrivals = arrived.size() - (all_acknowledged.size() - missing.size());
    std::printf(
        "[kill9] %d kills in all; %zu acknowledged ids, %zu of them arrived, %zu more arrived whose 202 was "
        "cut off; %lld event messages, %lld duplicates (bound %lld = kills x in-flight window %u)\n",
        kills_, all_acknowledged.size(), all_acknowledged.size() - missing.size(), unacknowledged_arrivals,
        static_cast<long long>(event_messages), static_cast<long long>(duplicates),
        static_cast<long long>(kills_) * kInflightWindow, kInflightWindow);
    EXPECT_LE(duplicates, static_cast<int64_t>(kills_) * kInflightWindow);
  }

  void TearDown() override {
    if (sub_ != nullptr) sub_->Kill();
  }

  const unsigned seed_ = std::random_device{}();
  std::mt19937 rng_{seed_};
  TempDir dir_;
  MosquittoBroker broker_;
  uint16_t api_port_ = 0;
  std::string config_;
  std::unique_ptr<Subprocess> daemon_;
  std::string sub_out_;
  std::unique_ptr<Subprocess> sub_;
  std::vector<ProducerLog> logs_;
  int kills_ = 0;
};

TEST(Kill9Comparison, AForgottenIdIsReported) {
  const std::vector<std::string> acked = {"a", "b", "c"};
  const std::map<std::string, int64_t> arrived = {{"a", 1}, {"b", 2}, {"c", 1}, {"x", 1}};
  EXPECT_TRUE(MissingIds(acked, arrived).empty());
  std::vector<std::string> with_forgotten = acked;
  with_forgotten.insert(with_forgotten.begin() + 1, "forgotten");
  EXPECT_EQ(MissingIds(with_forgotten, arrived), std::vector<std::string>{"forgotten"});
  EXPECT_EQ(EventIdOf("waystation/lab/gw/events/com.acme.t|specversion:1.0 id:k9-p1-7 source:/s"), "k9-p1-7");
  EXPECT_EQ(EventIdOf("waystation/lab/gw/state|id:nope"), "");
}

// The backbone is down while the producers post and the daemon is killed:
// everything acknowledged piles up in the outbox, and must all come out
// once the broker is back, also when the daemon is killed while it drains.
TEST_F(Kill9Test, NoAcknowledgedEventIsLostAcrossRepeatedKill9) {
  const bool emulated = UnderEmulator();
  const int load_kills = emulated ? 5 : 20;
  const int drain_kills = emulated ? 1 : 3;
  std::printf("[kill9] seed %u; %d kills under load, %d while draining%s\n", seed_, load_kills, drain_kills,
              emulated ? " (reduced under the emulator)" : "");

  ASSERT_TRUE(broker_.running());
  broker_.Kill();  // the backbone is down: every event stays in the outbox
  WriteConfig();
  ASSERT_NO_FATAL_FAILURE(
      KillUnderLoad(load_kills, emulated ? 400000 : 90000, std::uniform_int_distribution<int>(50, 500)));

  // The backbone comes back, with a subscriber on it before the daemon.
  ASSERT_TRUE(broker_.Start()) << Slurp(broker_.log_path());
  ASSERT_NO_FATAL_FAILURE(StartSubscriber());

  // Drain, killing the daemon a few times while it delivers.
  std::uniform_int_distribution<int> drain_delay(100, 600);
  for (int i = 0; i < drain_kills; ++i) {
    ASSERT_TRUE(StartDaemon()) << DaemonLog();
    SleepMs(drain_delay(rng_));
    daemon_->Kill();
    ++kills_;
  }
  DrainAndCheckArrivals();
}

// The backbone is up the whole time, so every kill lands while events are
// being appended, leased, published, acknowledged by the broker and removed
// at once: in the middle of a commit, between a PUBLISH and its PUBACK, or
// between a PUBACK and the commit that removes the event. Each restart
// sends again what was in flight, in order, and loses nothing.
TEST_F(Kill9Test, NoAcknowledgedEventIsLostWhenKilledWhileForwarding) {
  const bool emulated = UnderEmulator();
  const int load_kills = emulated ? 5 : 20;
  std::printf("[kill9] seed %u; %d kills while forwarding%s\n", seed_, load_kills,
              emulated ? " (reduced under the emulator)" : "");

  ASSERT_TRUE(broker_.running());
  ASSERT_NO_FATAL_FAILURE(StartSubscriber());
  WriteConfig();
  // Up to 1 s after each start: the link connects in the first few
  // milliseconds, so most kills fall while it forwards.
  ASSERT_NO_FATAL_FAILURE(
      KillUnderLoad(load_kills, emulated ? 400000 : 90000, std::uniform_int_distribution<int>(20, 1000)));
  DrainAndCheckArrivals();
}

}  // namespace
}  // namespace ws::testing
