#include "platform/transport.h"

#include <sys/socket.h>

#include <cerrno>

namespace ws {
namespace {

class SocketTransport final : public Transport {
 public:
  explicit SocketTransport(int fd) : fd_(fd) {}

  Result<TransportWait> Handshake() override { return TransportWait::kNone; }

  Result<TransportIo> Read(char* data, size_t len) override {
    for (;;) {
      ssize_t n = ::recv(fd_, data, len, 0);
      if (n > 0) return TransportIo{static_cast<size_t>(n), TransportWait::kNone, false};
      if (n == 0) return TransportIo{0, TransportWait::kNone, true};
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return TransportIo{0, TransportWait::kReadable, false};
      return ErrnoStatus(err, "recv");
    }
  }

  Result<TransportIo> Write(const char* data, size_t len) override {
    for (;;) {
      ssize_t n = ::send(fd_, data, len, MSG_NOSIGNAL);
      if (n >= 0) return TransportIo{static_cast<size_t>(n), TransportWait::kNone, false};
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return TransportIo{0, TransportWait::kWritable, false};
      return ErrnoStatus(err, "send");
    }
  }

  bool HasBufferedInput() const override { return false; }

  Status CloseWrite() override {
    if (::shutdown(fd_, SHUT_WR) != 0) return ErrnoStatus(errno, "shutdown");
    return Status::Ok();
  }

 private:
  int fd_;
};

}  // namespace

std::unique_ptr<Transport> MakeSocketTransport(int fd) { return std::make_unique<SocketTransport>(fd); }

}  // namespace ws
