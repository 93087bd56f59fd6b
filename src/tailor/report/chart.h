// Charts for reports (e.g. `tailor compare`: bits per weight against mean KL
// divergence). One description renders either as SVG text or as a PNG drawn
// by our own rasterizer and bitmap font, so a report needs no plotting tool.
//
// Points a chart cannot show are left out and counted in a note under the
// plot: non-finite coordinates, values <= 0 on a log axis, and magnitudes
// beyond 1e100 (or below 1e-100 on a log axis), which would overflow the axis
// arithmetic. A line series is broken where a point is left out. A chart with
// nothing to show still renders its frame, title, labels and "no data".
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tailor::report {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

struct ChartPoint {
  double x = 0, y = 0;
  std::string label;  // drawn next to the point when not empty
};

enum class SeriesStyle { points, line };

struct Series {
  std::string name;          // legend entry; an empty name stays out of the legend
  std::optional<Rgb> color;  // unset: palette_color(index of the series)
  SeriesStyle style = SeriesStyle::points;
  std::vector<ChartPoint> points;  // a line joins them in this order
};

struct Chart {
  std::string title, x_label, y_label;
  bool x_log = false, y_log = false;
  std::vector<Series> series;
};

// Where the plot lands in the picture, for callers (and tests) that need to
// find a point: map_x/map_y give pixel coordinates, y growing downwards.
struct AxisRange {
  double lo = 0, hi = 1;  // data values at the plot's edges
  bool log = false;
  std::vector<double> ticks;  // labelled values, lo..hi
};

struct ChartLayout {
  double left = 0, top = 0, right = 0, bottom = 0;  // plot area, whole pixels
  AxisRange x, y;
  int font_scale = 1;   // pixels per bitmap-font dot
  size_t left_out = 0;  // points not shown (see above)
  double map_x(double v) const;
  double map_y(double v) const;
};

// Sizes are pixels, 160x120 up to 8192x8192; others throw Error.
ChartLayout layout_chart(const Chart& chart, int width, int height);
std::string render_svg(const Chart& chart, int width, int height);
std::vector<uint8_t> render_png(const Chart& chart, int width, int height);
// Chooses the format by the extension (.svg or .png, any case) and replaces
// the file atomically.
void write_chart(const Chart& chart, const std::string& path, int width = 900, int height = 600);

Rgb palette_color(size_t index);

}  // namespace tailor::report
