// RAII owners of SQLite's handles (sqlite3*, sqlite3_stmt*), internal to
// adapters/sqlite. Connections are opened with SQLITE_OPEN_NOMUTEX: a
// Connection and every Statement prepared on it belong to one thread at a
// time. Hand them over (e.g. at thread start), never share them.
// Destroy statements before their connection.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "platform/status.h"

namespace ws::sqlite {

// Settings SQLite takes only before it initializes; idempotent. Opening a
// Connection calls it; call it first wherever SQLite may initialize before.
void ConfigureLibrary();

class Connection {
 public:
  Connection() = default;
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  Connection(Connection&& o) noexcept;
  Connection& operator=(Connection&& o) noexcept;

  // Opens read-write, creating the file if missing. `vfs` names a registered
  // SQLite VFS; empty means the default one.
  static Result<Connection> Open(const std::string& path, const std::string& vfs);
  // Opens an existing file read-only (for a check beside the writer).
  static Result<Connection> OpenReadOnly(const std::string& path, const std::string& vfs);

  sqlite3* get() const { return db_; }
  bool valid() const { return db_ != nullptr; }

  // Runs SQL that returns no rows we need (pragmas that return a row are
  // fine: the row is skipped). For statements run once, e.g. at open.
  Status Exec(const char* sql, std::string_view context);

  // Status of `rc` with this connection's error details.
  Status Error(int rc, std::string_view context) const;

  // Closes now. Reports a close failure (a statement still alive) in the log.
  void Close();

 private:
  explicit Connection(sqlite3* db) : db_(db) {}
  static Result<Connection> OpenFlags(const std::string& path, const std::string& vfs, int flags);
  sqlite3* db_ = nullptr;
};

class Statement {
 public:
  Statement() = default;
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  Statement(Statement&& o) noexcept;
  Statement& operator=(Statement&& o) noexcept;

  // Prepared once for the life of the connection (SQLITE_PREPARE_PERSISTENT).
  // `sql` must hold exactly one statement.
  static Result<Statement> Prepare(const Connection& db, std::string_view sql);

  // Parameters are 1-based. Text and blobs are bound without a copy: the
  // bytes must stay alive until Reset().
  Status Bind(int index, int64_t value);
  Status BindText(int index, std::string_view value);
  Status BindBlob(int index, std::string_view value);

  // One step: true when a row is ready, false when the statement is done.
  Result<bool> Step();
  // Steps to the end, discarding any rows.
  Status Run();

  // Column values of the current row; views stay valid until the next
  // Step() or Reset().
  int64_t ColumnInt64(int column) const;
  std::string_view ColumnText(int column) const;
  std::string_view ColumnBlob(int column) const;
  // Whether the column's value is stored as a blob (ask before ColumnText,
  // which may convert it).
  bool ColumnIsBlob(int column) const;

  // Ready for the next use, bindings cleared, read transaction released.
  void Reset();

  // sqlite3_changes() of the connection: rows changed by the last INSERT,
  // UPDATE or DELETE, not counting those changed by triggers.
  int64_t Changes() const;

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  Status BindError(int rc, int index) const;
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

// Resets a statement when the scope ends, so an early return leaves it
// ready for its next use (and does not hold a read snapshot open).
class StatementScope {
 public:
  explicit StatementScope(Statement& s) : s_(s) {}
  ~StatementScope() { s_.Reset(); }
  StatementScope(const StatementScope&) = delete;
  StatementScope& operator=(const StatementScope&) = delete;

 private:
  Statement& s_;
};

}  // namespace ws::sqlite
