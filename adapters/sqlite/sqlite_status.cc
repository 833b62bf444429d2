#include "adapters/sqlite/sqlite_status.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace ws::sqlite {
namespace {

struct CodeMapping {
  int primary;
  StatusCode code;
  const char* hint;  // prefixed to the message where the code alone would puzzle an operator
};

// Primary codes only; extended codes are reduced with `rc & 0xff`. Codes not
// listed (SQLITE_ERROR, SQLITE_MISUSE, SQLITE_RANGE, ...) mean a defect in
// this adapter and become kInternal.
constexpr CodeMapping kCodeTable[] = {
    {SQLITE_FULL, StatusCode::kResourceExhausted, "disk full"},
    {SQLITE_NOMEM, StatusCode::kResourceExhausted, "out of memory"},
    {SQLITE_TOOBIG, StatusCode::kResourceExhausted, "too big"},
    {SQLITE_CORRUPT, StatusCode::kDataLoss, "database corrupt"},
    {SQLITE_NOTADB, StatusCode::kDataLoss, "not a database"},
    {SQLITE_IOERR, StatusCode::kUnavailable, "I/O error"},
    {SQLITE_CANTOPEN, StatusCode::kUnavailable, "cannot open"},
    {SQLITE_BUSY, StatusCode::kUnavailable, "locked by another process"},
    {SQLITE_LOCKED, StatusCode::kUnavailable, "locked"},
    {SQLITE_PROTOCOL, StatusCode::kUnavailable, "lock protocol"},
    {SQLITE_PERM, StatusCode::kPermissionDenied, nullptr},
    {SQLITE_READONLY, StatusCode::kPermissionDenied, "read-only"},
    {SQLITE_AUTH, StatusCode::kPermissionDenied, nullptr},
    {SQLITE_INTERRUPT, StatusCode::kCancelled, nullptr},
    {SQLITE_ABORT, StatusCode::kAborted, nullptr},
    {SQLITE_SCHEMA, StatusCode::kAborted, nullptr},
    {SQLITE_CONSTRAINT, StatusCode::kFailedPrecondition, nullptr},
};

}  // namespace

Status SqliteStatus(int rc, sqlite3* db, std::string_view context) {
  const int primary = rc & 0xff;
  StatusCode code = StatusCode::kInternal;
  const char* hint = nullptr;
  for (const CodeMapping& m : kCodeTable) {
    if (m.primary == primary) {
      code = m.code;
      hint = m.hint;
      break;
    }
  }

  // The OS error behind an I/O or open failure decides what it means: a full
  // disk is not a flaky one, and a folder we may not write is not transient.
  const int sys = db != nullptr ? sqlite3_system_errno(db) : 0;
  if (primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN || primary == SQLITE_FULL) {
    if (sys == ENOSPC || sys == EDQUOT) {
      code = StatusCode::kResourceExhausted;
      hint = "disk full";
    } else if (sys == EACCES || sys == EPERM || sys == EROFS) {
      code = StatusCode::kPermissionDenied;
      hint = "permission denied";
    }
  }

  std::string m;
  if (hint != nullptr) {
    m += hint;
    m += ": ";
  }
  m += context;
  m += ": ";
  m += sqlite3_errstr(rc);
  if (db != nullptr && sqlite3_extended_errcode(db) == rc) {
    const char* detail = sqlite3_errmsg(db);
    if (detail != nullptr && std::strcmp(detail, sqlite3_errstr(rc)) != 0) {
      m += ": ";
      m += detail;
    }
  }
  if (sys != 0 && (primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN || primary == SQLITE_FULL)) {
    char buf[128];
    // GNU strerror_r returns the message pointer (may not use buf).
    m += " (";
    m += strerror_r(sys, buf, sizeof buf);
    m += ")";
  }
  return Status(code, std::move(m));
}

}  // namespace ws::sqlite
