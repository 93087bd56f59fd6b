// A fixed-width bitmap font for printable ASCII, so charts can carry text in
// a PNG without a font library. Each glyph is 5 columns by 9 rows: rows 0..6
// stand above the baseline, rows 7..8 hold descenders (g, j, p, q, y, _ and
// the comma's tail). Drawn at an integer scale, one glyph pixel becomes a
// scale x scale block.
#pragma once
#include <cstdint>
#include <string_view>

namespace tailor::report {

struct FontMetrics {
  static constexpr int glyph_width = 5;
  static constexpr int glyph_rows = 9;
  static constexpr int advance = 6;  // glyph plus one blank column
  static constexpr int ascent = 7;   // rows above the baseline
  static constexpr int descent = 2;  // rows below it
};

// Row bits of the glyph for c (bit 4 = leftmost column); bytes outside
// printable ASCII get the '?' glyph.
const uint8_t* glyph_rows(unsigned char c);

// Bytes of the character starting at s[i]: one for ASCII, else a lead byte
// (or stray byte) with the continuation bytes after it.
inline size_t char_bytes(std::string_view s, size_t i) {
  size_t j = i + 1;
  if (static_cast<unsigned char>(s[i]) >= 0x80)
    while (j < s.size() && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) ++j;
  return j - i;
}

// Glyph codes of a UTF-8 string: ASCII as is, every other character as one
// '?', so the width of a label is its character count.
template <typename F>
void for_each_glyph(std::string_view s, F&& f) {
  for (size_t i = 0; i < s.size(); i += char_bytes(s, i)) {
    auto c = static_cast<unsigned char>(s[i]);
    f(c < 0x80 ? c : static_cast<unsigned char>('?'));
  }
}

inline int glyph_count(std::string_view s) {
  int n = 0;
  for_each_glyph(s, [&](unsigned char) { ++n; });
  return n;
}

}  // namespace tailor::report
