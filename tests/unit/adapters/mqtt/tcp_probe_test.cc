// TcpProbe against real sockets on loopback: a listening port answers, a
// closed one does not, a host name goes through the lookup thread, and a
// cancelled or destroyed probe never reports.
#include "adapters/mqtt/tcp_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace ws {
namespace {

// A loopback TCP listener that never accepts (the kernel completes the
// handshake from its backlog, which is all a probe needs).
class Listener {
 public:
  Listener() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd_, 16) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      std::abort();
    }
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { close(fd_); }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

class TcpProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(loop).value();
    thread_ = std::thread([this] {
      if (!loop_->Run().ok()) std::abort();
    });
    Call([this] { probe_ = std::make_unique<TcpProbe>(loop_.get()); });
  }
  void TearDown() override {
    Call([this] { probe_.reset(); });
    loop_->Stop();
    thread_.join();
  }

  void Call(const std::function<void()>& fn) {
    std::promise<void> done;
    loop_->Post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }

  // Runs one probe and waits for its answer (nullopt if none within the bound).
  std::optional<Status> Probe(const std::string& host, uint16_t port, int64_t timeout_ms = 5000) {
    auto result = std::make_shared<std::promise<Status>>();
    std::future<Status> answer = result->get_future();
    Call([&] { probe_->Start(host, port, timeout_ms, [result](Status s) { result->set_value(std::move(s)); }); });
    if (answer.wait_for(std::chrono::seconds(60)) != std::future_status::ready) return std::nullopt;
    return answer.get();
  }

  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
  std::unique_ptr<TcpProbe> probe_;  // lives on the loop thread
};

TEST_F(TcpProbeTest, AListeningPortAnswersAndAClosedOneDoesNot) {
  Listener listener;
  auto open = Probe("127.0.0.1", listener.port());
  ASSERT_TRUE(open.has_value());
  EXPECT_TRUE(open->ok()) << open->ToString();

  auto closed = Probe("127.0.0.1", testing::FreeLoopbackPort());
  ASSERT_TRUE(closed.has_value());
  EXPECT_FALSE(closed->ok());
  EXPECT_NE(closed->message().find("127.0.0.1"), std::string::npos) << closed->ToString();
}

TEST_F(TcpProbeTest, AHostNameIsLookedUpOffTheLoop) {
  Listener listener;
  auto named = Probe("localhost", listener.port());
  ASSERT_TRUE(named.has_value());
  // localhost may list ::1 first; the probe tries every address.
  EXPECT_TRUE(named->ok()) << named->ToString();

  auto unknown = Probe("no-such-host.invalid", listener.port());
  ASSERT_TRUE(unknown.has_value());
  EXPECT_FALSE(unknown->ok());
}

TEST_F(TcpProbeTest, ACancelledOrDestroyedProbeNeverReports) {
  Listener listener;
  auto reported = std::make_shared<std::atomic<int>>(0);
  Call([&] {
    probe_->Start("localhost", listener.port(), 5000, [reported](Status) { ++*reported; });
    probe_->Cancel();
    EXPECT_FALSE(probe_->running());
    // Destroyed with a lookup thread possibly still running.
    probe_->Start("localhost", listener.port(), 5000, [reported](Status) { ++*reported; });
    probe_.reset();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Call([] {});
  EXPECT_EQ(reported->load(), 0);
  Call([this] { probe_ = std::make_unique<TcpProbe>(loop_.get()); });
  auto after = Probe("127.0.0.1", listener.port());
  ASSERT_TRUE(after.has_value());
  EXPECT_TRUE(after->ok());
}

}  // namespace
}  // namespace ws
