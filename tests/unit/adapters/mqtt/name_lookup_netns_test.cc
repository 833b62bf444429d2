// The backbone link while the DNS server does not answer, and over a name
// that resolves, each test in a network and mount namespace of its own:
// only the loopback interface, /etc/resolv.conf pointing at 127.0.0.1:53
// where the test holds a UDP socket that answers nothing unless a test
// says so (so every other lookup hangs for the resolver's 30 s timeout),
// and /etc/hosts naming a broker
// on 127.0.0.1. Nothing leaves the namespace.
//
// The namespaces need CAP_SYS_ADMIN: main() makes them before gtest starts
// any thread (unshare of a mount namespace wants a single-threaded
// process); without the capability every test is skipped.
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "adapters/mqtt/backbone_link.h"
#include "adapters/sqlite/sqlite_outbox.h"
#include "platform/event_loop.h"
#include "tests/support/test_support.h"
#include "tests/unit/adapters/mqtt/link_fixture.h"

namespace ws {
namespace {

using testing::MosquittoBroker;
using testing::TempDir;
using testing::WaitUntil;

constexpr const char* kHungName = "backbone.example.test";  // asked of the silent DNS server
constexpr const char* kHostsName = "broker.example.test";   // in the namespace's /etc/hosts
// Also there, twice: 127.0.0.3, where nothing listens, then 127.0.0.2. (The
// resolver sorts 127.0.0.1 ahead of other loopback addresses, and keeps
// these two in the file's order.)
constexpr const char* kTwoAddressName = "cluster.example.test";
// Answered by the test's DNS server only while an AnsweringDns says so.
constexpr const char* kOnceName = "once.example.test";

std::string g_skip;   // why the namespace could not be made; empty when it was
int g_dns_fd = -1;    // the silent DNS server's socket

// Counts the queries that reached the silent DNS server so far.
int DrainQueries() {
  int n = 0;
  char buf[1500];
  while (recv(g_dns_fd, buf, sizeof buf, MSG_DONTWAIT) >= 0) ++n;
  return n;
}

std::string MakeNamespace() {
  if (unshare(CLONE_NEWNET | CLONE_NEWNS) != 0) {
    return std::string("no network and mount namespace (") + std::strerror(errno) + "; needs CAP_SYS_ADMIN)";
  }
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return std::string("cannot make the mounts private: ") + std::strerror(errno);
  }
  // Files to lay over /etc/resolv.conf and /etc/hosts, in this process's
  // own folder (removed at exit); the mounts vanish with the namespace.
  static TempDir dir;
  const std::string resolv = dir.File("resolv.conf");
  const std::string hosts = dir.File("hosts");
  std::ofstream(resolv) << "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n";
  std::ofstream(hosts) << "127.0.0.1 localhost " << kHostsName << "\n"
                       << "127.0.0.3 " << kTwoAddressName << "\n"
                       << "127.0.0.2 " << kTwoAddressName << "\n";
  for (const auto& [from, to] : {std::pair{resolv, "/etc/resolv.conf"}, std::pair{hosts, "/etc/hosts"}}) {
    if (access(to, F_OK) != 0) std::ofstream(to).flush();  // a mount needs something to cover
    if (mount(from.c_str(), to, nullptr, MS_BIND, nullptr) != 0) {
      return std::string("cannot lay a file over ") + to + ": " + std::strerror(errno);
    }
  }
  const int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  const bool up = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags |= IFF_UP, true) &&
                  ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  if (s >= 0) close(s);
  if (!up) return std::string("cannot bring the loopback interface up: ") + std::strerror(errno);
  g_dns_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(53);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (g_dns_fd < 0 || bind(g_dns_fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    return std::string("cannot hold 127.0.0.1:53: ") + std::strerror(errno);
  }
  return "";
}

// While it lives, the test's DNS server answers the first `answers` queries
// for `name` (an A query with 127.0.0.1, any other type with no records)
// and none after those, like a server on a lossy link that answered once.
// Queries for other names are counted and left unanswered.
class AnsweringDns {
 public:
  AnsweringDns(std::string name, int answers) : name_(std::move(name)), left_(answers) {
    thread_ = std::thread([this] { Run(); });
  }
  ~AnsweringDns() {
    stop_ = true;
    thread_.join();
  }
  AnsweringDns(const AnsweringDns&) = delete;
  AnsweringDns& operator=(const AnsweringDns&) = delete;

  int answered() const { return answered_; }
  int unanswered() const { return unanswered_; }

