// IntakeLog on real files in a temporary folder: what a reopen recovers after
// clean closes, restarts, damaged or torn chunks, and (through the crash
// tests' FaultVfs) failed writes and syncs and power cuts. Damage is done
// with plain file I/O while no log is open; chunks that the log would never
// write are built here by hand from the layout the header documents.
#include "adapters/sqlite/intake_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tests/crash/fault_vfs.h"
#include "tests/support/test_support.h"

namespace ws::sqlite {
namespace {

using ws::testing::CutTiming;
using ws::testing::FaultError;
using ws::testing::FaultVfs;

constexpr int64_t kBlock = static_cast<int64_t>(kIntakeBlock);
constexpr size_t kChunkHeaderBytes = 24;

// --- building events ---------------------------------------------------------

// Binary content with NULs and high bytes, different for every seed.
std::string Binary(size_t n, int64_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>(static_cast<uint8_t>((static_cast<uint64_t>(seed) * 131u + i * 7u) % 251u));
  }
  if (n > 0) s[0] = '\0';
  return s;
}

IntakeEvent MakeEvent(int64_t sequence, Priority priority = Priority::kNormal, size_t record_bytes = 40) {
  IntakeEvent e;
  e.sequence = sequence;
  e.priority = priority;
  e.accepted_us = 1'700'000'000'000'000 + sequence * 1'001;
  e.bytes = 200 + static_cast<uint64_t>(sequence);
  e.id = "ev-" + std::to_string(sequence);
  e.stream = "stream-" + std::to_string(sequence % 3);
  e.topic = "site/7/line-" + std::to_string(sequence);
  e.record = Binary(record_bytes, sequence);
  return e;
}

std::vector<const IntakeEvent*> Ptrs(const std::vector<IntakeEvent>& events) {
  std::vector<const IntakeEvent*> out;
  for (const IntakeEvent& e : events) out.push_back(&e);
  return out;
}

std::string Escaped(const std::string& s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\' && c != '"') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

// Every field, so that comparing descriptions compares events and a failure
// shows which field differs.
std::string Describe(const IntakeEvent& e) {
  return "#" + std::to_string(e.sequence) + " p=" + std::to_string(static_cast<int>(e.priority)) +
         " at=" + std::to_string(e.accepted_us) + " bytes=" + std::to_string(e.bytes) + " id=\"" + Escaped(e.id) +
         "\" stream=\"" + Escaped(e.stream) + "\" topic=\"" + Escaped(e.topic) + "\" record(" +
         std::to_string(e.record.size()) + ")=\"" + Escaped(e.record.substr(0, 64)) + "\" record_hash=" +
         std::to_string(std::hash<std::string>{}(e.record));
}

std::vector<std::string> Describe(const std::vector<IntakeEvent>& events) {
  std::vector<std::string> out;
  for (const IntakeEvent& e : events) out.push_back(Describe(e));
  return out;
}

// Descriptions of the events of several chunks, in order.
std::vector<std::string> Expected(std::initializer_list<const std::vector<IntakeEvent>*> chunks) {
  std::vector<std::string> out;
  for (const std::vector<IntakeEvent>* chunk : chunks) {
    for (const IntakeEvent& e : *chunk) out.push_back(Describe(e));
  }
  return out;
}

// --- plain file I/O ------------------------------------------------------------

int64_t FileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_size);
}

bool FileExists(const std::string& path) { return FileSize(path) >= 0; }

bool PatchFile(const std::string& path, int64_t offset, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
  if (fd < 0) return false;
  const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
  const bool ok = n == static_cast<ssize_t>(bytes.size());
  return ::close(fd) == 0 && ok;
}

bool ReplaceFile(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return false;
  const ssize_t n = ::write(fd, bytes.data(), bytes.size());
  const bool ok = n == static_cast<ssize_t>(bytes.size());
  return ::close(fd) == 0 && ok;
}

std::string ReadRange(const std::string& path, int64_t offset, size_t n) {
  std::string out(n, '\0');
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return "";
  const ssize_t got = ::pread(fd, out.data(), n, static_cast<off_t>(offset));
  ::close(fd);
  out.resize(got > 0 ? static_cast<size_t>(got) : 0);
  return out;
}

bool FlipByte(const std::string& path, int64_t offset) {
  std::string b = ReadRange(path, offset, 1);
  if (b.size() != 1) return false;
  b[0] = static_cast<char>(b[0] ^ 0x5a);
  return PatchFile(path, offset, b);
}

// --- the layout, written independently of the implementation -------------------

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}
uint64_t GetU64(const std::string& s, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}
void PutString(std::string* s, const std::string& v) {
  PutU32(s, static_cast<uint32_t>(v.size()));
  *s += v;
}

std::string EventRecord(const IntakeEvent& e) {
  std::string r = "E";
  PutU64(&r, static_cast<uint64_t>(e.sequence));
  r.push_back(static_cast<char>(static_cast<uint8_t>(e.priority)));
  PutU64(&r, static_cast<uint64_t>(e.accepted_us));
  PutU64(&r, e.bytes);
  PutString(&r, e.id);
  PutString(&r, e.stream);
  PutString(&r, e.topic);
  PutString(&r, e.record);
  return r;
}

std::string AckRecord(int64_t sequence) {
  std::string r = "A";
  PutU64(&r, static_cast<uint64_t>(sequence));
  return r;
}

// A chunk as the header lays it out: its CRC covers the header's first 20
// bytes and then the payload; padded with zeros to whole blocks.
std::string HandChunk(uint64_t epoch, const std::string& payload) {
  std::string c = "WSIL";
  PutU32(&c, 1);
  PutU64(&c, epoch);
  PutU32(&c, static_cast<uint32_t>(payload.size()));
  const uint32_t crc = IntakeLog::Crc32c(payload.data(), payload.size(), IntakeLog::Crc32c(c.data(), c.size()));
  PutU32(&c, crc);
  c += payload;
  c.resize((c.size() + kIntakeBlock - 1) / kIntakeBlock * kIntakeBlock, '\0');
  return c;
}

int64_t PaddedChunkBytes(const std::vector<IntakeEvent>& events, size_t acks) {
  size_t n = kChunkHeaderBytes + acks * 9;
  for (const IntakeEvent& e : events) n += EventRecord(e).size();
  return static_cast<int64_t>((n + kIntakeBlock - 1) / kIntakeBlock * kIntakeBlock);
}

