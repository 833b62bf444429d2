#include "adapters/sqlite/outbox_db.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>

#include "adapters/sqlite/sqlite_status.h"
#include "adapters/sqlite/wal_write_vfs.h"
#include "core/outbox_policy.h"
#include "platform/file_system.h"
#include "platform/log.h"
#include "platform/unique_fd.h"

namespace ws::sqlite {
namespace {

// Schema version 1. `seq` is the rowid, so appends land at the end of the
// table's b-tree and a lookup by sequence is one descent.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE meta(
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
-- Survives the tables emptying, so a sequence is never handed out twice.
INSERT INTO meta(key, value) VALUES ('last_sequence', 0);

CREATE TABLE events(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  priority INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 3),
  stream TEXT NOT NULL,
  topic TEXT NOT NULL,
  accepted_us INTEGER NOT NULL,
  expires_us INTEGER NOT NULL,          -- 0 = never
  attempts INTEGER NOT NULL DEFAULT 0,  -- leases that ended without an ack
  bytes INTEGER NOT NULL,               -- what the row counts against max_bytes
  record BLOB NOT NULL                  -- EncodeEventRecord()
);
CREATE INDEX events_by_class ON events(priority, seq);
-- Partial: only events with a TTL are in it, so the expiry sweep costs
-- nothing when no event has one.
CREATE INDEX events_by_expiry ON events(expires_us) WHERE expires_us > 0;

CREATE TABLE dlq(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  priority INTEGER NOT NULL,
  stream TEXT NOT NULL,
  topic TEXT NOT NULL,
  accepted_us INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  record BLOB NOT NULL,
  reason TEXT NOT NULL,
  dead_lettered_us INTEGER NOT NULL
);
CREATE INDEX dlq_by_id ON dlq(id);

-- Delivered events kept for replay while retain_delivered_s > 0.
CREATE TABLE delivered(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  priority INTEGER NOT NULL,
  stream TEXT NOT NULL,
  topic TEXT NOT NULL,
  accepted_us INTEGER NOT NULL,
  delivered_us INTEGER NOT NULL,
  record BLOB NOT NULL
);
CREATE INDEX delivered_by_id ON delivered(id);
CREATE INDEX delivered_by_time ON delivered(delivered_us);

-- Running counts and bytes per priority class (buckets 0-3) and of the
-- dead letters (bucket 4). Triggers keep them in the same transaction as the
-- rows, so they are exact after any crash, and opening a store with a
-- million events reads five rows instead of summing a million.
CREATE TABLE totals(
  bucket INTEGER PRIMARY KEY,
  count INTEGER NOT NULL,
  bytes INTEGER NOT NULL
);
INSERT INTO totals(bucket, count, bytes) VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0);
CREATE TRIGGER events_total_in AFTER INSERT ON events BEGIN
  UPDATE totals SET count = count + 1, bytes = bytes + NEW.bytes WHERE bucket = NEW.priority;
END;
CREATE TRIGGER events_total_out AFTER DELETE ON events BEGIN
  UPDATE totals SET count = count - 1, bytes = bytes - OLD.bytes WHERE bucket = OLD.priority;
END;
CREATE TRIGGER dlq_total_in AFTER INSERT ON dlq BEGIN
  UPDATE totals SET count = count + 1, bytes = bytes + NEW.bytes WHERE bucket = 4;
END;
CREATE TRIGGER dlq_total_out AFTER DELETE ON dlq BEGIN
  UPDATE totals SET count = count - 1, bytes = bytes - OLD.bytes WHERE bucket = 4;
END;
)sql";

// Schema version 2: retry times (Nack), the replay mark, and the indexes
// Replay and the retry bookkeeping read. Adding NOT NULL columns with a
// default rewrites no rows, so the migration is quick on any backlog.
constexpr const char* kSchemaV2 = R"sql(
-- Nack: not leasable before this wall time; 0 = no retry time.
ALTER TABLE events ADD COLUMN not_before_us INTEGER NOT NULL DEFAULT 0;
-- Replay: the delivered sequence this event sends again; 0 = an original.
ALTER TABLE events ADD COLUMN replay_of INTEGER NOT NULL DEFAULT 0;
-- Partial: only events that were ever nacked are in it.
CREATE INDEX events_waiting ON events(not_before_us) WHERE not_before_us > 0;
CREATE INDEX delivered_by_accepted ON delivered(accepted_us);
)sql";

// Schema version 3: the totals are kept by the store, once per
// transaction, instead of by a trigger per row (with the triggers gone the
// in-process benchmark used about a fifth less CPU). Dropping the triggers
// rewrites nothing: the totals they kept stay exact.
constexpr const char* kSchemaV3 = R"sql(
DROP TRIGGER events_total_in;
DROP TRIGGER events_total_out;
DROP TRIGGER dlq_total_in;
DROP TRIGGER dlq_total_out;
)sql";

// Schema version 4: each topic is kept once. A row's topic column holds
// either the topic's text (rows written before version 4, or once the
// table is full) or a blob with the topic's ref in this table, 1-2 bytes
// instead of the usual 40-60: the benchmark's topic is 48 bytes, and with
// the version 2 event record its row holds 155 bytes instead of about 225.
// With the link up and 64 producers the daemon wrote 766-789 bytes per
// delivered event instead of 836-865. Rows are never removed from it.
constexpr const char* kSchemaV4 = R"sql(
CREATE TABLE topics(
  ref INTEGER PRIMARY KEY,
  topic TEXT NOT NULL UNIQUE
);
)sql";

// More distinct topics than this are stored as text in each row: the table
// and its copy in memory stay small when producers use many event types.
constexpr size_t kMaxTopics = 1024;

constexpr int64_t kDlqBucket = 4;

// Tables a store of a schema version must have; their absence is damage.
struct RequiredTable {
  const char* name;
  int since_version;
};
constexpr RequiredTable kTables[] = {{"meta", 1},      {"events", 1}, {"dlq", 1},
                                     {"delivered", 1}, {"totals", 1}, {"topics", 4}};

struct Migration {
  int version;  // PRAGMA user_version after this step
  const char* sql;
};
// Append-only: a store at version N runs every step above N, each in its own
// transaction together with the version bump.
constexpr Migration kMigrations[] = {
    {1, kSchemaV1},
    {2, kSchemaV2},
    {3, kSchemaV3},
    {4, kSchemaV4},
};
constexpr int kSchemaVersion = 4;

int64_t MicrosSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
}

Result<int64_t> QueryInt(const Connection& db, const char* sql) {
  WS_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db, sql));
  WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return Internal(std::string("\"") + sql + "\" returned no row");
  return stmt.ColumnInt64(0);
}

Result<std::string> QueryText(const Connection& db, const char* sql) {
  WS_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db, sql));
  WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return Internal(std::string("\"") + sql + "\" returned no row");
  return std::string(stmt.ColumnText(0));
}

// PRAGMA quick_check, not integrity_check: quick_check walks every b-tree
// page once (structure, page accounting, NOT NULL/CHECK constraints), which
// catches zeroed, truncated and garbage pages. integrity_check additionally
// cross-checks every index entry against its table row, which is O(N log N)
// and takes many seconds on a gateway's flash with a large backlog, while
// the gateway is not collecting events. Read-only, so it runs first: a
// damaged file stays exactly as it was found for the quarantine.
Status QuickCheck(const Connection& db) {
  WS_ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db, "PRAGMA quick_check(8)"));
  std::string problems;
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    std::string_view line = stmt.ColumnText(0);
    if (line == "ok") continue;
    if (!problems.empty()) problems += "; ";
    problems += line;
  }
  if (!problems.empty()) return DataLoss("PRAGMA quick_check found damage: " + problems);
  return Status::Ok();
}

