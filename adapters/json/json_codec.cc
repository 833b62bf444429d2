#include "adapters/json/json_codec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "adapters/json/cjson_ptr.h"

namespace ws {

using json_internal::CjsonPtr;
using json_internal::ParseExact;
using json_internal::ParseScope;
using json_internal::PrintCompact;

namespace {

bool IsJsonContentType(const std::string* ct) {
  if (ct == nullptr) return true;  // CloudEvents: absent means application/json
  std::string_view v(*ct);
  size_t semi = v.find(';');
  if (semi != std::string_view::npos) v = v.substr(0, semi);
  while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
  return v == "application/json" || v == "text/json" || (v.size() > 5 && v.substr(v.size() - 5) == "+json");
}

// ---- raw text of JSON the parser already accepted ----
//
// Event data is kept as the producer wrote it (less whitespace) instead of
// being printed again from cJSON's tree: printing goes through doubles, so
// it rewrote numbers (21.50 became 21.5, integers past 2^53 changed) and
// cost a tree walk and allocations per event. These scanners run only on
// text cJSON has just parsed, so they need not judge validity; on anything
// unexpected they give up and the caller falls back to the tree.

// As cJSON has it: every byte up to the space (controls and NUL too)
// separates tokens.
constexpr bool IsJsonSpace(char c) { return static_cast<unsigned char>(c) <= 32; }

size_t SkipSpace(std::string_view t, size_t i) {
  while (i < t.size() && IsJsonSpace(t[i])) ++i;
  return i;
}

// `i` at a '"': the index after the closing quote, or npos. Inside a
// string a backslash only starts an escape, so a quote closes the string
// unless an odd run of backslashes stands right before it. memchr finds the
// candidates a word at a time; strings are most of an event's text.
size_t SkipString(std::string_view t, size_t i) {
  const size_t open = i;
  for (size_t from = i + 1; from < t.size();) {
    const void* q = std::memchr(t.data() + from, '"', t.size() - from);
    if (q == nullptr) break;
    const auto at = static_cast<size_t>(static_cast<const char*>(q) - t.data());
    size_t backslashes = 0;
    while (at - backslashes > open + 1 && t[at - backslashes - 1] == '\\') ++backslashes;
    if (backslashes % 2 == 0) return at + 1;
    from = at + 1;
  }
  return std::string_view::npos;
}

// `i` at the first character of a value: the index after it, or npos.
size_t SkipValue(std::string_view t, size_t i) {
  if (i >= t.size()) return std::string_view::npos;
  if (t[i] == '"') return SkipString(t, i);
  if (t[i] != '{' && t[i] != '[') {
    while (i < t.size() && t[i] != ',' && t[i] != '}' && t[i] != ']' && !IsJsonSpace(t[i])) ++i;
    return i;
  }
  size_t depth = 0;
  while (i < t.size()) {
    const char c = t[i];
    if (c == '"') {
      i = SkipString(t, i);
      if (i == std::string_view::npos) return i;
      continue;
    }
    if (c == '{' || c == '[') ++depth;
    if ((c == '}' || c == ']') && --depth == 0) return i + 1;
    ++i;
  }
  return std::string_view::npos;
}

// The raw value of member `name` of the object `t` (which starts at its
// '{'), or nullopt if it is absent or a key is written with escapes (then
// only the parser knows which key it names).
std::optional<std::string_view> RawMember(std::string_view t, std::string_view name) {
  size_t i = SkipSpace(t, 0);
  if (i >= t.size() || t[i] != '{') return std::nullopt;
  i = SkipSpace(t, i + 1);
  while (i < t.size() && t[i] == '"') {
    const size_t key_end = SkipString(t, i);
    if (key_end == std::string_view::npos) return std::nullopt;
    const std::string_view key = t.substr(i + 1, key_end - i - 2);
    if (key.find('\\') != std::string_view::npos) return std::nullopt;
    i = SkipSpace(t, key_end);
    if (i >= t.size() || t[i] != ':') return std::nullopt;
    const size_t value_start = SkipSpace(t, i + 1);
    const size_t value_end = SkipValue(t, value_start);
    if (value_end == std::string_view::npos || value_end == value_start) return std::nullopt;
    if (key == name) return t.substr(value_start, value_end - value_start);
    i = SkipSpace(t, value_end);
    if (i < t.size() && t[i] == ',') i = SkipSpace(t, i + 1);
  }
  return std::nullopt;
}

// The raw text of each element of the array `t`, in order.
std::vector<std::string_view> RawElements(std::string_view t) {
  std::vector<std::string_view> out;
  size_t i = SkipSpace(t, 0);
  if (i >= t.size() || t[i] != '[') return out;
  i = SkipSpace(t, i + 1);
  while (i < t.size() && t[i] != ']') {
    const size_t end = SkipValue(t, i);
    if (end == std::string_view::npos || end == i) return {};
    out.push_back(t.substr(i, end - i));
    i = SkipSpace(t, end);
    if (i < t.size() && t[i] == ',') i = SkipSpace(t, i + 1);
  }
  return out;
}

// `v` without the whitespace between tokens.
std::string Minified(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size();) {
    if (v[i] == '"') {
      const size_t end = SkipString(v, i);
      const size_t n = (end == std::string_view::npos ? v.size() : end) - i;
      out.append(v.substr(i, n));
      i += n;
    } else {
      if (!IsJsonSpace(v[i])) out += v[i];
      ++i;
    }
  }
  return out;
}

// Extension values may be strings, numbers or booleans; they travel as their
// canonical string form (as in the MQTT and HTTP binary bindings).
Result<std::string> AttributeValue(const cJSON* item, const char* name) {
  if (cJSON_IsString(item)) return std::string(item->valuestring);
  if (cJSON_IsBool(item)) return std::string(cJSON_IsTrue(item) ? "true" : "false");
  if (cJSON_IsNumber(item)) {
    double d = item->valuedouble;
    // CloudEvents' Integer: -2,147,483,648 to +2,147,483,647.
    if (std::floor(d) != d || d < -2147483648.0 || d > 2147483647.0) {
      return InvalidArgument(std::string(name) + ": extension integers must be whole 32-bit numbers");
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", d);
    return std::string(buf);
  }
  return InvalidArgument(std::string(name) + ": must be a string, number or boolean");
}

// True if a number in `item` overflowed to infinity when parsed (1e400).
// Recursion depth is bounded by cJSON's nesting limit.
bool HasNonFiniteNumber(const cJSON* item) {
  if (cJSON_IsNumber(item)) return !std::isfinite(item->valuedouble);
  for (const cJSON* it = item->child; it != nullptr; it = it->next) {
    if (HasNonFiniteNumber(it)) return true;
  }
  return false;
}

// `raw` is the object's own text, if known (else empty).
Result<Event> EventFromObject(const cJSON* obj, std::string_view raw, bool allow_missing_id) {
  if (!cJSON_IsObject(obj)) return InvalidArgument("event: must be a JSON object");
  {
    // Duplicate member names are ambiguous: refuse them (sorted, so a body
    // with many keys cannot make this quadratic).
    std::vector<std::string_view> names;
    for (const cJSON* it = obj->child; it != nullptr; it = it->next) names.emplace_back(it->string);
    std::sort(names.begin(), names.end());
    auto dup = std::adjacent_find(names.begin(), names.end());
    if (dup != names.end()) return InvalidArgument(std::string(*dup) + ": appears more than once");
  }
  Event e;
  bool have_specversion = false, have_data = false, have_data_base64 = false;
  const cJSON* data_item = nullptr;
  for (const cJSON* it = obj->child; it != nullptr; it = it->next) {
    std::string_view name(it->string);
    if (name == "data") {
      have_data = true;
      data_item = it;
      continue;
    }
    if (name == "data_base64") {
      if (!cJSON_IsString(it)) return InvalidArgument("data_base64: must be a string");
      WS_ASSIGN_OR_RETURN(e.data, Base64Decode(it->valuestring));
      have_data_base64 = true;
      continue;
    }
    if (name == "specversion" || name == "id" || name == "source" || name == "type") {
      if (!cJSON_IsString(it)) return InvalidArgument(std::string(name) + ": must be a string");
      std::string v = it->valuestring;
      if (name == "specversion") {
        e.specversion = std::move(v);
        have_specversion = true;
      } else if (name == "id") {
        e.id = std::move(v);
      } else if (name == "source") {
        e.source = std::move(v);
      } else {
        e.type = std::move(v);
      }
      continue;
    }
    if (!IsValidAttributeName(name)) {
      return InvalidArgument(std::string(name) + ": attribute names are 1-20 characters of a-z and 0-9");
    }
    if (cJSON_IsNull(it)) continue;  // an explicit null is the same as absent
    WS_ASSIGN_OR_RETURN(std::string value, AttributeValue(it, it->string));
    e.attributes.emplace_back(std::string(name), std::move(value));
  }
  if (!have_specversion) return InvalidArgument("specversion: required");
  if (have_data && have_data_base64) {
    return Status(StatusCode::kFailedPrecondition, "data: data and data_base64 are mutually exclusive");
  }
  if (have_data_base64) {
    e.data_kind = DataKind::kBinary;
  } else if (have_data && !cJSON_IsNull(data_item)) {
    if (IsJsonContentType(e.FindAttribute("datacontenttype"))) {
      // A number no double can hold (1e400) is refused: consumers that
      // read JSON numbers as doubles could not read it either.
      if (HasNonFiniteNumber(data_item)) return InvalidArgument("data: a number is too large for a double");
      e.data_kind = DataKind::kJson;
      const std::optional<std::string_view> text = raw.empty() ? std::nullopt : RawMember(raw, "data");
      e.data = text.has_value() ? Minified(*text) : PrintCompact(data_item);
      if (e.data.empty()) return Status(StatusCode::kResourceExhausted, "data: out of memory");
    } else {
      // A non-JSON content type carries its text as a JSON string.
      if (!cJSON_IsString(data_item)) {
        return InvalidArgument("data: must be a string for a non-JSON datacontenttype (or use data_base64)");
      }
      e.data_kind = DataKind::kBinary;
      e.data = data_item->valuestring;
    }
  }
  if (allow_missing_id && cJSON_GetObjectItemCaseSensitive(obj, "id") == nullptr) {
    Event probe = e;
    probe.id = "-";  // the caller assigns the real id
    WS_TRY(ValidateEvent(probe));
    return e;
  }
  WS_TRY(ValidateEvent(e));
  return e;
}

}  // namespace

Result<Event> ParseStructuredEvent(std::string_view json, bool allow_missing_id) {
  ParseScope scope;  // before the tree: the tree goes first
  CjsonPtr root = ParseExact(json);
  if (!root) return InvalidArgument("body: not valid JSON");
  return EventFromObject(root.get(), json, allow_missing_id);
}

Result<std::vector<Event>> ParseEventBatch(std::string_view json, bool allow_missing_id, size_t max_events) {
  ParseScope scope;  // before the tree: the tree goes first
  CjsonPtr root = ParseExact(json);
  if (!root) return InvalidArgument("body: not valid JSON");
  if (!cJSON_IsArray(root.get())) return InvalidArgument("body: a batch must be a JSON array of events");
  std::vector<Event> out;
  // Each element's own text, when the scan agrees with the parser on how
  // many there are.
  std::vector<std::string_view> raw = RawElements(json);
  const auto elements = static_cast<size_t>(cJSON_GetArraySize(root.get()));
  if (elements != raw.size()) raw.clear();
  out.reserve(std::min(elements, max_events));
  size_t i = 0;
  for (const cJSON* it = root->child; it != nullptr; it = it->next, ++i) {
    if (i >= max_events) {
      return Status(StatusCode::kResourceExhausted, "body: more than " + std::to_string(max_events) + " events");
    }
    Result<Event> e = EventFromObject(it, raw.empty() ? std::string_view() : raw[i], allow_missing_id);
    if (!e.ok()) return e.status().WithContext("[" + std::to_string(i) + "]");
    out.push_back(std::move(e).value());
  }
  if (out.empty()) return InvalidArgument("body: the batch is empty");
  return out;
}

std::string EncodeStructuredEvent(const Event& e) {
  JsonWriter w;
  w.String("specversion", e.specversion).String("id", e.id).String("source", e.source).String("type", e.type);
  for (const auto& [k, v] : e.attributes) w.String(k, v);
  std::string out = w.Finish();
  // Splice the data in as raw text: re-parsing it would cost a tree per event.
  if (e.data_kind != DataKind::kNone && !out.empty()) {
    out.pop_back();  // '}'
    if (e.data_kind == DataKind::kJson) {
      out += ",\"data\":";
      out += e.data;
    } else {
      out += ",\"data_base64\":\"";
      out += Base64Encode(e.data);
      out += '"';
    }
    out += '}';
  }
  return out;
}

bool IsValidJson(std::string_view json) {
  ParseScope scope;
  return ParseExact(json) != nullptr;
}

std::string CjsonLibraryVersion() { return cJSON_Version(); }

// Writes the text directly: no tree, one growing string. Answers are built
// for every request (a 202 per event), where a cJSON tree cost an allocation
// per value and printed every integer through sprintf("%g") and sscanf.
class JsonWriter::Impl {
 public:
  Impl() {
    out_.reserve(128);
    out_ += '{';
    levels_.push_back(Level{false, true});
  }

