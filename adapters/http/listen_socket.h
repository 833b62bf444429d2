// Listening sockets of the HTTP server: parsing of listen addresses as
// written in the configuration ("127.0.0.1:8080", "[::1]:0",
// "localhost:8080", "unix:var/api.sock"), binding them, and naming socket
// addresses for logs and HttpRequest::peer. Internal to adapters/http.
//
// Threads: the functions are pure or touch only the descriptors they create;
// a ListenSocket belongs to whoever holds it.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "platform/status.h"
#include "platform/unique_fd.h"

namespace ws::http_internal {

struct ListenSpec {
  bool is_unix = false;
  std::string unix_path;  // is_unix
  std::string host;       // TCP: literal or name, without brackets
  uint16_t port = 0;      // TCP
};

// Syntax only; no name lookup.
Result<ListenSpec> ParseListenAddress(std::string_view listen);

// A bound, listening, non-blocking socket. For a Unix socket the file is
// removed again on destruction, unless it has been replaced by another one
// meanwhile (a newer instance of the daemon bound the same path).
class ListenSocket {
 public:
  ListenSocket() = default;
  ~ListenSocket();
  ListenSocket(ListenSocket&& other) noexcept;
  ListenSocket& operator=(ListenSocket&& other) noexcept;
  ListenSocket(const ListenSocket&) = delete;
  ListenSocket& operator=(const ListenSocket&) = delete;

  // Binds and listens. A stale Unix socket file (nobody accepting on it) is
  // removed first and the new one gets mode 0660 before it accepts anything.
  // Errors name `listen`.
  static Result<ListenSocket> Open(std::string_view listen, int backlog);

  int fd() const { return fd_.get(); }
  bool is_unix() const { return !unix_path_.empty(); }
  // "127.0.0.1:41234" (port 0 resolved), "[::1]:8080" or "unix:PATH".
  const std::string& bound_address() const { return bound_; }

 private:
  void RemoveUnixFile();

  UniqueFd fd_;
  std::string bound_;
  std::string unix_path_;
  dev_t unix_dev_ = 0;
  ino_t unix_ino_ = 0;
};

// "127.0.0.1:53210", "[::1]:4000", "unix" (AF_UNIX) or "?" (other families).
std::string FormatSocketAddress(const sockaddr_storage& addr);
// Loopback IPv4 / IPv6 (also IPv4-mapped loopback) or AF_UNIX.
bool IsLocalSocketAddress(const sockaddr_storage& addr);

}  // namespace ws::http_internal