// CRC-32C bit by bit (reflected polynomial 0x82F63B78), as a reference.
uint32_t ReferenceCrc32c(const std::string& data) {
  uint32_t crc = 0xffffffffu;
  for (char ch : data) {
    crc ^= static_cast<uint8_t>(ch);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ ((crc & 1u) != 0 ? 0x82F63B78u : 0u);
  }
  return crc ^ 0xffffffffu;
}

// --- the fixture -----------------------------------------------------------------

struct Recovered {
  Status status;
  std::vector<std::string> events;  // Describe() of each, in the order recovered
  int64_t highest = -1;
  int64_t used_bytes = -1;
};

class IntakeLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The log sits beside its database, which always exists: SQLite's unix
    // VFS gives a journal file the owner and mode of its database file.
    std::FILE* f = std::fopen(db_path_.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fclose(f), 0);
  }

  std::unique_ptr<IntakeLog> OpenLog(std::vector<IntakeEvent>* events = nullptr, int64_t* highest = nullptr) {
    std::vector<IntakeEvent> ignored_events;
    int64_t ignored_highest = -1;
    auto log = IntakeLog::Open(path_, vfs_, events != nullptr ? events : &ignored_events,
                               highest != nullptr ? highest : &ignored_highest);
    EXPECT_TRUE(log.ok()) << log.status().ToString();
    if (!log.ok()) return nullptr;
    return std::move(log).value();
  }

  // Opens the log as a restart would, notes what it recovered and closes it.
  Recovered Recover() {
    Recovered r;
    std::vector<IntakeEvent> events;
    int64_t highest = -1;
    auto log = IntakeLog::Open(path_, vfs_, &events, &highest);
    r.status = log.status();
    r.events = Describe(events);
    r.highest = highest;
    if (log.ok()) r.used_bytes = (*log)->used_bytes();
    return r;
  }

  static Status Write(IntakeLog& log, const std::vector<IntakeEvent>& events, const std::vector<int64_t>& acks = {},
                      bool sync = true) {
    const std::vector<const IntakeEvent*> ptrs = Ptrs(events);
    return log.Write(ptrs, acks, sync);
  }

  uint64_t EpochAt(int64_t offset) { return GetU64(ReadRange(path_, offset + 8, 8) + std::string(8, '\0'), 0); }

  ws::testing::TempDir dir_;
  std::string db_path_ = dir_.File("outbox.db");
  std::string path_ = db_path_ + "-intake";
  std::string vfs_;  // SQLite's default
};

// --- CRC-32C -----------------------------------------------------------------------