uint32_t BigEndian32(std::string_view b, size_t at) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(b[at])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(b[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(b[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(b[at + 3]));
}

// Reads the first 100 bytes of the file and checks them against its size.
// Plain reads: SQLite would accept a truncated file and fail only when a
// missing page is needed.
Status CheckFileHeader(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, "open " + path + " for the header check");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size == 0) return Status::Ok();  // a new store
  char header[100] = {};
  size_t got = 0;
  while (got < sizeof header) {
    const ssize_t n = ::pread(fd.get(), header + got, sizeof header - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "read the header of " + path);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return CheckDatabaseHeader(std::string_view(header, got), size);
}

// The structural check, for a large file after a clean shutdown: what can
// be judged without reading every page. Read-only, like QuickCheck.
Status StructuralCheck(const Connection& db, int version) {
  for (const RequiredTable& table : kTables) {
    if (table.since_version > version) continue;
    const std::string sql =
        std::string("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '") + table.name + "'";
    WS_ASSIGN_OR_RETURN(int64_t n, QueryInt(db, sql.c_str()));
    if (n != 1) return DataLoss(std::string("the outbox schema has no table \"") + table.name + "\"");
  }
  // The page count SQLite itself derives must agree with the header check
  // above; reading it also makes SQLite parse the header and the schema.
  WS_ASSIGN_OR_RETURN(int64_t pages, QueryInt(db, "PRAGMA page_count"));
  if (pages <= 0) return DataLoss("the store reports no pages");
  return Status::Ok();
}

int StopRequested(void* flag) { return static_cast<std::atomic<bool>*>(flag)->load() ? 1 : 0; }

// Returns the page size the file uses.
Result<int64_t> ConfigureConnection(Connection& db, int64_t cache_kib, int64_t wal_checkpoint_bytes) {
  // A second process (an operator's sqlite3 shell) may hold a read lock
  // briefly; waiting a little beats failing a commit.
  const int rc = sqlite3_busy_timeout(db.get(), 2000);
  if (rc != SQLITE_OK) return db.Error(rc, "set busy timeout");

  // 1 KiB pages for a new store (an existing file keeps its own; SQLite
  // ignores this once the file has content). Every commit writes each page
  // it changed in full to the WAL, and a commit changes a little of many
  // pages (the id and class indexes, the totals, the b-tree parents). With
  // the link up and 64 producers a delivered event cost 1,455 bytes of
  // writes with 1 KiB pages against 2,665 with 4 KiB, at the same CPU;
  // 512-byte pages gave 1,385 bytes for 13 % more CPU.
  WS_TRY(db.Exec("PRAGMA page_size=1024", "set page_size"));
  WS_ASSIGN_OR_RETURN(std::string mode, QueryText(db, "PRAGMA journal_mode=WAL"));
  if (mode != "wal") return Unavailable("the store cannot use WAL mode (journal_mode is " + mode + ")");
  // FULL: a commit returns only after the WAL is fsync'd. "Acknowledged
  // means durable" depends on it, so it is read back, not assumed.
  WS_TRY(db.Exec("PRAGMA synchronous=FULL", "set synchronous=FULL"));
  WS_ASSIGN_OR_RETURN(int64_t sync, QueryInt(db, "PRAGMA synchronous"));
  if (sync != 2) return Internal("synchronous is " + std::to_string(sync) + " after setting FULL");
  // A negative cache_size is in KiB: the page cache stays this small
  // whatever the backlog, which is what keeps RSS flat.
  const std::string cache = "PRAGMA cache_size=-" + std::to_string(cache_kib);
  WS_TRY(db.Exec(cache.c_str(), "set cache_size"));
  // Memory-mapped pages would count towards RSS and grow with the file.
  WS_TRY(db.Exec("PRAGMA mmap_size=0", "set mmap_size"));
  // Debian builds SQLite with secure_delete on, which rewrites freed pages
  // with zeros: extra flash wear for every delivered event. FAST still
  // clears deleted content where that costs no extra I/O.
  WS_TRY(db.Exec("PRAGMA secure_delete=FAST", "set secure_delete"));
  // After a checkpoint the -wal file is cut back to twice the checkpoint
  // size, so one large batch does not keep its flash space forever. Not to
  // the checkpoint size itself: the WAL peaks a little above it (4.4-4.7 MB
  // in the in-process benchmark when checkpoints started at 4 MiB), and
  // cutting it back at every reset (53 times in its 400,000 appends) made
  // the filesystem allocate the blocks past the limit anew, and zero the
  // unwritten part of each, in every cycle. Below the limit the file is
  // overwritten in place.
  const std::string size_limit =
      "PRAGMA journal_size_limit=" + std::to_string(WalSizeLimitBytes(wal_checkpoint_bytes));
  WS_TRY(db.Exec(size_limit.c_str(), "set journal_size_limit"));
  WS_TRY(db.Exec("PRAGMA trusted_schema=OFF", "set trusted_schema"));
  // Checkpoint when the WAL holds wal_checkpoint_bytes (16 MiB by default), not after
  // SQLite's default 1,000 pages (1 MiB with 1 KiB pages): a page the
  // outbox rewrites again and again (the tail of the table, the indexes) is
  // copied into the database file once per checkpoint, so rarer checkpoints
  // write less.
  WS_ASSIGN_OR_RETURN(int64_t page_size, QueryInt(db, "PRAGMA page_size"));
  if (page_size <= 0) return Internal("page_size is " + std::to_string(page_size));
  const std::string checkpoint =
      "PRAGMA wal_autocheckpoint=" + std::to_string(std::max<int64_t>(wal_checkpoint_bytes / page_size, 1));
  WS_TRY(db.Exec(checkpoint.c_str(), "set wal_autocheckpoint"));
  return page_size;
}

// Whether a damaged file's bytes stay exactly as found: SQLite normally
// checkpoints the WAL into the database and deletes it when the last
// connection closes, which would rewrite or destroy the evidence.
Status SetCheckpointOnClose(Connection& db, bool enabled) {
  const int rc = sqlite3_db_config(db.get(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, enabled ? 0 : 1, nullptr);
  if (rc != SQLITE_OK) return db.Error(rc, "set checkpoint on close");
  return Status::Ok();
}

// Read-only: decides whether this file is an outbox this build can use
// before anything writes to it.
Result<int> CheckSchemaVersion(const Connection& db) {
  WS_ASSIGN_OR_RETURN(int64_t version, QueryInt(db, "PRAGMA user_version"));
  if (version > kSchemaVersion) {
    return FailedPrecondition("the store has schema version " + std::to_string(version) +
                              ", newer than this build understands (" + std::to_string(kSchemaVersion) +
                              "); it was written by a newer Waystation");
  }
  if (version == 0) {
    WS_ASSIGN_OR_RETURN(int64_t objects, QueryInt(db, "SELECT count(*) FROM sqlite_schema"));
    if (objects != 0) {
      return DataLoss("the file is an SQLite database but not a Waystation outbox (" + std::to_string(objects) +
                      " foreign schema objects, user_version 0)");
    }
  }
  return static_cast<int>(version);
}

Status Migrate(Connection& db, int version) {
  for (const Migration& m : kMigrations) {
    if (m.version <= version) continue;
    WS_TRY(db.Exec("BEGIN IMMEDIATE", "begin migration"));
    const std::string bump = "PRAGMA user_version=" + std::to_string(m.version);
    Status s = db.Exec(m.sql, "migrate schema to version " + std::to_string(m.version));
    if (s.ok()) s = db.Exec(bump.c_str(), "set user_version");
    if (s.ok()) s = db.Exec("COMMIT", "commit migration");
    if (!s.ok()) {
      if (sqlite3_get_autocommit(db.get()) == 0) {
        db.Exec("ROLLBACK", "roll back migration").IgnoreError();  // the migration error is the one to report
      }
      return s;
    }
    WS_LOG_INFO("outbox", "schema migrated", {{"version", std::to_string(m.version)}});
  }
  return Status::Ok();
}

}  // namespace

Status CheckDatabaseHeader(std::string_view h, uint64_t file_size) {
  static constexpr std::string_view kMagic("SQLite format 3\0", 16);
  if (h.size() < 100) {
    return DataLoss("the file is " + std::to_string(file_size) + " bytes, too short for an SQLite header");
  }
  if (h.substr(0, 16) != kMagic) return DataLoss("the file does not start with the SQLite header");
  const uint32_t raw_page = (static_cast<uint32_t>(static_cast<uint8_t>(h[16])) << 8) | static_cast<uint8_t>(h[17]);
  const uint64_t page_size = raw_page == 1 ? 65536 : raw_page;
  if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) != 0) {
    return DataLoss("the header's page size " + std::to_string(raw_page) + " is invalid");
  }
  const auto write_version = static_cast<uint8_t>(h[18]);
  const auto read_version = static_cast<uint8_t>(h[19]);
  if (write_version < 1 || write_version > 2 || read_version < 1 || read_version > 2) {
    return DataLoss("the header's file format versions are invalid");
  }
  if (static_cast<uint8_t>(h[21]) != 64 || static_cast<uint8_t>(h[22]) != 32 || static_cast<uint8_t>(h[23]) != 32) {
    return DataLoss("the header's payload fractions are invalid");
  }
  if (page_size - static_cast<uint8_t>(h[20]) < 480) return DataLoss("the header's reserved space is invalid");
  const uint32_t schema_format = BigEndian32(h, 44);
  if (schema_format > 4) return DataLoss("the header's schema format " + std::to_string(schema_format) + " is invalid");
  const uint32_t encoding = BigEndian32(h, 56);
  if (encoding > 3) return DataLoss("the header's text encoding " + std::to_string(encoding) + " is invalid");
  if (file_size % page_size != 0) {
    return DataLoss("the file size " + std::to_string(file_size) + " is not a whole number of " +
                    std::to_string(page_size) + "-byte pages");
  }
  // The page count in the header is current only when the change counter
  // matches "version valid for" (SQLite's own rule).
  const uint32_t pages = BigEndian32(h, 28);
  if (pages != 0 && BigEndian32(h, 24) == BigEndian32(h, 92) && pages > file_size / page_size) {
    return DataLoss("the header counts " + std::to_string(pages) + " pages, the file holds " +
                    std::to_string(file_size / page_size) + ": it was truncated");
  }
  return Status::Ok();
}