 private:
  void Run() {
    while (!stop_) {
      pollfd p{g_dns_fd, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      unsigned char q[1500];
      sockaddr_storage from{};
      socklen_t from_len = sizeof from;
      const ssize_t n = recvfrom(g_dns_fd, q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
      if (n < 12) continue;
      // The question's name, label by label, from byte 12.
      std::string name;
      size_t i = 12;
      while (i < static_cast<size_t>(n) && q[i] != 0 && i + 1 + q[i] <= static_cast<size_t>(n)) {
        if (!name.empty()) name += '.';
        name.append(reinterpret_cast<const char*>(q + i + 1), q[i]);
        i += 1 + q[i];
      }
      const size_t question_end = i + 5;  // the root label, QTYPE, QCLASS
      if (question_end > static_cast<size_t>(n) || name != name_ || left_ == 0) {
        ++unanswered_;
        continue;
      }
      --left_;
      const int qtype = (q[i + 1] << 8) | q[i + 2];
      std::vector<unsigned char> r(q, q + question_end);
      r[2] = static_cast<unsigned char>(0x84 | (q[2] & 0x01));  // a response, authoritative, RD as asked
      r[3] = 0x80;                                               // recursion available, no error
      for (size_t k = 6; k < 12; ++k) r[k] = 0;                  // no records but those added below
      if (qtype == 1) {
        r[7] = 1;
        // The question's name (a pointer to byte 12), A, IN, TTL 60, 4 bytes.
        const unsigned char answer[] = {0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1};
        r.insert(r.end(), answer, answer + sizeof answer);
      }
      if (sendto(g_dns_fd, r.data(), r.size(), 0, reinterpret_cast<const sockaddr*>(&from), from_len) ==
          static_cast<ssize_t>(r.size())) {
        ++answered_;
      }
    }
  }

  const std::string name_;
  int left_;
  std::atomic<int> answered_{0};
  std::atomic<int> unanswered_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class NameLookupNetnsTest : public testing::LinkFixture {
 protected:
  void SetUp() override {
    if (!g_skip.empty()) GTEST_SKIP() << g_skip;
    OpenOutbox();
    DrainQueries();
  }

  BackboneOptions Options(const std::string& host, uint16_t port) const {
    BackboneOptions o;
    o.endpoints = {EndpointConfig{"primary", host, port}};
    o.client_id = "waystation-gw1";
    o.node_id = "gw1";
    o.topic_prefix = "waystation/plant-7/gw1";
    o.version = "0.1.0-test";
    o.boot_id = "boot-1";
    o.reconnect_min_ms = 50;
    o.reconnect_max_ms = 100;
    return o;
  }

  // The link's calls come back at once while its attempt stays pending. A
  // lookup on the loop thread would hold each call until the resolver gave
  // up (30 s), and the attempt would have failed by then.
  void ExpectTheLoopAnswersWhileConnecting() {
    for (int i = 0; i < 10; ++i) {
      const BackboneStats s = LinkStats();
      EXPECT_EQ(s.state, LinkState::kConnecting) << i;
      EXPECT_EQ(s.connect_failures, 0u) << i;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // Appends one event and waits for the broker's PUBACK of it.
  void DeliverOne(const std::string& id) {
    OutboxEntry e;
    e.event.id = id;
    e.event.source = "/test";
    e.event.type = "com.example.resolved";
    e.event.specversion = "1.0";
    e.topic = "waystation/plant-7/gw1/events/com.example.resolved";
    e.stream = "s";
    const uint64_t acked_before = LinkStats().acked;
    std::promise<Status> appended;
    outbox_->Append({std::move(e)}, [&](Result<std::vector<AppendOutcome>> r) { appended.set_value(r.status()); });
    ASSERT_TRUE(appended.get_future().get().ok());
    loop_.Call([&] { link_->NotifyAppended(); });
    EXPECT_TRUE(WaitUntil([&] { return LinkStats().acked > acked_before; }, 20'000)) << "acked " << LinkStats().acked;
  }
};

TEST_F(NameLookupNetnsTest, TheLoopRunsOnWhileTheDnsServerDoesNotAnswer) {
  BackboneOptions o = Options(kHungName, 1883);
  o.connect_timeout_ms = 60'000;  // longer than the test: the lookup stays pending
  StartLink(o);
  // The lookup has reached the silent server ...
  int queries = 0;
  ASSERT_TRUE(WaitUntil([&] { return (queries += DrainQueries()) > 0; }, 10'000));
  // ... and stays unanswered, while the loop answers every call at once.
  ExpectTheLoopAnswersWhileConnecting();
}

TEST_F(NameLookupNetnsTest, AttemptsThatTimeOutWaitForTheOneLookupInsteadOfStartingMore) {
  BackboneOptions o = Options(kHungName, 1883);
  o.connect_timeout_ms = 200;
  StartLink(o);
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().connect_failures >= 4; }, 20'000));
  // One lookup's queries (A and AAAA), not one lookup per attempt.
  const int queries = DrainQueries();
  EXPECT_GE(queries, 1);
  EXPECT_LE(queries, 2);
  EXPECT_EQ(LinkStats().connects, 0u);
}

TEST_F(NameLookupNetnsTest, AHungNameDoesNotHoldUpTheNextEndpoint) {
  MosquittoBroker broker;
  ASSERT_TRUE(broker.running());
  BackboneOptions o = Options(kHungName, 1883);
  o.endpoints.push_back(EndpointConfig{"secondary", kHostsName, broker.port()});
  o.connect_timeout_ms = 200;
  StartLink(o);
  // Well before the primary's lookup ends (30 s), the secondary is in use.
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().state == LinkState::kConnected; }, 10'000))
      << "connect failures " << LinkStats().connect_failures;
  EXPECT_EQ(LinkStats().endpoint, "secondary");
}

TEST_F(NameLookupNetnsTest, AnAddressThatRefusesIsFollowedByTheNamesNextOne) {
  // The broker listens on 127.0.0.2 (and 127.0.0.1); the name's first
  // address refuses.
  const uint16_t port = testing::FreeLoopbackPort();
  MosquittoBroker broker("listener " + std::to_string(port) + " 127.0.0.2\n", port);
  ASSERT_TRUE(broker.running()) << testing::Slurp(broker.log_path());
  StartLink(Options(kTwoAddressName, broker.port()));
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().state == LinkState::kConnected; }, 10'000))
      << "connect failures " << LinkStats().connect_failures;
  // One attempt went to the address that refuses, the next to the other.
  EXPECT_EQ(LinkStats().connect_failures, 1u);
}

TEST_F(NameLookupNetnsTest, ANameFromTheHostsFileConnectsAndDelivers) {
  MosquittoBroker broker;
  ASSERT_TRUE(broker.running());
  StartLink(Options(kHostsName, broker.port()));
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().state == LinkState::kConnected; }, 20'000));
  DeliverOne("resolved-1");
  EXPECT_EQ(DrainQueries(), 0);  // the hosts file answered
}

// Over TLS libmosquitto gets the name (for SNI and the certificate check)
// and looks it up once more inside its connect call. That second lookup
// must not hold the loop either: here the DNS server answers the link's own
// lookup and then falls silent.
TEST_F(NameLookupNetnsTest, TheLoopRunsOnWhileTheTlsConnectLooksTheNameUpAgain) {
  testing::TempDir dir;
  const std::string ca = dir.File("ca.crt");
  std::ofstream(ca) << "not read before the name is found\n";
  AnsweringDns dns(kOnceName, 2);  // the link's own lookup: A and AAAA
  BackboneOptions o = Options(kOnceName, 8883);
  o.connect_timeout_ms = 60'000;  // longer than the test: the second lookup stays pending
  o.endpoints[0].tls.enabled = true;
  o.endpoints[0].tls.ca_file = ca;
  StartLink(o);
  // The link's lookup was answered, and the library's own reached the
  // server and stays unanswered ...
  ASSERT_TRUE(WaitUntil([&] { return dns.answered() == 2 && dns.unanswered() > 0; }, 10'000))
      << dns.answered() << " answered, " << dns.unanswered() << " not";
  // ... while the loop answers every call at once.
  ExpectTheLoopAnswersWhileConnecting();
}

TEST_F(NameLookupNetnsTest, ATlsEndpointByNameConnectsChecksTheNameAndDelivers) {
  testing::TestPki pki(std::string("DNS:") + kHostsName);
  ASSERT_TRUE(pki.ok()) << pki.error();
  const uint16_t plain = testing::FreeLoopbackPort();
  MosquittoBroker broker(pki.BrokerConfig(/*require_client_cert=*/true, plain));
  ASSERT_TRUE(broker.running()) << testing::Slurp(broker.log_path());
  BackboneOptions o = Options(kHostsName, broker.port());
  o.endpoints[0].tls.enabled = true;
  o.endpoints[0].tls.ca_file = pki.ca();
  o.endpoints[0].tls.cert_file = pki.client_cert();
  o.endpoints[0].tls.key_file = pki.client_key();
  StartLink(o);
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().state == LinkState::kConnected; }, 20'000))
      << "connect failures " << LinkStats().connect_failures << testing::Slurp(broker.log_path());
  EXPECT_EQ(LinkStats().connect_failures, 0u);
  DeliverOne("tls-by-name-1");
  DestroyLink();

  // The same broker under a name its certificate does not carry (in the
  // namespace's hosts file too, for 127.0.0.1) is refused by the check.
  o.endpoints[0].host = "localhost";
  StartLink(o);
  ASSERT_TRUE(WaitUntil([&] { return LinkStats().connect_failures >= 2; }, 20'000));
  EXPECT_EQ(LinkStats().connects, 0u);
}

}  // namespace
}  // namespace ws

int main(int argc, char** argv) {
  ws::g_skip = ws::MakeNamespace();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