TEST(IntakeLogCrc32cTest, KnownAnswers) {
  EXPECT_EQ(IntakeLog::Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(IntakeLog::Crc32c("", 0), 0u);
  // RFC 3720 (iSCSI), appendix B.4.
  const std::string zeros(32, '\0');
  const std::string ones(32, '\xff');
  std::string up;
  std::string down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(IntakeLog::Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(IntakeLog::Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(IntakeLog::Crc32c(up.data(), up.size()), 0x46DD794Eu);
  EXPECT_EQ(IntakeLog::Crc32c(down.data(), down.size()), 0x113FDB5Cu);
}

TEST(IntakeLogCrc32cTest, ContinuesFromAPreviousValue) {
  EXPECT_EQ(IntakeLog::Crc32c("56789", 5, IntakeLog::Crc32c("1234", 4)), 0xE3069283u);
  const std::string s = "123456789";
  for (size_t split = 0; split <= s.size(); ++split) {
    const uint32_t head = IntakeLog::Crc32c(s.data(), split);
    EXPECT_EQ(IntakeLog::Crc32c(s.data() + split, s.size() - split, head), 0xE3069283u) << "split at " << split;
  }
}

// Word-at-a-time implementations go wrong at odd lengths and alignments.
TEST(IntakeLogCrc32cTest, MatchesABitwiseReferenceAtEveryAlignmentAndLength) {
  const std::string data = Binary(300, 99) + Binary(300, 12345);
  for (size_t start = 0; start < 16; ++start) {
    for (size_t n = 0; n < 80; ++n) {
      const std::string piece = data.substr(start, n);
      ASSERT_EQ(IntakeLog::Crc32c(data.data() + start, n), ReferenceCrc32c(piece)) << start << "+" << n;
    }
  }
  EXPECT_EQ(IntakeLog::Crc32c(data.data() + 3, data.size() - 3), ReferenceCrc32c(data.substr(3)));
}

// --- layout --------------------------------------------------------------------------

TEST_F(IntakeLogTest, EncodeChunkFollowsTheDocumentedLayout) {
  std::vector<IntakeEvent> events = {MakeEvent(41, Priority::kHigh), MakeEvent(42, Priority::kBulk, 0)};
  events[1].stream.clear();
  const std::vector<int64_t> acks = {7, 3};
  const uint64_t epoch = 0x0123456789abcdefULL;
  const std::string chunk = IntakeLog::EncodeChunk(epoch, Ptrs(events), acks);

  ASSERT_EQ(chunk.size(), kIntakeBlock);
  EXPECT_EQ(chunk.substr(0, 4), "WSIL");
  EXPECT_EQ(GetU32(chunk, 4), 1u);
  EXPECT_EQ(GetU64(chunk, 8), epoch);
  const uint32_t length = GetU32(chunk, 16);
  std::string payload = EventRecord(events[0]) + EventRecord(events[1]) + AckRecord(7) + AckRecord(3);
  ASSERT_EQ(length, payload.size());
  const uint32_t crc = IntakeLog::Crc32c(chunk.data() + 24, length, IntakeLog::Crc32c(chunk.data(), 20));
  EXPECT_EQ(GetU32(chunk, 20), crc);
  EXPECT_EQ(chunk.find_first_not_of('\0', 24 + length), std::string::npos) << "padding is zeros";

  // The records, in any order of events against acks but events in order.
  const std::string got = chunk.substr(24, length);
  std::vector<std::string> records;
  std::vector<std::string> event_records;
  size_t at = 0;
  while (at < got.size()) {
    if (got[at] == 'A') {
      records.push_back(got.substr(at, 9));
      at += 9;
      continue;
    }
    ASSERT_EQ(got[at], 'E') << "at " << at;
    size_t end = at + 1 + 8 + 1 + 8 + 8;
    for (int field = 0; field < 4; ++field) end += 4 + GetU32(got, end);
    ASSERT_LE(end, got.size());
    event_records.push_back(got.substr(at, end - at));
    at = end;
  }
  EXPECT_EQ(event_records, (std::vector<std::string>{EventRecord(events[0]), EventRecord(events[1])}));
  std::sort(records.begin(), records.end());
  std::vector<std::string> want_acks = {AckRecord(3), AckRecord(7)};
  std::sort(want_acks.begin(), want_acks.end());
  EXPECT_EQ(records, want_acks);

  // An empty chunk is a header and padding.
  const std::string empty = IntakeLog::EncodeChunk(epoch, {}, {});
  ASSERT_EQ(empty.size(), kIntakeBlock);
  EXPECT_EQ(GetU32(empty, 16), 0u);
  EXPECT_EQ(GetU32(empty, 20), IntakeLog::Crc32c(empty.data(), 20));
}

TEST_F(IntakeLogTest, WriteWritesTheChunkEncodeChunkDescribes) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::vector<IntakeEvent> events = {MakeEvent(1), MakeEvent(2, Priority::kControl, 5000)};
  ASSERT_TRUE(Write(*log, events, {}).ok());
  const std::vector<IntakeEvent> more = {MakeEvent(3)};
  ASSERT_TRUE(Write(*log, more, {1}).ok());
  log.reset();

  const uint64_t epoch = EpochAt(0);
  const std::string first = IntakeLog::EncodeChunk(epoch, Ptrs(events), {});
  ASSERT_EQ(first.size(), 2 * kIntakeBlock);
  EXPECT_EQ(ReadRange(path_, 0, first.size()), first);
  const std::vector<int64_t> acks = {1};
  const std::string second = IntakeLog::EncodeChunk(epoch, Ptrs(more), acks);
  EXPECT_EQ(ReadRange(path_, static_cast<int64_t>(first.size()), second.size()), second);
}

// --- round trips ----------------------------------------------------------------------

TEST_F(IntakeLogTest, AFreshLogIsCreatedEmpty) {
  std::vector<IntakeEvent> events;
  int64_t highest = -1;
  auto log = OpenLog(&events, &highest);
  ASSERT_NE(log, nullptr);
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(highest, 0);
  EXPECT_EQ(log->used_bytes(), 0);
  EXPECT_EQ(log->chunks_written(), 0u);
  EXPECT_EQ(log->bytes_written(), 0u);
  EXPECT_TRUE(FileExists(path_));
  log.reset();

  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.highest, 0);
}

TEST_F(IntakeLogTest, UnackedEventsComeBackInWriteOrderWithEveryField) {
  std::vector<IntakeEvent> first = {MakeEvent(1, Priority::kControl), MakeEvent(2, Priority::kHigh),
                                    MakeEvent(3, Priority::kNormal, 0), MakeEvent(4, Priority::kBulk, 700)};
  first[0].id = std::string("id\0with-nul", 11);
  first[1].stream.clear();
  first[2].topic = "plant/\xc3\xa9tage/\x01";
  first[3].bytes = uint64_t{1} << 40;
  first[3].accepted_us = -5;
  // Sequences out of order: the order written is kept, not sorted.
  std::vector<IntakeEvent> second = {MakeEvent(6, Priority::kHigh, 3), MakeEvent(5, Priority::kBulk, 100)};
  second[0].record = std::string("\0\0\0", 3);
  std::vector<IntakeEvent> third = {MakeEvent(7, Priority::kNormal, 64)};
  third[0].id.clear();

  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, first).ok());
  ASSERT_TRUE(Write(*log, second, {2}).ok());
  // Acks of an earlier chunk's and of an event the log never held (one that
  // went to the database); the latter is the highest sequence of all.
  ASSERT_TRUE(Write(*log, third, {4, 5, 12}).ok());
  EXPECT_EQ(log->chunks_written(), 3u);
  EXPECT_EQ(log->used_bytes() % kBlock, 0);
  EXPECT_EQ(log->bytes_written() % kIntakeBlock, 0u);
  EXPECT_EQ(static_cast<int64_t>(log->bytes_written()), log->used_bytes());
  const int64_t used = log->used_bytes();
  log.reset();

  std::vector<IntakeEvent> events;
  int64_t highest = -1;
  auto reopened = OpenLog(&events, &highest);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(Describe(events), (std::vector<std::string>{Describe(first[0]), Describe(first[2]),
                                                        Describe(second[0]), Describe(third[0])}));
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].id, first[0].id);
  EXPECT_EQ(events[2].record, second[0].record);
  EXPECT_EQ(events[1].record, "");
  EXPECT_EQ(highest, 12);
  EXPECT_EQ(reopened->used_bytes(), used);
  EXPECT_EQ(reopened->chunks_written(), 0u);
  EXPECT_EQ(reopened->bytes_written(), 0u);
}

TEST_F(IntakeLogTest, OpenAppendsToTheEventsItIsGiven) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::vector<IntakeEvent> events = {MakeEvent(1), MakeEvent(2)};
  ASSERT_TRUE(Write(*log, events).ok());
  log.reset();

  std::vector<IntakeEvent> out = {MakeEvent(100)};
  int64_t highest = -1;
  ASSERT_NE(OpenLog(&out, &highest), nullptr);
  EXPECT_EQ(Describe(out), (std::vector<std::string>{Describe(MakeEvent(100)), Describe(events[0]),
                                                     Describe(events[1])}));
  EXPECT_EQ(highest, 2);
}

TEST_F(IntakeLogTest, HighestSequenceCountsAckRecords) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, {MakeEvent(3)}).ok());
  ASSERT_TRUE(Write(*log, {}, {3, 40}).ok());
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.highest, 40);
}

// The header: recovered are the events that no ack record of the epoch
// names, wherever that record is.
TEST_F(IntakeLogTest, AnEventAckedInItsOwnChunkIsNotRecovered) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::vector<IntakeEvent> events = {MakeEvent(1), MakeEvent(2), MakeEvent(3)};
  ASSERT_TRUE(Write(*log, events, {2}).ok());
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, (std::vector<std::string>{Describe(events[0]), Describe(events[2])}));
  EXPECT_EQ(r.highest, 3);
}

