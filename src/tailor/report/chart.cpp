#include "tailor/report/chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string_view>

#include "tailor/formats/text.h"
#include "tailor/report/bitmap_font.h"
#include "tailor/report/canvas.h"
#include "tailor/util/atomic_file.h"
#include "tailor/util/error.h"

namespace tailor::report {
namespace {

// Values beyond these magnitudes are left out: they would make axis
// arithmetic overflow or underflow.
constexpr double kLargest = 1e100, kSmallestLog = 1e-100;

constexpr Rgb kWhite{255, 255, 255}, kInk{17, 17, 17}, kAxis{34, 34, 34}, kTickText{68, 68, 68},
    kGrid{226, 226, 226}, kMinorGrid{242, 242, 242}, kFrame{200, 200, 200}, kNote{120, 120, 120};

bool axis_accepts(double v, bool log) {
  if (!std::isfinite(v) || std::fabs(v) > kLargest) return false;
  return !log || v >= kSmallestLog;
}

bool shown(const Chart& c, const ChartPoint& p) {
  return axis_accepts(p.x, c.x_log) && axis_accepts(p.y, c.y_log);
}

Rgb series_color(const Chart& c, size_t i) { return c.series[i].color.value_or(palette_color(i)); }

Rgb darker(Rgb c, double f) { return {uint8_t(c.r * f), uint8_t(c.g * f), uint8_t(c.b * f)}; }

// ---- axes ----

struct Axis {
  AxisRange range;
  std::vector<std::string> labels;  // one per tick
  std::vector<double> minor;        // unlabelled grid lines
};

// 1, 2 or 5 times a power of ten near raw.
double nice_step(double raw) {
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

std::string linear_label(double v, double step, double largest) {
  if (largest >= 1e7 || step < 1e-5) {
    // Enough significant digits to tell neighbouring ticks apart.
    int digits = int(std::ceil(std::log10(largest))) - int(std::floor(std::log10(step))) + 1;
    return fmt::format("{:.{}g}", v, std::clamp(digits, 1, 17));
  }
  int decimals = step >= 1 ? 0 : int(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, decimals);
}

Axis linear_axis(double lo, double hi, bool any, int target) {
  if (!any || std::max(std::fabs(lo), std::fabs(hi)) < 1e-200) {
    lo = any ? -1 : 0;
    hi = 1;
  }
  if (hi - lo <= 1e-9 * std::max(std::fabs(lo), std::fabs(hi))) {
    double pad = std::fabs(lo) * 0.1;  // all values (nearly) equal
    lo -= pad, hi += pad;
  }
  double pad = any ? (hi - lo) * 0.04 : 0;  // keep points off the frame
  lo -= pad, hi += pad;
  double step = nice_step((hi - lo) / target);
  Axis a;
  a.range.log = false;
  a.range.lo = std::floor(lo / step) * step;
  a.range.hi = std::ceil(hi / step) * step;
  long n = std::clamp(std::lround((a.range.hi - a.range.lo) / step), 1L, 100L);
  double largest = std::max(std::fabs(a.range.lo), std::fabs(a.range.hi));
  for (long i = 0; i <= n; ++i) {
    double v = a.range.lo + double(i) * step;
    if (std::fabs(v) < step * 1e-6) v = 0;  // no "-0.0"
    a.range.ticks.push_back(v);
    a.labels.push_back(linear_label(v, step, largest));
  }
  return a;
}

// m x 10^e written as "me" + exponent ("1e-4", "5e-3"), plain for e = 0.
std::string log_label(int m, int e) {
  return e == 0 ? fmt::format("{}", m) : fmt::format("{}e{}", m, e);
}

// Whole decades from below the smallest value to above the largest; a tick
// every k decades so at most about eight are labelled.
Axis log_axis(double lo, double hi, bool any) {
  double a = any ? std::log10(lo) : -3, b = any ? std::log10(hi) : 0;
  int ea = int(std::floor(a - 0.05)), eb = int(std::ceil(b + 0.05));
  if (eb <= ea) eb = ea + 1;
  int k = std::max(1, (eb - ea + 7) / 8);
  auto floor_div = [](int v, int d) { return v >= 0 ? v / d : -((-v + d - 1) / d); };
  ea = floor_div(ea, k) * k;
  eb = -floor_div(-eb, k) * k;
  Axis ax;
  ax.range.log = true;
  ax.range.lo = std::pow(10.0, ea);
  ax.range.hi = std::pow(10.0, eb);
  // One or two decades give too few labels: 2 and 5 times each decade get one too.
  const bool label_2_5 = eb - ea <= 2;
  for (int e = ea; e <= eb; e += k) {
    ax.range.ticks.push_back(std::pow(10.0, e));
    ax.labels.push_back(log_label(1, e));
    if (e == eb) break;
    for (int m = 2; m <= 9 && k == 1 && eb - ea <= 6; ++m) {
      if (label_2_5 && (m == 2 || m == 5)) {
        ax.range.ticks.push_back(m * std::pow(10.0, e));
        ax.labels.push_back(log_label(m, e));
      } else {
        ax.minor.push_back(m * std::pow(10.0, e));
      }
    }
  }
  return ax;
}

Axis make_axis(const Chart& c, bool is_x, int target) {
  bool log = is_x ? c.x_log : c.y_log;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  bool any = false;
  for (const Series& s : c.series)
    for (const ChartPoint& p : s.points)
      if (shown(c, p)) {
        double v = is_x ? p.x : p.y;
        lo = std::min(lo, v), hi = std::max(hi, v), any = true;
      }
  return log ? log_axis(lo, hi, any) : linear_axis(lo, hi, any, target);
}

double axis_pos(const AxisRange& a, double v) {
  if (a.log) return (std::log10(v) - std::log10(a.lo)) / (std::log10(a.hi) - std::log10(a.lo));
  return (v - a.lo) / (a.hi - a.lo);
}

// ---- scene: what both renderers draw ----

enum class Kind { rect, line, polyline, circle, text };

struct Shape {
  Kind kind = Kind::rect;
  std::string cls;                        // SVG class: what the shape stands for
  std::string attrs;                      // extra SVG attributes, already escaped
  std::string tooltip;                    // SVG <title>
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // rect corners, line ends, circle centre (x0, y0)
  double size = 1;                        // line width, circle radius
  Rgb color;                              // fill, or stroke of lines
  std::optional<Rgb> outline;             // rect border, ring around a circle
  double outline_width = 1;
  std::vector<std::pair<double, double>> pts;  // polyline
  std::string text;
  int scale = 1;
  TextAnchor anchor = TextAnchor::start;
  bool vertical = false;
};

struct Box {
  double x0, y0, x1, y1;
};

double overlap(const Box& a, const Box& b) {
  double w = std::min(a.x1, b.x1) - std::max(a.x0, b.x0);
  double h = std::min(a.y1, b.y1) - std::max(a.y0, b.y0);
  return w > 0 && h > 0 ? w * h : 0;
}

// Whether the segment crosses the box (Liang-Barsky clipping).
bool segment_hits(const Box& b, double x0, double y0, double x1, double y1) {
  double t0 = 0, t1 = 1, dx = x1 - x0, dy = y1 - y0;
  auto clip = [&](double p, double q) {
    if (p == 0) return q >= 0;
    double r = q / p;
    if (p < 0) {
      if (r > t1) return false;
      t0 = std::max(t0, r);
    } else {
      if (r < t0) return false;
      t1 = std::min(t1, r);
    }
    return true;
  };
  return clip(-dx, x0 - b.x0) && clip(dx, b.x1 - x0) && clip(-dy, y0 - b.y0) && clip(dy, b.y1 - y0);
}

struct Scene {
  ChartLayout layout;
  std::vector<Shape> shapes;
};

// The text cut to at most max_glyphs characters, ending in "..." when cut.
std::string fit_text(const std::string& t, int max_glyphs) {
  if (glyph_count(t) <= max_glyphs) return t;
  int keep = std::max(0, max_glyphs - 3);
  size_t end = 0;
  for (int k = 0; k < keep && end < t.size(); ++k) end += char_bytes(t, end);
  return t.substr(0, end) + "...";
}

void check_size(int width, int height) {
  if (width < 160 || height < 120 || width > 8192 || height > 8192)
    fail("chart: size {}x{} is outside 160x120 .. 8192x8192", width, height);
}

struct PlacedPoint {
  double px, py;
  size_t series, index;
};

Scene build_scene(const Chart& c, int W, int H) {
  check_size(W, H);
  using M = FontMetrics;
  Scene sc;
  ChartLayout& L = sc.layout;
  const int s = std::clamp(int(std::lround(std::min(double(W), 1.5 * H) / 400.0)), 1, 4);
  L.font_scale = s;
  const double line_h = (M::ascent + M::descent) * s, pad = 8.0 * s, tick = 4.0 * s;
  auto text_w = [&](std::string_view t, int scale) {
    int n = glyph_count(t);
    return n ? double(n * M::advance - 1) * scale : 0.0;
  };
  // The title is a size larger when it fits, and cut short when nothing fits.
  int ts = s + 1;
  while (ts > 1 && text_w(c.title, ts) > W - 2 * pad) --ts;
  const std::string title = fit_text(c.title, int((W - 2 * pad) / (M::advance * ts)));

  for (const Series& ser : c.series)
    for (const ChartPoint& p : ser.points) L.left_out += !shown(c, p);

  Axis xa = make_axis(c, true, std::clamp(W / (90 * s), 2, 10));
  Axis ya = make_axis(c, false, std::clamp(H / (70 * s), 2, 8));
  L.x = xa.range;
  L.y = ya.range;

  // Margins from what stands around the plot.
  double widest_y = 0;
  for (const auto& t : ya.labels) widest_y = std::max(widest_y, text_w(t, s));
  double left = pad + (c.y_label.empty() ? 0 : line_h + 4 * s) + widest_y + 3 * s + tick;
  left = std::min(left, W / 3.0);
  double last_x = xa.labels.empty() ? 0 : text_w(xa.labels.back(), s);
  double right = W - pad - std::max(4.0 * s, last_x / 2);
  double top = pad + (c.title.empty() ? 0 : (M::ascent + M::descent) * ts + 4 * s) + 4 * s;
  double note_h = L.left_out ? line_h + 2 * s : 0;
  double bottom =
      H - pad - note_h - (c.x_label.empty() ? 0 : line_h + 4 * s) - line_h - 3 * s - tick;
  L.left = std::round(left), L.right = std::round(right);
  L.top = std::round(top), L.bottom = std::round(bottom);

  auto add = [&](Shape sh) { sc.shapes.push_back(std::move(sh)); };
  auto text = [&](std::string cls, double x, double y, std::string t, int scale, Rgb col,
                  TextAnchor anchor = TextAnchor::start, bool vertical = false) {
    Shape sh;
    sh.kind = Kind::text, sh.cls = std::move(cls), sh.x0 = x, sh.y0 = y, sh.text = std::move(t);
    sh.scale = scale, sh.color = col, sh.anchor = anchor, sh.vertical = vertical;
    add(std::move(sh));
  };
  auto line = [&](std::string cls, double x0, double y0, double x1, double y1, double w, Rgb col,
                  std::string attrs = {}) {
    Shape sh;
    sh.kind = Kind::line, sh.cls = std::move(cls), sh.attrs = std::move(attrs);
    sh.x0 = x0, sh.y0 = y0, sh.x1 = x1, sh.y1 = y1, sh.size = w, sh.color = col;
    add(std::move(sh));
  };
  auto value_attr = [](double v) { return fmt::format("data-value=\"{}\"", v); };

  Shape bg;
  bg.kind = Kind::rect, bg.cls = "background", bg.x1 = W, bg.y1 = H, bg.color = kWhite;
  add(bg);

  // Grid, minor lines first so the labelled ones stay on top.
  for (double v : ya.minor) {
    double y = L.map_y(v);
    line("grid-minor-y", L.left, y, L.right, y, 1, kMinorGrid, value_attr(v));
  }
  for (double v : xa.minor) {
    double x = L.map_x(v);
    line("grid-minor-x", x, L.top, x, L.bottom, 1, kMinorGrid, value_attr(v));
  }
  const double axis_w = s >= 2 ? 2 : 1;
  for (size_t i = 0; i < ya.range.ticks.size(); ++i) {
    double v = ya.range.ticks[i], y = L.map_y(v);
    line("grid-y", L.left, y, L.right, y, 1, kGrid, value_attr(v));
    line("tick-y", L.left - tick, y, L.left, y, axis_w, kAxis);
    text("tick-label-y", L.left - tick - 3 * s, y + M::ascent * s / 2.0, ya.labels[i], s, kTickText,
         TextAnchor::end);
  }
  for (size_t i = 0; i < xa.range.ticks.size(); ++i) {
    double v = xa.range.ticks[i], x = L.map_x(v);
    line("grid-x", x, L.top, x, L.bottom, 1, kGrid, value_attr(v));
    line("tick-x", x, L.bottom, x, L.bottom + tick, axis_w, kAxis);
    text("tick-label-x", x, L.bottom + tick + 3 * s + M::ascent * s, xa.labels[i], s, kTickText,
         TextAnchor::middle);
  }
  line("frame", L.left, L.top, L.right, L.top, 1, kFrame);
  line("frame", L.right, L.top, L.right, L.bottom, 1, kFrame);
  line("axis-x", L.left, L.bottom, L.right, L.bottom, axis_w, kAxis);
  line("axis-y", L.left, L.top, L.left, L.bottom, axis_w, kAxis);

  // Data positions, and the obstacles labels must avoid.
  const double radius = 2.0 * s + 1.5, ring = s >= 2 ? 1.5 : 1.0, stroke = std::max(1.5, 1.0 * s);
  std::vector<PlacedPoint> placed;
  std::vector<Box> obstacles;
  std::vector<std::array<double, 4>> segments;
  for (size_t si = 0; si < c.series.size(); ++si) {
    const Series& ser = c.series[si];
    bool joined = false;  // whether the previous point was shown, so a line reaches this one
    for (size_t pi = 0; pi < ser.points.size(); ++pi) {
      if (!shown(c, ser.points[pi])) {
        joined = false;
        continue;
      }
      PlacedPoint p{L.map_x(ser.points[pi].x), L.map_y(ser.points[pi].y), si, pi};
      double e = radius + ring;
      obstacles.push_back({p.px - e, p.py - e, p.px + e, p.py + e});
      if (ser.style == SeriesStyle::line && joined)
        segments.push_back({placed.back().px, placed.back().py, p.px, p.py});
      placed.push_back(p);
      joined = true;
    }
  }

  // Legend in the plot corner with the fewest points under it.
  std::vector<size_t> entries;
  double widest_name = 0;
  for (size_t si = 0; si < c.series.size(); ++si)
    if (!c.series[si].name.empty()) {
      entries.push_back(si);
      widest_name = std::max(widest_name, text_w(c.series[si].name, s));
    }
  const double entry_h = line_h + 3 * s, swatch = 16.0 * s, lpad = 5.0 * s;
  if (!entries.empty()) {
    double w = lpad + swatch + lpad + widest_name + lpad, h = lpad * 2 + entry_h * entries.size();
    double inset = 6.0 * s;
    Box corners[4] = {
        {L.right - inset - w, L.top + inset, L.right - inset, L.top + inset + h},
        {L.left + inset, L.top + inset, L.left + inset + w, L.top + inset + h},
        {L.right - inset - w, L.bottom - inset - h, L.right - inset, L.bottom - inset},
        {L.left + inset, L.bottom - inset - h, L.left + inset + w, L.bottom - inset}};
    Box best = corners[0];
    double best_cost = std::numeric_limits<double>::infinity();
    for (const Box& b : corners) {
      double cost = 0;
      for (const Box& o : obstacles) cost += overlap(b, o) > 0;
      for (const auto& g : segments) cost += 0.5 * segment_hits(b, g[0], g[1], g[2], g[3]);
      if (cost < best_cost) best_cost = cost, best = b;
    }
    obstacles.push_back(best);
    Shape box;
    box.kind = Kind::rect, box.cls = "legend", box.x0 = best.x0, box.y0 = best.y0;
    box.x1 = best.x1, box.y1 = best.y1, box.color = kWhite, box.outline = kFrame;
    add(box);
    for (size_t k = 0; k < entries.size(); ++k) {
      const Series& ser = c.series[entries[k]];
      Rgb col = series_color(c, entries[k]);
      double cy = best.y0 + lpad + entry_h * (k + 0.5), cx = best.x0 + lpad + swatch / 2;
      if (ser.style == SeriesStyle::line)
        line("legend-line", best.x0 + lpad, cy, best.x0 + lpad + swatch, cy, stroke, col);
      Shape dot;
      dot.kind = Kind::circle, dot.cls = "legend-marker", dot.x0 = cx, dot.y0 = cy;
      dot.size = radius, dot.color = col, dot.outline = kWhite, dot.outline_width = ring;
      add(dot);
      text("legend-label", best.x0 + lpad + swatch + lpad, cy + M::ascent * s / 2.0, ser.name, s,
           kInk);
    }
  }

  // Series: lines under markers, markers under labels.
  for (size_t si = 0; si < c.series.size(); ++si) {
    const Series& ser = c.series[si];
    if (ser.style != SeriesStyle::line) continue;
    Shape pl;
    pl.kind = Kind::polyline, pl.cls = "series-line", pl.size = stroke;
    pl.color = series_color(c, si);
    pl.attrs = fmt::format("data-series=\"{}\"", si);
    auto flush = [&] {
      if (pl.pts.size() >= 2) add(pl);
      pl.pts.clear();
    };
    for (const ChartPoint& p : ser.points) {
      if (!shown(c, p)) {
        flush();  // a left-out point breaks the line
        continue;
      }
      pl.pts.push_back({L.map_x(p.x), L.map_y(p.y)});
    }
    flush();
  }
  for (const PlacedPoint& p : placed) {
    const ChartPoint& pt = c.series[p.series].points[p.index];
    Shape dot;
    dot.kind = Kind::circle, dot.cls = "point", dot.x0 = p.px, dot.y0 = p.py, dot.size = radius;
    dot.color = series_color(c, p.series), dot.outline = kWhite, dot.outline_width = ring;
    dot.attrs = fmt::format("data-series=\"{}\" data-x=\"{}\" data-y=\"{}\"", p.series, pt.x, pt.y);
    std::string who = pt.label.empty() ? c.series[p.series].name : pt.label;
    dot.tooltip = fmt::format("{}{}x={:.4g}, y={:.4g}", who, who.empty() ? "" : ": ", pt.x, pt.y);
    add(std::move(dot));
  }

  // Point labels: the first free spot around the point, else the least crowded.
  const Box plot{L.left, L.top, L.right, L.bottom};
  const double cap = M::ascent * s, desc = M::descent * s, gap = radius + ring + 2.0 * s;
  for (const PlacedPoint& p : placed) {
    const ChartPoint& pt = c.series[p.series].points[p.index];
    if (pt.label.empty()) continue;
    double w = text_w(pt.label, s);
    // (x of the text's left end, baseline)
    const std::pair<double, double> spots[] = {
        {p.px + gap, p.py + cap / 2},      {p.px + radius, p.py - gap},
        {p.px + radius, p.py + gap + cap}, {p.px - gap - w, p.py + cap / 2},
        {p.px - radius - w, p.py - gap},   {p.px - radius - w, p.py + gap + cap},
        {p.px - w / 2, p.py - gap},        {p.px - w / 2, p.py + gap + cap}};
    Box best{};
    double best_cost = std::numeric_limits<double>::infinity();
    for (const auto& [x, base] : spots) {
      Box b{x, base - cap, x + w, base + desc};
      double inside = overlap(b, plot), area = (b.x1 - b.x0) * (b.y1 - b.y0);
      double cost = 1000.0 * s * s * (area - inside);
      for (const Box& o : obstacles) cost += overlap(b, o);
      for (const auto& g : segments) cost += 40.0 * s * s * segment_hits(b, g[0], g[1], g[2], g[3]);
      if (cost < best_cost) best_cost = cost, best = b;
      if (cost == 0) break;
    }
    obstacles.push_back(best);
    text("point-label", best.x0, best.y0 + cap, pt.label, s,
         darker(series_color(c, p.series), 0.7));
  }

  // Title and axis names.
  if (!title.empty())
    text("title", W / 2.0, pad + M::ascent * ts, title, ts, kInk, TextAnchor::middle);
  if (!c.x_label.empty())
    text("x-label", (L.left + L.right) / 2, H - pad - note_h - desc,
         fit_text(c.x_label, int((W - 2 * pad) / (M::advance * s))), s, kInk, TextAnchor::middle);
  if (!c.y_label.empty())
    text("y-label", pad + cap, (L.top + L.bottom) / 2,
         fit_text(c.y_label, int((H - 2 * pad) / (M::advance * s))), s, kInk, TextAnchor::middle,
         true);
  if (L.left_out)
    text("note", pad, H - pad - desc,
         fit_text(fmt::format("{} point{} left out (NaN, inf, or <= 0 on log axis)", L.left_out,
                              L.left_out == 1 ? "" : "s"),
                  int((W - 2 * pad) / (M::advance * s))),
         s, kNote);
  if (placed.empty())
    text("no-data", (L.left + L.right) / 2, (L.top + L.bottom + cap) / 2, "no data", s, kNote,
         TextAnchor::middle);
  return sc;
}

// ---- SVG ----

std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  // XML must be valid UTF-8: text that is not keeps only its ASCII.
  const bool utf8 = valid_utf8(s);
  for (char ch : s) {
    if (!utf8 && static_cast<unsigned char>(ch) >= 0x80) {
      out += '?';
      continue;
    }
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(ch) < 0x20 && ch != '\t' && ch != '\n')
          out += ' ';
        else
          out += ch;
    }
  }
  return out;
}

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b); }

