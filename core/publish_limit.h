// How many PUBLISHes the backbone link keeps waiting for their PUBACK, within
// its in-flight window: enough to fill the path to the broker, and not more.
//
// Why not simply the window: libmosquitto keeps the messages that wait for a
// PUBACK in a list and walks the whole list at every PUBACK. With 512 events
// waiting on a loopback broker, that walk was about a third of the link
// thread's samples in a drain, and the extra PUBLISHes bought nothing: they
// only waited in the broker's socket. On a long round trip, though, the link needs events/s x
// round-trip time of them in flight, or it cannot go faster than that.
//
// The limit follows the round trips it measures (the idea of TCP Vegas): the
// shortest round trip of the session is the path without a queue; if a
// round's average is longer, `limit x (1 - shortest / average)` PUBLISHes of
// the round were waiting in a queue somewhere (the broker's socket) rather
// than on the way. While fewer than kQueuedLow wait, the limit grows
// (doubling until the first decrease, then by 1/8); while more than
// kQueuedHigh wait, it shrinks by 1/8 (so never below 7/8 of kQueuedHigh: a
// round cannot have more in a queue than it had out). A round ends after
// `limit` PUBACKs. On loopback this keeps about a hundred PUBLISHes out; on
// a long path it grows to what the path holds plus that queue, up to the
// window.
//
// It shrinks only while PUBACKs come fast (limit / average round trip of
// at least kBusyAcksPerS): only then does the library's walk cost anything
// worth saving (scaled from the third of the link thread it took in a
// loopback drain, a walk of 512 at 10,000 PUBACKs/s is a few per cent of a
// core), and
// a path whose round trips vary by themselves (a cellular link)
// would otherwise look like a queue and get less than it can carry. Below
// that rate the limit grows to the window.
//
// Threads: not thread-safe; the link keeps it on its loop thread.
#pragma once

#include <cstdint>

namespace ws {

class PublishLimit {
 public:
  static constexpr uint32_t kStart = 64;        // at the start of a session
  static constexpr uint32_t kQueuedLow = 64;    // fewer waiting in a queue: grow
  static constexpr uint32_t kQueuedHigh = 128;  // more waiting in a queue: shrink
  static constexpr double kBusyAcksPerS = 10'000;  // ... but only at this rate or above

  // `ceiling`: the in-flight window (at least 1).
  explicit PublishLimit(uint32_t ceiling) { Reset(ceiling); }

  // A new session (possibly to another broker, over another path): forgets
  // the round trips and starts again from kStart, within `ceiling`.
  void Reset(uint32_t ceiling);

  // One PUBACK, `round_trip_us` after its PUBLISH was handed to the library.
  void OnAck(int64_t round_trip_us);

  uint32_t limit() const { return limit_; }
  // The shortest round trip of the session, 0 before the first PUBACK.
  int64_t shortest_round_trip_us() const { return shortest_us_ < 0 ? 0 : shortest_us_; }

 private:
  void EndRound();

  uint32_t ceiling_ = 1;
  uint32_t limit_ = 1;
  bool doubling_ = true;
  int64_t shortest_us_ = -1;
  // The round so far.
  uint32_t round_acks_ = 0;
  int64_t round_sum_us_ = 0;
};

}  // namespace ws