TEST_F(IntakeLogTest, ReopenedLogAppendsAfterTheRecoveredChunks) {
  const std::vector<IntakeEvent> first = {MakeEvent(1), MakeEvent(2)};
  const std::vector<IntakeEvent> second = {MakeEvent(3, Priority::kHigh, 2000), MakeEvent(4)};
  const std::vector<IntakeEvent> third = {MakeEvent(5)};
  const std::vector<IntakeEvent> fourth = {MakeEvent(6)};
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(Write(*log, first).ok());
    ASSERT_TRUE(Write(*log, second).ok());
  }
  int64_t used = 0;
  {
    std::vector<IntakeEvent> events;
    int64_t highest = -1;
    auto log = OpenLog(&events, &highest);
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(Describe(events), Expected({&first, &second}));
    EXPECT_EQ(highest, 4);
    const int64_t before = log->used_bytes();
    EXPECT_EQ(before, 2 * kBlock);
    ASSERT_TRUE(Write(*log, third, {1}).ok());
    EXPECT_EQ(log->used_bytes(), before + kBlock);
    EXPECT_EQ(log->chunks_written(), 1u);
    EXPECT_EQ(log->bytes_written(), kIntakeBlock);
    used = log->used_bytes();
  }
  {
    std::vector<IntakeEvent> events;
    int64_t highest = -1;
    auto log = OpenLog(&events, &highest);
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(Describe(events),
              (std::vector<std::string>{Describe(first[1]), Describe(second[0]), Describe(second[1]),
                                        Describe(third[0])}));
    EXPECT_EQ(highest, 5);
    EXPECT_EQ(log->used_bytes(), used);
    ASSERT_TRUE(Write(*log, fourth, {3}).ok());
  }
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, (std::vector<std::string>{Describe(first[1]), Describe(second[1]), Describe(third[0]),
                                                Describe(fourth[0])}));
  EXPECT_EQ(r.highest, 6);
}

// --- sizes ---------------------------------------------------------------------------

TEST_F(IntakeLogTest, ChunksAreWholeBlocksAndALargeChunkSpansSeveral) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::vector<IntakeEvent> small = {MakeEvent(1)};
  ASSERT_TRUE(Write(*log, small).ok());
  EXPECT_EQ(log->used_bytes(), kBlock);
  EXPECT_EQ(log->bytes_written(), kIntakeBlock);

  std::vector<IntakeEvent> large;
  for (int64_t s = 2; s <= 11; ++s) large.push_back(MakeEvent(s, kAllPriorities[static_cast<size_t>(s) % 4], 1000));
  const int64_t large_bytes = PaddedChunkBytes(large, 1);
  ASSERT_EQ(large_bytes, 3 * kBlock);
  ASSERT_TRUE(Write(*log, large, {1}).ok());
  EXPECT_EQ(log->used_bytes(), kBlock + large_bytes);
  EXPECT_EQ(static_cast<int64_t>(log->bytes_written()), kBlock + large_bytes);
  EXPECT_EQ(log->chunks_written(), 2u);

  // A payload that ends exactly on a block boundary after the header.
  std::vector<IntakeEvent> exact = {MakeEvent(12, Priority::kNormal, 0)};
  const size_t record_bytes = EventRecord(exact[0]).size();
  exact[0].record = Binary(kIntakeBlock - kChunkHeaderBytes - record_bytes, 12);
  ASSERT_EQ(PaddedChunkBytes(exact, 0), kBlock);
  ASSERT_TRUE(Write(*log, exact).ok());
  EXPECT_EQ(log->used_bytes(), 5 * kBlock);
  log.reset();

  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&large, &exact}));
  EXPECT_EQ(r.highest, 12);
  EXPECT_EQ(r.used_bytes, 5 * kBlock);
}

// SQLite's unix VFS takes less than 128 KiB per write call; chunks and the
// file's growth are larger than that here.
TEST_F(IntakeLogTest, TheFileGrowsPastOneGrowStepAndEveryChunkRoundTrips) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  std::vector<std::vector<IntakeEvent>> chunks;
  int64_t sequence = 0;
  while (log->used_bytes() <= kIntakeGrowBytes + 200 * 1024) {
    std::vector<IntakeEvent> chunk = {MakeEvent(++sequence, Priority::kBulk, 300 * 1024),
                                      MakeEvent(++sequence, Priority::kNormal, 10)};
    const int64_t before = log->used_bytes();
    ASSERT_TRUE(Write(*log, chunk).ok()) << "chunk " << chunks.size();
    EXPECT_EQ(log->used_bytes(), before + PaddedChunkBytes(chunk, 0));
    chunks.push_back(std::move(chunk));
  }
  // One chunk larger than a whole grow step.
  std::vector<IntakeEvent> huge = {MakeEvent(++sequence, Priority::kHigh, 1200 * 1024)};
  const int64_t before = log->used_bytes();
  ASSERT_TRUE(Write(*log, huge, {1}).ok());
  EXPECT_EQ(log->used_bytes(), before + PaddedChunkBytes(huge, 1));
  EXPECT_EQ(static_cast<int64_t>(log->bytes_written()), log->used_bytes());
  const int64_t used = log->used_bytes();
  log.reset();

  const int64_t size = FileSize(path_);
  EXPECT_GE(size, used);
  EXPECT_EQ(size % kIntakeGrowBytes, 0) << "grows in steps of kIntakeGrowBytes";

  std::vector<std::string> want;
  for (const auto& chunk : chunks) {
    for (const IntakeEvent& e : chunk) {
      if (e.sequence != 1) want.push_back(Describe(e));
    }
  }
  want.push_back(Describe(huge[0]));
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, want);
  EXPECT_EQ(r.highest, sequence);
  EXPECT_EQ(r.used_bytes, used);
}

// --- Restart and Clear -------------------------------------------------------------

TEST_F(IntakeLogTest, RestartAloneLeavesTheCurrentEpochOnDisk) {
  const std::vector<IntakeEvent> first = {MakeEvent(1), MakeEvent(2)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, first).ok());
  log->Restart();
  EXPECT_EQ(log->used_bytes(), 0);
  log.reset();

  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&first}));
  EXPECT_EQ(r.highest, 2);
}

