// Charts: the SVG parses as XML and puts every point where the axes' own grid
// lines say it belongs (log mapping worked out here, not taken from the
// library); the PNG decodes with libpng and shows the series colours at the
// points, dark axes, white empty space and exactly the title's glyph dots.
#include <gtest/gtest.h>
#include <png.h>

#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "format_test_util.h"
#include "tailor/formats/text.h"
#include "tailor/report/bitmap_font.h"
#include "tailor/report/chart.h"

namespace tailor::report {
namespace {

namespace fs = std::filesystem;

constexpr Rgb kGrey{127, 127, 127}, kBlue{31, 119, 180}, kWhite{255, 255, 255};

// The chart `tailor compare` draws: uniform recipes as points, plans as a line.
Chart bpw_chart() {
  Chart c;
  c.title = "Bits per weight vs. mean KL divergence";
  c.x_label = "bits per weight";
  c.y_label = "mean KL divergence";
  c.y_log = true;
  Series base{"uniform recipes", kGrey, SeriesStyle::points, {}};
  base.points = {{8.5, 0.00045, "Q8_0"},
                 {6.5625, 0.0021, "Q6_K"},
                 {4.85, 0.0185, "Q4_K_M"},
                 {3.91, 0.062, "Q3_K_M"},
                 {2.96, 0.31, "Q2_K"}};
  Series plan{"Tailor plans", kBlue, SeriesStyle::line, {}};
  plan.points = {{2.8, 0.19, "2.8"},
                 {3.5, 0.048, "3.5"},
                 {4.25, 0.016, "4.25"},
                 {5.0, 0.0068, "5.0"},
                 {6.0, 0.0019, "6.0"}};
  c.series = {base, plan};
  return c;
}

// ---- a small XML reader, enough to check the SVG's structure ----

struct Element {
  std::string name;
  std::map<std::string, std::string> attrs;
  std::string text;  // character data directly inside, entities decoded
};

std::string decode_entities(const std::string& s, std::string* error) {
  static const std::map<std::string, char> kEntities = {
      {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}};
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    auto it =
        semi == std::string::npos ? kEntities.end() : kEntities.find(s.substr(i + 1, semi - i - 1));
    if (it == kEntities.end()) {
      *error = "bad entity near: " + s.substr(i, 12);
      return out;
    }
    out += it->second;
    i = semi;
  }
  return out;
}

// Parses the document, checking tags balance and attributes are quoted;
// returns the elements in document order, or sets error.
std::vector<Element> parse_xml(const std::string& doc, std::string* error) {
  std::vector<Element> elements;
  std::vector<size_t> open;
  size_t i = 0;
  while (i < doc.size() && error->empty()) {
    if (doc[i] != '<') {
      size_t lt = doc.find('<', i);
      std::string chunk = doc.substr(i, lt == std::string::npos ? std::string::npos : lt - i);
      std::string text = decode_entities(chunk, error);
      if (!open.empty())
        elements[open.back()].text += text;
      else if (text.find_first_not_of(" \n\t") != std::string::npos)
        *error = "text outside the root";
      if (lt == std::string::npos) break;
      i = lt;
      continue;
    }
    if (doc.compare(i, 2, "<?") == 0) {
      size_t end = doc.find("?>", i);
      if (end == std::string::npos || i != 0) *error = "bad declaration";
      i = end + 2;
      continue;
    }
    size_t gt = doc.find('>', i);
    if (gt == std::string::npos) {
      *error = "unterminated tag";
      break;
    }
    std::string tag = doc.substr(i + 1, gt - i - 1);
    i = gt + 1;
    if (!tag.empty() && tag[0] == '/') {
      std::string name = tag.substr(1);
      if (open.empty() || elements[open.back()].name != name)
        *error = "unbalanced </" + name + ">";
      else
        open.pop_back();
      continue;
    }
    bool self_closing = !tag.empty() && tag.back() == '/';
    if (self_closing) tag.pop_back();
    Element e;
    size_t p = 0;
    while (p < tag.size() && !std::isspace(static_cast<unsigned char>(tag[p]))) ++p;
    e.name = tag.substr(0, p);
    if (e.name.empty()) *error = "empty tag name";
    while (p < tag.size() && error->empty()) {
      while (p < tag.size() && std::isspace(static_cast<unsigned char>(tag[p]))) ++p;
      if (p >= tag.size()) break;
      size_t eq = tag.find('=', p);
      if (eq == std::string::npos || eq + 1 >= tag.size() || tag[eq + 1] != '"') {
        *error = "unquoted attribute in <" + e.name + ">";
        break;
      }
      size_t close = tag.find('"', eq + 2);
      if (close == std::string::npos) {
        *error = "unterminated attribute in <" + e.name + ">";
        break;
      }
      std::string key = tag.substr(p, eq - p);
      if (e.attrs.count(key)) *error = "repeated attribute " + key;
      e.attrs[key] = decode_entities(tag.substr(eq + 2, close - eq - 2), error);
      p = close + 1;
    }
    if (open.empty() && !elements.empty()) *error = "second root element";
    elements.push_back(std::move(e));
    if (!self_closing) open.push_back(elements.size() - 1);
  }
  if (error->empty() && !open.empty()) *error = "unclosed <" + elements[open.back()].name + ">";
  if (error->empty() && elements.empty()) *error = "no elements";
  return elements;
}

std::vector<Element> parse_svg(const std::string& svg) {
  std::string error;
  auto elements = parse_xml(svg, &error);
  EXPECT_EQ(error, "");
  EXPECT_FALSE(elements.empty());
  if (!elements.empty()) {
    EXPECT_EQ(elements[0].name, "svg");
  }
  return elements;
}

std::vector<const Element*> with_class(const std::vector<Element>& els, const std::string& cls) {
  std::vector<const Element*> out;
  for (const Element& e : els) {
    auto it = e.attrs.find("class");
    if (it != e.attrs.end() && it->second == cls) out.push_back(&e);
  }
  return out;
}

double num(const Element& e, const std::string& key) {
  auto it = e.attrs.find(key);
  EXPECT_NE(it, e.attrs.end()) << e.name << " has no " << key;
  return it == e.attrs.end() ? std::nan("") : std::stod(it->second);
}

std::vector<std::string> texts(const std::vector<Element>& els) {
  std::vector<std::string> out;
  for (const Element& e : els)
    if (e.name == "text") out.push_back(e.text);
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// ---- PNG decoding with libpng ----

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  Rgb at(int x, int y) const {
    const uint8_t* p = &rgb[(size_t(y) * width + x) * 3];
    return {p[0], p[1], p[2]};
  }
};

Image decode_png(const std::vector<uint8_t>& png) {
  Image img;
  png_image im{};
  im.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&im, png.data(), png.size())) {
    ADD_FAILURE() << "libpng: " << im.message;
    return img;
  }
  im.format = PNG_FORMAT_RGB;
  img.rgb.resize(PNG_IMAGE_SIZE(im));
  if (!png_image_finish_read(&im, nullptr, img.rgb.data(), 0, nullptr)) {
    ADD_FAILURE() << "libpng: " << im.message;
    return img;
  }
  img.width = int(im.width), img.height = int(im.height);
  return img;
}