Status FullCheckOnOwnConnection(const std::string& path, const std::string& vfs, int64_t cache_kib,
                                std::atomic<bool>* stop) {
  WS_ASSIGN_OR_RETURN(Connection db, Connection::OpenReadOnly(path, vfs));
  int rc = sqlite3_busy_timeout(db.get(), 2000);
  if (rc != SQLITE_OK) return db.Error(rc, "set busy timeout");
  const std::string cache = "PRAGMA cache_size=-" + std::to_string(cache_kib);
  WS_TRY(db.Exec(cache.c_str(), "set cache_size"));
  WS_TRY(db.Exec("PRAGMA mmap_size=0", "set mmap_size"));
  // Checked by SQLite every 1000 virtual-machine steps: a shutdown does not
  // wait for the whole walk.
  sqlite3_progress_handler(db.get(), 1000, StopRequested, stop);
  return QuickCheck(db);
}

namespace {

Result<CheckpointResult> PassiveCheckpoint(const Connection& db) {
  int log = 0, copied = 0;
  const int rc = sqlite3_wal_checkpoint_v2(db.get(), "main", SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
  // Another connection's checkpoint is running: it does the same work.
  if (rc == SQLITE_BUSY) return CheckpointResult{};
  if (rc != SQLITE_OK) return db.Error(rc, "checkpoint the WAL");
  return CheckpointResult{std::max(log, 0), std::max(copied, 0)};
}

}  // namespace

Result<std::unique_ptr<CheckpointConnection>> CheckpointConnection::Open(const std::string& path,
                                                                         const std::string& vfs) {
  WS_ASSIGN_OR_RETURN(Connection db, Connection::Open(path, vfs));
  // The committer's connection closes last and checkpoints then; this one
  // must not, nor change anything but the file's copy of the WAL.
  WS_TRY(SetCheckpointOnClose(db, false));
  WS_TRY(db.Exec("PRAGMA mmap_size=0", "set mmap_size"));
  WS_TRY(db.Exec("PRAGMA cache_size=-64", "set cache_size"));
  // The checkpoint fsyncs the database file before the WAL may be reused
  // only when synchronous is not OFF: read back, not assumed.
  WS_TRY(db.Exec("PRAGMA synchronous=FULL", "set synchronous=FULL"));
  WS_ASSIGN_OR_RETURN(int64_t sync, QueryInt(db, "PRAGMA synchronous"));
  if (sync != 2) return Internal("synchronous is " + std::to_string(sync) + " after setting FULL");
  return std::make_unique<CheckpointConnection>(std::move(db));
}

Result<CheckpointResult> CheckpointConnection::Run() { return PassiveCheckpoint(db_); }

void OutboxDb::SetWalHook(std::function<void(int frames)> hook) {
  wal_hook_ = std::move(hook);
  if (!wal_hook_) {
    // Back to SQLite's own checkpoints, at the size ConfigureConnection set.
    sqlite3_wal_autocheckpoint(db_.get(), static_cast<int>(std::max<int64_t>(wal_checkpoint_bytes_ / page_size_, 1)));
    return;
  }
  sqlite3_wal_hook(
      db_.get(),
      [](void* self, sqlite3*, const char*, int frames) -> int {
        static_cast<OutboxDb*>(self)->wal_hook_(frames);
        return SQLITE_OK;
      },
      this);
}

Result<CheckpointResult> OutboxDb::Checkpoint() { return PassiveCheckpoint(db_); }

Result<std::optional<ClockShift>> OutboxDb::ReadClockShift() {
  StatementScope scope(read_shift_);
  ClockShift shift;
  int found = 0;
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, read_shift_.Step());
    if (!row) break;
    const std::string_view key = read_shift_.ColumnText(0);
    const int64_t value = read_shift_.ColumnInt64(1);
    if (key == "clock_shift_delta_us") {
      shift.delta_us = value;
    } else if (key == "clock_shift_up_to") {
      shift.up_to = value;
    } else if (key == "clock_shift_done_up_to") {
      shift.done_up_to = value;
    } else {
      shift.only_before_us = value;
    }
    ++found;
  }
  if (found == 0) return std::optional<ClockShift>();
  if (found != 4) return DataLoss("the meta rows of an unfinished clock shift are incomplete");
  return std::optional<ClockShift>(shift);
}

Result<int64_t> OutboxDb::ShiftTimes(const ClockShift& shift, int64_t last) {
  int64_t changed = 0;
  for (Statement* stmt : {&shift_events_, &shift_delivered_, &shift_dlq_}) {
    StatementScope scope(*stmt);
    WS_TRY(stmt->Bind(1, shift.done_up_to));
    WS_TRY(stmt->Bind(2, last));
    WS_TRY(stmt->Bind(3, shift.delta_us));
    WS_TRY(stmt->Bind(4, shift.only_before_us));
    WS_TRY(stmt->Run());
    changed += stmt->Changes();
  }
  if (last >= shift.up_to) {
    StatementScope scope(clear_shift_);
    WS_TRY(clear_shift_.Run());
    return changed;
  }
  StatementScope scope(write_shift_);
  WS_TRY(write_shift_.Bind(1, shift.delta_us));
  WS_TRY(write_shift_.Bind(2, shift.up_to));
  WS_TRY(write_shift_.Bind(3, last));
  WS_TRY(write_shift_.Bind(4, shift.only_before_us));
  WS_TRY(write_shift_.Run());
  return changed;
}

Result<int64_t> OutboxDb::FirstSequence() {
  StatementScope scope(first_sequence_);
  WS_ASSIGN_OR_RETURN(bool row, first_sequence_.Step());
  if (!row) return Internal("first sequence query returned no row");
  const int64_t first = first_sequence_.ColumnInt64(0);
  return first == INT64_MAX ? 0 : first;
}

Result<std::optional<EarlyTimes>> OutboxDb::FindAcceptedBefore(int64_t floor_us) {
  {
    StatementScope scope(table_ends_);
    WS_TRY(table_ends_.Bind(1, floor_us));
    WS_ASSIGN_OR_RETURN(bool row, table_ends_.Step());
    if (!row || table_ends_.ColumnInt64(0) == 0) return std::optional<EarlyTimes>();
  }
  EarlyTimes early;
  {
    StatementScope scope(accepted_before_);
    WS_TRY(accepted_before_.Bind(1, floor_us));
    WS_ASSIGN_OR_RETURN(bool row, accepted_before_.Step());
    if (!row) return Internal("early times query returned no row");
    early.last_sequence = accepted_before_.ColumnInt64(0);
    early.newest_us = accepted_before_.ColumnInt64(1);
  }
  if (early.last_sequence <= 0) return std::optional<EarlyTimes>();
  WS_ASSIGN_OR_RETURN(early.first_sequence, FirstSequence());
  return std::optional<EarlyTimes>(early);
}

Result<FileSpace> OutboxDb::Space() {
  FileSpace space;
  space.page_size = page_size_;
  for (auto [stmt, out] : {std::pair{&page_count_, &space.pages}, std::pair{&freelist_count_, &space.free_pages}}) {
    StatementScope scope(*stmt);
    WS_ASSIGN_OR_RETURN(bool row, stmt->Step());
    if (!row) return Internal("a page count pragma returned no row");
    *out = stmt->ColumnInt64(0);
  }
  return space;
}

Status OutboxDb::Compact() {
  if (InTransaction()) return FailedPrecondition("the store cannot be compacted inside a transaction");
  return db_.Exec("VACUUM", "compact the database");
}

