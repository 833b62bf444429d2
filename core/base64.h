// Base64 (RFC 4648, standard alphabet, with padding), used by the CloudEvents
// encodings (data_base64). Reentrant; any thread.
#pragma once

#include <string>
#include <string_view>

#include "platform/status.h"

namespace ws {

std::string Base64Encode(std::string_view bytes);
// Fails (kInvalidArgument) on characters outside the alphabet or bad padding.
Result<std::string> Base64Decode(std::string_view text);

}  // namespace ws
