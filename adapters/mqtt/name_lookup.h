// Resolves a broker's host name without stalling the event loop.
//
// getaddrinfo blocks for as long as the DNS server takes to answer or time
// out: with the resolver's defaults, ten seconds and more when the network
// is down, which is exactly when the link reconnects most. Run on the loop
// thread, that would also hold up the local API. Here the lookup runs on a
// short-lived thread of its own and the addresses are posted back; an IP
// literal ("192.0.2.7", "::1", "[::1]") is answered without one.
//
// At most one lookup thread runs per name. A Start for a host and port that
// a thread is still asking for (its caller gave up on it, say) waits for
// that answer instead of starting another. So a DNS server that never
// answers costs one waiting thread per endpoint, not one per reconnect
// attempt, and a name that hangs does not hold up the next endpoint's.
//
// Threads: construct, Start, Cancel and destroy on the loop thread. `done`
// runs on the loop thread, never inside Start, and not at all after Cancel or
// destruction.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "platform/event_loop.h"
#include "platform/status.h"

namespace ws {

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

// The address of an IP literal (IPv6 with or without brackets) and port;
// nullopt for anything else.
std::optional<SocketAddress> ParseAddressLiteral(const std::string& host, uint16_t port);

// The address without its port: "192.0.2.7" or "2001:db8::7".
std::string NumericHost(const SocketAddress& address);

class NameLookup {
 public:
  // The addresses in the resolver's order, never empty when OK.
  using Done = std::function<void(Result<std::vector<SocketAddress>>)>;

  // `loop` must outlive the lookup.
  explicit NameLookup(EventLoop* loop);
  ~NameLookup();
  NameLookup(const NameLookup&) = delete;
  NameLookup& operator=(const NameLookup&) = delete;

  // Starts one lookup; one still waiting for its answer is cancelled first.
  void Start(const std::string& host, uint16_t port, Done done);
  void Cancel();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ws
