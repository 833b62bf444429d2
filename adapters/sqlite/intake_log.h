// The intake log: a small file beside the database (`<path>-intake`) where
// newly appended events become durable before they are acknowledged, so
// that an event the link delivers within moments never has to be written
// into the database at all.
//
// Why: every commit to the database writes whole pages (the table's last
// leaf, two index leaves, the totals, the freelist), 7 WAL frames and
// about three 4 KiB blocks of flash, whether it holds one event or twenty.
// At a trickle of events from many producers that was over 2,000 bytes
// written per 200-byte event. Here a commit is one chunk of whole 4 KiB
// blocks holding just the new events (and the delivery marks since the
// last chunk): at a trickle, one block per commit.
//
// Layout. The file is a sequence of chunks, each starting on a 4 KiB
// boundary and padded to one:
//
//   magic "WSIL" (4) | format 1 (4) | epoch (8) | payload length (4) |
//   CRC-32C of the header's first 20 bytes and the payload (4) |
//   payload: records, back to back
//
//   event record: 'E' | sequence i64 | priority u8 | accepted_us i64 |
//                 bytes u64 | id, stream, topic, record (each u32 length +
//                 bytes)
//   ack record:   'A' | sequence i64
//
// All integers little-endian. The first chunk sits at offset 0 and names the
// epoch: a random 64-bit value chosen each time the log starts over.
// Reading stops at the first chunk that is short, has another magic,
// format or epoch, or a wrong CRC: the store syncs every chunk that holds
// events before it writes the next, so only the last such chunk can be
// torn, and chunks left from earlier epochs (further into the file) end
// the log. An ack record applies to the events before it. Starting over writes a chunk
// of a new epoch at offset 0.
//
// The file is opened through an SQLite VFS as a journal file, so a VFS
// shim (the crash tests' disk that forgets unsynced writes) covers it like
// the database's own files. It is written only by whole-chunk writes and
// grows in steps of kIntakeGrowBytes written with zeros and synced once,
// so a chunk's sync never has to change the file's size.
//
// Threads: one thread at a time (the store's committer).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/priority.h"
#include "platform/status.h"

namespace ws::sqlite {

// An event held in the intake log: what the database's events row would
// hold (events with a TTL, replays and retries never come here).
struct IntakeEvent {
  int64_t sequence = 0;
  Priority priority = Priority::kNormal;
  int64_t accepted_us = 0;
  uint64_t bytes = 0;  // what it counts against the limits
  std::string id;
  std::string stream;
  std::string topic;
  std::string record;  // EncodeEventRecord
  // Leases of it that ended without an ack. Kept in memory only: a
  // restart counts from 0 again.
  int32_t attempts = 0;
};

inline constexpr size_t kIntakeBlock = 4096;
inline constexpr int64_t kIntakeGrowBytes = int64_t{256} << 10;

class IntakeLog {
 public:
  // Opens (creating it if absent) the log at `path` through the VFS named
  // `vfs` ("" = SQLite's default). As for any journal, SQLite's unix VFS
  // reads the mode of the database file, the part of `path` before its
  // last '-', which must exist (the store opens the database first). Appends to *events the events of the
  // current epoch that no ack record of that epoch names, in the order
  // written, and sets *highest_sequence to the highest sequence any record
  // of the epoch names (0 if none). kDataLoss when a chunk passes its
  // CRC but its records cannot be read (the file is damaged or not a log);
  // then nothing is appended.
  static Result<std::unique_ptr<IntakeLog>> Open(const std::string& path, const std::string& vfs,
                                                 std::vector<IntakeEvent>* events, int64_t* highest_sequence);

  ~IntakeLog();
  IntakeLog(const IntakeLog&) = delete;
  IntakeLog& operator=(const IntakeLog&) = delete;

  // Writes one chunk with `events` and `acks` after the last chunk (or at
  // offset 0 under a new epoch when Restart was called since) and, with
  // `sync`, syncs it. On failure the log stays as it was before the call:
  // the next Write goes to the same place.
  Status Write(std::span<const IntakeEvent* const> events, std::span<const int64_t> acks, bool sync);

  // The next Write starts the log over: offset 0, a new epoch. Only when
  // no event in the log is still needed (each was acknowledged or moved
  // into the database): the write at offset 0 may tear the first chunk.
  // Until it is done, a reopen finds the current epoch.
  void Restart();

  // Starts over at once: writes an empty chunk of a new epoch at offset 0
  // and syncs it. Afterwards a reopen finds nothing.
  Status Clear();

  // Bytes from offset 0 to the end of the last chunk (0 after Restart).
  int64_t used_bytes() const { return restart_ ? 0 : end_; }
  // Whether a reopen would find no event (even with no ack record after
  // it): nothing was found at open and no event written since, or the
  // last chunk written started the log over without events.
  bool clean() const { return clean_; }
  // Chunks written since open, and their bytes (padding included).
  uint64_t chunks_written() const { return chunks_written_; }
  uint64_t bytes_written() const { return bytes_written_; }

  // The chunk that Write would write (padded to whole blocks), without
  // writing it. Exposed for tests.
  static std::string EncodeChunk(uint64_t epoch, std::span<const IntakeEvent* const> events,
                                 std::span<const int64_t> acks);
  static uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

 private:
  IntakeLog(sqlite3_file* file, std::unique_ptr<char[]> storage, std::string path);
  Status WriteAt(int64_t offset, const std::string& bytes);
  Status EnsureSize(int64_t end);
  static uint64_t NewEpoch();

  std::unique_ptr<char[]> storage_;  // the sqlite3_file, sized by the VFS
  sqlite3_file* file_ = nullptr;
  std::string path_;
  uint64_t epoch_ = 0;
  uint64_t next_epoch_ = 0;  // the epoch the write after Restart starts
  int64_t end_ = 0;        // end of the last chunk (a multiple of kIntakeBlock)
  int64_t file_size_ = 0;  // as known after the last growth
  bool restart_ = false;
  bool clean_ = true;
  uint64_t chunks_written_ = 0;
  uint64_t bytes_written_ = 0;
};

}  // namespace ws::sqlite
