#include "adapters/sqlite/outbox_db.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>

#include "platform/log.h"

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

constexpr int64_t kDlqBucket = 4;

struct Migration {
  int version;  // PRAGMA user_version after this step
  const char* sql;
};
// Append-only: a store at version N runs every step above N, each in its own
// transaction together with the version bump.
constexpr Migration kMigrations[] = {
    {1, kSchemaV1},
};
constexpr int kSchemaVersion = 1;

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

Status ConfigureConnection(Connection& db, int64_t cache_kib) {
  // A second process (an operator's sqlite3 shell) may hold a read lock
  // briefly; waiting a little beats failing a commit.
  const int rc = sqlite3_busy_timeout(db.get(), 2000);
  if (rc != SQLITE_OK) return db.Error(rc, "set busy timeout");

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
  // After a checkpoint the -wal file is cut back to 4 MiB, so one large
  // batch does not keep its flash space forever.
  WS_TRY(db.Exec("PRAGMA journal_size_limit=4194304", "set journal_size_limit"));
  WS_TRY(db.Exec("PRAGMA trusted_schema=OFF", "set trusted_schema"));
  return Status::Ok();
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

Result<std::unique_ptr<OutboxDb>> OutboxDb::Open(const OutboxDbOptions& options, OpenReport* report) {
  auto store = std::make_unique<OutboxDb>(PrivateTag{});
  WS_ASSIGN_OR_RETURN(store->db_, Connection::Open(options.path, options.vfs));

  // Until the file has passed every check, nothing may write to it.
  WS_TRY(SetCheckpointOnClose(store->db_, false));
  const auto check_start = std::chrono::steady_clock::now();
  WS_TRY(QuickCheck(store->db_));
  report->quick_check_us = MicrosSince(check_start);
  WS_ASSIGN_OR_RETURN(report->schema_version_found, CheckSchemaVersion(store->db_));
  WS_TRY(SetCheckpointOnClose(store->db_, true));

  WS_TRY(ConfigureConnection(store->db_, options.cache_kib));
  WS_TRY(Migrate(store->db_, report->schema_version_found));
  WS_TRY(store->Prepare());
  WS_ASSIGN_OR_RETURN(report->last_sequence, store->LastSequence());
  WS_ASSIGN_OR_RETURN(report->totals, store->ReadTotals());
  return store;
}

OutboxDb::~OutboxDb() = default;

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
      {&find_id_,
       "SELECT seq, record FROM events WHERE id = ?1"
       " UNION ALL SELECT seq, record FROM dlq WHERE id = ?1"
       " UNION ALL SELECT seq, record FROM delivered WHERE id = ?1 LIMIT 1"},
      {&insert_event_,
       "INSERT INTO events(seq, id, priority, stream, topic, accepted_us, expires_us, attempts, bytes, record)"
       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)"},
      {&copy_to_delivered_,
       "INSERT INTO delivered(seq, id, priority, stream, topic, accepted_us, delivered_us, record)"
       " SELECT seq, id, priority, stream, topic, accepted_us, ?2, record FROM events WHERE seq = ?1"},
      {&delete_event_, "DELETE FROM events WHERE seq = ?1"},
      {&copy_to_dlq_,
       "INSERT INTO dlq(seq, id, priority, stream, topic, accepted_us, attempts, bytes, record, reason,"
       " dead_lettered_us)"
       " SELECT seq, id, priority, stream, topic, accepted_us, attempts, bytes, record, ?2, ?3"
       " FROM events WHERE seq = ?1"},
      {&any_expired_, "SELECT 1 FROM events WHERE expires_us > 0 AND expires_us <= ?1 LIMIT 1"},
      {&delete_expired_,
       "DELETE FROM events WHERE seq IN"
       " (SELECT seq FROM events WHERE expires_us > 0 AND expires_us <= ?1 LIMIT ?2)"},
      {&any_delivered_, "SELECT 1 FROM delivered WHERE delivered_us <= ?1 LIMIT 1"},
      {&purge_delivered_,
       "DELETE FROM delivered WHERE seq IN (SELECT seq FROM delivered WHERE delivered_us <= ?1 LIMIT ?2)"},
      {&add_attempt_, "UPDATE events SET attempts = attempts + 1 WHERE priority = ?1 AND seq <= ?2"},
      {&read_class_,
       "SELECT seq, topic, stream, attempts, accepted_us, record FROM events"
       " WHERE priority = ?1 AND seq > ?2 AND (expires_us = 0 OR expires_us > ?3) ORDER BY seq LIMIT ?4"},
      {&read_totals_, "SELECT bucket, count, bytes FROM totals"},
      {&oldest_in_class_, "SELECT accepted_us FROM events WHERE priority = ?1 ORDER BY seq LIMIT 1"},
  };
  for (const Def& d : defs) {
    WS_ASSIGN_OR_RETURN(*d.stmt, Statement::Prepare(db_, d.sql));
  }
  return Status::Ok();
}

Status OutboxDb::Begin() {
  StatementScope scope(begin_);
  return begin_.Run();
}

Status OutboxDb::Commit() {
  StatementScope scope(commit_);
  return commit_.Run();
}