Result<std::unique_ptr<OutboxDb>> OutboxDb::Open(const OutboxDbOptions& options, OpenReport* report) {
  auto store = std::make_unique<OutboxDb>(PrivateTag{});
  // Before SQLite touches the file: SQLite reads a truncated file without
  // complaint until it needs a page that is not there.
  if (!options.full_check && PathExists(options.path)) WS_TRY(CheckFileHeader(options.path));
  // The committer's connection gathers its WAL writes (wal_write_vfs.h).
  WS_ASSIGN_OR_RETURN(std::string vfs, WalWriteVfs(options.vfs));
  WS_ASSIGN_OR_RETURN(store->db_, Connection::Open(options.path, vfs));

  // Until the file has passed every check, nothing may write to it.
  WS_TRY(SetCheckpointOnClose(store->db_, false));
  const auto check_start = std::chrono::steady_clock::now();
  report->full_check = options.full_check;
  WS_TRY(options.full_check ? QuickCheck(store->db_) : Status::Ok());
  WS_ASSIGN_OR_RETURN(report->schema_version_found, CheckSchemaVersion(store->db_));
  if (!options.full_check && report->schema_version_found > 0) {
    WS_TRY(StructuralCheck(store->db_, report->schema_version_found));
  }
  report->check_us = MicrosSince(check_start);
  WS_TRY(SetCheckpointOnClose(store->db_, true));

  WS_ASSIGN_OR_RETURN(store->page_size_,
                      ConfigureConnection(store->db_, options.cache_kib, options.wal_checkpoint_bytes));
  store->wal_checkpoint_bytes_ = options.wal_checkpoint_bytes;
  WS_TRY(store->SetWalGathering(true));
  WS_TRY(Migrate(store->db_, report->schema_version_found));
  WS_TRY(store->Prepare());
  WS_TRY(store->LoadTopics());
  WS_ASSIGN_OR_RETURN(report->last_sequence, store->LastSequence());
  WS_ASSIGN_OR_RETURN(report->totals, store->ReadTotals());
  return store;
}

OutboxDb::~OutboxDb() = default;

int64_t OutboxDb::Recompilations() const {
  int64_t n = 0;
  for (sqlite3_stmt* st = sqlite3_next_stmt(db_.get(), nullptr); st != nullptr; st = sqlite3_next_stmt(db_.get(), st)) {
    n += sqlite3_stmt_status(st, SQLITE_STMTSTATUS_REPREPARE, 0);
  }
  return n;
}

Status OutboxDb::Prepare() {
  struct Def {
    Statement* stmt;
    const char* sql;
  };
  const Def defs[] = {
      {&begin_, "BEGIN IMMEDIATE"},
      {&commit_, "COMMIT"},
      {&rollback_, "ROLLBACK"},
      {&savepoint_, "SAVEPOINT request"},
      {&release_, "RELEASE request"},
      {&rollback_to_, "ROLLBACK TO request"},
      {&last_sequence_,
       "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'last_sequence'), 0),"
       " coalesce((SELECT max(seq) FROM events), 0), coalesce((SELECT max(seq) FROM dlq), 0),"
       " coalesce((SELECT max(seq) FROM delivered), 0))"},
      {&set_last_sequence_, "UPDATE meta SET value = ?1 WHERE key = 'last_sequence'"},
      // The lowest sequence: after a replay an id is both delivered and
      // queued, and a producer's retry gets the first answer it had.
      {&find_id_,
       "SELECT seq, record FROM events WHERE id = ?1"
       " UNION ALL SELECT seq, record FROM dlq WHERE id = ?1"
       " UNION ALL SELECT seq, record FROM delivered WHERE id = ?1 ORDER BY 1 LIMIT 1"},
      {&find_queued_id_, "SELECT seq FROM events WHERE id = ?1"},
      {&find_id_in_outbox_, "SELECT seq, record FROM events WHERE id = ?1"},
      {&any_delivered_row_, "SELECT 1 FROM delivered LIMIT 1"},
      {&any_event_row_, "SELECT 1 FROM events LIMIT 1"},
      {&find_topic_, "SELECT ref FROM topics WHERE topic = ?1"},
      {&add_topic_, "INSERT INTO topics(topic) VALUES (?1) RETURNING ref"},
      {&topic_by_ref_, "SELECT topic FROM topics WHERE ref = ?1"},
      {&insert_event_,
       "INSERT INTO events(seq, id, priority, stream, topic, accepted_us, expires_us, attempts, bytes, record,"
       " replay_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?11, ?8, ?9, ?10)"},
      {&copy_to_delivered_,
       "INSERT INTO delivered(seq, id, priority, stream, topic, accepted_us, delivered_us, record)"
       " SELECT seq, id, priority, stream, topic, accepted_us, ?2, record FROM events WHERE seq = ?1"},
      // Every statement that removes events or dead letters returns each
      // row's bucket and bytes for the totals (RunRemoving).
      {&delete_event_, "DELETE FROM events WHERE seq = ?1 RETURNING priority, bytes"},
      {&delete_event_range_, "DELETE FROM events WHERE seq BETWEEN ?1 AND ?2 RETURNING priority, bytes"},
      {&copy_to_dlq_,
       "INSERT INTO dlq(seq, id, priority, stream, topic, accepted_us, attempts, bytes, record, reason,"
       " dead_lettered_us)"
       " SELECT seq, id, priority, stream, topic, accepted_us, attempts, bytes, record, ?2, ?3"
       " FROM events WHERE seq = ?1"},
      {&any_expired_, "SELECT 1 FROM events WHERE expires_us > 0 AND expires_us <= ?1 LIMIT 1"},
      {&delete_expired_,
       "DELETE FROM events WHERE seq IN"
       " (SELECT seq FROM events WHERE expires_us > 0 AND expires_us <= ?1 LIMIT ?2) RETURNING priority, bytes"},
      {&any_delivered_, "SELECT 1 FROM delivered WHERE delivered_us <= ?1 LIMIT 1"},
      {&purge_delivered_,
       "DELETE FROM delivered WHERE seq IN (SELECT seq FROM delivered WHERE delivered_us <= ?1 LIMIT ?2)"},
      {&class_head_, "SELECT seq, accepted_us FROM events WHERE priority = ?1 ORDER BY seq LIMIT ?2"},
      {&delete_class_up_to_, "DELETE FROM events WHERE priority = ?1 AND seq <= ?2 RETURNING priority, bytes"},
      // The time filters below compare a difference, not the column, with
      // the parameter: a column compared with a parameter makes SQLite judge
      // the partial indexes on expires_us and not_before_us by the bound
      // value, and then recompile the statement whenever that value changes
      // (every lease, a new "now").
      {&add_attempt_,
       "UPDATE events SET attempts = attempts + 1 WHERE priority = ?1 AND seq <= ?2 AND not_before_us - ?3 <= 0"},
      {&nack_, "UPDATE events SET attempts = attempts + 1, not_before_us = ?2 WHERE seq = ?1 RETURNING priority"},
      // "> 0" repeats the partial index's condition so the planner can use it.
      {&read_waiting_,
       "SELECT seq, priority, not_before_us FROM events WHERE not_before_us > ?1 AND not_before_us > 0"},
      {&read_class_,
       "SELECT seq, topic, stream, attempts, accepted_us, record, replay_of, id FROM events"
       " WHERE priority = ?1 AND seq > ?2 AND (expires_us = 0 OR expires_us - ?3 > 0) AND not_before_us - ?3 <= 0"
       " ORDER BY seq LIMIT ?4"},
      {&read_one_,
       "SELECT seq, topic, stream, attempts, accepted_us, record, replay_of, priority, id FROM events"
       " WHERE seq = ?1 AND (expires_us = 0 OR expires_us - ?2 > 0)"},
      {&read_totals_, "SELECT bucket, count, bytes FROM totals"},
      {&read_shift_,
       "SELECT key, value FROM meta WHERE key IN"
       " ('clock_shift_delta_us', 'clock_shift_up_to', 'clock_shift_done_up_to', 'clock_shift_only_before_us')"},
      {&write_shift_,
       "INSERT OR REPLACE INTO meta(key, value) VALUES ('clock_shift_delta_us', ?1), ('clock_shift_up_to', ?2),"
       " ('clock_shift_done_up_to', ?3), ('clock_shift_only_before_us', ?4)"},
      {&clear_shift_,
       "DELETE FROM meta WHERE key IN"
       " ('clock_shift_delta_us', 'clock_shift_up_to', 'clock_shift_done_up_to', 'clock_shift_only_before_us')"},
      // ?1 < seq <= ?2, by ?3; with ?4 > 0 only the times below ?4. The
      // SET expressions all read the row as it was.
      {&shift_events_,
       "UPDATE events SET"
       " accepted_us = CASE WHEN ?4 = 0 OR accepted_us < ?4 THEN max(accepted_us + ?3, 1) ELSE accepted_us END,"
       " expires_us = CASE WHEN expires_us > 0 AND (?4 = 0 OR accepted_us < ?4)"
       "   THEN max(expires_us + ?3, 1) ELSE expires_us END,"
       " not_before_us = CASE WHEN not_before_us > 0 AND (?4 = 0 OR not_before_us < ?4)"
       "   THEN max(not_before_us + ?3, 1) ELSE not_before_us END"
       " WHERE seq > ?1 AND seq <= ?2 AND (?4 = 0 OR accepted_us < ?4 OR (not_before_us > 0 AND not_before_us < ?4))"},
      {&shift_delivered_,
       "UPDATE delivered SET"
       " accepted_us = CASE WHEN ?4 = 0 OR accepted_us < ?4 THEN max(accepted_us + ?3, 1) ELSE accepted_us END,"
       " delivered_us = CASE WHEN ?4 = 0 OR delivered_us < ?4 THEN max(delivered_us + ?3, 1) ELSE delivered_us END"
       " WHERE seq > ?1 AND seq <= ?2 AND (?4 = 0 OR accepted_us < ?4 OR delivered_us < ?4)"},
      {&shift_dlq_,
       "UPDATE dlq SET"
       " accepted_us = CASE WHEN ?4 = 0 OR accepted_us < ?4 THEN max(accepted_us + ?3, 1) ELSE accepted_us END,"
       " dead_lettered_us = CASE WHEN ?4 = 0 OR dead_lettered_us < ?4"
       "   THEN max(dead_lettered_us + ?3, 1) ELSE dead_lettered_us END"
       " WHERE seq > ?1 AND seq <= ?2 AND (?4 = 0 OR accepted_us < ?4 OR dead_lettered_us < ?4)"},
      {&first_sequence_,
       "SELECT min(coalesce((SELECT min(seq) FROM events), 0x7fffffffffffffff),"
       " coalesce((SELECT min(seq) FROM dlq), 0x7fffffffffffffff),"
       " coalesce((SELECT min(seq) FROM delivered), 0x7fffffffffffffff))"},
      // Times rise with the sequence except where the clock was set: the
      // ends of each table tell whether a scan is needed.
      {&table_ends_,
       "SELECT coalesce((SELECT accepted_us FROM events ORDER BY seq LIMIT 1), ?1) < ?1"
       " OR coalesce((SELECT accepted_us FROM events ORDER BY seq DESC LIMIT 1), ?1) < ?1"
       " OR coalesce((SELECT accepted_us FROM delivered ORDER BY seq LIMIT 1), ?1) < ?1"
       " OR coalesce((SELECT accepted_us FROM delivered ORDER BY seq DESC LIMIT 1), ?1) < ?1"
       " OR coalesce((SELECT accepted_us FROM dlq ORDER BY seq LIMIT 1), ?1) < ?1"
       " OR coalesce((SELECT accepted_us FROM dlq ORDER BY seq DESC LIMIT 1), ?1) < ?1"},
      {&accepted_before_,
       "SELECT max(seq), max(accepted_us) FROM ("
       "SELECT seq, accepted_us FROM events WHERE accepted_us < ?1"
       " UNION ALL SELECT seq, accepted_us FROM delivered WHERE accepted_us < ?1"
       " UNION ALL SELECT seq, accepted_us FROM dlq WHERE accepted_us < ?1)"},
      {&page_count_, "PRAGMA page_count"},
      {&freelist_count_, "PRAGMA freelist_count"},
      {&add_to_totals_, "UPDATE totals SET count = count + ?2, bytes = bytes + ?3 WHERE bucket = ?1"},
      {&oldest_in_class_, "SELECT seq, bytes, accepted_us FROM events WHERE priority = ?1 ORDER BY seq LIMIT 1"},
      {&list_dlq_,
       "SELECT seq, id, priority, topic, accepted_us, dead_lettered_us, attempts, reason, record FROM dlq"
       " WHERE seq > ?1 ORDER BY seq LIMIT ?2"},
      {&find_dlq_by_seq_, "SELECT seq, id, priority, stream, topic, bytes, record FROM dlq WHERE seq = ?1"},
      {&find_dlq_by_id_,
       "SELECT seq, id, priority, stream, topic, bytes, record FROM dlq WHERE id = ?1 ORDER BY seq LIMIT 1"},
      {&delete_dlq_by_seq_, "DELETE FROM dlq WHERE seq = ?1 RETURNING 4, bytes"},
      {&delete_dlq_by_id_, "DELETE FROM dlq WHERE id = ?1 RETURNING 4, bytes"},
      {&delete_oldest_dlq_,
       "DELETE FROM dlq WHERE seq IN (SELECT seq FROM dlq ORDER BY seq LIMIT ?1) RETURNING 4, bytes"},
      {&delivered_by_seq_, "SELECT seq FROM delivered WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3"},
      {&delivered_by_time_, "SELECT seq FROM delivered WHERE accepted_us BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3"},
      {&read_delivered_, "SELECT id, priority, stream, topic, record FROM delivered WHERE seq = ?1"},
  };
  for (const Def& d : defs) {
    WS_ASSIGN_OR_RETURN(*d.stmt, Statement::Prepare(db_, d.sql));
  }
  return Status::Ok();
}

