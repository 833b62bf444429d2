#include "tests/crash/fault_vfs.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "platform/file_system.h"

namespace ws::testing {

struct FaultVfs::Impl {
  // A write or truncate that reached the file but no sync yet.
  struct PendingChange {
    int64_t offset = 0;  // of the write, or the new size for a truncate
    std::string bytes;
    bool truncate = false;
  };

  // What the disk holds for one path, whichever handles write to it.
  struct TrackedFile {
    std::string path;
    std::string dir;
    bool main_db = false;
    bool entry_durable = false;  // its directory entry survives a power cut
    bool deleted = false;
    std::string durable;  // content as of the last sync
    std::vector<PendingChange> pending;
  };

  struct Plan {
    bool armed = false;
    int64_t at = 0;  // the counter value that trips it
    FaultError error = FaultError::kIoError;
    bool persistent = false;
    CutTiming timing = CutTiming::kBeforeSync;
  };

  sqlite3_vfs vfs{};
  sqlite3_io_methods methods{};
  sqlite3_vfs* real = nullptr;

  mutable std::mutex mu;
  std::map<std::string, std::unique_ptr<TrackedFile>> files;  // by the path SQLite names
  int64_t open_handles = 0;
  FaultVfsCounters counters;
  Plan write_fault, sync_fault, cut;

  void MarkDirectoryDurable(const std::string& dir) {
    for (auto& [path, f] : files) {
      if (f->dir == dir && !f->deleted) f->entry_durable = true;
    }
  }

