// Serialization of HTTP/1.1 responses into a connection's output buffer.
// Internal to adapters/http. Pure functions; any thread.
#pragma once

#include <string>

#include "adapters/http/http_server.h"

namespace ws::http_internal {

enum class ConnectionHeader { kNone, kClose, kKeepAlive };

// Appends the status line, Content-Type, Content-Length, the extra headers,
// the Connection header and the body. A status outside 200..599 becomes 500
// (interim responses are the server's business); 204 and 304 carry neither
// body nor Content-Length (RFC 9110 §8.6). Extra headers with CR or LF, and
// the framing headers the server owns (Content-Length, Transfer-Encoding,
// Connection), are dropped so a handler cannot break the framing. The answer
// to a HEAD request keeps its Content-Length but not its body.
void AppendResponse(std::string* out, const HttpResponse& response, ConnectionHeader connection, bool head_request);

}  // namespace ws::http_internal
