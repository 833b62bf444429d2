#include "adapters/sqlite/sqlite_handle.h"

#include <climits>
#include <mutex>
#include <string>
#include <utility>

#include "adapters/sqlite/sqlite_status.h"
#include "platform/log.h"

namespace ws::sqlite {

Connection::~Connection() { Close(); }

Connection::Connection(Connection&& o) noexcept : db_(std::exchange(o.db_, nullptr)) {}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    Close();
    db_ = std::exchange(o.db_, nullptr);
  }
  return *this;
}

void Connection::Close() {
  if (db_ == nullptr) return;
  const int rc = sqlite3_close(db_);
  if (rc != SQLITE_OK) {
    // Only a statement left unfinalized makes close fail; that is a defect
    // here. The handle cannot be reused either way, so report and drop it.
    WS_LOG_ERROR("sqlite", "closing the database failed", {{"error", SqliteStatus(rc, db_, "close").ToString()}});
  }
  db_ = nullptr;
}

Result<Connection> Connection::Open(const std::string& path, const std::string& vfs) {
  return OpenFlags(path, vfs, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
}

Result<Connection> Connection::OpenReadOnly(const std::string& path, const std::string& vfs) {
  return OpenFlags(path, vfs, SQLITE_OPEN_READONLY);
}

// SQLite counts every allocation under a global mutex unless told not to
// before it initializes; nothing here reads those counts. Once SQLite is
// initialized (a test registered a VFS first) the call is refused and the
// counting stays: slower, not wrong.
void ConfigureLibrary() {
  static std::once_flag once;
  std::call_once(once, [] {
    const int rc = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (rc != SQLITE_OK && rc != SQLITE_MISUSE) {
      WS_LOG_WARN("sqlite", "could not turn off allocation statistics",
                  {{"error", SqliteStatus(rc, nullptr, "sqlite3_config").ToString()}});
    }
  });
}

Result<Connection> Connection::OpenFlags(const std::string& path, const std::string& vfs, int flags) {
  ConfigureLibrary();
  flags |= SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_EXRESCODE
  flags |= SQLITE_OPEN_EXRESCODE;
#endif
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, vfs.empty() ? nullptr : vfs.c_str());
  // sqlite3_open_v2 hands out a handle even on failure (for the message);
  // owning it at once means it is closed on every path.
  Connection conn(raw);
  if (rc != SQLITE_OK) return SqliteStatus(rc, raw, "open " + path);
  const int ext = sqlite3_extended_result_codes(raw, 1);
  if (ext != SQLITE_OK) return SqliteStatus(ext, raw, "enable extended result codes");
  return conn;
}

Status Connection::Exec(const char* sql, std::string_view context) {
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db_, context);
  return Status::Ok();
}

Status Connection::Error(int rc, std::string_view context) const { return SqliteStatus(rc, db_, context); }

Statement::~Statement() {
  // sqlite3_finalize repeats the error of the last failed step, which the
  // caller already received from Step(); it cannot fail otherwise.
  if (stmt_ != nullptr) static_cast<void>(sqlite3_finalize(stmt_));
}

Statement::Statement(Statement&& o) noexcept
    : db_(std::exchange(o.db_, nullptr)), stmt_(std::exchange(o.stmt_, nullptr)) {}

Statement& Statement::operator=(Statement&& o) noexcept {
  if (this != &o) {
    if (stmt_ != nullptr) static_cast<void>(sqlite3_finalize(stmt_));  // see ~Statement
    db_ = std::exchange(o.db_, nullptr);
    stmt_ = std::exchange(o.stmt_, nullptr);
  }
  return *this;
}

Result<Statement> Statement::Prepare(const Connection& db, std::string_view sql) {
  if (sql.size() > INT_MAX) return InvalidArgument("SQL text too long");
  sqlite3_stmt* raw = nullptr;
  const char* tail = nullptr;
  const int rc =
      sqlite3_prepare_v3(db.get(), sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &raw, &tail);
  Statement stmt(db.get(), raw);
  if (rc != SQLITE_OK) return db.Error(rc, "prepare \"" + std::string(sql) + "\"");
  if (raw == nullptr) return Internal("prepare \"" + std::string(sql) + "\": no statement in the text");
  return stmt;
}

Status Statement::BindError(int rc, int index) const {
  return SqliteStatus(rc, db_, "bind parameter " + std::to_string(index) + " of \"" + sqlite3_sql(stmt_) + "\"");
}

Status Statement::Bind(int index, int64_t value) {
  const int rc = sqlite3_bind_int64(stmt_, index, value);
  return rc == SQLITE_OK ? Status::Ok() : BindError(rc, index);
}

Status Statement::BindText(int index, std::string_view value) {
  if (value.size() > INT_MAX)
    return ResourceExhausted("text of " + std::to_string(value.size()) + " bytes is too long");
  // A null pointer would bind SQL NULL; an empty view binds an empty string.
  const char* data = value.data() != nullptr ? value.data() : "";
  const int rc = sqlite3_bind_text(stmt_, index, data, static_cast<int>(value.size()), SQLITE_STATIC);
  return rc == SQLITE_OK ? Status::Ok() : BindError(rc, index);
}

Status Statement::BindBlob(int index, std::string_view value) {
  if (value.size() > INT_MAX) return ResourceExhausted("blob of " + std::to_string(value.size()) + " bytes is too big");
  const int rc = value.empty()
                     ? sqlite3_bind_zeroblob(stmt_, index, 0)
                     : sqlite3_bind_blob(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_STATIC);
  return rc == SQLITE_OK ? Status::Ok() : BindError(rc, index);
}

Result<bool> Statement::Step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return SqliteStatus(rc, db_, std::string("run \"") + sqlite3_sql(stmt_) + "\"");
}

Status Statement::Run() {
  for (;;) {
    WS_ASSIGN_OR_RETURN(bool row, Step());
    if (!row) return Status::Ok();
  }
}

int64_t Statement::ColumnInt64(int column) const { return sqlite3_column_int64(stmt_, column); }

std::string_view Statement::ColumnText(int column) const {
  const unsigned char* p = sqlite3_column_text(stmt_, column);
  const int n = sqlite3_column_bytes(stmt_, column);
  if (p == nullptr || n <= 0) return {};
  return {reinterpret_cast<const char*>(p), static_cast<size_t>(n)};
}

std::string_view Statement::ColumnBlob(int column) const {
  const void* p = sqlite3_column_blob(stmt_, column);
  const int n = sqlite3_column_bytes(stmt_, column);
  if (p == nullptr || n <= 0) return {};
  return {static_cast<const char*>(p), static_cast<size_t>(n)};
}

bool Statement::ColumnIsBlob(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_BLOB; }

void Statement::Reset() {
  // sqlite3_reset returns the error of the last failed step (already
  // reported by Step) and sqlite3_clear_bindings always succeeds.
  static_cast<void>(sqlite3_reset(stmt_));
  static_cast<void>(sqlite3_clear_bindings(stmt_));
}

int64_t Statement::Changes() const { return sqlite3_changes64(db_); }

}  // namespace ws::sqlite