  void ClearLocked() {
    files.clear();
    counters = FaultVfsCounters{};
    write_fault = Plan{};
    sync_fault = Plan{};
    cut = Plan{};
  }
};

namespace {

using Impl = FaultVfs::Impl;

// The errno behind the last fault injected on this thread, for
// xGetLastError (SQLite asks after an I/O error to explain it).
thread_local int t_injected_errno = 0;

struct FaultFile {
  sqlite3_file base;  // first: SQLite sees a FaultFile as an sqlite3_file
  Impl* impl;
  Impl::TrackedFile* tracked;  // nullptr: passes through untracked
  bool dirsync_on_first_sync;  // the unix VFS syncs the directory at this handle's first sync
  sqlite3_file* real;          // the unix VFS's file, in the same allocation
};

// The unix VFS's file follows ours in the allocation SQLite makes (8-byte
// aligned), at an offset that keeps its 64-bit members aligned on 32-bit ARM.
constexpr size_t kRealFileOffset = (sizeof(FaultFile) + 7) / 8 * 8;

FaultFile* AsFault(sqlite3_file* f) { return reinterpret_cast<FaultFile*>(f); }
Impl* AsImpl(sqlite3_vfs* vfs) { return static_cast<Impl*>(vfs->pAppData); }

int Inject(int rc, int err) {
  errno = err;
  t_injected_errno = err;
  return rc;
}

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void ApplyChange(std::string* content, const Impl::PendingChange& c) {
  const auto offset = static_cast<size_t>(c.offset);
  if (c.truncate) {
    content->resize(offset, '\0');
    return;
  }
  if (content->size() < offset + c.bytes.size()) content->resize(offset + c.bytes.size(), '\0');
  content->replace(offset, c.bytes.size(), c.bytes);
}

// Whether the planned fault `p` trips now that its counter is `count`.
bool Trips(const Impl::Plan& p, int64_t count) { return p.armed && (count == p.at || (p.persistent && count > p.at)); }

// --- sqlite3_io_methods -----------------------------------------------------

int FileClose(sqlite3_file* file) {
  FaultFile* f = AsFault(file);
  const int rc = f->real->pMethods->xClose(f->real);
  if (f->tracked != nullptr) {
    std::lock_guard<std::mutex> lock(f->impl->mu);
    --f->impl->open_handles;
    f->tracked = nullptr;
  }
  return rc;
}

int FileRead(sqlite3_file* file, void* buf, int amount, sqlite3_int64 offset) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xRead(f->real, buf, amount, offset);
}

int FileWrite(sqlite3_file* file, const void* buf, int amount, sqlite3_int64 offset) {
  FaultFile* f = AsFault(file);
  if (f->tracked == nullptr) return f->real->pMethods->xWrite(f->real, buf, amount, offset);
  Impl* impl = f->impl;
  std::lock_guard<std::mutex> lock(impl->mu);
  if (impl->counters.power_lost) return Inject(SQLITE_IOERR_WRITE, EIO);
  const int64_t n = ++impl->counters.writes;
  if (Trips(impl->write_fault, n)) {
    ++impl->counters.faults_injected;
    return impl->write_fault.error == FaultError::kDiskFull ? Inject(SQLITE_FULL, ENOSPC)
                                                            : Inject(SQLITE_IOERR_WRITE, EIO);
  }
  const int rc = f->real->pMethods->xWrite(f->real, buf, amount, offset);
  if (rc == SQLITE_OK) {
    t_injected_errno = 0;
    f->tracked->pending.push_back(
        {offset, std::string(static_cast<const char*>(buf), static_cast<size_t>(amount)), false});
  }
  return rc;
}

int FileTruncate(sqlite3_file* file, sqlite3_int64 size) {
  FaultFile* f = AsFault(file);
  if (f->tracked == nullptr) return f->real->pMethods->xTruncate(f->real, size);
  Impl* impl = f->impl;
  std::lock_guard<std::mutex> lock(impl->mu);
  if (impl->counters.power_lost) return Inject(SQLITE_IOERR_TRUNCATE, EIO);
  const int rc = f->real->pMethods->xTruncate(f->real, size);
  if (rc == SQLITE_OK) f->tracked->pending.push_back({size, std::string(), true});
  return rc;
}

int FileSync(sqlite3_file* file, int flags) {
  FaultFile* f = AsFault(file);
  if (f->tracked == nullptr) return f->real->pMethods->xSync(f->real, flags);
  Impl* impl = f->impl;
  std::lock_guard<std::mutex> lock(impl->mu);
  if (impl->counters.power_lost) return Inject(SQLITE_IOERR_FSYNC, EIO);
  const int64_t n = ++impl->counters.syncs;
  bool cut_after = false;
  if (Trips(impl->cut, n)) {
    impl->cut.armed = false;
    ++impl->counters.faults_injected;
    if (impl->cut.timing == CutTiming::kBeforeSync) {
      impl->counters.power_lost = true;
      return Inject(SQLITE_IOERR_FSYNC, EIO);
    }
    cut_after = true;
  }
  if (!cut_after && Trips(impl->sync_fault, n)) {
    ++impl->counters.faults_injected;
    return Inject(SQLITE_IOERR_FSYNC, impl->sync_fault.error == FaultError::kDiskFull ? ENOSPC : EIO);
  }
  // The real fsync is skipped: what survives a power cut is what this layer
  // records here, and the machine running the test never loses power
  // (thousands of real fsyncs would only make the test slow).
  static_cast<void>(flags);
  t_injected_errno = 0;
  Impl::TrackedFile* t = f->tracked;
  for (const Impl::PendingChange& c : t->pending) ApplyChange(&t->durable, c);
  t->pending.clear();
  if (f->dirsync_on_first_sync) {
    f->dirsync_on_first_sync = false;
    impl->MarkDirectoryDurable(t->dir);
  }
  if (cut_after) impl->counters.power_lost = true;
  return SQLITE_OK;
}

int FileSize(sqlite3_file* file, sqlite3_int64* size) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xFileSize(f->real, size);
}

int FileLock(sqlite3_file* file, int level) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xLock(f->real, level);
}

int FileUnlock(sqlite3_file* file, int level) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xUnlock(f->real, level);
}

int FileCheckReservedLock(sqlite3_file* file, int* out) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xCheckReservedLock(f->real, out);
}

