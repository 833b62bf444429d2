#include "core/event.h"

#include <cstring>
#include <iterator>

namespace ws {
namespace {

// Record versions. 1: every field in full. 2 (written since schema 4): no
// specversion (always "1.0"), no id (the store keeps it in its own column
// beside the record), and the well-known attribute names as one-byte codes.
// The benchmark's 200-byte event (a 3-byte id) takes 126 bytes instead of
// 148; a UUID id saves 37 bytes more.
constexpr uint8_t kRecordV1 = 1;
constexpr uint8_t kRecordV2 = 2;

// Version 2 attribute codes: a name of length 0 (no valid attribute name is
// empty) followed by one byte, the index in this table plus one. Append
// only: stored records depend on the order.
constexpr std::string_view kKnownAttributes[] = {
    "datacontenttype", "time",     "subject", "dataschema", "traceparent",
    "tracestate",      "producer", "partitionkey",
};

int KnownAttributeCode(std::string_view name) {
  for (size_t i = 0; i < std::size(kKnownAttributes); ++i) {
    if (kKnownAttributes[i] == name) return static_cast<int>(i) + 1;
  }
  return 0;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool Digits(std::string_view s, size_t pos, size_t n) {
  if (pos + n > s.size()) return false;
  for (size_t i = 0; i < n; ++i) {
    if (!IsDigit(s[pos + i])) return false;
  }
  return true;
}

int Num(std::string_view s, size_t pos, size_t n) {
  int v = 0;
  for (size_t i = 0; i < n; ++i) v = v * 10 + (s[pos + i] - '0');
  return v;
}

// RFC 3339 section 5.7: the day must exist in that month of that year.
int DaysInMonth(int year, int month) {
  static constexpr int kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) return 29;
  return kDays[month - 1];
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutString(std::string* out, std::string_view s) {
  PutVarint(out, s.size());
  out->append(s);
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) return false;
      auto b = static_cast<uint8_t>(in_.front());
      in_.remove_prefix(1);
      *v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool String(std::string_view* s) {
    uint64_t n = 0;
    if (!Varint(&n) || n > in_.size()) return false;
    *s = in_.substr(0, static_cast<size_t>(n));
    in_.remove_prefix(static_cast<size_t>(n));
    return true;
  }
  bool Byte(uint8_t* b) {
    if (in_.empty()) return false;
    *b = static_cast<uint8_t>(in_.front());
    in_.remove_prefix(1);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

// Reads a record, handing its fields to `out` as views into the record (or
// into `id`): out.Header(specversion, id, source, type, attribute_count),
// out.Attribute(index, name, value) for each attribute in order, then
// out.Data(kind, data). The one reader of the record layout. A record
// that ends early, or has more after its end, is kDataLoss, whatever
// `out` was handed by then.
template <class Out>
Status ReadEventRecord(std::string_view record, std::string_view id, Out& out) {
  Reader r(record);
  uint8_t version = 0;
  if (!r.Byte(&version) || (version != kRecordV1 && version != kRecordV2)) {
    return DataLoss("event record: unknown version");
  }
  std::string_view specversion = "1.0";
  if (version == kRecordV1 && (!r.String(&specversion) || !r.String(&id))) {
    return DataLoss("event record: truncated header");
  }
  std::string_view source, type;
  uint64_t n = 0;
  if (!r.String(&source) || !r.String(&type) || !r.Varint(&n) || n > record.size()) {
    return DataLoss("event record: truncated header");
  }
  out.Header(specversion, id, source, type, static_cast<size_t>(n));
  for (uint64_t i = 0; i < n; ++i) {
    std::string_view k, v;
    if (!r.String(&k)) return DataLoss("event record: truncated attributes");
    if (k.empty() && version == kRecordV2) {
      uint8_t code = 0;
      if (!r.Byte(&code)) return DataLoss("event record: truncated attributes");
      if (code == 0 || code > std::size(kKnownAttributes)) return DataLoss("event record: unknown attribute code");
      k = kKnownAttributes[code - 1];
    }
    if (!r.String(&v)) return DataLoss("event record: truncated attributes");
    out.Attribute(static_cast<size_t>(i), k, v);
  }
  uint8_t kind = 0;
  std::string_view data;
  if (!r.Byte(&kind) || kind > static_cast<uint8_t>(DataKind::kBinary) || !r.String(&data) || !r.done()) {
    return DataLoss("event record: bad data section");
  }
  out.Data(static_cast<DataKind>(kind), data);
  return Status::Ok();
}

// Fills an Event, reusing the room its strings already have.
struct IntoEvent {
  Event* e;
  void Header(std::string_view specversion, std::string_view id, std::string_view source, std::string_view type,
              size_t attributes) {
    e->specversion.assign(specversion);
    e->id.assign(id);
    e->source.assign(source);
    e->type.assign(type);
    e->attributes.resize(attributes);
  }
  void Attribute(size_t i, std::string_view name, std::string_view value) {
    e->attributes[i].first.assign(name);
    e->attributes[i].second.assign(value);
  }
  void Data(DataKind kind, std::string_view data) {
    e->data_kind = kind;
    e->data.assign(data);
  }
};

struct NoOutput {
  void Header(std::string_view, std::string_view, std::string_view, std::string_view, size_t) {}
  void Attribute(size_t, std::string_view, std::string_view) {}
  void Data(DataKind, std::string_view) {}
};

}  // namespace

const std::string* Event::FindAttribute(std::string_view name) const {
  for (const auto& [k, v] : attributes) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Event::SetAttribute(std::string_view name, std::string value) {
  for (auto& [k, v] : attributes) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  attributes.emplace_back(std::string(name), std::move(value));
}

size_t Event::ApproximateBytes() const {
  size_t n = specversion.size() + id.size() + source.size() + type.size() + data.size();
  for (const auto& [k, v] : attributes) n += k.size() + v.size();
  return n;
}

bool IsValidAttributeName(std::string_view name) {
  if (name.empty() || name.size() > 20) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || IsDigit(c))) return false;
  }
  return true;
}

bool IsRfc3339(std::string_view s) {
  // full-date "T" partial-time [frac] time-offset
  if (!Digits(s, 0, 4) || s.size() < 20 || s[4] != '-' || !Digits(s, 5, 2) || s[7] != '-' || !Digits(s, 8, 2)) {
    return false;
  }
  if (s[10] != 'T' && s[10] != 't') return false;
  if (!Digits(s, 11, 2) || s[13] != ':' || !Digits(s, 14, 2) || s[16] != ':' || !Digits(s, 17, 2)) return false;
  int year = Num(s, 0, 4), month = Num(s, 5, 2), day = Num(s, 8, 2), hour = Num(s, 11, 2), minute = Num(s, 14, 2),
      sec = Num(s, 17, 2);
  if (month < 1 || month > 12 || day < 1 || day > DaysInMonth(year, month) || hour > 23 || minute > 59 || sec > 60) {
    return false;
  }
  size_t pos = 19;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t start = pos;
    while (pos < s.size() && IsDigit(s[pos])) ++pos;
    if (pos == start) return false;
  }
  if (pos >= s.size()) return false;
  if (s[pos] == 'Z' || s[pos] == 'z') return pos + 1 == s.size();
  if (s[pos] != '+' && s[pos] != '-') return false;
  if (!Digits(s, pos + 1, 2) || pos + 3 >= s.size() || s[pos + 3] != ':' || !Digits(s, pos + 4, 2)) return false;
  if (Num(s, pos + 1, 2) > 23 || Num(s, pos + 4, 2) > 59) return false;
  return pos + 6 == s.size();
}

