#include "adapters/tls_crypto/crypto.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/sha256.h>
#include <mbedtls/version.h>

#include <algorithm>
#include <mutex>

namespace ws {
namespace {

// The one place MBEDTLS_ERR_* codes become a Status.
Status MbedtlsStatus(int rc, std::string_view what) {
  char buf[128];
  mbedtls_strerror(rc, buf, sizeof buf);
  std::string m(what);
  m += ": ";
  m += buf;
  StatusCode code = StatusCode::kInternal;
  if (rc == MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED || rc == MBEDTLS_ERR_ENTROPY_SOURCE_FAILED) {
    code = StatusCode::kUnavailable;
  }
  return Status(code, std::move(m));
}

constexpr char kHex[] = "0123456789abcdef";

}  // namespace

class RandomSource::Impl {
 public:
  Impl() {
    mbedtls_entropy_init(&entropy_);
    mbedtls_ctr_drbg_init(&drbg_);
  }
  ~Impl() {
    mbedtls_ctr_drbg_free(&drbg_);
    mbedtls_entropy_free(&entropy_);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  Status Seed() {
    static constexpr unsigned char kPersonalisation[] = "waystation-ids";
    int rc = mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, kPersonalisation,
                                   sizeof kPersonalisation - 1);
    if (rc != 0) return MbedtlsStatus(rc, "seed the random generator");
    return Status::Ok();
  }
  Status Fill(uint8_t* out, size_t len) {
    std::lock_guard<std::mutex> lock(mu_);
    while (len > 0) {
      size_t chunk = len < MBEDTLS_CTR_DRBG_MAX_REQUEST ? len : MBEDTLS_CTR_DRBG_MAX_REQUEST;
      int rc = mbedtls_ctr_drbg_random(&drbg_, out, chunk);
      if (rc != 0) return MbedtlsStatus(rc, "random bytes");
      out += chunk;
      len -= chunk;
    }
    return Status::Ok();
  }

 private:
  std::mutex mu_;
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
};

Result<std::unique_ptr<RandomSource>> RandomSource::Create() {
  auto impl = std::make_unique<Impl>();
  WS_TRY(impl->Seed());
  return std::unique_ptr<RandomSource>(new RandomSource(std::move(impl)));
}

RandomSource::RandomSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RandomSource::~RandomSource() = default;

Status RandomSource::Fill(uint8_t* out, size_t len) { return impl_->Fill(out, len); }

namespace {

// The 16 bytes as "xxxxxxxx-xxxx-Vxxx-yxxx-xxxxxxxxxxxx" after setting the
// version nibble and the RFC 9562 variant.
std::string FormatUuid(uint8_t (&b)[16], uint8_t version) {
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | (version << 4));
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);
  std::string out;
  out.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[b[i] >> 4];
    out += kHex[b[i] & 15];
  }
  return out;
}

}  // namespace

Result<std::string> RandomSource::UuidV4() {
  uint8_t b[16];
  WS_TRY(Fill(b, sizeof b));
  return FormatUuid(b, 4);
}

Result<std::string> RandomSource::UuidV7(int64_t unix_ms) {
  constexpr int64_t kMaxMs = (int64_t{1} << 48) - 1;
  const auto ms = static_cast<uint64_t>(std::clamp<int64_t>(unix_ms, 0, kMaxMs));
  uint8_t b[16];
  WS_TRY(Fill(b + 6, sizeof b - 6));
  for (int i = 0; i < 6; ++i) b[i] = static_cast<uint8_t>(ms >> (40 - 8 * i));
  return FormatUuid(b, 7);
}

Result<std::string> RandomSource::HexToken(size_t bytes) {
  std::string raw(bytes, '\0');
  WS_TRY(Fill(reinterpret_cast<uint8_t*>(raw.data()), raw.size()));
  std::string out;
  out.reserve(bytes * 2);
  for (char c : raw) {
    auto u = static_cast<uint8_t>(c);
    out += kHex[u >> 4];
    out += kHex[u & 15];
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[32];
  // With a valid output buffer the 2.28 one-shot function cannot fail; its
  // return code is checked anyway so a future failure mode is not hidden.
  if (mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest, 0) != 0) {
    return std::string();
  }
  std::string out;
  out.reserve(64);
  for (unsigned char c : digest) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = static_cast<unsigned char>(diff | (a[i] ^ b[i]));
  return diff == 0;
}

std::string MbedtlsLibraryVersion() {
  char buf[18] = {0};  // the documented minimum size
  mbedtls_version_get_string(buf);
  return buf;
}

}  // namespace ws
