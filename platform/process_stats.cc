#include "platform/process_stats.h"

#include <dirent.h>
#include <malloc.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "platform/file_system.h"

namespace ws {
namespace {

// The number after `key` in /proc text such as "VmRSS:\t  1234 kB".
bool FindNumber(const std::string& text, const char* key, uint64_t* out) {
  size_t pos = text.find(key);
  if (pos == std::string::npos) return false;
  pos += std::strlen(key);
  while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == ':')) ++pos;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text.c_str() + pos, &end, 10);
  if (errno != 0 || end == text.c_str() + pos) return false;
  *out = v;
  return true;
}

}  // namespace

Result<ProcessStats> ReadProcessStats() {
  ProcessStats st;
  WS_ASSIGN_OR_RETURN(std::string status, ReadFile("/proc/self/status"));
  uint64_t kb = 0;
  if (FindNumber(status, "VmRSS:", &kb)) st.rss_bytes = kb * 1024;
  if (FindNumber(status, "VmHWM:", &kb)) st.peak_rss_bytes = kb * 1024;
  uint64_t threads = 0;
  if (FindNumber(status, "Threads:", &threads)) st.threads = static_cast<uint32_t>(threads);

  // /proc/self/io may be missing (no task accounting) or unreadable under
  // some emulators; the other figures are still worth returning.
  Result<std::string> io = ReadFile("/proc/self/io");
  if (io.ok()) {
    FindNumber(*io, "\nwrite_bytes:", &st.write_bytes);
    FindNumber(*io, "\nread_bytes:", &st.read_bytes);
  }

  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    st.cpu_user_us = static_cast<uint64_t>(ru.ru_utime.tv_sec) * 1'000'000 + static_cast<uint64_t>(ru.ru_utime.tv_usec);
    st.cpu_system_us = static_cast<uint64_t>(ru.ru_stime.tv_sec) * 1'000'000 + static_cast<uint64_t>(ru.ru_stime.tv_usec);
  }

  if (DIR* d = opendir("/proc/self/fd")) {
    uint32_t n = 0;
    while (readdir(d) != nullptr) ++n;
    closedir(d);
    st.open_fds = n > 3 ? n - 3 : 0;  // ".", ".." and the DIR's own fd
  }
  return st;
}

bool ReleaseFreeHeap() {
#if defined(__GLIBC__)
  return malloc_trim(0) != 0;
#else
  return false;
#endif
}

Result<std::string> KernelBootId() {
  constexpr const char* kPath = "/proc/sys/kernel/random/boot_id";
  WS_ASSIGN_OR_RETURN(std::string id, ReadFile(kPath));
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
  // A UUID in text: 36 characters of hex digits and dashes.
  const bool uuid = id.size() == 36 && id.find_first_not_of("0123456789abcdef-") == std::string::npos;
  if (!uuid) return Internal(std::string(kPath) + " does not hold a boot id");
  return id;
}

}  // namespace ws