  // The separator and, inside an object, the key.
  void Key(std::string_view key) {
    Level& l = levels_.back();
    if (!l.first) out_ += ',';
    l.first = false;
    if (!l.array) {
      Quoted(key);
      out_ += ':';
    }
  }
  void Raw(std::string_view key, std::string_view text) {
    Key(key);
    out_ += text;
  }
  void Text(std::string_view key, std::string_view value) {
    Key(key);
    Quoted(value);
  }
  void Integer(std::string_view key, int64_t value) {
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, value);
    Raw(key, std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
  }
  void Number(std::string_view key, double value) {
    if (!std::isfinite(value)) return Raw(key, "null");  // JSON has no NaN or infinity
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, value);
    Raw(key, std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
  }
  void Open(std::string_view key, bool array) {
    Key(key);
    out_ += array ? '[' : '{';
    levels_.push_back(Level{array, true});
  }
  void Close() {
    if (levels_.size() <= 1) return;  // the root closes in Finish
    out_ += levels_.back().array ? ']' : '}';
    levels_.pop_back();
  }
  // Closes whatever is still open, the root last.
  std::string Finish() const {
    std::string s = out_;
    for (size_t i = levels_.size(); i-- > 0;) s += levels_[i].array ? ']' : '}';
    return s;
  }

