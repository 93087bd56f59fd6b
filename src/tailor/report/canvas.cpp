#include "tailor/report/canvas.h"

#include <png.h>

#include <algorithm>
#include <cmath>

#include "tailor/report/bitmap_font.h"
#include "tailor/util/error.h"

namespace tailor::report {
namespace {

// Pixel index range [lo, hi) that a continuous interval [a, b] touches, clipped to [0, n).
std::pair<int, int> pixel_span(double a, double b, int n) {
  if (!(a <= b)) return {0, 0};  // also false for NaN
  double lo = std::floor(std::max(a, 0.0)), hi = std::ceil(std::min(b, double(n)));
  if (hi <= lo) return {0, 0};
  return {int(lo), int(hi)};
}

double clamp01(double v) { return v < 0 ? 0 : (v > 1 ? 1 : v); }

}  // namespace

Canvas::Canvas(int width, int height, Rgb background)
    : width_(std::max(width, 0)), height_(std::max(height, 0)) {
  rgb_.resize(size_t(width_) * size_t(height_) * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = background.r;
    rgb_[i + 1] = background.g;
    rgb_[i + 2] = background.b;
  }
}

Rgb Canvas::pixel(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return {};
  const uint8_t* p = &rgb_[(size_t(y) * size_t(width_) + size_t(x)) * 3];
  return {p[0], p[1], p[2]};
}

void Canvas::blend(int x, int y, Rgb c, double alpha) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_ || !(alpha > 0)) return;
  uint8_t* p = &rgb_[(size_t(y) * size_t(width_) + size_t(x)) * 3];
  if (alpha >= 1) {
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
    return;
  }
  auto mix = [alpha](uint8_t old, uint8_t add) {
    return uint8_t(std::lround(old + (double(add) - old) * alpha));
  };
  p[0] = mix(p[0], c.r), p[1] = mix(p[1], c.g), p[2] = mix(p[2], c.b);
}

void Canvas::fill_rect(double x0, double y0, double x1, double y1, Rgb c) {
  if (x1 < x0) std::swap(x0, x1);
  if (y1 < y0) std::swap(y0, y1);
  auto [ia, ib] = pixel_span(x0, x1, width_);
  auto [ja, jb] = pixel_span(y0, y1, height_);
  // Coverage is the overlap area of each pixel with the rectangle.
  for (int j = ja; j < jb; ++j) {
    double cy = std::min(y1, j + 1.0) - std::max(y0, double(j));
    for (int i = ia; i < ib; ++i) {
      double cx = std::min(x1, i + 1.0) - std::max(x0, double(i));
      blend(i, j, c, clamp01(cx) * clamp01(cy));
    }
  }
}

void Canvas::line(double x0, double y0, double x1, double y1, double width, Rgb c) {
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1) ||
      !(width > 0))
    return;
  double half = width / 2, reach = half + 1;
  auto [ia, ib] = pixel_span(std::min(x0, x1) - reach, std::max(x0, x1) + reach, width_);
  auto [ja, jb] = pixel_span(std::min(y0, y1) - reach, std::max(y0, y1) + reach, height_);
  double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
  // Coverage falls off linearly over one pixel around the stroke's edge,
  // measured from each pixel's centre to the nearest point of the segment.
  for (int j = ja; j < jb; ++j) {
    for (int i = ia; i < ib; ++i) {
      double px = i + 0.5 - x0, py = j + 0.5 - y0;
      double t = len2 > 0 ? std::clamp((px * dx + py * dy) / len2, 0.0, 1.0) : 0.0;
      double ex = px - t * dx, ey = py - t * dy;
      blend(i, j, c, clamp01(half + 0.5 - std::sqrt(ex * ex + ey * ey)));
    }
  }
}

void Canvas::disc(double cx, double cy, double radius, Rgb c) {
  if (!std::isfinite(cx) || !std::isfinite(cy) || !(radius > 0)) return;
  auto [ia, ib] = pixel_span(cx - radius - 1, cx + radius + 1, width_);
  auto [ja, jb] = pixel_span(cy - radius - 1, cy + radius + 1, height_);
  for (int j = ja; j < jb; ++j)
    for (int i = ia; i < ib; ++i)
      blend(i, j, c, clamp01(radius + 0.5 - std::hypot(i + 0.5 - cx, j + 0.5 - cy)));
}

void Canvas::text(double x, double y, std::string_view s, int scale, Rgb c, TextAnchor anchor,
                  bool vertical) {
  if (!std::isfinite(x) || !std::isfinite(y) || scale < 1) return;
  using M = FontMetrics;
  double len = double(glyph_count(s) * M::advance - 1) * scale;
  double shift = anchor == TextAnchor::start ? 0 : anchor == TextAnchor::middle ? len / 2 : len;
  // Whole pixels keep the glyph blocks crisp. u runs along the text, v down
  // across it from the top of the glyph cell.
  long along = std::lround(vertical ? y + shift : x - shift);
  long base = std::lround(vertical ? x : y);
  auto put = [&](long u, long v) {
    if (vertical)
      fill_rect(double(base - M::ascent * scale + v), double(along - u - scale),
                double(base - M::ascent * scale + v + scale), double(along - u), c);
    else
      fill_rect(double(along + u), double(base - M::ascent * scale + v), double(along + u + scale),
                double(base - M::ascent * scale + v + scale), c);
  };
  long pen = 0;
  for_each_glyph(s, [&](unsigned char g) {
    const uint8_t* rows = glyph_rows(g);
    for (int r = 0; r < M::glyph_rows; ++r)
      for (int col = 0; col < M::glyph_width; ++col)
        if (rows[r] & (1u << (M::glyph_width - 1 - col))) put(pen + col * scale, long(r) * scale);
    pen += M::advance * scale;
  });
}

std::vector<uint8_t> Canvas::encode_png() const {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = png_uint_32(width_);
  image.height = png_uint_32(height_);
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  // The first call only measures; the second writes.
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, rgb_.data(), 0, nullptr))
    fail("chart PNG: {}", image.message);
  std::vector<uint8_t> out(size);
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, rgb_.data(), 0, nullptr))
    fail("chart PNG: {}", image.message);
  out.resize(size);
  return out;
}

}  // namespace tailor::report