void OutboxDb::Rollback() {
  if (!InTransaction()) return;
  StatementScope scope(rollback_);
  Status s = rollback_.Run();
  if (!s.ok()) {
    // Nothing more can be done here; SQLite rolls back the open transaction
    // when the connection next starts one or closes.
    WS_LOG_ERROR("outbox", "rollback failed", {{"error", s.ToString()}});
  }
}

Status OutboxDb::Savepoint() {
  StatementScope scope(savepoint_);
  return savepoint_.Run();
}

Status OutboxDb::ReleaseSavepoint() {
  StatementScope scope(release_);
  return release_.Run();
}

Status OutboxDb::RollbackToSavepoint() {
  StatementScope scope(rollback_to_);
  return rollback_to_.Run();
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

Result<std::optional<StoredId>> OutboxDb::FindId(std::string_view id) {
  StatementScope scope(find_id_);
  WS_TRY(find_id_.BindText(1, id));
  WS_ASSIGN_OR_RETURN(bool row, find_id_.Step());
  if (!row) return std::optional<StoredId>();
  return std::optional<StoredId>(StoredId{find_id_.ColumnInt64(0), std::string(find_id_.ColumnBlob(1))});
}

Status OutboxDb::InsertEvent(const NewEventRow& r) {
  StatementScope scope(insert_event_);
  WS_TRY(insert_event_.Bind(1, r.sequence));
  WS_TRY(insert_event_.BindText(2, r.id));
  WS_TRY(insert_event_.Bind(3, static_cast<int64_t>(r.priority)));
  WS_TRY(insert_event_.BindText(4, r.stream));
  WS_TRY(insert_event_.BindText(5, r.topic));
  WS_TRY(insert_event_.Bind(6, r.accepted_us));
  WS_TRY(insert_event_.Bind(7, r.expires_us));
  WS_TRY(insert_event_.Bind(8, static_cast<int64_t>(r.bytes)));
  WS_TRY(insert_event_.BindBlob(9, r.record));
  return insert_event_.Run();
}

Result<bool> OutboxDb::RemoveDelivered(int64_t sequence, bool retain, int64_t now_us) {
  if (retain) {
    StatementScope scope(copy_to_delivered_);
    WS_TRY(copy_to_delivered_.Bind(1, sequence));
    WS_TRY(copy_to_delivered_.Bind(2, now_us));
    WS_TRY(copy_to_delivered_.Run());
  }
  StatementScope scope(delete_event_);
  WS_TRY(delete_event_.Bind(1, sequence));
  WS_TRY(delete_event_.Run());
  return delete_event_.Changes() > 0;
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
  WS_TRY(delete_event_.Run());
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
  WS_TRY(delete_expired_.Run());
  return delete_expired_.Changes();
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

Status OutboxDb::AddAttempt(Priority p, int64_t up_to_sequence) {
  StatementScope scope(add_attempt_);
  WS_TRY(add_attempt_.Bind(1, static_cast<int64_t>(p)));
  WS_TRY(add_attempt_.Bind(2, up_to_sequence));
  return add_attempt_.Run();
}

Status OutboxDb::ReadLeasable(Priority p, int64_t after, int64_t now_us, size_t limit, std::vector<LeasedEvent>* out,
                              std::vector<std::pair<int64_t, Status>>* unreadable, int64_t* last_seen) {
  StatementScope scope(read_class_);
  WS_TRY(read_class_.Bind(1, static_cast<int64_t>(p)));
  WS_TRY(read_class_.Bind(2, after));
  WS_TRY(read_class_.Bind(3, now_us));
  // LIMIT -1 would mean "no limit" to SQLite; keep a huge request huge.
  const size_t capped = std::min<size_t>(limit, static_cast<size_t>(INT64_MAX));
  WS_TRY(read_class_.Bind(4, static_cast<int64_t>(capped)));
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, read_class_.Step());
    if (!row) return Status::Ok();
    const int64_t seq = read_class_.ColumnInt64(0);
    *last_seen = seq;
    Result<Event> event = DecodeEventRecord(read_class_.ColumnBlob(5));
    if (!event.ok()) {
      unreadable->emplace_back(seq, event.status());
      continue;
    }
    LeasedEvent& e = out->emplace_back();
    e.sequence = seq;
    e.topic = std::string(read_class_.ColumnText(1));
    e.stream = std::string(read_class_.ColumnText(2));
    e.priority = p;
    e.attempts = static_cast<int32_t>(read_class_.ColumnInt64(3));
    e.accepted_at_us = read_class_.ColumnInt64(4);
    e.event = std::move(event).value();
  }
}

Result<StoreTotals> OutboxDb::ReadTotals() {
  StoreTotals t;
  {
    StatementScope scope(read_totals_);
    for (;;) {
      WS_ASSIGN_OR_RETURN(bool row, read_totals_.Step());
      if (!row) break;
      const int64_t bucket = read_totals_.ColumnInt64(0);
      const int64_t count = read_totals_.ColumnInt64(1);
      const int64_t bytes = read_totals_.ColumnInt64(2);
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
    StatementScope scope(oldest_in_class_);
    WS_TRY(oldest_in_class_.Bind(1, static_cast<int64_t>(p)));
    WS_ASSIGN_OR_RETURN(bool row, oldest_in_class_.Step());
    if (row) b.oldest_accepted_us = oldest_in_class_.ColumnInt64(0);
  }
  return t;
}

}  // namespace ws::sqlite