TEST_F(IntakeLogTest, AfterRestartTheNextWriteStartsANewEpochAtOffsetZero) {
  const std::vector<IntakeEvent> first = {MakeEvent(1), MakeEvent(2)};
  const std::vector<IntakeEvent> second = {MakeEvent(3)};
  const std::vector<IntakeEvent> third = {MakeEvent(4)};
  const std::vector<IntakeEvent> fourth = {MakeEvent(5)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, first).ok());
  ASSERT_TRUE(Write(*log, second).ok());
  ASSERT_TRUE(Write(*log, third).ok());
  ASSERT_EQ(log->used_bytes(), 3 * kBlock);
  const uint64_t old_epoch = EpochAt(0);

  log->Restart();
  EXPECT_EQ(log->used_bytes(), 0);
  const std::vector<IntakeEvent> fresh = {MakeEvent(10, Priority::kHigh)};
  ASSERT_TRUE(Write(*log, fresh).ok());
  EXPECT_EQ(log->used_bytes(), kBlock);
  const uint64_t new_epoch = EpochAt(0);
  EXPECT_NE(new_epoch, old_epoch);
  // The old epoch's second and third chunks are still there behind it.
  EXPECT_EQ(ReadRange(path_, kBlock, 4), "WSIL");
  EXPECT_EQ(EpochAt(kBlock), old_epoch);
  EXPECT_EQ(EpochAt(2 * kBlock), old_epoch);
  log.reset();

  Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&fresh}));
  EXPECT_EQ(r.highest, 10);
  EXPECT_EQ(r.used_bytes, kBlock);

  // The next chunk of the new epoch replaces the old second chunk.
  log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, fourth, {10}).ok());
  EXPECT_EQ(log->used_bytes(), 2 * kBlock);
  log.reset();
  EXPECT_EQ(EpochAt(kBlock), new_epoch);
  r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&fourth}));
  EXPECT_EQ(r.highest, 10);
}

TEST_F(IntakeLogTest, RestartThenWriteInTheSameSessionKeepsAppending) {
  const std::vector<IntakeEvent> old_events = {MakeEvent(1), MakeEvent(2), MakeEvent(3)};
  const std::vector<IntakeEvent> a = {MakeEvent(4)};
  const std::vector<IntakeEvent> b = {MakeEvent(5, Priority::kBulk, 6000)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  for (const IntakeEvent& e : old_events) ASSERT_TRUE(Write(*log, {e}).ok());
  log->Restart();
  ASSERT_TRUE(Write(*log, a).ok());
  ASSERT_TRUE(Write(*log, b).ok());
  EXPECT_EQ(log->used_bytes(), 3 * kBlock);
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&a, &b}));
  EXPECT_EQ(r.highest, 5);
}

TEST_F(IntakeLogTest, ClearLeavesNothingToRecover) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, {MakeEvent(1), MakeEvent(2)}).ok());
  ASSERT_TRUE(Write(*log, {MakeEvent(3)}, {1}).ok());
  const uint64_t old_epoch = EpochAt(0);
  ASSERT_TRUE(log->Clear().ok());
  EXPECT_EQ(log->used_bytes(), kBlock);
  EXPECT_NE(EpochAt(0), old_epoch);
  log.reset();

  Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.highest, 0);

  // And the log goes on after the empty chunk.
  log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::vector<IntakeEvent> after = {MakeEvent(7)};
  ASSERT_TRUE(Write(*log, after).ok());
  log.reset();
  r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&after}));
  EXPECT_EQ(r.highest, 7);
}

TEST_F(IntakeLogTest, ClearAfterRestartAlsoLeavesNothing) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, {MakeEvent(1)}).ok());
  log->Restart();
  ASSERT_TRUE(log->Clear().ok());
  const std::vector<IntakeEvent> after = {MakeEvent(2)};
  ASSERT_TRUE(Write(*log, after).ok());
  EXPECT_EQ(log->used_bytes(), 2 * kBlock);
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&after}));
}

// --- damage ---------------------------------------------------------------------------

class IntakeLogDamageTest : public IntakeLogTest {
 protected:
  // Three chunks; the third spans three blocks.
  void WriteThreeChunks() {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(Write(*log, first_).ok());
    end1_ = log->used_bytes();
    ASSERT_TRUE(Write(*log, second_, {1}).ok());
    end2_ = log->used_bytes();
    ASSERT_TRUE(Write(*log, third_, {2}).ok());
    end3_ = log->used_bytes();
    ASSERT_EQ(end1_, kBlock);
    ASSERT_EQ(end2_, 2 * kBlock);
    ASSERT_EQ(end3_, 5 * kBlock);
  }

  // What a reopen must find when the third chunk is unreadable, and that the
  // next chunk replaces it.
  void ExpectFirstTwoChunksThenAppend(const std::string& what) {
    SCOPED_TRACE(what);
    std::vector<IntakeEvent> events;
    int64_t highest = -1;
    auto log = OpenLog(&events, &highest);
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(Describe(events), (std::vector<std::string>{Describe(first_[1]), Describe(second_[0])}));
    EXPECT_EQ(highest, 3);
    EXPECT_EQ(log->used_bytes(), end2_);
    ASSERT_TRUE(Write(*log, fourth_).ok());
    EXPECT_EQ(log->used_bytes(), end2_ + kBlock);
    log.reset();
    const Recovered r = Recover();
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.events,
              (std::vector<std::string>{Describe(first_[1]), Describe(second_[0]), Describe(fourth_[0])}));
    EXPECT_EQ(r.highest, 9);
  }

  const std::vector<IntakeEvent> first_ = {MakeEvent(1), MakeEvent(2)};
  const std::vector<IntakeEvent> second_ = {MakeEvent(3, Priority::kHigh)};
  const std::vector<IntakeEvent> third_ = {MakeEvent(4, Priority::kBulk, 9000), MakeEvent(5)};
  const std::vector<IntakeEvent> fourth_ = {MakeEvent(9)};
  int64_t end1_ = 0;
  int64_t end2_ = 0;
  int64_t end3_ = 0;
};