int FileControl(sqlite3_file* file, int op, void* arg) {
  FaultFile* f = AsFault(file);
  // Size hints and chunk sizes let the unix VFS grow a file with
  // ftruncate/fallocate behind our back; both are optional, so a disk that
  // ignores them is still a valid disk.
  if (op == SQLITE_FCNTL_SIZE_HINT || op == SQLITE_FCNTL_CHUNK_SIZE) return SQLITE_OK;
  return f->real->pMethods->xFileControl(f->real, op, arg);
}

int FileSectorSize(sqlite3_file* file) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xSectorSize(f->real);
}

int FileDeviceCharacteristics(sqlite3_file* file) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xDeviceCharacteristics(f->real);
}

// The WAL index lives in shared memory and is never synced; it passes
// through, and a power cut removes its file.
int FileShmMap(sqlite3_file* file, int region, int size, int extend, void volatile** out) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xShmMap(f->real, region, size, extend, out);
}

int FileShmLock(sqlite3_file* file, int offset, int n, int flags) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xShmLock(f->real, offset, n, flags);
}

void FileShmBarrier(sqlite3_file* file) {
  FaultFile* f = AsFault(file);
  f->real->pMethods->xShmBarrier(f->real);
}

int FileShmUnmap(sqlite3_file* file, int delete_flag) {
  FaultFile* f = AsFault(file);
  return f->real->pMethods->xShmUnmap(f->real, delete_flag);
}

// --- sqlite3_vfs -------------------------------------------------------------

constexpr int kTrackedTypes =
    SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL | SQLITE_OPEN_SUPER_JOURNAL;
constexpr int kNewJournalTypes = SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL | SQLITE_OPEN_SUPER_JOURNAL;

int VfsOpen(sqlite3_vfs* vfs, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  Impl* impl = AsImpl(vfs);
  FaultFile* f = AsFault(file);
  f->base.pMethods = nullptr;
  f->impl = impl;
  f->tracked = nullptr;
  f->dirsync_on_first_sync = false;
  f->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + kRealFileOffset);

  const bool track = name != nullptr && (flags & SQLITE_OPEN_DELETEONCLOSE) == 0 && (flags & kTrackedTypes) != 0;
  std::string path = name != nullptr ? name : "";
  struct stat st {};
  const bool existed = track && ::stat(path.c_str(), &st) == 0;

  const int rc = impl->real->xOpen(impl->real, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    // SQLite calls xClose only when pMethods is set; ours stays null, so the
    // real file is closed here if it was half opened.
    if (f->real->pMethods != nullptr) f->real->pMethods->xClose(f->real);
    return rc;
  }
  f->base.pMethods = &impl->methods;
  if (!track) return SQLITE_OK;

  std::lock_guard<std::mutex> lock(impl->mu);
  std::unique_ptr<Impl::TrackedFile>& slot = impl->files[path];
  if (slot == nullptr || slot->deleted) {
    slot = std::make_unique<Impl::TrackedFile>();
    slot->path = path;
    slot->dir = DirOf(path);
    // A file that was there before we started tracking it (or before the
    // last power cycle) is durable as it is.
    if (existed) {
      Result<std::string> content = ReadFile(path);
      if (!content.ok()) {
        f->base.pMethods = nullptr;
        f->real->pMethods->xClose(f->real);
        impl->files.erase(path);
        return SQLITE_CANTOPEN;
      }
      slot->durable = std::move(content).value();
      slot->entry_durable = true;
    }
  }
  if ((flags & SQLITE_OPEN_MAIN_DB) != 0) slot->main_db = true;
  f->tracked = slot.get();
  f->dirsync_on_first_sync = (flags & SQLITE_OPEN_CREATE) != 0 && (flags & kNewJournalTypes) != 0;
  ++impl->open_handles;
  ++impl->counters.opens;
  return SQLITE_OK;
}