 private:
  struct Level {
    bool array;
    bool first;  // nothing written at this level yet
  };

  // RFC 8259 string: quote, backslash and control characters escaped; other
  // bytes (UTF-8) as they are.
  void Quoted(std::string_view v) {
    out_ += '"';
    for (const char c : v) {
      const auto u = static_cast<unsigned char>(c);
      switch (c) {
        case '"':
          out_ += "\\\"";
          break;
        case '\\':
          out_ += "\\\\";
          break;
        case '\b':
          out_ += "\\b";
          break;
        case '\f':
          out_ += "\\f";
          break;
        case '\n':
          out_ += "\\n";
          break;
        case '\r':
          out_ += "\\r";
          break;
        case '\t':
          out_ += "\\t";
          break;
        default:
          if (u < 0x20) {
            static constexpr char kHex[] = "0123456789abcdef";
            out_ += "\\u00";
            out_ += kHex[u >> 4];
            out_ += kHex[u & 0xf];
          } else {
            out_ += c;
          }
      }
    }
    out_ += '"';
  }

  std::string out_;
  std::vector<Level> levels_;
};

JsonWriter::JsonWriter() : impl_(std::make_unique<Impl>()) {}
JsonWriter::~JsonWriter() = default;

JsonWriter& JsonWriter::String(std::string_view key, std::string_view value) {
  impl_->Text(key, value);
  return *this;
}
JsonWriter& JsonWriter::Int(std::string_view key, int64_t value) {
  impl_->Integer(key, value);
  return *this;
}
JsonWriter& JsonWriter::Double(std::string_view key, double value) {
  impl_->Number(key, value);
  return *this;
}
JsonWriter& JsonWriter::Bool(std::string_view key, bool value) {
  impl_->Raw(key, value ? "true" : "false");
  return *this;
}
JsonWriter& JsonWriter::Null(std::string_view key) {
  impl_->Raw(key, "null");
  return *this;
}
JsonWriter& JsonWriter::BeginObject(std::string_view key) {
  impl_->Open(key, /*array=*/false);
  return *this;
}
JsonWriter& JsonWriter::BeginArray(std::string_view key) {
  impl_->Open(key, /*array=*/true);
  return *this;
}
JsonWriter& JsonWriter::End() {
  impl_->Close();
  return *this;
}
std::string JsonWriter::Finish() { return impl_->Finish(); }

}  // namespace ws