Status OutboxDb::Begin() {
  change_ = TotalsChange{};
  StatementScope scope(begin_);
  return begin_.Run();
}

Status OutboxDb::Commit() {
  // In the transaction itself, so the totals are exact after any crash.
  for (int64_t b = 0; b < kBuckets; ++b) {
    const auto i = static_cast<size_t>(b);
    if (change_.count[i] == 0 && change_.bytes[i] == 0) continue;
    StatementScope scope(add_to_totals_);
    WS_TRY(add_to_totals_.Bind(1, b));
    WS_TRY(add_to_totals_.Bind(2, change_.count[i]));
    WS_TRY(add_to_totals_.Bind(3, change_.bytes[i]));
    WS_TRY(add_to_totals_.Run());
    if (add_to_totals_.Changes() != 1) return DataLoss("the totals table has no row " + std::to_string(b));
  }
  change_ = TotalsChange{};
  StatementScope scope(commit_);
  WS_TRY(commit_.Run());
  new_topics_.clear();  // in the file for good
  return Status::Ok();
}

void OutboxDb::Rollback() {
  change_ = TotalsChange{};
  ForgetNewTopics();
  if (!InTransaction()) return;
  StatementScope scope(rollback_);
  Status s = rollback_.Run();
  if (!s.ok()) {
    // Nothing more can be done here; SQLite rolls back the open transaction
    // when the connection next starts one or closes.
    WS_LOG_ERROR("outbox", "rollback failed", {{"error", s.ToString()}});
  }
}

Status OutboxDb::KeepFilesAtClose() { return SetCheckpointOnClose(db_, false); }

// Not a prepared statement: SQLite applies PRAGMA synchronous while it
// compiles the statement, so a prepared one would act once, at Prepare.
// WAL writes stay gathered either way: the VFS passes a commit's frames on
// at its commit frame, whether a sync follows or not (wal_write_vfs.h).
Status OutboxDb::SetDurableCommits(bool durable) {
  return durable ? db_.Exec("PRAGMA synchronous=FULL", "set synchronous=FULL")
                 : db_.Exec("PRAGMA synchronous=NORMAL", "set synchronous=NORMAL");
}

Status OutboxDb::SetWalGathering(bool on) {
  int arg = on ? 1 : 0;
  const int rc = sqlite3_file_control(db_.get(), "main", kWalGatherControl, &arg);
  // NOTFOUND: a VFS that does not gather; its writes go straight through.
  if (rc != SQLITE_OK && rc != SQLITE_NOTFOUND) return SqliteStatus(rc, db_.get(), "set WAL write gathering");
  return Status::Ok();
}

Status OutboxDb::SyncWal() {
  sqlite3_file* wal = nullptr;
  int rc = sqlite3_file_control(db_.get(), "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db_.get(), "find the WAL file");
  // No WAL open (nothing written since it was last checkpointed away).
  if (wal == nullptr || wal->pMethods == nullptr) return Status::Ok();
  rc = wal->pMethods->xSync(wal, SQLITE_SYNC_FULL);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db_.get(), "sync the WAL");
  return Status::Ok();
}

Status OutboxDb::Savepoint() {
  change_at_savepoint_ = change_;
  StatementScope scope(savepoint_);
  return savepoint_.Run();
}

Status OutboxDb::ReleaseSavepoint() {
  StatementScope scope(release_);
  return release_.Run();
}

Status OutboxDb::RollbackToSavepoint() {
  change_ = change_at_savepoint_;
  // Also those added before the savepoint, which are still there: they are
  // found again in the table when next needed.
  ForgetNewTopics();
  StatementScope scope(rollback_to_);
  return rollback_to_.Run();
}

Status OutboxDb::Count(int64_t bucket, int64_t count, int64_t bytes) {
  if (bucket < 0 || bucket >= kBuckets || bytes < 0) {
    return DataLoss("a row has bucket " + std::to_string(bucket) + " and " + std::to_string(bytes) + " bytes");
  }
  if (!InTransaction()) return Internal("events changed outside a transaction: the totals would miss it");
  const auto i = static_cast<size_t>(bucket);
  change_.count[i] += count;
  change_.bytes[i] += count * bytes;
  return Status::Ok();
}

