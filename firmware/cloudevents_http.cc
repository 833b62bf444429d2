#include "firmware/cloudevents_http.h"

#include <utility>

#include "adapters/json/json_codec.h"

namespace ws {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// ValidateEvent names attributes ("time: ..."); in binary mode the producer
// wrote headers, so name the header it sent.
Status AsHeaderError(const Status& s) {
  const std::string& m = s.message();
  size_t colon = m.find(':');
  if (colon == std::string::npos) return s;
  std::string attr = m.substr(0, colon);
  if (attr == "data") return s;
  return InvalidArgument("ce-" + m);
}

}  // namespace

Result<std::string> PercentDecode(std::string_view in, std::string_view what) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size() || HexDigit(in[i + 1]) < 0 || HexDigit(in[i + 2]) < 0) {
      return InvalidArgument(std::string(what) + ": bad percent-encoding");
    }
    out += static_cast<char>(HexDigit(in[i + 1]) * 16 + HexDigit(in[i + 2]));
    i += 2;
  }
  return out;
}

std::string_view MediaTypeOf(const std::string* content_type) {
  if (content_type == nullptr) return {};
  std::string_view v(*content_type);
  size_t semi = v.find(';');
  if (semi != std::string_view::npos) v = v.substr(0, semi);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  return v;
}

bool IsJsonMediaType(std::string_view m) {
  return m == "application/json" || m == "text/json" || (m.size() > 5 && m.substr(m.size() - 5) == "+json");
}

Result<Event> ParseBinaryModeEvent(const HttpRequest& req, bool allow_missing_id) {
  std::string_view media_type = MediaTypeOf(req.Header("content-type"));
  Event e;
  bool have_specversion = false, have_id = false, have_source = false, have_type = false;
  auto once = [](bool* seen, const std::string& header) -> Status {
    if (*seen) return InvalidArgument(header + ": appears more than once");
    *seen = true;
    return Status::Ok();
  };
  for (const auto& [name, raw] : req.headers) {
    if (name.size() <= 3 || name.compare(0, 3, "ce-") != 0) continue;
    std::string attr = name.substr(3);
    WS_ASSIGN_OR_RETURN(std::string value, PercentDecode(raw, name));
    if (attr == "specversion") {
      WS_TRY(once(&have_specversion, name));
      e.specversion = std::move(value);
    } else if (attr == "id") {
      WS_TRY(once(&have_id, name));
      e.id = std::move(value);
    } else if (attr == "source") {
      WS_TRY(once(&have_source, name));
      e.source = std::move(value);
    } else if (attr == "type") {
      WS_TRY(once(&have_type, name));
      e.type = std::move(value);
    } else if (attr == "datacontenttype" || attr == "data" || attr == "data_base64") {
      return InvalidArgument(name + ": not allowed as a header in binary mode (use Content-Type and the body)");
    } else {
      if (!IsValidAttributeName(attr))
        return InvalidArgument(name + ": attribute names are 1-20 characters of a-z and 0-9");
      if (e.FindAttribute(attr) != nullptr) return InvalidArgument(name + ": appears more than once");
      e.attributes.emplace_back(std::move(attr), std::move(value));
    }
  }
  if (!have_specversion) return InvalidArgument("ce-specversion: required");
  if (!media_type.empty()) e.SetAttribute("datacontenttype", std::string(media_type));
  if (!req.body.empty()) {
    if (media_type.empty() || IsJsonMediaType(media_type)) {
      if (!IsValidJson(req.body)) return InvalidArgument("data: the body is not valid JSON for a JSON content type");
      e.data_kind = DataKind::kJson;
    } else {
      e.data_kind = DataKind::kBinary;
    }
    e.data = req.body;
  }
  const bool placeholder_id = !have_id && allow_missing_id;
  if (placeholder_id) e.id = "-";  // validated as if present; the caller assigns the real id
  Status s = ValidateEvent(e);
  if (!s.ok()) return AsHeaderError(s);
  if (placeholder_id) e.id.clear();
  return e;
}

}  // namespace ws
