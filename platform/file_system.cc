#include "platform/file_system.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>

#include "platform/unique_fd.h"

namespace ws {
namespace {

Status WriteAllFd(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write " + path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

// Reads `fd` to its end into *out; more than `max_bytes` is an error.
Status ReadToEnd(int fd, const std::string& path, size_t max_bytes, std::string* out) {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read " + path);
    }
    if (n == 0) return Status::Ok();
    if (static_cast<size_t>(n) > max_bytes - out->size()) {
      return InvalidArgument(path + " is larger than " + std::to_string(max_bytes) + " bytes");
    }
    out->append(buf, static_cast<size_t>(n));
  }
}

}  // namespace

Result<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, "open " + path);
  std::string out;
  WS_TRY(ReadToEnd(fd.get(), path, out.max_size(), &out));
  return out;
}

Result<std::string> ReadRegularFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus(errno, "open " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  std::string out;
  WS_TRY(ReadToEnd(fd.get(), path, max_bytes, &out));
  return out;
}

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status SyncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, "open directory " + dir);
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, "fsync directory " + dir);
  return Status::Ok();
}

namespace {

// Writes `path.tmp-<pid>` and renames it over `path`; with `durable`, the
// temp file is fsync'd before the rename and the directory after it.
Status ReplaceFile(const std::string& path, std::string_view contents, uint32_t mode, bool durable) {
  std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  // A temp file left by a power cut (pids repeat across boots) would keep its
  // old permissions under O_TRUNC: remove it and create the file afresh so
  // `mode` applies. ENOENT is the usual case; any other failure shows up as
  // the create error below.
  ::unlink(tmp.c_str());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode)));
  if (!fd.valid()) return ErrnoStatus(errno, "create " + tmp);
  Status s = WriteAllFd(fd.get(), contents, tmp);
  if (s.ok() && durable && ::fsync(fd.get()) != 0) s = ErrnoStatus(errno, "fsync " + tmp);
  if (s.ok() && ::close(fd.Release()) != 0) s = ErrnoStatus(errno, "close " + tmp);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = ErrnoStatus(errno, "rename " + tmp + " to " + path);
  if (!s.ok()) {
    ::unlink(tmp.c_str());  // best effort: the error above is the one to report
    return s;
  }
  return durable ? SyncDirectory(DirName(path)) : Status::Ok();
}

}  // namespace

Status AtomicWriteFile(const std::string& path, std::string_view contents, uint32_t mode) {
  return ReplaceFile(path, contents, mode, /*durable=*/true);
}

Status ReplaceFileUntilReboot(const std::string& path, std::string_view contents) {
  return ReplaceFile(path, contents, 0644, /*durable=*/false);
}

Status MakeDirectories(const std::string& path, uint32_t mode) {
  if (path.empty()) return InvalidArgument("empty directory path");
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    size_t next = path.find('/', pos + 1);
    partial = path.substr(0, next);
    pos = next;
    if (partial.empty() || partial == "/") continue;
    if (::mkdir(partial.c_str(), static_cast<mode_t>(mode)) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, "mkdir " + partial);
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  if (!S_ISDIR(st.st_mode)) return InvalidArgument(path + " exists and is not a directory");
  return Status::Ok();
}

Status RenameDurably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus(errno, "rename " + from + " to " + to);
  return SyncDirectory(DirName(to));
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Result<SpaceInfo> QuerySpace(const std::string& path) {
  struct statvfs sv {};
  if (::statvfs(path.c_str(), &sv) != 0) return ErrnoStatus(errno, "statvfs " + path);
  SpaceInfo info{};
  info.free_bytes = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  info.total_bytes = static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize;
  return info;
}

}  // namespace ws
