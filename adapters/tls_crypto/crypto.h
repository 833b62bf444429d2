// Cryptographic helpers on mbedTLS: random event ids, SHA-256 (token hashes),
// constant-time comparison. No mbedTLS type appears here.
// Threads: RandomSource is safe from any thread (it serialises on a mutex);
// the free functions are reentrant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "platform/status.h"

namespace ws {

class RandomSource {
 public:
  // Seeds a CTR-DRBG from the OS entropy source.
  static Result<std::unique_ptr<RandomSource>> Create();
  ~RandomSource();
  RandomSource(const RandomSource&) = delete;
  RandomSource& operator=(const RandomSource&) = delete;

  Status Fill(uint8_t* out, size_t len);
  // A random (version 4) UUID: "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".
  Result<std::string> UuidV4();
  // A time-ordered (version 7, RFC 9562) UUID: the first 48 bits are
  // `unix_ms` (clamped to 0 .. 2^48 - 1), the other 74 free bits random.
  // Ids made later sort after earlier ones (within a millisecond in any
  // order), so an index on them grows at one end, as the outbox's does.
  Result<std::string> UuidV7(int64_t unix_ms);
  // `bytes` random bytes as lowercase hex.
  Result<std::string> HexToken(size_t bytes);

 private:
  class Impl;
  explicit RandomSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// SHA-256 of `data` as 64 lowercase hex digits.
std::string Sha256Hex(std::string_view data);

// Compares in time that depends only on the lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// mbedTLS's version ("2.28.3").
std::string MbedtlsLibraryVersion();

}  // namespace ws
