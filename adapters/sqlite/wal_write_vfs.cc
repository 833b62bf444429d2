#include "adapters/sqlite/wal_write_vfs.h"

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "adapters/sqlite/sqlite_handle.h"

namespace ws::sqlite {
namespace {

// One registered wrapper: our sqlite3_vfs and the VFS it passes on to.
struct WrapperVfs {
  sqlite3_vfs vfs{};
  sqlite3_vfs* real = nullptr;
  std::string name_of_real;
  std::string name;
};

// Our part of an open file; the wrapped VFS's file follows it in the same
// allocation (SQLite allocates szOsFile bytes for each open file).
struct WalFile {
  sqlite3_file base;  // first: SQLite sees this
  sqlite3_file* real;
  bool wal;
  // A connection's main database file and its WAL, linked both ways: calls
  // on the main file (the WAL index lives there) pass the WAL's gathered
  // bytes on first. Both belong to one connection, so to one thread at a
  // time. Null when the file is neither, or its partner is not open.
  WalFile* partner;
  const char* db_name;  // main database files: the name SQLite opened them by
  bool gather;          // main database files: its WAL gathers (kWalGatherControl)
  char* buf;       // kWalWriteGatherBytes, allocated at the first gathered write
  size_t len;      // bytes gathered
  sqlite3_int64 offset;  // where buf[0] goes
  // WAL files: where the page of the last commit frame whose header was
  // gathered goes (-1: none pending). Once that page is gathered the
  // commit's frames are complete and are passed on at once.
  sqlite3_int64 commit_page_at;
};

// A WAL frame's header: page number, then the database size in pages after
// a commit (0 in every other frame), both 32-bit big-endian.
constexpr int kFrameHeaderBytes = 24;

bool IsCommitFrameHeader(const void* data, int n) {
  if (n != kFrameHeaderBytes) return false;
  const auto* b = static_cast<const unsigned char*>(data);
  return (b[4] | b[5] | b[6] | b[7]) != 0;
}

constexpr size_t kRealOffset = (sizeof(WalFile) + alignof(std::max_align_t) - 1) / alignof(std::max_align_t) *
                               alignof(std::max_align_t);

WalFile* Self(sqlite3_file* f) { return reinterpret_cast<WalFile*>(f); }

// The open main database files, by the name pointer SQLite opened them by.
// A connection opens its WAL under a name in the same allocation, from
// which sqlite3_filename_database() gives back that pointer: this is how a
// WAL finds its own connection's main file (several connections may have
// the same database open, each with its own pair of files).
std::mutex g_files_mu;
std::map<const char*, WalFile*>& MainFiles() {
  static auto* files = new std::map<const char*, WalFile*>();
  return *files;
}
sqlite3_vfs* Real(sqlite3_vfs* v) { return static_cast<WrapperVfs*>(v->pAppData)->real; }

// Passes the gathered bytes on. They are dropped whatever the outcome: after
// a failed write SQLite fails the transaction and writes its frames again,
// and stale bytes must never land on top of those.
int Flush(WalFile* f) {
  if (f->len == 0) return SQLITE_OK;
  const int n = static_cast<int>(f->len);
  f->len = 0;
  return f->real->pMethods->xWrite(f->real, f->buf, n, f->offset);
}

// Before anything on a main database file: nothing gathered may get past a
// call on the WAL index, a lock or the database file. Each commit's frames
// were passed on at its commit frame already; this is the second line,
// should SQLite ever publish frames without writing a commit frame last.
int FlushPartner(WalFile* f) { return (!f->wal && f->partner != nullptr) ? Flush(f->partner) : SQLITE_OK; }

// What every call but a gathered write does first: a WAL's own bytes, or
// those of a main file's WAL, reach the file.
int PassOn(WalFile* f) { return f->wal ? Flush(f) : FlushPartner(f); }

void Unlink(WalFile* f) {
  std::lock_guard<std::mutex> lock(g_files_mu);
  if (f->partner != nullptr) f->partner->partner = nullptr;
  f->partner = nullptr;
  if (f->db_name != nullptr) {
    auto it = MainFiles().find(f->db_name);
    if (it != MainFiles().end() && it->second == f) MainFiles().erase(it);
  }
}

int Close(sqlite3_file* p) {
  WalFile* f = Self(p);
  const int flushed = PassOn(f);
  Unlink(f);
  const int closed = f->real->pMethods != nullptr ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
  sqlite3_free(f->buf);
  f->buf = nullptr;
  return flushed != SQLITE_OK ? flushed : closed;
}

int Read(sqlite3_file* p, void* out, int n, sqlite3_int64 offset) {
  WalFile* f = Self(p);
  const int rc = PassOn(f);
  if (rc != SQLITE_OK) return rc;
  return f->real->pMethods->xRead(f->real, out, n, offset);
}

int Write(sqlite3_file* p, const void* data, int n, sqlite3_int64 offset) {
  WalFile* f = Self(p);
  if (!f->wal || f->partner == nullptr || !f->partner->gather || n <= 0) {
    const int rc = PassOn(f);
    if (rc != SQLITE_OK) return rc;
    return f->real->pMethods->xWrite(f->real, data, n, offset);
  }
  const auto size = static_cast<size_t>(n);
  if (f->len > 0 && (offset != f->offset + static_cast<sqlite3_int64>(f->len) || f->len + size > kWalWriteGatherBytes)) {
    const int rc = Flush(f);
    if (rc != SQLITE_OK) return rc;
  }
  if (size > kWalWriteGatherBytes) return f->real->pMethods->xWrite(f->real, data, n, offset);
  if (f->buf == nullptr) {
    f->buf = static_cast<char*>(sqlite3_malloc64(kWalWriteGatherBytes));
    if (f->buf == nullptr) return f->real->pMethods->xWrite(f->real, data, n, offset);
  }
  if (f->len == 0) f->offset = offset;
  std::memcpy(f->buf + f->len, data, size);
  f->len += size;
  if (IsCommitFrameHeader(data, n)) {
    f->commit_page_at = offset + kFrameHeaderBytes;
  } else if (offset == f->commit_page_at) {
    // The commit frame's page: the commit is written. Passed on now, so a
    // failure fails this write and the commit with it, before SQLite
    // publishes it, whether or not a sync follows.
    f->commit_page_at = -1;
    return Flush(f);
  }
  return SQLITE_OK;
}

int Truncate(sqlite3_file* p, sqlite3_int64 size) {
  WalFile* f = Self(p);
  const int rc = PassOn(f);
  if (rc != SQLITE_OK) return rc;
  return f->real->pMethods->xTruncate(f->real, size);
}

int Sync(sqlite3_file* p, int flags) {
  WalFile* f = Self(p);
  const int rc = PassOn(f);
  if (rc != SQLITE_OK) return rc;
  return f->real->pMethods->xSync(f->real, flags);
}

int FileSize(sqlite3_file* p, sqlite3_int64* size) {
  WalFile* f = Self(p);
  const int rc = PassOn(f);
  if (rc != SQLITE_OK) return rc;
  return f->real->pMethods->xFileSize(f->real, size);
}

int Lock(sqlite3_file* p, int level) {
  const int rc = FlushPartner(Self(p));
  if (rc != SQLITE_OK) return rc;
  return Self(p)->real->pMethods->xLock(Self(p)->real, level);
}
int Unlock(sqlite3_file* p, int level) {
  const int rc = FlushPartner(Self(p));
  if (rc != SQLITE_OK) return rc;
  return Self(p)->real->pMethods->xUnlock(Self(p)->real, level);
}
int CheckReservedLock(sqlite3_file* p, int* out) {
  return Self(p)->real->pMethods->xCheckReservedLock(Self(p)->real, out);
}

int FileControl(sqlite3_file* p, int op, void* arg) {
  WalFile* f = Self(p);
  const int rc = PassOn(f);
  if (rc != SQLITE_OK) return rc;
  if (op == kWalGatherControl && !f->wal) {
    f->gather = *static_cast<int*>(arg) != 0;
    return SQLITE_OK;
  }
  return f->real->pMethods->xFileControl(f->real, op, arg);
}

int SectorSize(sqlite3_file* p) { return Self(p)->real->pMethods->xSectorSize(Self(p)->real); }
int DeviceCharacteristics(sqlite3_file* p) {
  return Self(p)->real->pMethods->xDeviceCharacteristics(Self(p)->real);
}
// Calls on the WAL index (on the main file) pass the WAL's bytes on first:
// SQLite publishes a commit's frames there after writing them all. The
// commit frame's write has passed them on already (with its error, if
// any); these calls only make sure that nothing gets past the index
// unwritten.
int ShmMap(sqlite3_file* p, int region, int size, int extend, void volatile** out) {
  const int rc = FlushPartner(Self(p));
  if (rc != SQLITE_OK) return rc;
  return Self(p)->real->pMethods->xShmMap(Self(p)->real, region, size, extend, out);
}
int ShmLock(sqlite3_file* p, int offset, int n, int flags) {
  const int rc = FlushPartner(Self(p));
  if (rc != SQLITE_OK) return rc;
  return Self(p)->real->pMethods->xShmLock(Self(p)->real, offset, n, flags);
}
void ShmBarrier(sqlite3_file* p) {
  // Nothing to flush here while gathering (see above); a failure cannot be
  // reported from a barrier anyway.
  static_cast<void>(FlushPartner(Self(p)));
  Self(p)->real->pMethods->xShmBarrier(Self(p)->real);
}
int ShmUnmap(sqlite3_file* p, int delete_flag) {
  const int rc = FlushPartner(Self(p));
  if (rc != SQLITE_OK) return rc;
  return Self(p)->real->pMethods->xShmUnmap(Self(p)->real, delete_flag);
}
int Fetch(sqlite3_file* p, sqlite3_int64 offset, int n, void** out) {
  WalFile* f = Self(p);
  const int rc = PassOn(f);
  if (rc != SQLITE_OK) return rc;
  return f->real->pMethods->xFetch(f->real, offset, n, out);
}
int Unfetch(sqlite3_file* p, sqlite3_int64 offset, void* page) {
  return Self(p)->real->pMethods->xUnfetch(Self(p)->real, offset, page);
}

// One table per version of the wrapped file's methods: SQLite calls the
// version 2 and 3 methods only when the table says they are there.
sqlite3_io_methods MakeMethods(int version) {
  sqlite3_io_methods m{};
  m.iVersion = version;
  m.xClose = Close;
  m.xRead = Read;
  m.xWrite = Write;
  m.xTruncate = Truncate;
  m.xSync = Sync;
  m.xFileSize = FileSize;
  m.xLock = Lock;
  m.xUnlock = Unlock;
  m.xCheckReservedLock = CheckReservedLock;
  m.xFileControl = FileControl;
  m.xSectorSize = SectorSize;
  m.xDeviceCharacteristics = DeviceCharacteristics;
  if (version >= 2) {
    m.xShmMap = ShmMap;
    m.xShmLock = ShmLock;
    m.xShmBarrier = ShmBarrier;
    m.xShmUnmap = ShmUnmap;
  }
  if (version >= 3) {
    m.xFetch = Fetch;
    m.xUnfetch = Unfetch;
  }
  return m;
}

const sqlite3_io_methods kMethods[3] = {MakeMethods(1), MakeMethods(2), MakeMethods(3)};

int Open(sqlite3_vfs* vfs, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  WalFile* f = Self(file);
  f->base.pMethods = nullptr;
  f->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + kRealOffset);
  f->real->pMethods = nullptr;
  f->wal = (flags & SQLITE_OPEN_WAL) != 0;
  f->partner = nullptr;
  f->db_name = nullptr;
  f->gather = false;
  f->buf = nullptr;
  f->len = 0;
  f->offset = 0;
  f->commit_page_at = -1;
  const int rc = Real(vfs)->xOpen(Real(vfs), name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    // SQLite will not close our file: close what the wrapped VFS left open.
    if (f->real->pMethods != nullptr) f->real->pMethods->xClose(f->real);
    return rc;
  }
  const int version = f->real->pMethods->iVersion;
  f->base.pMethods = &kMethods[version >= 3 ? 2 : (version == 2 ? 1 : 0)];
  if (name != nullptr && (flags & SQLITE_OPEN_MAIN_DB) != 0) {
    std::lock_guard<std::mutex> lock(g_files_mu);
    f->db_name = name;
    MainFiles()[name] = f;
  } else if (name != nullptr && f->wal) {
    std::lock_guard<std::mutex> lock(g_files_mu);
    auto it = MainFiles().find(sqlite3_filename_database(name));
    // Without its main file in sight the WAL is written through, unchanged.
    if (it != MainFiles().end() && it->second->partner == nullptr) {
      f->partner = it->second;
      it->second->partner = f;
    }
  }
  return SQLITE_OK;
}

int Delete(sqlite3_vfs* v, const char* name, int sync_dir) { return Real(v)->xDelete(Real(v), name, sync_dir); }
int Access(sqlite3_vfs* v, const char* name, int flags, int* out) {
  return Real(v)->xAccess(Real(v), name, flags, out);
}
int FullPathname(sqlite3_vfs* v, const char* name, int n, char* out) {
  return Real(v)->xFullPathname(Real(v), name, n, out);
}
void* DlOpen(sqlite3_vfs* v, const char* name) { return Real(v)->xDlOpen(Real(v), name); }
void DlError(sqlite3_vfs* v, int n, char* out) { Real(v)->xDlError(Real(v), n, out); }
void (*DlSym(sqlite3_vfs* v, void* handle, const char* symbol))(void) {
  return Real(v)->xDlSym(Real(v), handle, symbol);
}
void DlClose(sqlite3_vfs* v, void* handle) { Real(v)->xDlClose(Real(v), handle); }
int Randomness(sqlite3_vfs* v, int n, char* out) { return Real(v)->xRandomness(Real(v), n, out); }
int Sleep(sqlite3_vfs* v, int micros) { return Real(v)->xSleep(Real(v), micros); }
int CurrentTime(sqlite3_vfs* v, double* out) { return Real(v)->xCurrentTime(Real(v), out); }
int GetLastError(sqlite3_vfs* v, int n, char* out) {
  return Real(v)->xGetLastError != nullptr ? Real(v)->xGetLastError(Real(v), n, out) : 0;
}
int CurrentTimeInt64(sqlite3_vfs* v, sqlite3_int64* out) { return Real(v)->xCurrentTimeInt64(Real(v), out); }

}  // namespace

