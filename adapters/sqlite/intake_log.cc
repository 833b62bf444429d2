#include "adapters/sqlite/intake_log.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_map>
#include <utility>

#include "adapters/sqlite/sqlite_status.h"

namespace ws::sqlite {
namespace {

constexpr char kMagic[4] = {'W', 'S', 'I', 'L'};
constexpr uint32_t kFormat = 1;
constexpr size_t kHeaderBytes = 24;  // magic, format, epoch, length, CRC
constexpr size_t kCrcOffset = 20;
constexpr char kEventRecord = 'E';
constexpr char kAckRecord = 'A';
// Larger payloads are damage: a commit holds at most a few thousand events.
constexpr uint32_t kMaxPayload = uint32_t{1} << 30;

// CRC-32C (Castagnoli), reflected, eight bytes per step ("slicing by 8"):
// table k holds the CRC of a byte followed by k zero bytes, so one step
// looks up each of eight bytes in its own table and XORs the results, with
// no chain from one byte to the next. On the x86 benchmark machine 16 KiB
// took 44.5 us a byte at a time and 8.4 us this way; a commit of 64 events
// of the benchmark's size makes a chunk of about 24 KiB, on the store's
// thread between the commit and its answers.
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;
constexpr CrcTables MakeCrcTables() {
  CrcTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[0][i] = c;
  }
  for (size_t k = 1; k < t.size(); ++k) {
    for (size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
  return t;
}
constexpr CrcTables kCrcTables = MakeCrcTables();

// Little-endian whatever the machine's order (one load where it is).
uint32_t LoadLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

int64_t AlignUp(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

void PutU32(std::string* out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(b, sizeof b);
}
void PutU64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(b, sizeof b);
}
void PutBytes(std::string* out, std::string_view b) {
  PutU32(out, static_cast<uint32_t>(b.size()));
  out->append(b);
}

uint64_t GetLe(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// Reads the records of one payload; false when they do not parse.
class RecordReader {
 public:
  explicit RecordReader(std::string_view b) : b_(b) {}
  bool done() const { return at_ == b_.size(); }
  bool Byte(char* c) {
    if (b_.size() - at_ < 1) return false;
    *c = b_[at_++];
    return true;
  }
  bool U64(uint64_t* v) {
    if (b_.size() - at_ < 8) return false;
    *v = GetLe(b_.data() + at_, 8);
    at_ += 8;
    return true;
  }
  bool I64(int64_t* v) {
    uint64_t u = 0;
    if (!U64(&u)) return false;
    *v = static_cast<int64_t>(u);
    return true;
  }
  bool Bytes(std::string* s) {
    if (b_.size() - at_ < 4) return false;
    const uint64_t n = GetLe(b_.data() + at_, 4);
    at_ += 4;
    if (b_.size() - at_ < n) return false;
    s->assign(b_.data() + at_, static_cast<size_t>(n));
    at_ += static_cast<size_t>(n);
    return true;
  }

 private:
  std::string_view b_;
  size_t at_ = 0;
};

// A sqlite3_file as SQLite's VFS layer wants it: storage of the VFS's own
// size, which xOpen fills in.
struct FileCloser {
  void operator()(sqlite3_file* f) const {
    if (f != nullptr && f->pMethods != nullptr) f->pMethods->xClose(f);
  }
};

}  // namespace

uint32_t IntakeLog::Crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  const CrcTables& t = kCrcTables;
  uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const uint32_t lo = LoadLe32(p) ^ c;
    const uint32_t hi = LoadLe32(p + 4);
    c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][hi & 0xff] ^
        t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
  }
  for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xff] ^ (c >> 8);
  return ~c;
}

uint64_t IntakeLog::NewEpoch() {
  uint64_t e = 0;
  while (e == 0) sqlite3_randomness(sizeof e, &e);
  return e;
}