TEST_F(IntakeLogDamageTest, AllThreeChunksAreReadWhenNothingIsDamaged) {
  ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, (std::vector<std::string>{Describe(second_[0]), Describe(third_[0]), Describe(third_[1])}));
  EXPECT_EQ(r.highest, 5);
  EXPECT_EQ(r.used_bytes, end3_);
}

TEST_F(IntakeLogDamageTest, AFlippedPayloadByteEndsTheLogBeforeThatChunk) {
  ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
  ASSERT_TRUE(FlipByte(path_, end2_ + 24 + 5000));
  ExpectFirstTwoChunksThenAppend("payload byte flipped");
}

TEST_F(IntakeLogDamageTest, AFlippedByteInTheFirstRecordEndsTheLogBeforeThatChunk) {
  ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
  ASSERT_TRUE(FlipByte(path_, end2_ + 24 + 1));  // the sequence of the first event
  ExpectFirstTwoChunksThenAppend("sequence flipped");
}

TEST_F(IntakeLogDamageTest, EveryDamagedHeaderFieldEndsTheLogBeforeThatChunk) {
  struct Case {
    const char* field;
    int64_t offset;
  };
  for (const Case c : {Case{"magic", 0}, Case{"format", 4}, Case{"epoch", 9}, Case{"length", 16},
                       Case{"length high byte", 19}, Case{"crc", 22}}) {
    ws::testing::TempDir dir;
    db_path_ = dir.File("outbox.db");
    path_ = db_path_ + "-intake";
    ASSERT_TRUE(PatchFile(db_path_, 0, ""));
    ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
    ASSERT_TRUE(FlipByte(path_, end2_ + c.offset));
    ASSERT_NO_FATAL_FAILURE(ExpectFirstTwoChunksThenAppend(c.field));
  }
}

TEST_F(IntakeLogDamageTest, ALastChunkCutShortEndsTheLogBeforeIt) {
  for (const int64_t keep : {int64_t{0}, int64_t{10}, int64_t{24}, int64_t{100}, kBlock + 7, 2 * kBlock}) {
    ws::testing::TempDir dir;
    db_path_ = dir.File("outbox.db");
    path_ = db_path_ + "-intake";
    ASSERT_TRUE(PatchFile(db_path_, 0, ""));
    ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
    ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(end2_ + keep)), 0);
    ExpectFirstTwoChunksThenAppend("cut " + std::to_string(keep) + " bytes into the third chunk");
  }
}

TEST_F(IntakeLogDamageTest, AChunkOfAnotherEpochEndsTheLog) {
  ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
  const uint64_t epoch = EpochAt(0);
  // Valid in every way but its epoch.
  const std::string foreign = HandChunk(epoch ^ 1, EventRecord(MakeEvent(50)));
  ASSERT_TRUE(PatchFile(path_, end2_, foreign));
  ExpectFirstTwoChunksThenAppend("foreign epoch");
}

TEST_F(IntakeLogDamageTest, AChunkBuiltFromTheHeaderIsRead) {
  ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
  const uint64_t epoch = EpochAt(0);
  const IntakeEvent e = MakeEvent(60, Priority::kControl, 33);
  ASSERT_TRUE(PatchFile(path_, end3_, HandChunk(epoch, EventRecord(e) + AckRecord(4) + AckRecord(61))));
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, (std::vector<std::string>{Describe(second_[0]), Describe(third_[1]), Describe(e)}));
  EXPECT_EQ(r.highest, 61);
  EXPECT_EQ(r.used_bytes, end3_ + kBlock);
}

// Payloads whose CRC is right but whose records cannot be read.
std::vector<std::pair<std::string, std::string>> GarbagePayloads() {
  const std::string good = EventRecord(MakeEvent(70));
  std::string bad_priority = good;
  bad_priority[9] = static_cast<char>(kPriorityCount);
  std::string huge_id = good.substr(0, 26);
  PutU32(&huge_id, 0xfffffff0u);
  huge_id += "xyz";
  return {
      {"unknown record type", "X" + std::string(12, '\0')},
      {"event cut short", good.substr(0, 20)},
      {"event cut inside its record", good.substr(0, good.size() - 3)},
      {"ack cut short", AckRecord(5).substr(0, 4)},
      {"length beyond the payload", huge_id},
      {"priority out of range", bad_priority},
      {"good event then a stray byte", good + "Z"},
      {"good event then a NUL", good + std::string(1, '\0')},
  };
}

TEST_F(IntakeLogTest, AFirstChunkWithAGoodCrcButUnreadableRecordsIsDataLoss) {
  for (const auto& [what, payload] : GarbagePayloads()) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(ReplaceFile(path_, HandChunk(0x5eed, payload)));
    std::vector<IntakeEvent> events = {MakeEvent(1)};
    int64_t highest = -1;
    auto log = IntakeLog::Open(path_, vfs_, &events, &highest);
    ASSERT_FALSE(log.ok());
    EXPECT_EQ(log.status().code(), StatusCode::kDataLoss) << log.status().ToString();
    EXPECT_EQ(events.size(), 1u) << "nothing appended";
  }
}

TEST_F(IntakeLogDamageTest, ALaterChunkWithAGoodCrcButUnreadableRecordsIsDataLoss) {
  for (const auto& [what, payload] : GarbagePayloads()) {
    SCOPED_TRACE(what);
    ws::testing::TempDir dir;
    db_path_ = dir.File("outbox.db");
    path_ = db_path_ + "-intake";
    ASSERT_TRUE(PatchFile(db_path_, 0, ""));
    ASSERT_NO_FATAL_FAILURE(WriteThreeChunks());
    // The third chunk replaced by one of the log's own epoch.
    ASSERT_TRUE(PatchFile(path_, end2_, HandChunk(EpochAt(0), payload)));
    std::vector<IntakeEvent> events = {MakeEvent(1)};
    int64_t highest = -1;
    auto log = IntakeLog::Open(path_, vfs_, &events, &highest);
    ASSERT_FALSE(log.ok());
    EXPECT_EQ(log.status().code(), StatusCode::kDataLoss) << log.status().ToString();
    EXPECT_EQ(events.size(), 1u) << "nothing appended";
  }
}

