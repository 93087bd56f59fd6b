// Text checks shared by the file-format readers: names and keys must be valid
// UTF-8, and anything printed from a file is escaped so that hostile bytes can
// never corrupt a terminal or a one-line error message.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace tailor {

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s);

// Valid UTF-8 printable text is kept; control characters, quotes, backslashes
// and invalid bytes become escapes (\n, \", \\, \xNN). At most max_bytes of
// input are rendered; longer text ends in "...".
std::string escape_text(std::string_view s, size_t max_bytes = 256);

}  // namespace tailor