Result<int64_t> OutboxDb::RunRemoving(Statement& stmt, int64_t moved_to_bucket) {
  int64_t rows = 0;
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return rows;
    const int64_t bytes = stmt.ColumnInt64(1);
    WS_TRY(Count(stmt.ColumnInt64(0), -1, bytes));
    if (moved_to_bucket >= 0) WS_TRY(Count(moved_to_bucket, 1, bytes));
    ++rows;
  }
}

bool OutboxDb::InTransaction() const { return sqlite3_get_autocommit(db_.get()) == 0; }

Result<int64_t> OutboxDb::LastSequence() {
  StatementScope scope(last_sequence_);
  WS_ASSIGN_OR_RETURN(bool row, last_sequence_.Step());
  if (!row) return Internal("last sequence query returned no row");
  return last_sequence_.ColumnInt64(0);
}

Status OutboxDb::SetLastSequence(int64_t sequence) {
  StatementScope scope(set_last_sequence_);
  WS_TRY(set_last_sequence_.Bind(1, sequence));
  WS_TRY(set_last_sequence_.Run());
  if (set_last_sequence_.Changes() != 1) return DataLoss("the meta row last_sequence is missing");
  return Status::Ok();
}

namespace {

// The stream of a row. Nearly every event's stream is its topic, so
// InsertEvent stores that case as an empty blob instead of the topic
// twice (a sixth of a typical row, and of the pages each commit writes).
// A text value, even empty, is the stream itself. dlq and delivered copy
// the column as it is.
std::string StreamColumn(const Statement& stmt, int stream_column, const std::string& topic) {
  if (stmt.ColumnIsBlob(stream_column)) return topic;
  return std::string(stmt.ColumnText(stream_column));
}

// A topic ref in the topic column: big-endian, without leading zero bytes.
std::string EncodeTopicRef(int64_t ref) {
  std::string out;
  for (auto v = static_cast<uint64_t>(ref); v != 0; v >>= 8) out.insert(out.begin(), static_cast<char>(v & 0xff));
  return out;
}

std::optional<int64_t> DecodeTopicRef(std::string_view blob) {
  if (blob.empty() || blob.size() > 7 || blob.front() == '\0') return std::nullopt;
  int64_t ref = 0;
  for (char c : blob) ref = (ref << 8) | static_cast<uint8_t>(c);
  return ref;
}

// Runs a lookup by id that answers (seq, record) rows.
Result<std::optional<StoredId>> LookUpId(Statement& stmt, std::string_view id) {
  StatementScope scope(stmt);
  WS_TRY(stmt.BindText(1, id));
  WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<StoredId>();
  return std::optional<StoredId>(StoredId{stmt.ColumnInt64(0), std::string(stmt.ColumnBlob(1))});
}

}  // namespace

Result<std::optional<StoredId>> OutboxDb::FindId(std::string_view id) { return LookUpId(find_id_, id); }

Result<std::optional<StoredId>> OutboxDb::FindIdInOutbox(std::string_view id) {
  return LookUpId(find_id_in_outbox_, id);
}

Result<bool> OutboxDb::DeliveredEmpty() {
  StatementScope scope(any_delivered_row_);
  WS_ASSIGN_OR_RETURN(bool row, any_delivered_row_.Step());
  return !row;
}

Result<bool> OutboxDb::EventsEmpty() {
  StatementScope scope(any_event_row_);
  WS_ASSIGN_OR_RETURN(bool row, any_event_row_.Step());
  return !row;
}

Status OutboxDb::InsertEvent(const NewEventRow& r) {
  StatementScope scope(insert_event_);
  WS_TRY(insert_event_.Bind(1, r.sequence));
  WS_TRY(insert_event_.BindText(2, r.id));
  WS_TRY(insert_event_.Bind(3, static_cast<int64_t>(r.priority)));
  if (r.stream == r.topic) {
    WS_TRY(insert_event_.BindBlob(4, {}));
  } else {
    WS_TRY(insert_event_.BindText(4, r.stream));
  }
  WS_ASSIGN_OR_RETURN(int64_t topic_ref, TopicRef(r.topic));
  const std::string ref = EncodeTopicRef(topic_ref);
  WS_TRY(topic_ref != 0 ? insert_event_.BindBlob(5, ref) : insert_event_.BindText(5, r.topic));
  WS_TRY(insert_event_.Bind(6, r.accepted_us));
  WS_TRY(insert_event_.Bind(7, r.expires_us));
  WS_TRY(insert_event_.Bind(8, static_cast<int64_t>(r.bytes)));
  WS_TRY(insert_event_.BindBlob(9, r.record));
  WS_TRY(insert_event_.Bind(10, r.replay_of));
  WS_TRY(insert_event_.Bind(11, static_cast<int64_t>(r.attempts)));
  WS_TRY(insert_event_.Run());
  return Count(static_cast<int64_t>(r.priority), 1, static_cast<int64_t>(r.bytes));
}

Result<bool> OutboxDb::InsertEventIfNew(const NewEventRow& r) {
  Status s = InsertEvent(r);
  if (s.ok()) return true;
  // The failed statement undid itself; the transaction goes on. Only the
  // id's index can refuse a new sequence with valid columns.
  if (sqlite3_extended_errcode(db_.get()) == SQLITE_CONSTRAINT_UNIQUE) return false;
  return s;
}

Result<std::optional<int64_t>> OutboxDb::FindQueuedId(std::string_view id) {
  StatementScope scope(find_queued_id_);
  WS_TRY(find_queued_id_.BindText(1, id));
  WS_ASSIGN_OR_RETURN(bool row, find_queued_id_.Step());
  if (!row) return std::optional<int64_t>();
  return std::optional<int64_t>(find_queued_id_.ColumnInt64(0));
}

Result<bool> OutboxDb::DeleteEvent(int64_t sequence) {
  StatementScope scope(delete_event_);
  WS_TRY(delete_event_.Bind(1, sequence));
  WS_ASSIGN_OR_RETURN(int64_t rows, RunRemoving(delete_event_));
  return rows > 0;
}

Result<std::optional<EventHead>> OutboxDb::OldestInClass(Priority p) {
  StatementScope scope(oldest_in_class_);
  WS_TRY(oldest_in_class_.Bind(1, static_cast<int64_t>(p)));
  WS_ASSIGN_OR_RETURN(bool row, oldest_in_class_.Step());
  if (!row) return std::optional<EventHead>();
  const int64_t bytes = oldest_in_class_.ColumnInt64(1);
  if (bytes < 0) return DataLoss("event " + std::to_string(oldest_in_class_.ColumnInt64(0)) + " has negative bytes");
  return std::optional<EventHead>(
      EventHead{oldest_in_class_.ColumnInt64(0), static_cast<uint64_t>(bytes), oldest_in_class_.ColumnInt64(2)});
}

Result<int64_t> OutboxDb::DeleteOlderThan(Priority p, int64_t cutoff_us, int64_t limit) {
  int64_t last = 0;
  {
    StatementScope scope(class_head_);
    WS_TRY(class_head_.Bind(1, static_cast<int64_t>(p)));
    WS_TRY(class_head_.Bind(2, limit));
    for (;;) {
      WS_ASSIGN_OR_RETURN(bool row, class_head_.Step());
      if (!row || class_head_.ColumnInt64(1) > cutoff_us) break;
      last = class_head_.ColumnInt64(0);
    }
  }
  if (last == 0) return int64_t{0};
  StatementScope scope(delete_class_up_to_);
  WS_TRY(delete_class_up_to_.Bind(1, static_cast<int64_t>(p)));
  WS_TRY(delete_class_up_to_.Bind(2, last));
  return RunRemoving(delete_class_up_to_);
}

Result<bool> OutboxDb::RemoveDelivered(int64_t sequence, bool retain, int64_t now_us) {
  if (retain) {
    StatementScope scope(copy_to_delivered_);
    WS_TRY(copy_to_delivered_.Bind(1, sequence));
    WS_TRY(copy_to_delivered_.Bind(2, now_us));
    WS_TRY(copy_to_delivered_.Run());
  }
  return DeleteEvent(sequence);
}

Result<int64_t> OutboxDb::RemoveDeliveredRange(int64_t first, int64_t last) {
  StatementScope scope(delete_event_range_);
  WS_TRY(delete_event_range_.Bind(1, first));
  WS_TRY(delete_event_range_.Bind(2, last));
  return RunRemoving(delete_event_range_);
}

