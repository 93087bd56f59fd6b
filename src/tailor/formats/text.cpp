#include "tailor/formats/text.h"

#include <cstdint>
#include <fmt/format.h>

namespace tailor {
namespace {

// Length of the UTF-8 sequence starting at s[i], or 0 when it is invalid.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  uint8_t c = byte(i);
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2, cp = c & 0x1fu;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3, cp = c & 0x0fu;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4, cp = c & 0x07u;
  } else {
    return 0;  // continuation byte, overlong 2-byte lead, or beyond U+10FFFF
  }
  if (s.size() - i < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    uint8_t d = byte(i + k);
    if ((d & 0xc0u) != 0x80u) return 0;
    cp = (cp << 6) | (d & 0x3fu);
  }
  if (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return 0;
  if (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) return 0;
  return len;
}

}  // namespace

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string escape_text(std::string_view s, size_t max_bytes) {
  std::string out;
  size_t i = 0;
  while (i < s.size() && i < max_bytes) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = utf8_sequence(s, i);
    if (n > 1) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default:
        if (n == 1 && c >= 0x20 && c != 0x7f)
          out += static_cast<char>(c);
        else
          out += fmt::format("\\x{:02x}", c);
    }
    ++i;
  }
  if (i < s.size()) out += "...";
  return out;
}

}  // namespace tailor