std::string shape_svg(const Shape& sh) {
  std::string head = fmt::format("class=\"{}\"{}{}", sh.cls, sh.attrs.empty() ? "" : " ", sh.attrs);
  switch (sh.kind) {
    case Kind::rect: {
      std::string border =
          sh.outline ? fmt::format(" stroke=\"{}\" stroke-width=\"1\"", hex(*sh.outline)) : "";
      return fmt::format(
          "<rect {} x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"{}/>\n",
          head, sh.x0, sh.y0, sh.x1 - sh.x0, sh.y1 - sh.y0, hex(sh.color), border);
    }
    case Kind::line:
      return fmt::format(
          "<line {} x1=\"{:.2f}\" y1=\"{:.2f}\" x2=\"{:.2f}\" y2=\"{:.2f}\" stroke=\"{}\" "
          "stroke-width=\"{}\"/>\n",
          head, sh.x0, sh.y0, sh.x1, sh.y1, hex(sh.color), sh.size);
    case Kind::polyline: {
      std::string pts;
      for (const auto& [x, y] : sh.pts)
        pts += fmt::format("{}{:.2f},{:.2f}", pts.empty() ? "" : " ", x, y);
      return fmt::format(
          "<polyline {} points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" "
          "stroke-linejoin=\"round\" stroke-linecap=\"round\"/>\n",
          head, pts, hex(sh.color), sh.size);
    }
    case Kind::circle: {
      // The ring lies outside the fill, as the rasterizer draws it.
      double w = sh.outline ? sh.outline_width : 0;
      std::string ring =
          sh.outline ? fmt::format(" stroke=\"{}\" stroke-width=\"{}\"", hex(*sh.outline), w) : "";
      std::string title =
          sh.tooltip.empty() ? "" : fmt::format("<title>{}</title>", xml_escape(sh.tooltip));
      return fmt::format(
          "<circle {} cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"{:.2f}\" fill=\"{}\"{}>{}</circle>\n", head,
          sh.x0, sh.y0, sh.size + w / 2, hex(sh.color), ring, title);
    }
    case Kind::text: {
      const char* anchor = sh.anchor == TextAnchor::start    ? "start"
                           : sh.anchor == TextAnchor::middle ? "middle"
                                                             : "end";
      std::string turn =
          sh.vertical ? fmt::format(" transform=\"rotate(-90 {:.2f} {:.2f})\"", sh.x0, sh.y0) : "";
      // A monospace font 10 units high advances about 6 units a character,
      // the width the layout measured with the bitmap font.
      return fmt::format(
          "<text {} x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"{}\" fill=\"{}\" "
          "text-anchor=\"{}\"{}>{}</text>\n",
          head, sh.x0, sh.y0, 10 * sh.scale, hex(sh.color), anchor, turn, xml_escape(sh.text));
    }
  }
  return {};
}