Status ValidateEvent(const Event& e) {
  if (e.specversion != "1.0") return InvalidArgument("specversion: must be \"1.0\"");
  if (e.id.empty()) return InvalidArgument("id: must be a non-empty string");
  if (e.source.empty()) return InvalidArgument("source: must be a non-empty URI-reference");
  if (e.type.empty()) return InvalidArgument("type: must be a non-empty string");
  for (const auto& [name, value] : e.attributes) {
    if (!IsValidAttributeName(name)) {
      return InvalidArgument(name + ": attribute names are 1-20 characters of a-z and 0-9");
    }
    if (name == "time" && !IsRfc3339(value)) return InvalidArgument("time: must be an RFC 3339 timestamp");
    if ((name == "datacontenttype" || name == "subject" || name == "dataschema") && value.empty()) {
      return InvalidArgument(name + ": must not be empty when present");
    }
  }
  return Status::Ok();
}

std::string EncodeEventRecord(const Event& e) {
  // Version 1 for what version 2 cannot say: another specversion, or an
  // empty attribute name (only a decoded version 1 record can have one).
  bool v2 = e.specversion == "1.0";
  for (const auto& attribute : e.attributes) v2 = v2 && !attribute.first.empty();
  std::string out;
  out.reserve(e.ApproximateBytes() + 16 + 2 * e.attributes.size());
  out.push_back(static_cast<char>(v2 ? kRecordV2 : kRecordV1));
  if (!v2) {
    PutString(&out, e.specversion);
    PutString(&out, e.id);
  }
  PutString(&out, e.source);
  PutString(&out, e.type);
  PutVarint(&out, e.attributes.size());
  for (const auto& [k, v] : e.attributes) {
    const int code = v2 ? KnownAttributeCode(k) : 0;
    if (code != 0) {
      out.push_back('\0');
      out.push_back(static_cast<char>(code));
    } else {
      PutString(&out, k);
    }
    PutString(&out, v);
  }
  out.push_back(static_cast<char>(e.data_kind));
  PutString(&out, e.data);
  return out;
}

Result<Event> DecodeEventRecord(std::string_view record, std::string_view id) {
  Event e;
  WS_TRY(DecodeEventRecordInto(record, id, &e));
  return e;
}

Status DecodeEventRecordInto(std::string_view record, std::string_view id, Event* out) {
  IntoEvent into{out};
  return ReadEventRecord(record, id, into);
}

Status CheckEventRecord(std::string_view record) {
  NoOutput none;
  return ReadEventRecord(record, "", none);
}

bool SameEventRecord(std::string_view stored, std::string_view id, std::string_view record) {
  if (stored == record) return true;
  // A record of an older version (an event stored before an upgrade) says
  // the same in other bytes: compare what it decodes to, re-encoded.
  if (stored.empty() || record.empty() || stored.front() == record.front()) return false;
  Result<Event> old = DecodeEventRecord(stored, id);
  return old.ok() && EncodeEventRecord(*old) == record;
}

}  // namespace ws