bool dark(Rgb c) { return c.r < 80 && c.g < 80 && c.b < 80; }

// Pixel position of a data value, from the layout's plot box and axis range.
double to_px_x(const ChartLayout& L, double x) {
  double t = L.x.log
                 ? (std::log10(x) - std::log10(L.x.lo)) / (std::log10(L.x.hi) - std::log10(L.x.lo))
                 : (x - L.x.lo) / (L.x.hi - L.x.lo);
  return L.left + t * (L.right - L.left);
}
double to_px_y(const ChartLayout& L, double y) {
  double t = L.y.log
                 ? (std::log10(y) - std::log10(L.y.lo)) / (std::log10(L.y.hi) - std::log10(L.y.lo))
                 : (y - L.y.lo) / (L.y.hi - L.y.lo);
  return L.bottom - t * (L.bottom - L.top);
}

// ---- SVG ----

TEST(ChartSvg, IsWellFormedWithSizeAndTitle) {
  std::string svg = render_svg(bpw_chart(), 900, 600);
  auto els = parse_svg(svg);
  ASSERT_FALSE(els.empty());
  EXPECT_EQ(els[0].attrs.at("width"), "900");
  EXPECT_EQ(els[0].attrs.at("height"), "600");
  EXPECT_EQ(els[0].attrs.at("xmlns"), "http://www.w3.org/2000/svg");
  // Self-check of the checker: a broken document is caught.
  std::string error;
  parse_xml(svg.substr(0, svg.size() - 8), &error);
  EXPECT_NE(error, "");
}

