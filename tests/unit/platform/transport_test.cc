// The plain socket Transport over a real socket pair: what the HTTP server's
// connection loop relies on (would-block becomes a wait, not an error; the
// peer's close is EOF; a reset is an error naming the call).
#include "platform/transport.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

#include "platform/unique_fd.h"

namespace ws {
namespace {

struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    ours.Reset(fds[0]);
    theirs.Reset(fds[1]);
  }
  UniqueFd ours;
  UniqueFd theirs;
};

TEST(SocketTransport, HandshakeIsImmediateAndBytesFlowBothWays) {
  SocketPair p;
  std::unique_ptr<Transport> t = MakeSocketTransport(p.ours.get());
  Result<TransportWait> hs = t->Handshake();
  ASSERT_TRUE(hs.ok());
  EXPECT_EQ(*hs, TransportWait::kNone);
  EXPECT_FALSE(t->PeerSpokePlainHttp());

  Result<TransportIo> w = t->Write("hello", 5);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->bytes, 5u);
  char buf[16];
  ASSERT_EQ(recv(p.theirs.get(), buf, sizeof buf, 0), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");

  ASSERT_EQ(send(p.theirs.get(), "abc", 3, 0), 3);
  Result<TransportIo> r = t->Read(buf, sizeof buf);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(std::string(buf, r->bytes), "abc");
  EXPECT_FALSE(r->eof);
  EXPECT_FALSE(t->HasBufferedInput());
}

TEST(SocketTransport, WouldBlockIsAWaitAndCloseIsEof) {
  SocketPair p;
  std::unique_ptr<Transport> t = MakeSocketTransport(p.ours.get());
  char buf[16];
  Result<TransportIo> r = t->Read(buf, sizeof buf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes, 0u);
  EXPECT_EQ(r->wait, TransportWait::kReadable);
  EXPECT_FALSE(r->eof);

  // Fill the socket until a write has to wait for writability.
  std::vector<char> chunk(64 * 1024, 'x');
  TransportIo last;
  for (int i = 0; i < 1000; ++i) {
    Result<TransportIo> w = t->Write(chunk.data(), chunk.size());
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    last = *w;
    if (w->bytes == 0) break;
  }
  EXPECT_EQ(last.bytes, 0u);
  EXPECT_EQ(last.wait, TransportWait::kWritable);

  // An orderly close by the peer (that read everything) is EOF, not an error.
  SocketPair q;
  std::unique_ptr<Transport> u = MakeSocketTransport(q.ours.get());
  q.theirs.Reset();
  r = u->Read(buf, sizeof buf);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->eof);
}

TEST(SocketTransport, CloseWriteLetsThePeerSeeEofAndWritingToAGonePeerFails) {
  SocketPair p;
  std::unique_ptr<Transport> t = MakeSocketTransport(p.ours.get());
  ASSERT_TRUE(t->CloseWrite().ok());
  char buf[4];
  EXPECT_EQ(recv(p.theirs.get(), buf, sizeof buf, 0), 0);

  SocketPair q;
  std::unique_ptr<Transport> u = MakeSocketTransport(q.ours.get());
  q.theirs.Reset();
  Result<TransportIo> w = u->Write("x", 1);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("send"), std::string::npos) << w.status().message();
}

}  // namespace
}  // namespace ws