TEST_F(IntakeLogTest, AFileOfZerosOrOfSomethingElseHoldsNoEvents) {
  for (const std::string& content :
       {std::string(), std::string(3 * kIntakeBlock, '\0'), std::string("not a log at all\n")}) {
    ASSERT_TRUE(ReplaceFile(path_, content));
    std::vector<IntakeEvent> events;
    int64_t highest = -1;
    auto log = OpenLog(&events, &highest);
    ASSERT_NE(log, nullptr);
    EXPECT_TRUE(events.empty());
    EXPECT_EQ(highest, 0);
    const std::vector<IntakeEvent> one = {MakeEvent(1)};
    ASSERT_TRUE(Write(*log, one).ok());
    EXPECT_EQ(log->used_bytes(), kBlock);
    log.reset();
    EXPECT_EQ(ReadRange(path_, 0, 4), "WSIL");
    const Recovered r = Recover();
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.events, Expected({&one}));
  }
}

// --- a failing disk and power cuts (FaultVfs) --------------------------------------

class IntakeLogFaultTest : public IntakeLogTest {
 protected:
  void SetUp() override {
    IntakeLogTest::SetUp();
    auto vfs = FaultVfs::Install();
    ASSERT_TRUE(vfs.ok()) << vfs.status().ToString();
    fault_ = std::move(vfs).value();
    vfs_ = FaultVfs::kName;
  }

  // Fresh files for one round of a loop over fault positions.
  void NewFiles(const ws::testing::TempDir& dir) {
    db_path_ = dir.File("outbox.db");
    path_ = db_path_ + "-intake";
    std::FILE* f = std::fopen(db_path_.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fclose(f), 0);
    ASSERT_TRUE(fault_->Reset().ok());
  }

  std::unique_ptr<FaultVfs> fault_;
};

TEST_F(IntakeLogFaultTest, AChunkThatWasNotSyncedIsLostInAPowerCut) {
  const std::vector<IntakeEvent> synced = {MakeEvent(1), MakeEvent(2, Priority::kHigh)};
  const std::vector<IntakeEvent> unsynced = {MakeEvent(3)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  int64_t syncs = fault_->Counters().syncs;
  ASSERT_TRUE(Write(*log, synced, {}, /*sync=*/true).ok());
  EXPECT_GT(fault_->Counters().syncs, syncs);
  syncs = fault_->Counters().syncs;
  const int64_t writes = fault_->Counters().writes;
  ASSERT_TRUE(Write(*log, unsynced, {1}, /*sync=*/false).ok());
  EXPECT_EQ(fault_->Counters().syncs, syncs) << "a write without sync must not sync";
  EXPECT_GT(fault_->Counters().writes, writes);
  log.reset();

  // Before the power cut the unsynced chunk is in the file.
  Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, (std::vector<std::string>{Describe(synced[1]), Describe(unsynced[0])}));

  ASSERT_TRUE(fault_->PowerCycle().ok());
  r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&synced}));
  EXPECT_EQ(r.highest, 2);
  EXPECT_EQ(r.used_bytes, kBlock);
}

// The header: the file grows in steps synced once, so that a chunk's own
// sync never changes the file's size; a chunk within the grown size costs
// exactly one sync, and none without `sync`.
TEST_F(IntakeLogFaultTest, GrowingTheFileSyncsItOnceAndAChunkSyncsOnlyWhenAsked) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  int64_t syncs = fault_->Counters().syncs;
  ASSERT_TRUE(Write(*log, {MakeEvent(1)}, {}, /*sync=*/false).ok());
  EXPECT_EQ(fault_->Counters().syncs, syncs + 1) << "the growth";
  EXPECT_GE(FileSize(path_), kIntakeGrowBytes);
  syncs = fault_->Counters().syncs;
  ASSERT_TRUE(Write(*log, {MakeEvent(2)}, {}, /*sync=*/true).ok());
  EXPECT_EQ(fault_->Counters().syncs, syncs + 1);
  syncs = fault_->Counters().syncs;
  ASSERT_TRUE(Write(*log, {MakeEvent(3)}, {}, /*sync=*/false).ok());
  EXPECT_EQ(fault_->Counters().syncs, syncs);
  log.reset();

  // The growth and the second chunk were synced, the third was not.
  ASSERT_TRUE(fault_->PowerCycle().ok());
  EXPECT_GE(FileSize(path_), kIntakeGrowBytes);
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, (std::vector<std::string>{Describe(MakeEvent(1)), Describe(MakeEvent(2))}));
}

TEST_F(IntakeLogFaultTest, ASyncedChunkSurvivesAPowerCutOfANewFile) {
  const std::vector<IntakeEvent> events = {MakeEvent(1)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, events, {}, /*sync=*/true).ok());
  log.reset();
  ASSERT_TRUE(fault_->PowerCycle().ok());
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&events}));
}

TEST_F(IntakeLogFaultTest, AFailedWriteLeavesTheLogAsItWas) {
  const std::vector<IntakeEvent> first = {MakeEvent(1), MakeEvent(2)};
  const std::vector<IntakeEvent> failed = {MakeEvent(3, Priority::kHigh, 900)};
  const std::vector<IntakeEvent> third = {MakeEvent(4)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, first).ok());
  const int64_t used = log->used_bytes();
  const uint64_t chunks = log->chunks_written();

  fault_->FailWrite(1, FaultError::kIoError);
  EXPECT_FALSE(Write(*log, failed, {1}).ok());
  EXPECT_EQ(fault_->Counters().faults_injected, 1);
  EXPECT_EQ(log->used_bytes(), used);
  EXPECT_EQ(log->chunks_written(), chunks);
  fault_->ClearFaults();

  ASSERT_TRUE(Write(*log, third).ok());
  EXPECT_EQ(log->used_bytes(), used + kBlock);
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&first, &third}));
  EXPECT_EQ(r.highest, 4);
}

TEST_F(IntakeLogFaultTest, WritesFailWhileTheDiskIsFullAndSucceedOnceSpaceReturns) {
  const std::vector<IntakeEvent> first = {MakeEvent(1)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, first).ok());
  fault_->FailWrite(1, FaultError::kDiskFull, /*persistent=*/true);
  EXPECT_FALSE(Write(*log, {MakeEvent(2)}).ok());
  EXPECT_FALSE(Write(*log, {MakeEvent(3)}).ok());
  fault_->ClearFaults();
  const std::vector<IntakeEvent> later = {MakeEvent(4)};
  ASSERT_TRUE(Write(*log, later).ok());
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&first, &later}));
}

