#include "adapters/mqtt/mosquitto_api.h"

#include <cerrno>
#include <cstdio>
#include <mutex>

namespace ws {
namespace {

bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

}  // namespace

Status MosquittoLibraryInit() {
  static std::once_flag once;
  static int init_rc = MOSQ_ERR_SUCCESS;
  std::call_once(once, [] { init_rc = mosquitto_lib_init(); });
  return MosquittoStatus(init_rc, "mosquitto_lib_init");
}

std::string_view MosquittoErrorName(int rc) {
  switch (rc) {
    case MOSQ_ERR_AUTH_CONTINUE: return "MOSQ_ERR_AUTH_CONTINUE";
    case MOSQ_ERR_NO_SUBSCRIBERS: return "MOSQ_ERR_NO_SUBSCRIBERS";
    case MOSQ_ERR_SUB_EXISTS: return "MOSQ_ERR_SUB_EXISTS";
    case MOSQ_ERR_CONN_PENDING: return "MOSQ_ERR_CONN_PENDING";
    case MOSQ_ERR_SUCCESS: return "MOSQ_ERR_SUCCESS";
    case MOSQ_ERR_NOMEM: return "MOSQ_ERR_NOMEM";
    case MOSQ_ERR_PROTOCOL: return "MOSQ_ERR_PROTOCOL";
    case MOSQ_ERR_INVAL: return "MOSQ_ERR_INVAL";
    case MOSQ_ERR_NO_CONN: return "MOSQ_ERR_NO_CONN";
    case MOSQ_ERR_CONN_REFUSED: return "MOSQ_ERR_CONN_REFUSED";
    case MOSQ_ERR_NOT_FOUND: return "MOSQ_ERR_NOT_FOUND";
    case MOSQ_ERR_CONN_LOST: return "MOSQ_ERR_CONN_LOST";
    case MOSQ_ERR_TLS: return "MOSQ_ERR_TLS";
    case MOSQ_ERR_PAYLOAD_SIZE: return "MOSQ_ERR_PAYLOAD_SIZE";
    case MOSQ_ERR_NOT_SUPPORTED: return "MOSQ_ERR_NOT_SUPPORTED";
    case MOSQ_ERR_AUTH: return "MOSQ_ERR_AUTH";
    case MOSQ_ERR_ACL_DENIED: return "MOSQ_ERR_ACL_DENIED";
    case MOSQ_ERR_UNKNOWN: return "MOSQ_ERR_UNKNOWN";
    case MOSQ_ERR_ERRNO: return "MOSQ_ERR_ERRNO";
    case MOSQ_ERR_EAI: return "MOSQ_ERR_EAI";
    case MOSQ_ERR_PROXY: return "MOSQ_ERR_PROXY";
    case MOSQ_ERR_PLUGIN_DEFER: return "MOSQ_ERR_PLUGIN_DEFER";
    case MOSQ_ERR_MALFORMED_UTF8: return "MOSQ_ERR_MALFORMED_UTF8";
    case MOSQ_ERR_KEEPALIVE: return "MOSQ_ERR_KEEPALIVE";
    case MOSQ_ERR_LOOKUP: return "MOSQ_ERR_LOOKUP";
    case MOSQ_ERR_MALFORMED_PACKET: return "MOSQ_ERR_MALFORMED_PACKET";
    case MOSQ_ERR_DUPLICATE_PROPERTY: return "MOSQ_ERR_DUPLICATE_PROPERTY";
    case MOSQ_ERR_TLS_HANDSHAKE: return "MOSQ_ERR_TLS_HANDSHAKE";
    case MOSQ_ERR_QOS_NOT_SUPPORTED: return "MOSQ_ERR_QOS_NOT_SUPPORTED";
    case MOSQ_ERR_OVERSIZE_PACKET: return "MOSQ_ERR_OVERSIZE_PACKET";
    case MOSQ_ERR_OCSP: return "MOSQ_ERR_OCSP";
    case MOSQ_ERR_TIMEOUT: return "MOSQ_ERR_TIMEOUT";
    case MOSQ_ERR_RETAIN_NOT_SUPPORTED: return "MOSQ_ERR_RETAIN_NOT_SUPPORTED";
    case MOSQ_ERR_TOPIC_ALIAS_INVALID: return "MOSQ_ERR_TOPIC_ALIAS_INVALID";
    case MOSQ_ERR_ADMINISTRATIVE_ACTION: return "MOSQ_ERR_ADMINISTRATIVE_ACTION";
    case MOSQ_ERR_ALREADY_EXISTS: return "MOSQ_ERR_ALREADY_EXISTS";
    default: return "MOSQ_ERR_?";
  }
}

Status MosquittoStatus(int rc, std::string_view context) {
  // Read errno before anything else can change it.
  const int saved_errno = errno;
  StatusCode code = StatusCode::kInternal;
  switch (rc) {
    case MOSQ_ERR_SUCCESS:
    // Informational codes: the operation did what was asked.
    case MOSQ_ERR_AUTH_CONTINUE:
    case MOSQ_ERR_NO_SUBSCRIBERS:
    case MOSQ_ERR_SUB_EXISTS:
      return Status::Ok();
    case MOSQ_ERR_ERRNO:
      return ErrnoStatus(saved_errno, context);
    case MOSQ_ERR_CONN_PENDING:
    case MOSQ_ERR_NO_CONN:
    case MOSQ_ERR_CONN_REFUSED:
    case MOSQ_ERR_CONN_LOST:
    case MOSQ_ERR_TLS:
    case MOSQ_ERR_TLS_HANDSHAKE:
    case MOSQ_ERR_OCSP:
    case MOSQ_ERR_EAI:
    case MOSQ_ERR_LOOKUP:
    case MOSQ_ERR_PROXY:
    case MOSQ_ERR_KEEPALIVE:
    case MOSQ_ERR_ADMINISTRATIVE_ACTION:
    case MOSQ_ERR_PLUGIN_DEFER:
      code = StatusCode::kUnavailable;
      break;
    case MOSQ_ERR_NOMEM:
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_OVERSIZE_PACKET:
      code = StatusCode::kResourceExhausted;
      break;
    case MOSQ_ERR_INVAL:
    case MOSQ_ERR_MALFORMED_UTF8:
    case MOSQ_ERR_DUPLICATE_PROPERTY:
    case MOSQ_ERR_TOPIC_ALIAS_INVALID:
      code = StatusCode::kInvalidArgument;
      break;
    case MOSQ_ERR_AUTH:
    case MOSQ_ERR_ACL_DENIED:
      code = StatusCode::kPermissionDenied;
      break;
    case MOSQ_ERR_NOT_SUPPORTED:
    case MOSQ_ERR_QOS_NOT_SUPPORTED:
    case MOSQ_ERR_RETAIN_NOT_SUPPORTED:
      code = StatusCode::kUnimplemented;
      break;
    case MOSQ_ERR_NOT_FOUND:
      code = StatusCode::kNotFound;
      break;
    case MOSQ_ERR_ALREADY_EXISTS:
      code = StatusCode::kAlreadyExists;
      break;
    case MOSQ_ERR_TIMEOUT:
      code = StatusCode::kDeadlineExceeded;
      break;
    case MOSQ_ERR_PROTOCOL:
    case MOSQ_ERR_MALFORMED_PACKET:
    case MOSQ_ERR_UNKNOWN:
    default:
      code = StatusCode::kInternal;
      break;
  }
  std::string message(context);
  message += ": ";
  message += mosquitto_strerror(rc);
  message += " (";
  message += MosquittoErrorName(rc);
  message += ")";
  return Status(code, std::move(message));
}

bool IsPermanentPublishRefusal(int reason_code) {
  switch (reason_code) {
    case MQTT_RC_NOT_AUTHORIZED:
    case MQTT_RC_TOPIC_NAME_INVALID:
    case MQTT_RC_PACKET_TOO_LARGE:
    case MQTT_RC_PAYLOAD_FORMAT_INVALID:
      return true;
    default:
      return false;
  }
}

std::string DescribeReasonCode(int reason_code) {
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(reason_code) & 0xffu);
  std::string out(hex);
  out += ' ';
  out += mosquitto_reason_string(reason_code);
  return out;
}

// The library wants NUL-terminated text. Each event's PUBLISH adds half a
// dozen properties, so the copies reuse this thread's buffers instead of
// allocating (the library allocates its own copies anyway), and the error
// context is put together only for an error.
namespace {
const char* Terminated(std::string* buffer, std::string_view text) {
  buffer->assign(text);
  return buffer->c_str();
}
}  // namespace

Status PropertyList::AddString(int identifier, std::string_view value) {
  if (HasNul(value)) return InvalidArgument("MQTT property value contains a NUL character");
  thread_local std::string v;
  return MosquittoStatus(mosquitto_property_add_string(&head_, identifier, Terminated(&v, value)),
                         "add MQTT property");
}

Status PropertyList::AddStringPair(int identifier, std::string_view name, std::string_view value) {
  if (HasNul(name) || HasNul(value)) return InvalidArgument("MQTT user property contains a NUL character");
  thread_local std::string n;
  thread_local std::string v;
  const int rc = mosquitto_property_add_string_pair(&head_, identifier, Terminated(&n, name), Terminated(&v, value));
  if (rc == MOSQ_ERR_SUCCESS) return Status::Ok();
  return MosquittoStatus(rc, "add MQTT user property '" + std::string(name) + "'");
}

}  // namespace ws