// Axis-parallel strokes land on whole pixels so grid lines stay crisp.
double snap(double v, double width) {
  return std::lround(width) % 2 ? std::floor(v) + 0.5 : std::round(v);
}

void draw(Canvas& cv, const Shape& sh) {
  switch (sh.kind) {
    case Kind::rect:
      cv.fill_rect(sh.x0, sh.y0, sh.x1, sh.y1, sh.color);
      if (sh.outline) {
        double x0 = snap(sh.x0, 1), y0 = snap(sh.y0, 1), x1 = snap(sh.x1, 1), y1 = snap(sh.y1, 1);
        cv.line(x0, y0, x1, y0, 1, *sh.outline);
        cv.line(x1, y0, x1, y1, 1, *sh.outline);
        cv.line(x1, y1, x0, y1, 1, *sh.outline);
        cv.line(x0, y1, x0, y0, 1, *sh.outline);
      }
      break;
    case Kind::line: {
      double x0 = sh.x0, y0 = sh.y0, x1 = sh.x1, y1 = sh.y1;
      if (x0 == x1) x0 = x1 = snap(x0, sh.size);
      if (y0 == y1) y0 = y1 = snap(y0, sh.size);
      cv.line(x0, y0, x1, y1, sh.size, sh.color);
      break;
    }
    case Kind::polyline:
      for (size_t i = 1; i < sh.pts.size(); ++i)
        cv.line(sh.pts[i - 1].first, sh.pts[i - 1].second, sh.pts[i].first, sh.pts[i].second,
                sh.size, sh.color);
      break;
    case Kind::circle:
      if (sh.outline) cv.disc(sh.x0, sh.y0, sh.size + sh.outline_width, *sh.outline);
      cv.disc(sh.x0, sh.y0, sh.size, sh.color);
      break;
    case Kind::text:
      cv.text(sh.x0, sh.y0, sh.text, sh.scale, sh.color, sh.anchor, sh.vertical);
      break;
  }
}

}  // namespace