Result<bool> OutboxDb::MoveToDeadLetters(int64_t sequence, std::string_view reason, int64_t now_us) {
  {
    StatementScope scope(copy_to_dlq_);
    WS_TRY(copy_to_dlq_.Bind(1, sequence));
    WS_TRY(copy_to_dlq_.BindText(2, reason));
    WS_TRY(copy_to_dlq_.Bind(3, now_us));
    WS_TRY(copy_to_dlq_.Run());
    if (copy_to_dlq_.Changes() == 0) return false;
  }
  StatementScope scope(delete_event_);
  WS_TRY(delete_event_.Bind(1, sequence));
  WS_TRY(RunRemoving(delete_event_, kDlqBucket).status());
  return true;
}

Result<bool> OutboxDb::AnyExpired(int64_t now_us) {
  StatementScope scope(any_expired_);
  WS_TRY(any_expired_.Bind(1, now_us));
  return any_expired_.Step();
}

Result<int64_t> OutboxDb::DeleteExpired(int64_t now_us, int64_t limit) {
  StatementScope scope(delete_expired_);
  WS_TRY(delete_expired_.Bind(1, now_us));
  WS_TRY(delete_expired_.Bind(2, limit));
  return RunRemoving(delete_expired_);
}

Result<bool> OutboxDb::AnyDeliveredUpTo(int64_t cutoff_us) {
  StatementScope scope(any_delivered_);
  WS_TRY(any_delivered_.Bind(1, cutoff_us));
  return any_delivered_.Step();
}

Result<int64_t> OutboxDb::PurgeDeliveredUpTo(int64_t cutoff_us, int64_t limit) {
  StatementScope scope(purge_delivered_);
  WS_TRY(purge_delivered_.Bind(1, cutoff_us));
  WS_TRY(purge_delivered_.Bind(2, limit));
  WS_TRY(purge_delivered_.Run());
  return purge_delivered_.Changes();
}

Status OutboxDb::AddAttempt(Priority p, int64_t up_to_sequence, int64_t now_us) {
  StatementScope scope(add_attempt_);
  WS_TRY(add_attempt_.Bind(1, static_cast<int64_t>(p)));
  WS_TRY(add_attempt_.Bind(2, up_to_sequence));
  WS_TRY(add_attempt_.Bind(3, now_us));
  return add_attempt_.Run();
}

Result<std::optional<Priority>> OutboxDb::Nack(int64_t sequence, int64_t not_before_us) {
  StatementScope scope(nack_);
  WS_TRY(nack_.Bind(1, sequence));
  WS_TRY(nack_.Bind(2, not_before_us));
  WS_ASSIGN_OR_RETURN(bool row, nack_.Step());
  if (!row) return std::optional<Priority>();
  const int64_t p = nack_.ColumnInt64(0);
  // RETURNING rows are produced before the change is final: step to the end.
  WS_TRY(nack_.Run());
  if (p < 0 || p >= kPriorityCount) return DataLoss("event " + std::to_string(sequence) + " has an invalid priority");
  return std::optional<Priority>(static_cast<Priority>(p));
}

Status OutboxDb::ReadWaiting(int64_t now_us, std::vector<WaitingRow>* out) {
  StatementScope scope(read_waiting_);
  WS_TRY(read_waiting_.Bind(1, now_us));
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, read_waiting_.Step());
    if (!row) return Status::Ok();
    const int64_t p = read_waiting_.ColumnInt64(1);
    if (p < 0 || p >= kPriorityCount) continue;  // the CHECK constraint makes this impossible
    out->push_back(WaitingRow{read_waiting_.ColumnInt64(0), static_cast<Priority>(p), read_waiting_.ColumnInt64(2)});
  }
}

Status OutboxDb::ReadLeasable(Priority p, int64_t after, int64_t up_to, int64_t now_us, size_t limit,
                              std::vector<LeasedEvent>* out, std::vector<std::pair<int64_t, Status>>* unreadable,
                              int64_t* last_seen) {
  StatementScope scope(read_class_);
  WS_TRY(read_class_.Bind(1, static_cast<int64_t>(p)));
  WS_TRY(read_class_.Bind(2, after));
  WS_TRY(read_class_.Bind(3, now_us));
  WS_TRY(read_class_.Bind(4, static_cast<int64_t>(std::min<uint64_t>(limit, INT64_MAX))));
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, read_class_.Step());
    if (!row) return Status::Ok();
    const int64_t seq = read_class_.ColumnInt64(0);
    if (seq > up_to) return Status::Ok();  // in sequence order: the rest are too
    *last_seen = seq;
    const std::string_view record = read_class_.ColumnBlob(5);
    const Status readable = CheckEventRecord(record);
    Result<std::string> topic = readable.ok() ? TopicColumn(read_class_, 1) : readable;
    if (!topic.ok()) {
      unreadable->emplace_back(seq, topic.status());
      continue;
    }
    LeasedEvent& e = out->emplace_back();
    e.sequence = seq;
    e.topic = std::move(topic).value();
    e.stream = StreamColumn(read_class_, 2, e.topic);
    e.priority = p;
    e.attempts = static_cast<int32_t>(read_class_.ColumnInt64(3));
    e.accepted_at_us = read_class_.ColumnInt64(4);
    e.replay_of = read_class_.ColumnInt64(6);
    e.id.assign(read_class_.ColumnText(7));
    e.record.assign(record);
  }
}

Status OutboxDb::ReadLeasableBySequence(int64_t sequence, int64_t now_us, std::vector<LeasedEvent>* out,
                                        std::vector<std::pair<int64_t, Status>>* unreadable) {
  StatementScope scope(read_one_);
  WS_TRY(read_one_.Bind(1, sequence));
  WS_TRY(read_one_.Bind(2, now_us));
  WS_ASSIGN_OR_RETURN(bool row, read_one_.Step());
  if (!row) return Status::Ok();
  const std::string_view record = read_one_.ColumnBlob(5);
  const Status readable = CheckEventRecord(record);
  Result<std::string> topic = readable.ok() ? TopicColumn(read_one_, 1) : readable;
  if (!topic.ok()) {
    unreadable->emplace_back(sequence, topic.status());
    return Status::Ok();
  }
  const int64_t p = read_one_.ColumnInt64(7);
  if (p < 0 || p >= kPriorityCount) return DataLoss("event " + std::to_string(sequence) + " has an invalid priority");
  LeasedEvent& e = out->emplace_back();
  e.sequence = sequence;
  e.topic = std::move(topic).value();
  e.stream = StreamColumn(read_one_, 2, e.topic);
  e.priority = static_cast<Priority>(p);
  e.attempts = static_cast<int32_t>(read_one_.ColumnInt64(3));
  e.accepted_at_us = read_one_.ColumnInt64(4);
  e.replay_of = read_one_.ColumnInt64(6);
  e.id.assign(read_one_.ColumnText(8));
  e.record.assign(record);
  return Status::Ok();
}

namespace {

// LIMIT -1 would mean "no limit" to SQLite; keep a huge request huge.
int64_t SqlLimit(size_t limit) { return static_cast<int64_t>(std::min<uint64_t>(limit, INT64_MAX)); }

Result<Priority> PriorityColumn(const Statement& stmt, int column, int64_t sequence) {
  const int64_t p = stmt.ColumnInt64(column);
  if (p < 0 || p >= kPriorityCount) return DataLoss("row " + std::to_string(sequence) + " has an invalid priority");
  return static_cast<Priority>(p);
}

}  // namespace

Status OutboxDb::ListDeadLetters(int64_t after, size_t limit, std::vector<DeadLetter>* out) {
  StatementScope scope(list_dlq_);
  WS_TRY(list_dlq_.Bind(1, after));
  WS_TRY(list_dlq_.Bind(2, SqlLimit(limit)));
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, list_dlq_.Step());
    if (!row) return Status::Ok();
    DeadLetter d;
    d.sequence = list_dlq_.ColumnInt64(0);
    d.id = std::string(list_dlq_.ColumnText(1));
    WS_ASSIGN_OR_RETURN(d.priority, PriorityColumn(list_dlq_, 2, d.sequence));
    // Listed even when its topic cannot be resolved (a damaged row is what
    // the dead letters are there to show), without one.
    Result<std::string> topic = TopicColumn(list_dlq_, 3);
    if (topic.ok()) d.topic = std::move(topic).value();
    d.accepted_at_us = list_dlq_.ColumnInt64(4);
    d.dead_lettered_at_us = list_dlq_.ColumnInt64(5);
    d.attempts = static_cast<int32_t>(list_dlq_.ColumnInt64(6));
    d.reason = std::string(list_dlq_.ColumnText(7));
    // The type is inside the record; a record that cannot be decoded (the
    // reason it was parked, perhaps) is still listed, without one.
    Result<Event> event = DecodeEventRecord(list_dlq_.ColumnBlob(8), d.id);
    if (event.ok()) d.type = std::move(event->type);
    out->push_back(std::move(d));
  }
}