// Each point sits where the SVG's own grid lines put its value: linear
// interpolation between x grid lines, interpolation in log10 between y ones.
TEST(ChartSvg, PointsFollowTheAxesGridLines) {
  Chart c = bpw_chart();
  auto els = parse_svg(render_svg(c, 900, 600));
  auto gx = with_class(els, "grid-x"), gy = with_class(els, "grid-y");
  ASSERT_GE(gx.size(), 2u);
  ASSERT_GE(gy.size(), 2u);
  // Grid lines of a log axis are whole decades, equally spaced.
  for (const Element* g : gy) {
    double e = std::log10(num(*g, "data-value"));
    EXPECT_NEAR(e, std::round(e), 1e-12);
  }
  double decade_px = num(*gy[0], "y1") - num(*gy[1], "y1");
  EXPECT_GT(decade_px, 20);
  for (size_t i = 1; i < gy.size(); ++i)
    EXPECT_NEAR(num(*gy[i - 1], "y1") - num(*gy[i], "y1"), decade_px, 0.02);

  const Element &xa = *gx.front(), &xb = *gx.back(), &ya = *gy.front(), &yb = *gy.back();
  double xv0 = num(xa, "data-value"), xv1 = num(xb, "data-value"), xp0 = num(xa, "x1"),
         xp1 = num(xb, "x1");
  double yv0 = std::log10(num(ya, "data-value")), yv1 = std::log10(num(yb, "data-value"));
  double yp0 = num(ya, "y1"), yp1 = num(yb, "y1");

  auto points = with_class(els, "point");
  ASSERT_EQ(points.size(), 10u);
  size_t k = 0;
  for (const Series& s : c.series)
    for (const ChartPoint& p : s.points) {
      const Element& e = *points[k++];
      EXPECT_DOUBLE_EQ(num(e, "data-x"), p.x);
      EXPECT_DOUBLE_EQ(num(e, "data-y"), p.y);
      double want_x = xp0 + (p.x - xv0) / (xv1 - xv0) * (xp1 - xp0);
      double want_y = yp0 + (std::log10(p.y) - yv0) / (yv1 - yv0) * (yp1 - yp0);
      EXPECT_NEAR(num(e, "cx"), want_x, 0.02) << p.label;
      EXPECT_NEAR(num(e, "cy"), want_y, 0.02) << p.label;
      // Inside the plot box the axes draw.
      EXPECT_GT(num(e, "cx"), std::min(xp0, xp1));
      EXPECT_LT(num(e, "cx"), std::max(xp0, xp1));
      EXPECT_GT(num(e, "cy"), std::min(yp0, yp1));
      EXPECT_LT(num(e, "cy"), std::max(yp0, yp1));
    }
  // The plan is one connected line through its points, in order.
  auto lines = with_class(els, "series-line");
  ASSERT_EQ(lines.size(), 1u);
  std::string pts = lines[0]->attrs.at("points");
  EXPECT_EQ(std::count(pts.begin(), pts.end(), ','), 5);
  EXPECT_EQ(pts.substr(0, pts.find(',')), points[5]->attrs.at("cx"));
}

