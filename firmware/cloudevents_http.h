// The CloudEvents HTTP protocol binding (v1.0) as the local API reads it:
// binary mode (attributes in ce-* headers, the body is the data) and the
// media-type helpers both modes need. Pure functions; any thread.
#pragma once

#include <string>
#include <string_view>

#include "adapters/http/http_server.h"
#include "core/event.h"
#include "platform/status.h"

namespace ws {

// The media type of a Content-Type value, without parameters or trailing
// blanks ("application/json; charset=utf-8" -> "application/json"); empty if
// absent.
std::string_view MediaTypeOf(const std::string* content_type);

// Decodes %XX escapes (header values in binary mode, path segments);
// kInvalidArgument naming `what` for a malformed escape.
Result<std::string> PercentDecode(std::string_view in, std::string_view what);

// True for JSON media types: application/json, text/json and any "+json".
bool IsJsonMediaType(std::string_view media_type);

// Decodes a binary-mode event: every ce-<name> header (percent-decoded) is
// an attribute, Content-Type becomes datacontenttype and the body the data
// (checked to be JSON when the type says JSON, or when there is none). The
// event is then checked as CloudEvents requires (ValidateEvent); `id` may be
// absent when `allow_missing_id` (the caller generates one). Errors are
// kInvalidArgument with a message that starts with the offending header
// ("ce-time: ...") or attribute ("data: ...").
Result<Event> ParseBinaryModeEvent(const HttpRequest& request, bool allow_missing_id);

}  // namespace ws
