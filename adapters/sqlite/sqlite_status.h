// The one place where SQLite result codes become ws::Status values. Internal
// to adapters/sqlite (it includes sqlite3.h). Pure functions; any thread, as
// long as the connection passed in is not used concurrently.
#pragma once

#include <sqlite3.h>

#include <string_view>

#include "platform/status.h"

namespace ws::sqlite {

// Maps `rc` (primary or extended SQLITE_* code) to a Status whose message is
// "<context>: <SQLite's text>[: <connection's message>][ (errno text)]".
// `db` may be nullptr. Disk full (SQLITE_FULL, or an I/O error whose errno is
// ENOSPC/EDQUOT) becomes kResourceExhausted; SQLITE_CORRUPT and SQLITE_NOTADB
// become kDataLoss, which is how the store recognises a damaged file.
Status SqliteStatus(int rc, sqlite3* db, std::string_view context);

}  // namespace ws::sqlite