TEST(ChartSvg, HasTitleAxisNamesTickLabelsPointLabelsAndLegend) {
  Chart c = bpw_chart();
  auto els = parse_svg(render_svg(c, 900, 600));
  auto t = texts(els);
  for (const std::string& want :
       {c.title, c.x_label, c.y_label, std::string("uniform recipes"), std::string("Tailor plans")})
    EXPECT_TRUE(contains(t, want)) << want;
  for (const Series& s : c.series)
    for (const ChartPoint& p : s.points) EXPECT_TRUE(contains(t, p.label)) << p.label;
  // Data 0.00045 .. 0.31 spans the decades 1e-4 .. 1.
  for (const char* want : {"1e-4", "1e-3", "1e-2", "1e-1", "1"})
    EXPECT_TRUE(contains(t, want)) << want;
  for (const char* want : {"3", "4", "5", "6", "7", "8"}) EXPECT_TRUE(contains(t, want)) << want;
  EXPECT_EQ(with_class(els, "tick-label-y").size(), with_class(els, "grid-y").size());
  EXPECT_EQ(with_class(els, "legend").size(), 1u);
  EXPECT_EQ(with_class(els, "legend-label").size(), 2u);
  EXPECT_EQ(with_class(els, "note").size(), 0u);  // nothing left out
}

TEST(ChartSvg, EscapesMarkupInText) {
  Chart c;
  c.title = "a < b & \"c\" > 'd'";
  c.series = {{"<script>", std::nullopt, SeriesStyle::points, {{1, 2, "x&y</text>"}}}};
  auto els = parse_svg(render_svg(c, 400, 300));
  auto t = texts(els);
  EXPECT_TRUE(contains(t, c.title));
  EXPECT_TRUE(contains(t, "<script>"));
  EXPECT_TRUE(contains(t, "x&y</text>"));
  // Bytes that are not UTF-8 would make the whole document unreadable.
  c.series[0].points[0].label = "bad \xff\xfe utf-8, good \xce\x94";
  std::string svg = render_svg(c, 400, 300);
  EXPECT_TRUE(valid_utf8(svg));
  EXPECT_TRUE(contains(texts(parse_svg(svg)), "bad ?? utf-8, good ??"));
}

TEST(ChartSvg, AgreesWithTheLayout) {
  Chart c = bpw_chart();
  ChartLayout L = layout_chart(c, 900, 600);
  auto els = parse_svg(render_svg(c, 900, 600));
  auto points = with_class(els, "point");
  ASSERT_EQ(points.size(), 10u);
  for (const Element* e : points) {
    EXPECT_NEAR(num(*e, "cx"), to_px_x(L, num(*e, "data-x")), 0.01);
    EXPECT_NEAR(num(*e, "cy"), to_px_y(L, num(*e, "data-y")), 0.01);
  }
}

// ---- axes ----

TEST(ChartAxes, RangesCoverTheDataWithReadableTicks) {
  ChartLayout L = layout_chart(bpw_chart(), 900, 600);
  EXPECT_TRUE(L.y.log);
  EXPECT_FALSE(L.x.log);
  EXPECT_DOUBLE_EQ(L.y.lo, 1e-4);
  EXPECT_DOUBLE_EQ(L.y.hi, 1.0);
  EXPECT_LT(L.x.lo, 2.8);
  EXPECT_GT(L.x.hi, 8.5);
  ASSERT_GE(L.x.ticks.size(), 3u);
  double step = L.x.ticks[1] - L.x.ticks[0];
  for (size_t i = 1; i < L.x.ticks.size(); ++i)
    EXPECT_NEAR(L.x.ticks[i] - L.x.ticks[i - 1], step, 1e-9);
  EXPECT_DOUBLE_EQ(L.x.ticks.front(), L.x.lo);
  EXPECT_DOUBLE_EQ(L.x.ticks.back(), L.x.hi);
  EXPECT_LT(L.left, L.right);
  EXPECT_LT(L.top, L.bottom);
}

