// The byte stream of one accepted connection, as a server's connection loop
// sees it: plain TCP or Unix socket here, TLS from an adapter
// (adapters/tls). Everything is non-blocking: an operation that cannot go on
// says which readiness of the socket it waits for, and the loop calls again
// once the socket has it. No TLS library type appears here.
//
// Threads: a Transport belongs to one connection and is used on the thread
// that serves it (the event loop's). A TransportFactory is called on that
// thread too; whoever shares one factory between threads must say so in its
// own header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "platform/status.h"

namespace ws {

// What an operation that could not complete waits for.
enum class TransportWait : uint8_t {
  kNone,      // nothing: the operation completed
  kReadable,  // call again once the socket is readable
  kWritable,  // call again once the socket is writable
};

struct TransportIo {
  size_t bytes = 0;                           // bytes moved; 0 when waiting or at EOF
  TransportWait wait = TransportWait::kNone;  // bytes == 0: what to wait for
  bool eof = false;                           // Read only: the peer has finished sending
};

class Transport {
 public:
  virtual ~Transport() = default;

  // Drives the connection's opening handshake. kNone once it is complete
  // (at once for plain sockets); otherwise the readiness to wait for before
  // calling again. An error ends the connection.
  virtual Result<TransportWait> Handshake() = 0;

  // Reads up to `len` (> 0) bytes. An error (reset, a protocol violation)
  // ends the connection.
  virtual Result<TransportIo> Read(char* data, size_t len) = 0;

  // Writes up to `len` (> 0) bytes. After a Write that waited, the next
  // Write must start with the same bytes again, at least as many: a TLS
  // record may already hold them.
  virtual Result<TransportIo> Write(const char* data, size_t len) = 0;

  // True while bytes already taken from the socket wait inside the
  // transport: the socket will not become readable for them.
  virtual bool HasBufferedInput() const = 0;

  // Ends the sending direction (TLS sends its closing alert first), while
  // the peer may still send. Best effort for what is not yet written.
  virtual Status CloseWrite() = 0;

  // After a failed Handshake: true if the peer spoke plain HTTP to a
  // listener that expects TLS. Nothing has been written then, so the socket
  // may still carry a plain answer.
  virtual bool PeerSpokePlainHttp() const { return false; }
};

// Makes the Transport of each connection one listener accepts.
class TransportFactory {
 public:
  virtual ~TransportFactory() = default;

  // `fd` is the accepted, non-blocking socket. The Transport does not own it
  // and is destroyed before the caller closes it.
  virtual Result<std::unique_ptr<Transport>> Accept(int fd) = 0;

  // A short name for logs ("tls").
  virtual std::string Name() const = 0;
};

// A plain socket: recv/send on `fd`, which it does not own.
std::unique_ptr<Transport> MakeSocketTransport(int fd);

}  // namespace ws