// A chunk that makes the file grow, written in pieces of less than 128 KiB: fail
// each write in turn, then each sync, until one run injects no fault. A
// failed Write must leave the log as it was; a Write that succeeded must be
// found again.
class IntakeLogFaultLoopTest : public IntakeLogFaultTest {
 protected:
  const std::vector<IntakeEvent> first_ = {MakeEvent(1, Priority::kNormal, static_cast<size_t>(kIntakeGrowBytes) - 74 * 1024), MakeEvent(2)};
  const std::vector<IntakeEvent> growing_ = {MakeEvent(3, Priority::kBulk, 130 * 1024)};
  const std::vector<IntakeEvent> last_ = {MakeEvent(4)};

  // Returns true when the round ran without any fault injected.
  bool Round(const std::string& what, const std::function<void()>& arm, bool power_cut) {
    SCOPED_TRACE(what);
    ws::testing::TempDir dir;
    NewFiles(dir);
    auto log = OpenLog();
    EXPECT_NE(log, nullptr);
    if (log == nullptr) return true;
    EXPECT_TRUE(Write(*log, first_).ok());
    const int64_t used = log->used_bytes();
    EXPECT_LE(used, kIntakeGrowBytes);
    EXPECT_GT(used + PaddedChunkBytes(growing_, 1), kIntakeGrowBytes);
    arm();
    const bool ok = Write(*log, growing_, {2}).ok();
    const int64_t injected = fault_->Counters().faults_injected;
    fault_->ClearFaults();
    if (injected == 0) {
      EXPECT_TRUE(ok);
    }
    if (!ok) {
      EXPECT_EQ(log->used_bytes(), used);
    }
    if (power_cut) {
      log.reset();
      EXPECT_TRUE(fault_->PowerCycle().ok());
      log = OpenLog();
      EXPECT_NE(log, nullptr);
      if (log == nullptr) return true;
    }
    EXPECT_TRUE(Write(*log, last_).ok());
    log.reset();
    const Recovered r = Recover();
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    const std::vector<std::string> want =
        ok ? std::vector<std::string>{Describe(first_[0]), Describe(growing_[0]), Describe(last_[0])}
           : Expected({&first_, &last_});
    EXPECT_EQ(r.events, want) << (ok ? "the Write succeeded" : "the Write failed");
    EXPECT_EQ(r.highest, 4);
    return injected == 0;
  }

  // Runs rounds with the fault armed at the 1st, 2nd, ... point until one
  // runs without it, at most `limit`; returns the point it got to.
  int64_t RoundsUntilNoFault(const std::string& what, int64_t limit, const std::function<void(int64_t)>& arm,
                             bool power_cut) {
    int64_t n = 1;
    for (; n <= limit; ++n) {
      if (Round(what + " " + std::to_string(n), [&] { arm(n); }, power_cut)) break;
      if (HasFailure()) break;
    }
    return n;
  }
};

TEST_F(IntakeLogFaultLoopTest, EachWriteFailsInTurn) {
  const int64_t n =
      RoundsUntilNoFault("write", 200, [&](int64_t k) { fault_->FailWrite(k, FaultError::kIoError); }, false);
  if (HasFailure()) return;
  EXPECT_GE(n, 3) << "a chunk of more than 128 KiB takes at least two writes";
  EXPECT_LE(n, 200);
}

TEST_F(IntakeLogFaultLoopTest, EachSyncFailsInTurn) {
  const int64_t n =
      RoundsUntilNoFault("sync", 20, [&](int64_t k) { fault_->FailSync(k, FaultError::kIoError); }, false);
  if (HasFailure()) return;
  EXPECT_GE(n, 2) << "a synced write syncs at least once";
  EXPECT_LE(n, 20);
}

TEST_F(IntakeLogFaultLoopTest, ThePowerGoesAtEachSyncInTurn) {
  for (const CutTiming timing : {CutTiming::kBeforeSync, CutTiming::kAfterSync}) {
    const std::string name = timing == CutTiming::kBeforeSync ? "before" : "after";
    const int64_t n = RoundsUntilNoFault("power cut " + name + " sync", 20,
                                         [&](int64_t k) { fault_->CutPowerAtSync(k, timing); }, true);
    if (HasFailure()) return;
    EXPECT_GE(n, 2);
    EXPECT_LE(n, 20);
  }
}

TEST_F(IntakeLogFaultTest, UntilTheChunkAfterRestartIsDurableTheOldEpochIsFound) {
  const std::vector<IntakeEvent> old_events = {MakeEvent(1), MakeEvent(2)};
  const std::vector<IntakeEvent> fresh = {MakeEvent(3)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, old_events).ok());
  log->Restart();
  ASSERT_TRUE(Write(*log, fresh, {}, /*sync=*/false).ok());
  log.reset();
  ASSERT_TRUE(fault_->PowerCycle().ok());
  Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&old_events}));
  EXPECT_EQ(r.highest, 2);

  log = OpenLog();
  ASSERT_NE(log, nullptr);
  log->Restart();
  ASSERT_TRUE(Write(*log, fresh, {}, /*sync=*/true).ok());
  log.reset();
  ASSERT_TRUE(fault_->PowerCycle().ok());
  r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&fresh}));
}

TEST_F(IntakeLogFaultTest, ClearIsDurable) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, {MakeEvent(1), MakeEvent(2)}).ok());
  ASSERT_TRUE(log->Clear().ok());
  log.reset();
  ASSERT_TRUE(fault_->PowerCycle().ok());
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.highest, 0);
}

TEST_F(IntakeLogFaultTest, AFailedClearKeepsTheLog) {
  const std::vector<IntakeEvent> events = {MakeEvent(1), MakeEvent(2)};
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(Write(*log, events).ok());
  fault_->FailWrite(1, FaultError::kIoError);
  EXPECT_FALSE(log->Clear().ok());
  fault_->ClearFaults();
  log.reset();
  const Recovered r = Recover();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events, Expected({&events}));
}

}  // namespace
}  // namespace ws::sqlite