// A log axis over one decade also labels 2 and 5 of it, placed by log10.
TEST(ChartAxes, NarrowLogAxisLabelsTwoAndFive) {
  Chart c = bpw_chart();
  c.x_log = true;  // 2.8 .. 8.5 bits: the decade 1 .. 10
  ChartLayout L = layout_chart(c, 900, 600);
  EXPECT_EQ(L.x.ticks, (std::vector<double>{1, 2, 5, 10}));
  auto els = parse_svg(render_svg(c, 900, 600));
  auto t = texts(els);
  for (const char* want : {"1", "2", "5", "1e1"}) EXPECT_TRUE(contains(t, want)) << want;
  auto gx = with_class(els, "grid-x");
  ASSERT_EQ(gx.size(), 4u);
  double x1 = num(*gx[0], "x1"), x10 = num(*gx[3], "x1");
  EXPECT_NEAR(num(*gx[1], "x1"), x1 + std::log10(2.0) * (x10 - x1), 0.02);
  EXPECT_NEAR(num(*gx[2], "x1"), x1 + std::log10(5.0) * (x10 - x1), 0.02);
  for (const Element* e : with_class(els, "point"))
    EXPECT_NEAR(num(*e, "cx"), x1 + std::log10(num(*e, "data-x")) * (x10 - x1), 0.02);
}

// ---- PNG ----

TEST(ChartPng, DecodesAtTheAskedSize) {
  Image img = decode_png(render_png(bpw_chart(), 900, 600));
  EXPECT_EQ(img.width, 900);
  EXPECT_EQ(img.height, 600);
  img = decode_png(render_png(bpw_chart(), 333, 222));
  EXPECT_EQ(img.width, 333);
  EXPECT_EQ(img.height, 222);
}

TEST(ChartPng, PointsShowTheirSeriesColour) {
  Chart c = bpw_chart();
  for (auto [w, h] : {std::pair{900, 600}, std::pair{1600, 1000}}) {
    ChartLayout L = layout_chart(c, w, h);
    Image img = decode_png(render_png(c, w, h));
    ASSERT_EQ(img.width, w);
    for (const Series& s : c.series)
      for (const ChartPoint& p : s.points) {
        int x = int(std::floor(to_px_x(L, p.x))), y = int(std::floor(to_px_y(L, p.y)));
        EXPECT_EQ(img.at(x, y), *s.color) << p.label << " at " << x << "," << y;
      }
    // Halfway along each segment of the plan's line: the line's colour.
    const auto& plan = c.series[1].points;
    for (size_t i = 1; i < plan.size(); ++i) {
      double mx = (to_px_x(L, plan[i - 1].x) + to_px_x(L, plan[i].x)) / 2;
      double my = (to_px_y(L, plan[i - 1].y) + to_px_y(L, plan[i].y)) / 2;
      Rgb got = img.at(int(mx), int(my));
      // Anti-aliased edges mix in white; the stroke covers the pixel's centre region.
      EXPECT_LT(std::abs(got.r - kBlue.r) + std::abs(got.g - kBlue.g) + std::abs(got.b - kBlue.b),
                160)
          << "segment " << i;
    }
  }
}

TEST(ChartPng, WhiteBackgroundAndDarkAxes) {
  Chart c = bpw_chart();
  ChartLayout L = layout_chart(c, 900, 600);
  Image img = decode_png(render_png(c, 900, 600));
  ASSERT_EQ(img.width, 900);
  EXPECT_EQ(img.at(1, 1), kWhite);
  EXPECT_EQ(img.at(899, 599), kWhite);
  // Bottom-left of the plot holds no data (low bits with low KL): between
  // the first two x grid lines and between 1e-4 and its 2e-4 minor line.
  double x = (to_px_x(L, L.x.ticks[0]) + to_px_x(L, L.x.ticks[1])) / 2;
  double y = to_px_y(L, std::pow(10.0, std::log10(L.y.lo) + 0.15));
  EXPECT_EQ(img.at(int(x), int(y)), kWhite);
  // The axes: the left edge and the bottom edge of the plot.
  int mid_y = int((L.top + L.bottom) / 2), mid_x = int((L.left + L.right) / 2);
  EXPECT_TRUE(dark(img.at(int(std::floor(L.left)), mid_y)));
  EXPECT_TRUE(dark(img.at(mid_x, int(std::floor(L.bottom)))));
  // Just inside the plot, clear of the axis line: not dark.
  EXPECT_FALSE(dark(img.at(int(L.left) + 4, mid_y + 3)));
}

