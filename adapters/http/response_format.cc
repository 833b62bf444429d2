#include "adapters/http/response_format.h"

#include <charconv>
#include <string_view>

#include "platform/log.h"

namespace ws {
namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char c = a[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lower[i]) return false;
  }
  return true;
}

void AppendNumber(std::string* out, uint64_t n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  (void)ec;  // 24 digits hold any uint64_t
  out->append(buf, end);
}

}  // namespace

std::string_view HttpReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 406:
      return "Not Acceptable";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 411:
      return "Length Required";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 425:
      return "Too Early";
    case 428:
      return "Precondition Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    case 507:
      return "Insufficient Storage";
    default:
      return "Unknown";
  }
}

HttpResponse ProblemResponse(int status, std::string_view slug, std::string_view detail) {
  HttpResponse r;
  r.status = status;
  r.content_type = "application/problem+json";
  std::string& b = r.body;
  b.reserve(96 + slug.size() + detail.size());
  b += "{\"type\":\"https://waystation.dev/problems/";
  AppendJsonEscaped(&b, slug);
  b += "\",\"title\":\"";
  AppendJsonEscaped(&b, HttpReasonPhrase(status));
  b += "\",\"status\":";
  b += std::to_string(status);
  b += ",\"detail\":\"";
  AppendJsonEscaped(&b, detail);
  b += "\"}";
  return r;
}

namespace http_internal {

void AppendResponse(std::string* out, const HttpResponse& response, ConnectionHeader connection, bool head_request) {
  int status = response.status;
  if (status < 200 || status > 599) {
    WS_LOG_ERROR("http", "handler answered with an invalid status; sending 500", {{"status", std::to_string(status)}});
    status = 500;
  }
  const bool has_body = status != 204 && status != 304;
  out->append("HTTP/1.1 ");
  AppendNumber(out, static_cast<uint64_t>(status));
  out->push_back(' ');
  out->append(HttpReasonPhrase(status));
  out->append("\r\n");
  if (has_body) {
    if (!response.content_type.empty() && response.content_type.find_first_of("\r\n") == std::string::npos) {
      out->append("Content-Type: ");
      out->append(response.content_type);
      out->append("\r\n");
    }
    out->append("Content-Length: ");
    AppendNumber(out, response.body.size());
    out->append("\r\n");
  }
  for (const auto& [name, value] : response.headers) {
    if (name.empty() || name.find_first_of("\r\n: ") != std::string::npos ||
        value.find_first_of("\r\n") != std::string::npos || EqualsIgnoreCase(name, "content-length") ||
        EqualsIgnoreCase(name, "transfer-encoding") || EqualsIgnoreCase(name, "connection")) {
      WS_LOG_WARN("http", "dropped a response header the server cannot send", {{"name", name}});
      continue;
    }
    out->append(name);
    out->append(": ");
    out->append(value);
    out->append("\r\n");
  }
  if (connection == ConnectionHeader::kClose) out->append("Connection: close\r\n");
  if (connection == ConnectionHeader::kKeepAlive) out->append("Connection: keep-alive\r\n");
  out->append("\r\n");
  if (has_body && !head_request) out->append(response.body);
}

}  // namespace http_internal
}  // namespace ws
