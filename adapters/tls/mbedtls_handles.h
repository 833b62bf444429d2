// RAII owners of mbedTLS contexts: each is initialised on construction and
// freed exactly once on destruction. They are neither copied nor moved (some
// contexts are pointed to by others once configured), so they live in place
// or behind a smart pointer. Internal to adapters/tls (and its tests): this
// header includes mbedTLS. Not thread-safe; a context belongs to its owner.
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

namespace ws::tls_internal {

template <typename T, void (*Init)(T*), void (*Free)(T*)>
class MbedtlsHandle {
 public:
  MbedtlsHandle() { Init(&value_); }
  ~MbedtlsHandle() { Free(&value_); }
  MbedtlsHandle(const MbedtlsHandle&) = delete;
  MbedtlsHandle& operator=(const MbedtlsHandle&) = delete;

  T* get() { return &value_; }
  const T* get() const { return &value_; }

 private:
  T value_;
};

using X509Certs = MbedtlsHandle<mbedtls_x509_crt, &mbedtls_x509_crt_init, &mbedtls_x509_crt_free>;
using PrivateKey = MbedtlsHandle<mbedtls_pk_context, &mbedtls_pk_init, &mbedtls_pk_free>;
using SslConfig = MbedtlsHandle<mbedtls_ssl_config, &mbedtls_ssl_config_init, &mbedtls_ssl_config_free>;
using SslSession = MbedtlsHandle<mbedtls_ssl_context, &mbedtls_ssl_init, &mbedtls_ssl_free>;
using Entropy = MbedtlsHandle<mbedtls_entropy_context, &mbedtls_entropy_init, &mbedtls_entropy_free>;
using CtrDrbg = MbedtlsHandle<mbedtls_ctr_drbg_context, &mbedtls_ctr_drbg_init, &mbedtls_ctr_drbg_free>;

}  // namespace ws::tls_internal