// The title is drawn glyph by glyph: the band above the plot holds exactly
// the title's font dots, each a scale x scale block of ink.
TEST(ChartPng, TitleIsItsGlyphDots) {
  Chart c;
  c.title = "KL vs bpw: Q4_K_M";
  ChartLayout L = layout_chart(c, 900, 600);
  Image img = decode_png(render_png(c, 900, 600));
  ASSERT_EQ(img.width, 900);
  int scale = L.font_scale + 1, dots = 0;
  for_each_glyph(c.title, [&](unsigned char g) {
    const uint8_t* rows = glyph_rows(g);
    for (int r = 0; r < FontMetrics::glyph_rows; ++r) dots += std::popcount(unsigned(rows[r]));
  });
  ASSERT_GT(dots, 100);
  int inked = 0, other = 0;
  // Rows above the plot's top tick label (which reaches half a glyph above the plot).
  for (int y = 0; y < int(L.top) - FontMetrics::ascent * L.font_scale; ++y)
    for (int x = 0; x < img.width; ++x) {
      Rgb p = img.at(x, y);
      if (p == Rgb{17, 17, 17})
        ++inked;
      else if (!(p == kWhite))
        ++other;
    }
  EXPECT_EQ(inked, dots * scale * scale);
  EXPECT_EQ(other, 0);
}

// The y axis name is turned a quarter counter-clockwise, reading upwards:
// in "_T" the underscore (below the baseline) comes out lowest and furthest
// right, the top of the T highest and furthest left, 7 font rows apart.
TEST(ChartPng, YLabelReadsBottomToTop) {
  Chart c;
  c.y_label = "_T";
  ChartLayout L = layout_chart(c, 900, 600);
  Image img = decode_png(render_png(c, 900, 600));
  ASSERT_EQ(img.width, 900);
  const int s = L.font_scale;
  int lowest_y = -1, lowest_x = -1, highest_y = img.height, highest_x = -1, inked = 0;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < 16 * s; ++x)  // the strip left of the tick labels
      if (img.at(x, y) == Rgb{17, 17, 17}) {
        ++inked;
        if (y > lowest_y) lowest_y = y, lowest_x = x;
        if (y < highest_y) highest_y = y, highest_x = x;
      }
  // '_' has 5 dots, 'T' 11.
  EXPECT_EQ(inked, 16 * s * s);
  EXPECT_EQ(lowest_x - highest_x, FontMetrics::ascent * s);
  // Two glyphs tall, one glyph cell wide.
  EXPECT_EQ(lowest_y - highest_y + 1, (2 * FontMetrics::advance - 1) * s);
  EXPECT_NEAR((lowest_y + highest_y) / 2.0, (L.top + L.bottom) / 2, 1.0 * s);
}

TEST(ChartFont, CoversPrintableAsciiWithDistinctGlyphs) {
  std::map<std::string, char> seen;
  for (int ch = 33; ch < 127; ++ch) {
    const uint8_t* rows = glyph_rows(static_cast<unsigned char>(ch));
    std::string v(rows, rows + FontMetrics::glyph_rows);
    int ink = 0;
    for (uint8_t r : v) {
      EXPECT_EQ(r & ~0x1F, 0) << char(ch);
      ink += std::popcount(unsigned(r));
    }
    EXPECT_GT(ink, 0) << char(ch);
    auto [it, fresh] = seen.emplace(v, char(ch));
    EXPECT_TRUE(fresh) << char(ch) << " looks like " << it->second;
  }
  // Non-ASCII text becomes one '?' per character.
  EXPECT_EQ(glyph_count("KL \xce\x94"), 4);
  EXPECT_EQ(glyph_rows(200), glyph_rows('?'));
}

// ---- awkward input never crashes and still gives valid pictures ----