Result<std::string> WalWriteVfs(const std::string& base) {
  ConfigureLibrary();
  // By the wrapped VFS's address, and each wrapper under a name of its own:
  // a test's VFS may be unregistered and another registered under its name.
  // A wrapper whose VFS has gone stays registered, unused (SQLite finds VFSes
  // only by name), until another VFS turns up at that address.
  // Never destroyed: SQLite keeps pointers into them until the process ends.
  static std::mutex mu;
  static auto& registered = *new std::map<const sqlite3_vfs*, std::unique_ptr<WrapperVfs>>();
  static uint64_t made = 0;
  std::lock_guard<std::mutex> lock(mu);
  sqlite3_vfs* real = sqlite3_vfs_find(base.empty() ? nullptr : base.c_str());
  if (real == nullptr) return NotFound("no SQLite VFS named \"" + base + "\"");
  auto it = registered.find(real);
  if (it != registered.end()) {
    const WrapperVfs& w = *it->second;
    if (w.name_of_real == real->zName && w.vfs.szOsFile == static_cast<int>(kRealOffset) + real->szOsFile) {
      return w.name;
    }
    // No connection can be open on it: the VFS it wrapped is gone.
    sqlite3_vfs_unregister(&it->second->vfs);
    registered.erase(it);
  }
  auto w = std::make_unique<WrapperVfs>();
  w->real = real;
  w->name_of_real = real->zName;
  w->name = "ws-wal-writes-" + std::to_string(++made) + ":" + w->name_of_real;
  sqlite3_vfs& v = w->vfs;
  // Version 2 at most: the system-call hooks of version 3 are for tests of
  // the unix VFS itself and would bypass the wrapper.
  v.iVersion = real->iVersion >= 2 ? 2 : 1;
  v.szOsFile = static_cast<int>(kRealOffset) + real->szOsFile;
  v.mxPathname = real->mxPathname;
  v.zName = w->name.c_str();
  v.pAppData = w.get();
  v.xOpen = Open;
  v.xDelete = Delete;
  v.xAccess = Access;
  v.xFullPathname = FullPathname;
  v.xDlOpen = DlOpen;
  v.xDlError = DlError;
  v.xDlSym = DlSym;
  v.xDlClose = DlClose;
  v.xRandomness = Randomness;
  v.xSleep = Sleep;
  v.xCurrentTime = CurrentTime;
  v.xGetLastError = GetLastError;
  if (v.iVersion >= 2) v.xCurrentTimeInt64 = CurrentTimeInt64;
  const int rc = sqlite3_vfs_register(&v, /*makeDflt=*/0);
  if (rc != SQLITE_OK) return Internal("sqlite3_vfs_register failed: " + std::string(sqlite3_errstr(rc)));
  std::string name = w->name;
  registered.emplace(real, std::move(w));
  return name;
}

}  // namespace ws::sqlite