std::string IntakeLog::EncodeChunk(uint64_t epoch, std::span<const IntakeEvent* const> events,
                                   std::span<const int64_t> acks) {
  // Sized once rather than grown as it is written.
  // Record sizes as the layout above gives them: an event's kind,
  // sequence, priority, accepted_us, bytes and four string lengths, then
  // the strings; an ack's kind and sequence.
  constexpr size_t kEventFixed = 1 + 8 + 1 + 8 + 8 + 4 * 4;
  constexpr size_t kAck = 1 + 8;
  size_t bytes = kHeaderBytes + acks.size() * kAck;
  for (const IntakeEvent* e : events) {
    bytes += kEventFixed + e->id.size() + e->stream.size() + e->topic.size() + e->record.size();
  }
  std::string chunk;
  chunk.reserve(static_cast<size_t>(AlignUp(static_cast<int64_t>(bytes), kIntakeBlock)));
  chunk.assign(kHeaderBytes, '\0');
  for (const IntakeEvent* e : events) {
    chunk.push_back(kEventRecord);
    PutU64(&chunk, static_cast<uint64_t>(e->sequence));
    chunk.push_back(static_cast<char>(e->priority));
    PutU64(&chunk, static_cast<uint64_t>(e->accepted_us));
    PutU64(&chunk, e->bytes);
    PutBytes(&chunk, e->id);
    PutBytes(&chunk, e->stream);
    PutBytes(&chunk, e->topic);
    PutBytes(&chunk, e->record);
  }
  for (int64_t seq : acks) {
    chunk.push_back(kAckRecord);
    PutU64(&chunk, static_cast<uint64_t>(seq));
  }
  const auto payload = static_cast<uint32_t>(chunk.size() - kHeaderBytes);
  std::string header;
  header.reserve(kHeaderBytes);
  header.append(kMagic, sizeof kMagic);
  PutU32(&header, kFormat);
  PutU64(&header, epoch);
  PutU32(&header, payload);
  uint32_t crc = Crc32c(header.data(), kCrcOffset);
  crc = Crc32c(chunk.data() + kHeaderBytes, payload, crc);
  PutU32(&header, crc);
  chunk.replace(0, kHeaderBytes, header);
  chunk.resize(static_cast<size_t>(AlignUp(static_cast<int64_t>(chunk.size()), kIntakeBlock)), '\0');
  return chunk;
}

IntakeLog::IntakeLog(sqlite3_file* file, std::unique_ptr<char[]> storage, std::string path)
    : storage_(std::move(storage)), file_(file), path_(std::move(path)) {}

IntakeLog::~IntakeLog() { FileCloser()(file_); }

Result<std::unique_ptr<IntakeLog>> IntakeLog::Open(const std::string& path, const std::string& vfs_name,
                                                   std::vector<IntakeEvent>* events, int64_t* highest_sequence) {
  *highest_sequence = 0;
  sqlite3_vfs* vfs = sqlite3_vfs_find(vfs_name.empty() ? nullptr : vfs_name.c_str());
  if (vfs == nullptr) return Internal("no SQLite VFS named \"" + vfs_name + "\" for the intake log");
  // The name stays valid as long as the file is open (a VFS may keep the
  // pointer), with the extra NULs SQLite puts after the names it passes.
  const size_t name_at = static_cast<size_t>(vfs->szOsFile);
  auto storage = std::make_unique<char[]>(name_at + path.size() + 4);
  std::memset(storage.get(), 0, name_at + path.size() + 4);
  std::memcpy(storage.get() + name_at, path.data(), path.size());
  auto* file = reinterpret_cast<sqlite3_file*>(storage.get());
  const char* name = storage.get() + name_at;
  int out_flags = 0;
  const int rc = vfs->xOpen(vfs, name, file,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_MAIN_JOURNAL, &out_flags);
  if (rc != SQLITE_OK) {
    FileCloser()(file);
    return SqliteStatus(rc, nullptr, "open the intake log " + path);
  }
  std::unique_ptr<IntakeLog> log(new IntakeLog(file, std::move(storage), path));

  sqlite3_int64 size = 0;
  if (int r = file->pMethods->xFileSize(file, &size); r != SQLITE_OK) {
    return SqliteStatus(r, nullptr, "size of the intake log " + path);
  }
  log->file_size_ = size;

  std::vector<IntakeEvent> found;
  std::unordered_map<int64_t, size_t> at;  // sequence -> index in found
  std::vector<bool> acked;
  int64_t offset = 0;
  bool have_epoch = false;
  std::string header(kHeaderBytes, '\0');
  std::string payload;
  while (offset + static_cast<int64_t>(kHeaderBytes) <= size) {
    int r = file->pMethods->xRead(file, header.data(), kHeaderBytes, offset);
    if (r != SQLITE_OK) return SqliteStatus(r, nullptr, "read the intake log " + path);
    if (std::memcmp(header.data(), kMagic, sizeof kMagic) != 0) break;
    if (GetLe(header.data() + 4, 4) != kFormat) break;
    const uint64_t epoch = GetLe(header.data() + 8, 8);
    if (have_epoch && epoch != log->epoch_) break;
    const uint64_t length = GetLe(header.data() + 16, 4);
    if (length > kMaxPayload || offset + static_cast<int64_t>(kHeaderBytes + length) > size) break;
    payload.resize(static_cast<size_t>(length));
    if (length > 0) {
      r = file->pMethods->xRead(file, payload.data(), static_cast<int>(length), offset + static_cast<int64_t>(kHeaderBytes));
      if (r != SQLITE_OK) return SqliteStatus(r, nullptr, "read the intake log " + path);
    }
    uint32_t crc = Crc32c(header.data(), kCrcOffset);
    crc = Crc32c(payload.data(), payload.size(), crc);
    if (crc != GetLe(header.data() + kCrcOffset, 4)) break;
    if (!have_epoch) {
      have_epoch = true;
      log->epoch_ = epoch;
    }
    RecordReader in(payload);
    while (!in.done()) {
      char kind = 0;
      int64_t seq = 0;
      if (!in.Byte(&kind) || !in.I64(&seq)) return DataLoss("the intake log " + path + " has an unreadable record");
      *highest_sequence = std::max(*highest_sequence, seq);
      if (kind == kAckRecord) {
        if (auto it = at.find(seq); it != at.end()) acked[it->second] = true;
        continue;
      }
      char priority = 0;
      IntakeEvent e;
      e.sequence = seq;
      uint64_t accepted = 0;
      if (kind != kEventRecord || !in.Byte(&priority) || !in.U64(&accepted) || !in.U64(&e.bytes) ||
          !in.Bytes(&e.id) || !in.Bytes(&e.stream) || !in.Bytes(&e.topic) || !in.Bytes(&e.record) ||
          static_cast<uint8_t>(priority) >= kPriorityCount) {
        return DataLoss("the intake log " + path + " has an unreadable record");
      }
      e.priority = static_cast<Priority>(priority);
      e.accepted_us = static_cast<int64_t>(accepted);
      at[seq] = found.size();
      found.push_back(std::move(e));
      acked.push_back(false);
    }
    offset = AlignUp(offset + static_cast<int64_t>(kHeaderBytes + length), kIntakeBlock);
  }
  for (size_t i = 0; i < found.size(); ++i) {
    if (acked[i]) continue;
    events->push_back(std::move(found[i]));
    log->clean_ = false;
  }
  if (have_epoch) {
    log->end_ = offset;
  } else {
    log->restart_ = true;
    log->next_epoch_ = NewEpoch();
  }
  return log;
}