void expect_renders(const Chart& c, int w, int h, size_t left_out) {
  ChartLayout L = layout_chart(c, w, h);
  EXPECT_EQ(L.left_out, left_out);
  for (const AxisRange* a : {&L.x, &L.y}) {
    EXPECT_TRUE(std::isfinite(a->lo) && std::isfinite(a->hi));
    EXPECT_LT(a->lo, a->hi);
    EXPECT_FALSE(a->ticks.empty());
    if (a->log) {
      EXPECT_GT(a->lo, 0);
    }
  }
  auto els = parse_svg(render_svg(c, w, h));
  EXPECT_EQ(with_class(els, "note").size(), left_out ? 1u : 0u);
  for (const Element* p : with_class(els, "point")) {
    EXPECT_GE(num(*p, "cx"), L.left);
    EXPECT_LE(num(*p, "cx"), L.right);
    EXPECT_GE(num(*p, "cy"), L.top);
    EXPECT_LE(num(*p, "cy"), L.bottom);
  }
  Image img = decode_png(render_png(c, w, h));
  EXPECT_EQ(img.width, w);
  EXPECT_EQ(img.height, h);
}

TEST(ChartEdges, EmptyChartsRender) {
  Chart c;
  expect_renders(c, 400, 300, 0);
  ChartLayout L = layout_chart(c, 400, 300);
  EXPECT_EQ(L.x.lo, 0);
  EXPECT_EQ(L.x.hi, 1);
  EXPECT_TRUE(contains(texts(parse_svg(render_svg(c, 400, 300))), "no data"));
  c.y_log = c.x_log = true;
  c.series = {{"nothing", std::nullopt, SeriesStyle::line, {}}};
  expect_renders(c, 400, 300, 0);
}

TEST(ChartEdges, SinglePointAndEqualValues) {
  Chart c;
  c.series = {{"one", std::nullopt, SeriesStyle::points, {{4.5, 0.01, "only"}}}};
  expect_renders(c, 640, 480, 0);
  c.y_log = true;
  expect_renders(c, 640, 480, 0);
  c.series[0].points = {{0, 0.5, "a"}, {0, 0.5, "b"}, {0, 0.5, "c"}};
  c.series[0].style = SeriesStyle::line;
  expect_renders(c, 640, 480, 0);
  c.y_log = false;
  c.series[0].points = {{0, 0, ""}, {0, 0, ""}};
  expect_renders(c, 640, 480, 0);
  c.series[0].points = {{1e-300, 5e-310, ""}};  // tiny and subnormal
  expect_renders(c, 640, 480, 0);
}

TEST(ChartEdges, UnshowableValuesAreLeftOutAndCounted) {
  const double nan = std::numeric_limits<double>::quiet_NaN(),
               inf = std::numeric_limits<double>::infinity();
  Chart c = bpw_chart();
  auto& plan = c.series[1].points;
  plan.insert(plan.begin() + 2, {4.0, nan, "nan"});  // breaks the line in two
  plan.push_back({7.0, 0.0, "zero"});
  plan.push_back({7.5, -1e-3, "negative"});
  plan.push_back({inf, 1e-3, "inf"});
  plan.push_back({7.0, 1e-200, "tiny"});
  expect_renders(c, 900, 600, 5);
  auto els = parse_svg(render_svg(c, 900, 600));
  EXPECT_EQ(with_class(els, "series-line").size(), 2u);
  EXPECT_EQ(with_class(els, "point").size(), 10u);
  auto t = texts(els);
  EXPECT_FALSE(contains(t, "nan"));
  EXPECT_FALSE(contains(t, "zero"));
  // The axis still starts at the data's own decades.
  EXPECT_DOUBLE_EQ(layout_chart(c, 900, 600).y.lo, 1e-4);

  c.x_log = true;
  c.series[0].points.push_back({-2.0, 0.1, "negative x"});
  c.series[0].points.push_back({1e150, 0.1, "huge"});
  expect_renders(c, 900, 600, 7);
  c.x_log = false;  // on a linear axis 1e150 is still beyond the limit, -2 is fine
  expect_renders(c, 900, 600, 6);
}

