// The libmosquitto boundary of the mqtt adapter: the one-time library init,
// RAII owners for the library's handles, and the single table that turns
// MOSQ_ERR_* codes into ws::Status. Private to adapters/mqtt: it includes
// <mosquitto.h>, which no header outside this folder may.
//
// Threads: MosquittoLibraryInit may be called from any thread. A client
// handle is used by one thread only (the event loop thread of its link).
#pragma once

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <memory>
#include <string>
#include <string_view>

#include "platform/status.h"

namespace ws {

// mosquitto_lib_init, exactly once per process; later calls return the first
// call's result.
Status MosquittoLibraryInit();

// The one place a MOSQ_ERR_* code becomes a Status. `context` names the
// operation ("publish to waystation/x"). MOSQ_ERR_ERRNO reads errno, so call
// this right after the failing library call.
Status MosquittoStatus(int rc, std::string_view context);

// "MOSQ_ERR_CONN_LOST" for a library code; "MOSQ_ERR_?" for unknown ones.
std::string_view MosquittoErrorName(int rc);

// MQTT 5 reason codes of a PUBACK that mean the broker will never accept
// this message as it is, so sending it again cannot help: not authorized
// (0x87), topic name invalid (0x90), packet too large (0x95), payload format
// invalid (0x99).
bool IsPermanentPublishRefusal(int reason_code);

// "0x87 not authorised" (the library's text for the code).
std::string DescribeReasonCode(int reason_code);

struct MosquittoClientDeleter {
  void operator()(mosquitto* m) const { mosquitto_destroy(m); }
};
// Owns one client handle. Destroying it closes its socket without a
// DISCONNECT packet, so the broker publishes the client's Will.
using MosquittoClient = std::unique_ptr<mosquitto, MosquittoClientDeleter>;

// Owns a property list being built; Release() hands it to a library call
// that takes ownership (mosquitto_will_set_v5 on success).
class PropertyList {
 public:
  PropertyList() = default;
  ~PropertyList() { mosquitto_property_free_all(&head_); }
  PropertyList(const PropertyList&) = delete;
  PropertyList& operator=(const PropertyList&) = delete;

  // Fails with kInvalidArgument for text that MQTT cannot carry (not
  // UTF-8, a NUL character, longer than 65535 bytes).
  Status AddString(int identifier, std::string_view value);
  Status AddStringPair(int identifier, std::string_view name, std::string_view value);

  const mosquitto_property* get() const { return head_; }
  mosquitto_property* get() { return head_; }
  mosquitto_property* Release() {
    mosquitto_property* p = head_;
    head_ = nullptr;
    return p;
  }

 private:
  mosquitto_property* head_ = nullptr;
};

}  // namespace ws