double ChartLayout::map_x(double v) const { return left + axis_pos(x, v) * (right - left); }
double ChartLayout::map_y(double v) const { return bottom - axis_pos(y, v) * (bottom - top); }

Rgb palette_color(size_t index) {
  // Tableau's ten categorical colours: distinct, and readable on white.
  static constexpr Rgb kPalette[] = {
      {31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
      {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
  return kPalette[index % std::size(kPalette)];
}

ChartLayout layout_chart(const Chart& chart, int width, int height) {
  return build_scene(chart, width, height).layout;
}

std::string render_svg(const Chart& chart, int width, int height) {
  Scene sc = build_scene(chart, width, height);
  std::string out = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\" "
      "font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\">\n",
      width, height);
  if (!chart.title.empty()) out += fmt::format("<title>{}</title>\n", xml_escape(chart.title));
  for (const Shape& sh : sc.shapes) out += shape_svg(sh);
  out += "</svg>\n";
  return out;
}

std::vector<uint8_t> render_png(const Chart& chart, int width, int height) {
  Scene sc = build_scene(chart, width, height);
  Canvas cv(width, height, kWhite);
  for (const Shape& sh : sc.shapes) draw(cv, sh);
  return cv.encode_png();
}

void write_chart(const Chart& chart, const std::string& path, int width, int height) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return std::tolower(ch); });
  if (ext != ".svg" && ext != ".png") fail("{}: unknown chart format (use .svg or .png)", path);
  // Render before opening, so a chart that cannot be drawn leaves no file.
  std::vector<uint8_t> bytes;
  if (ext == ".svg") {
    std::string svg = render_svg(chart, width, height);
    bytes.assign(svg.begin(), svg.end());
  } else {
    bytes = render_png(chart, width, height);
  }
  AtomicFile out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace tailor::report