TEST(ChartEdges, WideRangesAndOddText) {
  Chart c;
  c.y_log = true;
  c.title = std::string(400, 'W');  // far wider than the picture: cut short
  c.y_label = "\xe2\x88\x86 KL (\xce\xbc)";
  c.series = {{"span",
               std::nullopt,
               SeriesStyle::line,
               {{-1e90, 1e-90, "\xf0\x9f\x98\x80"}, {1e90, 1e90, "big"}, {0, 1, "\x01\x02"}}}};
  expect_renders(c, 900, 600, 0);
  expect_renders(c, 160, 120, 0);
  auto els = parse_svg(render_svg(c, 900, 600));
  auto title = with_class(els, "title");
  ASSERT_EQ(title.size(), 1u);
  EXPECT_LT(title[0]->text.size(), 200u);
  EXPECT_EQ(title[0]->text.substr(title[0]->text.size() - 3), "...");
  EXPECT_LE(layout_chart(c, 900, 600).y.ticks.size(), 12u);
}

// Random charts mixing ordinary, extreme and special values: every one
// renders, counts what it left out, and parses.
TEST(ChartEdges, RandomChartsRender) {
  std::mt19937 rng(1234);
  const double specials[] = {0.0,
                             -0.0,
                             -1.0,
                             1e-320,
                             1e-101,
                             1e99,
                             1e101,
                             -1e300,
                             std::numeric_limits<double>::quiet_NaN(),
                             std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity()};
  auto value = [&]() -> double {
    switch (rng() % 4) {
      case 0: return specials[rng() % std::size(specials)];
      case 1: return std::ldexp(double(rng() % 1000 + 1), int(rng() % 40) - 30);
      default: return std::uniform_real_distribution<double>(-5, 10)(rng);
    }
  };
  auto bad = [](double v, bool log) {
    return !std::isfinite(v) || std::fabs(v) > 1e100 || (log && !(v >= 1e-100));
  };
  for (int iter = 0; iter < 60; ++iter) {
    Chart c;
    c.x_log = rng() % 2, c.y_log = rng() % 2;
    c.title = std::string(rng() % 60, 'T');
    size_t left_out = 0;
    for (size_t si = 0, n = rng() % 4; si < n; ++si) {
      Series s{std::string(rng() % 20, 'n'),
               std::nullopt,
               rng() % 2 ? SeriesStyle::line : SeriesStyle::points,
               {}};
      for (size_t pi = 0, m = rng() % 12; pi < m; ++pi) {
        ChartPoint p{value(), value(), std::string(rng() % 8, 'L')};
        left_out += bad(p.x, c.x_log) || bad(p.y, c.y_log);
        s.points.push_back(p);
      }
      c.series.push_back(std::move(s));
    }
    SCOPED_TRACE(iter);
    expect_renders(c, 160 + int(rng() % 400), 120 + int(rng() % 300), left_out);
  }
}

TEST(ChartEdges, BadSizesAreErrors) {
  Chart c = bpw_chart();
  test::expect_error([&] { render_png(c, 0, 0); }, "chart", "size 0x0");
  test::expect_error([&] { render_svg(c, 100000, 600); }, "chart", "outside");
  test::expect_error([&] { layout_chart(c, 900, -5); }, "chart", "outside");
}

// ---- files ----

TEST(ChartFile, WritesByExtension) {
  fs::path dir = test::scratch_dir("tailor_test_chart");
  Chart c = bpw_chart();
  write_chart(c, (dir / "a.svg").string());
  write_chart(c, (dir / "b.PNG").string(), 640, 480);
  auto svg = test::read_bytes(dir / "a.svg");
  EXPECT_EQ(std::string(svg.begin(), svg.end()), render_svg(c, 900, 600));
  auto png = test::read_bytes(dir / "b.PNG");
  EXPECT_EQ(png, render_png(c, 640, 480));
  Image img = decode_png(png);
  EXPECT_EQ(img.width, 640);
  test::expect_error([&] { write_chart(c, (dir / "c.jpg").string()); }, "c.jpg",
                     "unknown chart format");
  EXPECT_FALSE(fs::exists(dir / "c.jpg"));
  test::expect_error([&] { write_chart(c, (dir / "d.png").string(), 10, 10); }, "chart", "outside");
  EXPECT_FALSE(fs::exists(dir / "d.png"));
  for (const auto& e : fs::directory_iterator(dir))  // no temporaries left behind
    EXPECT_TRUE(e.path().filename() == "a.svg" || e.path().filename() == "b.PNG") << e.path();
}

}  // namespace
}  // namespace tailor::report
