// Memory for the cJSON trees of one parse. Internal to adapters/json.
//
// cJSON allocates a node for every value and a copy of every key and
// string: a batch of 100 benchmark events is about 2,400 allocations, freed
// a moment later when the tree is dropped. On the daemon's loop thread those
// small frees also made the next large allocation consolidate the heap.
//
// While a ParseScope lives on a thread, cJSON's allocations on that thread
// come from one bump arena that belongs to the thread; frees of them do
// nothing, and the scope's end takes everything back at once. Outside any
// scope (the configuration file, other threads) cJSON uses malloc and free
// as before. A tree parsed in a scope must be gone before the scope ends:
// declare the scope before the tree.
#pragma once

#include <cstddef>

namespace ws::json_internal {

// Points cJSON at this file's allocation functions, once per process.
// Every entry point that calls cJSON calls this first.
void InstallCjsonHooks();

class ParseScope {
 public:
  ParseScope();
  ~ParseScope();
  ParseScope(const ParseScope&) = delete;
  ParseScope& operator=(const ParseScope&) = delete;
};

// True if `p` lies in the arena of a scope open on this thread.
bool InParseScope(const void* p);

// What the thread's arena holds between scopes, for the tests: the bytes of
// its blocks, and how many blocks.
struct ArenaFootprint {
  size_t bytes = 0;
  size_t blocks = 0;
};
ArenaFootprint ThreadArenaFootprint();

// The bytes an arena keeps for the next scope on its thread; more is freed
// when a scope ends.
inline constexpr size_t kArenaKeepBytes = 256 * 1024;

}  // namespace ws::json_internal