Status IntakeLog::EnsureSize(int64_t end) {
  if (end <= file_size_) return Status::Ok();
  const int64_t target = AlignUp(end, kIntakeGrowBytes);
  // One block per write: the page cache then keeps the file in folios of
  // one page, so a chunk's write dirties (and writeback writes) that page
  // alone. Written in 64 KiB pieces, each later 4 KiB chunk dirtied a
  // 64 KiB folio: 41 MB written for 3,000 events at 1,000/s.
  static const std::string zeros(kIntakeBlock, '\0');
  for (int64_t at = file_size_; at < target;) {
    const int n = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(zeros.size()), target - at));
    const int rc = file_->pMethods->xWrite(file_, zeros.data(), n, at);
    if (rc != SQLITE_OK) return SqliteStatus(rc, nullptr, "grow the intake log " + path_);
    at += n;
  }
  // Synced once here, so that a chunk's sync never changes the file's size.
  const int rc = file_->pMethods->xSync(file_, SQLITE_SYNC_NORMAL);
  if (rc != SQLITE_OK) return SqliteStatus(rc, nullptr, "sync the intake log " + path_);
  file_size_ = target;
  return Status::Ok();
}

Status IntakeLog::WriteAt(int64_t offset, const std::string& bytes) {
  // SQLite's unix VFS takes less than 128 KiB per write.
  constexpr size_t kPiece = 64 * 1024;
  for (size_t done = 0; done < bytes.size();) {
    const size_t n = std::min(kPiece, bytes.size() - done);
    const int rc = file_->pMethods->xWrite(file_, bytes.data() + done, static_cast<int>(n),
                                           offset + static_cast<int64_t>(done));
    if (rc != SQLITE_OK) return SqliteStatus(rc, nullptr, "write the intake log " + path_);
    done += n;
  }
  return Status::Ok();
}

Status IntakeLog::Write(std::span<const IntakeEvent* const> events, std::span<const int64_t> acks, bool sync) {
  const uint64_t epoch = restart_ ? next_epoch_ : epoch_;
  const int64_t offset = restart_ ? 0 : end_;
  const std::string chunk = EncodeChunk(epoch, events, acks);
  const int64_t end = offset + static_cast<int64_t>(chunk.size());
  WS_TRY(EnsureSize(end));
  WS_TRY(WriteAt(offset, chunk));
  if (sync) {
    const int rc = file_->pMethods->xSync(file_, SQLITE_SYNC_NORMAL);
    if (rc != SQLITE_OK) return SqliteStatus(rc, nullptr, "sync the intake log " + path_);
  }
  if (!events.empty()) {
    clean_ = false;
  } else if (offset == 0) {
    clean_ = true;
  }
  epoch_ = epoch;
  end_ = end;
  restart_ = false;
  ++chunks_written_;
  bytes_written_ += chunk.size();
  return Status::Ok();
}

void IntakeLog::Restart() {
  if (restart_) return;
  restart_ = true;
  next_epoch_ = NewEpoch();
}

Status IntakeLog::Clear() {
  Restart();
  return Write({}, {}, /*sync=*/true);
}

}  // namespace ws::sqlite
