#include "adapters/http/listen_socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <memory>
#include <utility>

#include "adapters/http/http_server.h"
#include "platform/log.h"

namespace ws::http_internal {
namespace {

constexpr std::string_view kUnixPrefix = "unix:";

Status BadAddress(std::string_view listen, std::string_view why) {
  std::string m = "listen address \"";
  m.append(listen);
  m += "\": ";
  m.append(why);
  return InvalidArgument(std::move(m));
}

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

Result<AddrInfoPtr> Resolve(const ListenSpec& spec, std::string_view listen) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  std::string port = std::to_string(spec.port);
  addrinfo* res = nullptr;
  int rc = getaddrinfo(spec.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    if (rc == EAI_SYSTEM) return ErrnoStatus(errno, "resolve " + std::string(listen));
    return BadAddress(listen, gai_strerror(rc));
  }
  if (res == nullptr) return BadAddress(listen, "no address found");
  return AddrInfoPtr(res);
}

Status SetIntOption(int fd, int level, int name, int value, std::string_view what, std::string_view listen) {
  if (setsockopt(fd, level, name, &value, sizeof value) != 0) {
    return ErrnoStatus(errno, std::string(what) + " on " + std::string(listen));
  }
  return Status::Ok();
}

}  // namespace

Result<ListenSpec> ParseListenAddress(std::string_view listen) {
  ListenSpec spec;
  if (listen.substr(0, kUnixPrefix.size()) == kUnixPrefix) {
    spec.is_unix = true;
    spec.unix_path = std::string(listen.substr(kUnixPrefix.size()));
    if (spec.unix_path.empty()) return BadAddress(listen, "empty Unix socket path");
    if (spec.unix_path.find('\0') != std::string::npos) return BadAddress(listen, "NUL in Unix socket path");
    if (spec.unix_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return BadAddress(
          listen, "Unix socket path longer than " + std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
    }
    return spec;
  }
  std::string_view host;
  std::string_view port;
  if (!listen.empty() && listen.front() == '[') {
    size_t close = listen.find(']');
    if (close == std::string_view::npos) return BadAddress(listen, "missing ']'");
    host = listen.substr(1, close - 1);
    std::string_view rest = listen.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return BadAddress(listen, "expected [ADDRESS]:PORT");
    port = rest.substr(1);
    if (host.find(':') == std::string_view::npos) return BadAddress(listen, "brackets are for IPv6 addresses");
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string_view::npos) return BadAddress(listen, "expected HOST:PORT or unix:PATH");
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return BadAddress(listen, "IPv6 addresses need brackets: [ADDRESS]:PORT");
  }
  if (host.empty()) return BadAddress(listen, "empty host (use 0.0.0.0 or [::] for every address)");
  if (port.empty() || port.size() > 5) return BadAddress(listen, "bad port");
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return BadAddress(listen, "bad port");
  }
  spec.host = std::string(host);
  spec.port = static_cast<uint16_t>(value);
  return spec;
}

ListenSocket::~ListenSocket() { RemoveUnixFile(); }

ListenSocket::ListenSocket(ListenSocket&& other) noexcept
    : fd_(std::move(other.fd_)),
      bound_(std::move(other.bound_)),
      unix_path_(std::exchange(other.unix_path_, std::string())),
      unix_dev_(other.unix_dev_),
      unix_ino_(other.unix_ino_) {}

ListenSocket& ListenSocket::operator=(ListenSocket&& other) noexcept {
  if (this != &other) {
    RemoveUnixFile();
    fd_ = std::move(other.fd_);
    bound_ = std::move(other.bound_);
    unix_path_ = std::exchange(other.unix_path_, std::string());
    unix_dev_ = other.unix_dev_;
    unix_ino_ = other.unix_ino_;
  }
  return *this;
}

void ListenSocket::RemoveUnixFile() {
  if (unix_path_.empty()) return;
  struct stat st {};
  // Only our own socket file goes: if the path now names another inode, a
  // newer server owns it.
  if (lstat(unix_path_.c_str(), &st) == 0 && st.st_dev == unix_dev_ && st.st_ino == unix_ino_) {
    // A leftover file is harmless: the next start replaces it.
    if (unlink(unix_path_.c_str()) != 0) {
      WS_LOG_DEBUG("http", "cannot remove socket file",
                   {{"path", unix_path_}, {"error", ErrnoStatus(errno, "unlink").message()}});
    }
  }
  unix_path_.clear();
}

