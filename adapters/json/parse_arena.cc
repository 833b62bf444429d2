#include "adapters/json/parse_arena.h"

#include <cjson/cJSON.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define WS_ARENA_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define WS_ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define WS_ARENA_POISON(p, n) ((void)(p), (void)(n))
#define WS_ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace ws::json_internal {
namespace {

constexpr size_t kAlign = alignof(std::max_align_t);
constexpr size_t kFirstBlockBytes = 32 * 1024;
constexpr size_t kMaxBlockBytes = 1024 * 1024;

struct Block {
  char* data;
  size_t size;
};

// One per thread. Blocks are used in order; `current` is the one being
// filled and `used` its filled bytes. Blocks before `current` are full.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    for (Block& b : blocks_) std::free(b.data);
  }

  bool active() const { return depth_ > 0; }
  void Enter() { ++depth_; }
  void Leave() {
    if (--depth_ > 0) return;
    Reset();
  }

  void* Allocate(size_t n) {
    n = (n + kAlign - 1) & ~(kAlign - 1);
    if (n == 0) n = kAlign;
    while (current_ < blocks_.size()) {
      Block& b = blocks_[current_];
      if (b.size - used_ >= n) {
        char* p = b.data + used_;
        used_ += n;
        WS_ARENA_UNPOISON(p, n);
        return p;
      }
      ++current_;
      used_ = 0;
    }
    const size_t last = blocks_.empty() ? 0 : blocks_.back().size;
    size_t size = last == 0 ? kFirstBlockBytes : std::min(last * 2, kMaxBlockBytes);
    if (size < n) size = n;
    char* data = static_cast<char*>(std::malloc(size));
    if (data == nullptr) return nullptr;  // cJSON reports the parse as failed
    WS_ARENA_POISON(data, size);
    blocks_.push_back(Block{data, size});
    current_ = blocks_.size() - 1;
    used_ = n;
    WS_ARENA_UNPOISON(data, n);
    return data;
  }

  bool Owns(const void* p) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (const Block& b : blocks_) {
      const auto start = reinterpret_cast<uintptr_t>(b.data);
      if (a >= start && a < start + b.size) return true;
    }
    return false;
  }

  ArenaFootprint Footprint() const {
    ArenaFootprint f;
    for (const Block& b : blocks_) f.bytes += b.size;
    f.blocks = blocks_.size();
    return f;
  }

 private:
  // Keeps the first blocks up to kArenaKeepBytes for the next scope.
  void Reset() {
    size_t kept = 0, keep = 0;
    while (keep < blocks_.size() && kept + blocks_[keep].size <= kArenaKeepBytes) kept += blocks_[keep++].size;
    for (size_t i = keep; i < blocks_.size(); ++i) std::free(blocks_[i].data);
    blocks_.resize(keep);
    for (Block& b : blocks_) WS_ARENA_POISON(b.data, b.size);
    current_ = 0;
    used_ = 0;
  }

  std::vector<Block> blocks_;
  size_t current_ = 0;
  size_t used_ = 0;
  int depth_ = 0;
};

Arena& ThreadArena() {
  thread_local Arena arena;
  return arena;
}

void* CJSON_CDECL HookMalloc(size_t n) {
  Arena& a = ThreadArena();
  return a.active() ? a.Allocate(n) : std::malloc(n);
}

void CJSON_CDECL HookFree(void* p) {
  if (p == nullptr) return;
  Arena& a = ThreadArena();
  if (a.active() && a.Owns(p)) return;  // the scope's end takes it back
  std::free(p);
}

}  // namespace

void InstallCjsonHooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    cJSON_Hooks hooks{&HookMalloc, &HookFree};
    cJSON_InitHooks(&hooks);
  });
}

ParseScope::ParseScope() {
  InstallCjsonHooks();
  ThreadArena().Enter();
}

ParseScope::~ParseScope() { ThreadArena().Leave(); }

bool InParseScope(const void* p) {
  const Arena& a = ThreadArena();
  return a.active() && a.Owns(p);
}

ArenaFootprint ThreadArenaFootprint() { return ThreadArena().Footprint(); }

}  // namespace ws::json_internal
