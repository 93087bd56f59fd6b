// An RGB raster with anti-aliased shapes and bitmap-font text, enough to draw
// a chart into a PNG. Coordinates are continuous: pixel (i, j) covers the
// square [i, i+1) x [j, j+1), y grows downwards, and anything drawn outside
// the canvas (or with non-finite coordinates) is clipped away.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "tailor/report/chart.h"

namespace tailor::report {

enum class TextAnchor { start, middle, end };

class Canvas {
 public:
  Canvas(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  Rgb pixel(int x, int y) const;

  // Mixes c into the pixel by coverage alpha in [0, 1].
  void blend(int x, int y, Rgb c, double alpha);
  void fill_rect(double x0, double y0, double x1, double y1, Rgb c);
  // A stroke of the given width with round ends.
  void line(double x0, double y0, double x1, double y1, double width, Rgb c);
  void disc(double cx, double cy, double radius, Rgb c);
  // Text with its baseline at y; vertical text reads bottom to top (rotated
  // a quarter turn counter-clockwise about (x, y)).
  void text(double x, double y, std::string_view s, int scale, Rgb c,
            TextAnchor anchor = TextAnchor::start, bool vertical = false);

  std::vector<uint8_t> encode_png() const;  // 8-bit RGB, throws Error on failure

 private:
  int width_, height_;
  std::vector<uint8_t> rgb_;
};

}  // namespace tailor::report