int VfsDelete(sqlite3_vfs* vfs, const char* name, int sync_dir) {
  Impl* impl = AsImpl(vfs);
  std::lock_guard<std::mutex> lock(impl->mu);
  if (impl->counters.power_lost) return Inject(SQLITE_IOERR_DELETE, EIO);
  const int rc = impl->real->xDelete(impl->real, name, sync_dir);
  if (rc != SQLITE_OK) return rc;
  auto it = impl->files.find(name);
  if (it != impl->files.end()) {
    Impl::TrackedFile& t = *it->second;
    t.deleted = true;
    t.entry_durable = false;
    t.durable.clear();
    t.pending.clear();
  }
  if (sync_dir != 0) impl->MarkDirectoryDurable(DirOf(name));
  return SQLITE_OK;
}

int VfsAccess(sqlite3_vfs* vfs, const char* name, int flags, int* out) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xAccess(real, name, flags, out);
}

int VfsFullPathname(sqlite3_vfs* vfs, const char* name, int n, char* out) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xFullPathname(real, name, n, out);
}

void* VfsDlOpen(sqlite3_vfs* vfs, const char* name) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xDlOpen(real, name);
}

void VfsDlError(sqlite3_vfs* vfs, int n, char* out) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  real->xDlError(real, n, out);
}

void (*VfsDlSym(sqlite3_vfs* vfs, void* handle, const char* symbol))(void) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xDlSym(real, handle, symbol);
}

void VfsDlClose(sqlite3_vfs* vfs, void* handle) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  real->xDlClose(real, handle);
}

int VfsRandomness(sqlite3_vfs* vfs, int n, char* out) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xRandomness(real, n, out);
}

int VfsSleep(sqlite3_vfs* vfs, int micros) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xSleep(real, micros);
}

int VfsCurrentTime(sqlite3_vfs* vfs, double* out) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xCurrentTime(real, out);
}

int VfsGetLastError(sqlite3_vfs* vfs, int n, char* out) {
  if (t_injected_errno != 0) return t_injected_errno;
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xGetLastError(real, n, out);
}

int VfsCurrentTimeInt64(sqlite3_vfs* vfs, sqlite3_int64* out) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xCurrentTimeInt64(real, out);
}

int VfsSetSystemCall(sqlite3_vfs* vfs, const char* name, sqlite3_syscall_ptr fn) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xSetSystemCall(real, name, fn);
}

sqlite3_syscall_ptr VfsGetSystemCall(sqlite3_vfs* vfs, const char* name) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xGetSystemCall(real, name);
}

const char* VfsNextSystemCall(sqlite3_vfs* vfs, const char* name) {
  sqlite3_vfs* real = AsImpl(vfs)->real;
  return real->xNextSystemCall(real, name);
}