Result<ListenSocket> ListenSocket::Open(std::string_view listen, int backlog) {
  WS_ASSIGN_OR_RETURN(ListenSpec spec, ParseListenAddress(listen));
  ListenSocket ls;
  if (spec.is_unix) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, spec.unix_path.data(), spec.unix_path.size());
    const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + spec.unix_path.size() + 1);
    const std::string& path = spec.unix_path;

    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return BadAddress(listen, "path exists and is not a socket");
      // A socket file nobody accepts on is left over from a crash: replace
      // it. One that accepts belongs to a running server: leave it alone.
      UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (!probe.valid()) return ErrnoStatus(errno, "socket for " + std::string(listen));
      int rc;
      do {
        rc = connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), addr_len);
      } while (rc != 0 && errno == EINTR);
      if (rc == 0)
        return Status(StatusCode::kAlreadyExists,
                      "listen address \"" + std::string(listen) + "\": a running server accepts on this socket");
      if (unlink(path.c_str()) != 0 && errno != ENOENT) {
        return ErrnoStatus(errno, "remove stale socket " + std::string(listen));
      }
    } else if (errno != ENOENT) {
      return ErrnoStatus(errno, "stat " + std::string(listen));
    }

    ls.fd_ = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!ls.fd_.valid()) return ErrnoStatus(errno, "socket for " + std::string(listen));
    if (bind(ls.fd_.get(), reinterpret_cast<const sockaddr*>(&addr), addr_len) != 0) {
      return ErrnoStatus(errno, "bind " + std::string(listen));
    }
    // From here the file is ours: the destructor removes it on any failure.
    ls.unix_path_ = path;
    if (lstat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat " + std::string(listen));
    ls.unix_dev_ = st.st_dev;
    ls.unix_ino_ = st.st_ino;
    // Before listen(): nobody can connect yet, so the umask's mode is never
    // exposed.
    if (chmod(path.c_str(), 0660) != 0) return ErrnoStatus(errno, "chmod 0660 " + std::string(listen));
    if (::listen(ls.fd_.get(), backlog) != 0) return ErrnoStatus(errno, "listen " + std::string(listen));
    ls.bound_ = "unix:" + path;
    return ls;
  }

  WS_ASSIGN_OR_RETURN(AddrInfoPtr ai, Resolve(spec, listen));
  const addrinfo* a = ai.get();
  ls.fd_ = UniqueFd(socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!ls.fd_.valid()) return ErrnoStatus(errno, "socket for " + std::string(listen));
  // A restart must not wait for TIME_WAIT; Linux still refuses a port that
  // another socket listens on.
  WS_TRY(SetIntOption(ls.fd_.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR", listen));
  // "[::]:80" means IPv6 only; IPv4 is listed separately when wanted.
  if (a->ai_family == AF_INET6) WS_TRY(SetIntOption(ls.fd_.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY", listen));
  if (bind(ls.fd_.get(), a->ai_addr, a->ai_addrlen) != 0) return ErrnoStatus(errno, "bind " + std::string(listen));
  if (::listen(ls.fd_.get(), backlog) != 0) return ErrnoStatus(errno, "listen " + std::string(listen));
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (getsockname(ls.fd_.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return ErrnoStatus(errno, "getsockname " + std::string(listen));
  }
  ls.bound_ = FormatSocketAddress(bound);
  return ls;
}

std::string FormatSocketAddress(const sockaddr_storage& addr) {
  char text[INET6_ADDRSTRLEN] = {};
  std::string out;
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof text) == nullptr) return "?";
    out.append(text);
    out += ':';
    out += std::to_string(ntohs(in->sin_port));
    return out;
  }
  if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    if (inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text) == nullptr) return "?";
    out += '[';
    out.append(text);
    out += "]:";
    out += std::to_string(ntohs(in6->sin6_port));
    return out;
  }
  if (addr.ss_family == AF_UNIX) return "unix";
  return "?";
}

bool IsLocalSocketAddress(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_UNIX) return true;
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    const uint8_t* b = in6->sin6_addr.s6_addr;
    static constexpr uint8_t kLoopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static constexpr uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(b, kLoopback, sizeof kLoopback) == 0) return true;
    return std::memcmp(b, kV4MappedPrefix, sizeof kV4MappedPrefix) == 0 && b[12] == 127;
  }
  return false;
}

}  // namespace ws::http_internal

