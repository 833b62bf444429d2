// Errors as values. Every fallible function in Waystation returns a Status or
// a Result<T>; errno, SQLITE_*, MOSQ_ERR_* and MBEDTLS_ERR_* codes are turned
// into a Status in exactly one place per library. Status and Result are plain
// values: any thread may create, copy and read them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace ws {

enum class StatusCode : uint8_t {
  kOk = 0,
  kCancelled,
  kInvalidArgument,    // bad input; nothing was changed
  kNotFound,
  kAlreadyExists,      // e.g. same event id with different content
  kPermissionDenied,
  kResourceExhausted,  // store full, disk full, rate limit, too large
  kFailedPrecondition,
  kAborted,
  kOutOfRange,
  kUnimplemented,
  kInternal,
  kUnavailable,        // transient: retry later
  kDataLoss,           // corruption detected
  kDeadlineExceeded,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "CODE_NAME: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message".
  Status WithContext(std::string_view context) const;

  // Explicitly discards a status where ignoring it is the considered choice
  // (cleanup on an error path that already reports the first error).
  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// The one place errno becomes a Status: `context` names the operation and
// object ("open /var/outbox.db"), the errno text is appended.
Status ErrnoStatus(int err, std::string_view context);

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::remove_cv_t<T>, Status>, "Result<Status> makes no sense");

 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::in_place_index<1>, std::move(status)) {  // NOLINT
    if (std::get<1>(v_).ok()) v_.template emplace<1>(StatusCode::kInternal, "Result built from an OK Status");
  }

  bool ok() const { return v_.index() == 0; }
  Status status() const { return ok() ? Status::Ok() : std::get<1>(v_); }

  // Precondition: ok().
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

namespace internal {
inline Status AsStatus(const Status& s) { return s; }
template <typename T>
Status AsStatus(const Result<T>& r) { return r.status(); }
}  // namespace internal

}  // namespace ws

#define WS_CONCAT_INNER_(a, b) a##b
#define WS_CONCAT_(a, b) WS_CONCAT_INNER_(a, b)

// Returns the Status of `expr` (a Status or Result) from the enclosing
// function if it is not OK.
#define WS_TRY(expr)                                              \
  do {                                                            \
    auto&& ws_try_value_ = (expr);                                \
    if (!ws_try_value_.ok()) return ::ws::internal::AsStatus(ws_try_value_); \
  } while (0)

// `WS_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from an OK Result, or
// returns its Status.
#define WS_ASSIGN_OR_RETURN(lhs, expr) WS_ASSIGN_OR_RETURN_IMPL_(WS_CONCAT_(ws_result_, __LINE__), lhs, expr)
#define WS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