Status RemoveIfPresent(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoStatus(errno, "unlink " + path);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<FaultVfs>> FaultVfs::Install() {
  if (sqlite3_vfs_find(kName) != nullptr) return FailedPrecondition("a FaultVfs is already installed");
  sqlite3_vfs* real = sqlite3_vfs_find("unix");
  if (real == nullptr) return FailedPrecondition("SQLite has no \"unix\" VFS to wrap");
  if (real->iVersion < 3) return FailedPrecondition("the unix VFS is older than version 3");

  auto impl = std::make_unique<Impl>();
  impl->real = real;

  sqlite3_vfs& v = impl->vfs;
  v.iVersion = 3;
  v.szOsFile = static_cast<int>(kRealFileOffset) + real->szOsFile;
  v.mxPathname = real->mxPathname;
  v.zName = kName;
  v.pAppData = impl.get();
  v.xOpen = VfsOpen;
  v.xDelete = VfsDelete;
  v.xAccess = VfsAccess;
  v.xFullPathname = VfsFullPathname;
  v.xDlOpen = VfsDlOpen;
  v.xDlError = VfsDlError;
  v.xDlSym = VfsDlSym;
  v.xDlClose = VfsDlClose;
  v.xRandomness = VfsRandomness;
  v.xSleep = VfsSleep;
  v.xCurrentTime = VfsCurrentTime;
  v.xGetLastError = VfsGetLastError;
  v.xCurrentTimeInt64 = VfsCurrentTimeInt64;
  v.xSetSystemCall = VfsSetSystemCall;
  v.xGetSystemCall = VfsGetSystemCall;
  v.xNextSystemCall = VfsNextSystemCall;

  // Version 2: no xFetch/xUnfetch, so SQLite never reads through a memory
  // map, and every byte it reads or writes passes through this layer.
  sqlite3_io_methods& m = impl->methods;
  m.iVersion = 2;
  m.xClose = FileClose;
  m.xRead = FileRead;
  m.xWrite = FileWrite;
  m.xTruncate = FileTruncate;
  m.xSync = FileSync;
  m.xFileSize = FileSize;
  m.xLock = FileLock;
  m.xUnlock = FileUnlock;
  m.xCheckReservedLock = FileCheckReservedLock;
  m.xFileControl = FileControl;
  m.xSectorSize = FileSectorSize;
  m.xDeviceCharacteristics = FileDeviceCharacteristics;
  m.xShmMap = FileShmMap;
  m.xShmLock = FileShmLock;
  m.xShmBarrier = FileShmBarrier;
  m.xShmUnmap = FileShmUnmap;

  const int rc = sqlite3_vfs_register(&impl->vfs, 1);
  if (rc != SQLITE_OK) return Internal(std::string("sqlite3_vfs_register: ") + sqlite3_errstr(rc));
  return std::make_unique<FaultVfs>(PrivateTag{}, std::move(impl));
}

FaultVfs::FaultVfs(PrivateTag, std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FaultVfs::~FaultVfs() {
  const int rc = sqlite3_vfs_unregister(&impl_->vfs);
  if (rc != SQLITE_OK) {
    // Nothing can fix this in a destructor; a later Install will report it.
    static_cast<void>(std::fprintf(stderr, "FaultVfs: sqlite3_vfs_unregister: %s\n", sqlite3_errstr(rc)));
  }
}

void FaultVfs::FailWrite(int64_t nth, FaultError error, bool persistent) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->write_fault = Impl::Plan{true, impl_->counters.writes + nth, error, persistent, CutTiming::kBeforeSync};
}

void FaultVfs::FailSync(int64_t nth, FaultError error) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->sync_fault = Impl::Plan{true, impl_->counters.syncs + nth, error, false, CutTiming::kBeforeSync};
}

void FaultVfs::CutPowerAtSync(int64_t nth, CutTiming timing) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->cut = Impl::Plan{true, impl_->counters.syncs + nth, FaultError::kIoError, false, timing};
}

void FaultVfs::ClearFaults() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->write_fault = Impl::Plan{};
  impl_->sync_fault = Impl::Plan{};
  impl_->cut = Impl::Plan{};
}

FaultVfsCounters FaultVfs::Counters() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->counters;
}

Status FaultVfs::PowerCycle() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->open_handles != 0) {
    return FailedPrecondition(std::to_string(impl_->open_handles) + " files are still open on the FaultVfs");
  }
  for (const auto& [path, f] : impl_->files) {
    if (f->deleted || !f->entry_durable) {
      WS_TRY(RemoveIfPresent(path));
    } else {
      WS_TRY(AtomicWriteFile(path, f->durable));
    }
    if (f->main_db) WS_TRY(RemoveIfPresent(path + "-shm"));
  }
  impl_->ClearLocked();
  return Status::Ok();
}

Status FaultVfs::Reset() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->open_handles != 0) {
    return FailedPrecondition(std::to_string(impl_->open_handles) + " files are still open on the FaultVfs");
  }
  impl_->ClearLocked();
  return Status::Ok();
}

}  // namespace ws::testing