Result<std::optional<DeadLetterRow>> OutboxDb::FindDeadLetter(int64_t sequence, std::string_view id) {
  Statement& stmt = sequence != 0 ? find_dlq_by_seq_ : find_dlq_by_id_;
  StatementScope scope(stmt);
  WS_TRY(sequence != 0 ? stmt.Bind(1, sequence) : stmt.BindText(1, id));
  WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<DeadLetterRow>();
  DeadLetterRow d;
  d.sequence = stmt.ColumnInt64(0);
  d.id = std::string(stmt.ColumnText(1));
  WS_ASSIGN_OR_RETURN(d.priority, PriorityColumn(stmt, 2, d.sequence));
  WS_ASSIGN_OR_RETURN(d.topic, TopicColumn(stmt, 4));
  d.stream = StreamColumn(stmt, 3, d.topic);
  const int64_t bytes = stmt.ColumnInt64(5);
  if (bytes < 0) return DataLoss("dead letter " + std::to_string(d.sequence) + " has negative bytes");
  d.bytes = static_cast<uint64_t>(bytes);
  d.record = std::string(stmt.ColumnBlob(6));
  return std::optional<DeadLetterRow>(std::move(d));
}

Result<int64_t> OutboxDb::DeleteDeadLetters(int64_t sequence, std::string_view id) {
  Statement& stmt = sequence != 0 ? delete_dlq_by_seq_ : delete_dlq_by_id_;
  StatementScope scope(stmt);
  WS_TRY(sequence != 0 ? stmt.Bind(1, sequence) : stmt.BindText(1, id));
  return RunRemoving(stmt);
}

Result<int64_t> OutboxDb::DeleteOldestDeadLetters(int64_t limit) {
  StatementScope scope(delete_oldest_dlq_);
  WS_TRY(delete_oldest_dlq_.Bind(1, limit));
  return RunRemoving(delete_oldest_dlq_);
}

Status OutboxDb::SelectDelivered(const ReplayRange& range, size_t limit, std::vector<int64_t>* out) {
  const bool by_sequence = range.from_sequence != 0 || range.to_sequence != 0;
  const bool by_time = range.from_us != 0 || range.to_us != 0;
  auto collect = [&](Statement& stmt, int64_t from, int64_t to) -> Status {
    StatementScope scope(stmt);
    WS_TRY(stmt.Bind(1, from));
    WS_TRY(stmt.Bind(2, to == 0 ? INT64_MAX : to));
    WS_TRY(stmt.Bind(3, SqlLimit(limit)));
    for (;;) {
      WS_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return Status::Ok();
      out->push_back(stmt.ColumnInt64(0));
    }
  };
  const size_t start = out->size();
  if (by_sequence || !by_time) WS_TRY(collect(delivered_by_seq_, range.from_sequence, range.to_sequence));
  if (by_time) WS_TRY(collect(delivered_by_time_, range.from_us, range.to_us));
  // Both criteria: one ascending list without the events both selected.
  std::sort(out->begin() + static_cast<std::ptrdiff_t>(start), out->end());
  out->erase(std::unique(out->begin() + static_cast<std::ptrdiff_t>(start), out->end()), out->end());
  if (out->size() - start > limit) out->resize(start + limit);
  return Status::Ok();
}

Result<std::optional<DeliveredRow>> OutboxDb::ReadDelivered(int64_t sequence) {
  StatementScope scope(read_delivered_);
  WS_TRY(read_delivered_.Bind(1, sequence));
  WS_ASSIGN_OR_RETURN(bool row, read_delivered_.Step());
  if (!row) return std::optional<DeliveredRow>();
  DeliveredRow d;
  d.id = std::string(read_delivered_.ColumnText(0));
  WS_ASSIGN_OR_RETURN(d.priority, PriorityColumn(read_delivered_, 1, sequence));
  WS_ASSIGN_OR_RETURN(d.topic, TopicColumn(read_delivered_, 3));
  d.stream = StreamColumn(read_delivered_, 2, d.topic);
  d.record = std::string(read_delivered_.ColumnBlob(4));
  return std::optional<DeliveredRow>(std::move(d));
}

Status OutboxDb::LoadTopics() {
  WS_ASSIGN_OR_RETURN(Statement all, Statement::Prepare(db_, "SELECT ref, topic FROM topics"));
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, all.Step());
    if (!row) return Status::Ok();
    Remember(all.ColumnInt64(0), std::string(all.ColumnText(1)));
  }
}

void OutboxDb::Remember(int64_t ref, std::string topic) {
  topic_refs_.emplace(topic, ref);
  topic_names_.emplace(ref, std::move(topic));
}

void OutboxDb::ForgetNewTopics() {
  for (const auto& [topic, ref] : new_topics_) {
    topic_refs_.erase(topic);
    topic_names_.erase(ref);
  }
  new_topics_.clear();
}

Result<int64_t> OutboxDb::TopicRef(std::string_view topic) {
  if (auto it = topic_refs_.find(topic); it != topic_refs_.end()) return it->second;
  if (topic_refs_.size() >= kMaxTopics) return int64_t{0};
  int64_t ref = 0;
  {
    // The table is the truth: a rollback may have made this process forget
    // a topic that an earlier transaction stored.
    StatementScope scope(find_topic_);
    WS_TRY(find_topic_.BindText(1, topic));
    WS_ASSIGN_OR_RETURN(bool row, find_topic_.Step());
    if (row) ref = find_topic_.ColumnInt64(0);
  }
  if (ref == 0) {
    StatementScope scope(add_topic_);
    WS_TRY(add_topic_.BindText(1, topic));
    WS_ASSIGN_OR_RETURN(bool row, add_topic_.Step());
    if (!row) return Internal("storing a topic returned no ref");
    ref = add_topic_.ColumnInt64(0);
    WS_TRY(add_topic_.Run());  // RETURNING rows come before the change is final
  }
  if (ref <= 0) return DataLoss("the topics table holds ref " + std::to_string(ref));
  new_topics_.emplace_back(std::string(topic), ref);
  Remember(ref, std::string(topic));
  return ref;
}

Result<std::string> OutboxDb::TopicColumn(const Statement& stmt, int column) {
  if (!stmt.ColumnIsBlob(column)) return std::string(stmt.ColumnText(column));
  const std::optional<int64_t> ref = DecodeTopicRef(stmt.ColumnBlob(column));
  if (!ref.has_value()) return DataLoss("a row's topic ref is malformed");
  if (auto it = topic_names_.find(*ref); it != topic_names_.end()) return it->second;
  StatementScope scope(topic_by_ref_);
  WS_TRY(topic_by_ref_.Bind(1, *ref));
  WS_ASSIGN_OR_RETURN(bool row, topic_by_ref_.Step());
  if (!row) return DataLoss("a row refers to topic " + std::to_string(*ref) + ", which the topics table lacks");
  return std::string(topic_by_ref_.ColumnText(0));
}

Result<StoreTotals> OutboxDb::ReadTotals() {
  StoreTotals t;
  {
    StatementScope scope(read_totals_);
    for (;;) {
      WS_ASSIGN_OR_RETURN(bool row, read_totals_.Step());
      if (!row) break;
      const int64_t bucket = read_totals_.ColumnInt64(0);
      // Inside a transaction: with what it changed so far.
      const bool known = bucket >= 0 && bucket < kBuckets;
      const int64_t count = read_totals_.ColumnInt64(1) + (known ? change_.count[static_cast<size_t>(bucket)] : 0);
      const int64_t bytes = read_totals_.ColumnInt64(2) + (known ? change_.bytes[static_cast<size_t>(bucket)] : 0);
      if (count < 0 || bytes < 0) {
        return DataLoss("the totals table is inconsistent (bucket " + std::to_string(bucket) + ")");
      }
      if (bucket >= 0 && bucket < kPriorityCount) {
        t.backlog[bucket].count = static_cast<uint64_t>(count);
        t.backlog[bucket].bytes = static_cast<uint64_t>(bytes);
      } else if (bucket == kDlqBucket) {
        t.dlq_count = static_cast<uint64_t>(count);
        t.dlq_bytes = static_cast<uint64_t>(bytes);
      }
    }
  }
  for (Priority p : kAllPriorities) {
    ClassBacklog& b = t.backlog[static_cast<size_t>(p)];
    if (b.count == 0) continue;
    WS_ASSIGN_OR_RETURN(std::optional<EventHead> head, OldestInClass(p));
    if (head.has_value()) b.oldest_accepted_us = head->accepted_us;
  }
  return t;
}

}  // namespace ws::sqlite
