// What the backbone link's tests share: the event loop on a thread of its
// own, as the daemon runs it, and a fixture holding a store and a link that
// lives on that loop.
#pragma once

#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "adapters/mqtt/backbone_link.h"
#include "adapters/sqlite/sqlite_outbox.h"
#include "platform/event_loop.h"
#include "tests/support/test_support.h"

namespace ws::testing {

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
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

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

// A store in a temporary folder and a link on the loop thread.
class LinkFixture : public ::testing::Test {
 protected:
  // Opens the store (fatal to the test if it cannot be).
  void OpenOutbox(int64_t commit_window_us = 500) {
    SqliteOutboxOptions o;
    o.path = dir_.File("var/outbox.db");
    o.commit_window_us = commit_window_us;
    auto outbox = SqliteOutbox::Open(o);
    ASSERT_TRUE(outbox.ok()) << outbox.status().ToString();
    outbox_ = std::move(outbox).value();
  }

  void TearDown() override {
    if (link_) DestroyLink();
    // No append announcement may still be on its way to the loop when the
    // members go: the closed store posts no more, and the empty call runs
    // after whatever it posted before.
    outbox_.reset();
    loop_.Call([] {});
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

  TempDir dir_;
  LoopThread loop_;
  std::unique_ptr<SqliteOutbox> outbox_;
  std::unique_ptr<BackboneLink> link_;  // lives on the loop thread
};

// Certificates made with openssl at run time: a CA, a server certificate for
// `server_names` signed by it, and a client certificate for mTLS. Started
// as root, mosquitto reads its files after dropping to its own user, so the
// folder and files are readable to others (test keys only).
class TestPki {
 public:
  explicit TestPki(const std::string& server_names = "IP:127.0.0.1,DNS:localhost") {
    std::filesystem::permissions(dir_.path(), std::filesystem::perms(0755));
    ok_ = MakeCa("ca", "Waystation Test CA") &&
          MakeLeaf("server", "broker", "ca", "subjectAltName=" + server_names + "\nextendedKeyUsage=serverAuth\n") &&
          MakeLeaf("client", "gw1", "ca", "extendedKeyUsage=clientAuth\n");
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
      std::filesystem::permissions(entry.path(), std::filesystem::perms(0644));
    }
  }
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  std::string ca() const { return dir_.File("ca.crt"); }
  std::string server_cert() const { return dir_.File("server.crt"); }
  std::string server_key() const { return dir_.File("server.key"); }
  std::string client_cert() const { return dir_.File("client.crt"); }
  std::string client_key() const { return dir_.File("client.key"); }

  // Broker config lines: the broker's main listener speaks TLS (mTLS with
  // `require_client_cert`); a plain listener on `plain_port` serves the
  // test's subscriber.
  std::string BrokerConfig(bool require_client_cert, uint16_t plain_port) const {
    return "cafile " + ca() + "\ncertfile " + server_cert() + "\nkeyfile " + server_key() + "\n" +
           (require_client_cert ? "require_certificate true\n" : "") + "listener " + std::to_string(plain_port) +
           " 127.0.0.1\n";
  }

 private:
  bool Run(const std::vector<std::string>& argv) {
    std::string out;
    if (RunCommand(argv, &out, 60000) == 0) return true;
    error_ = "openssl failed: " + argv[1] + " " + out;
    return false;
  }
  bool MakeCa(const std::string& name, const std::string& cn) {
    return Run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", dir_.File(name + ".key"), "-out", dir_.File(name + ".crt"), "-days", "2", "-subj",
                "/CN=" + cn});
  }
  bool MakeLeaf(const std::string& name, const std::string& cn, const std::string& ca, const std::string& ext) {
    std::ofstream(dir_.File(name + ".ext")) << "basicConstraints=CA:FALSE\n" << ext;
    return Run({"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", dir_.File(name + ".key"), "-out", dir_.File(name + ".csr"), "-subj", "/CN=" + cn}) &&
           Run({"openssl", "x509", "-req", "-in", dir_.File(name + ".csr"), "-CA", dir_.File(ca + ".crt"), "-CAkey",
                dir_.File(ca + ".key"), "-set_serial", std::to_string(++serial_), "-days", "2", "-extfile",
                dir_.File(name + ".ext"), "-out", dir_.File(name + ".crt")});
  }

  TempDir dir_;
  bool ok_ = false;
  int serial_ = 1000;
  std::string error_;
};

}  // namespace ws::testing
