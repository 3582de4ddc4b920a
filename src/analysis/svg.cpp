#include "analysis/svg.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

namespace moe::svg {
namespace {

constexpr double kWidth = 600;
constexpr double kRight = 20;        // margin right of the plot area
constexpr double kScaleWidth = 110;  // right of a heatmap: its colour scale
constexpr double kLeft = 72, kTop = 44, kBottom = 52;
constexpr double kPlotHeight = 300;  // title, plot and axes; legends go below
constexpr double kLegendRow = 18;

// The figure's height with one legend row per entry below the plot.
double height_with_legend(size_t entries) {
  return kPlotHeight + 6 + kLegendRow * double(entries);
}
// The baseline of legend row i.
double legend_row(size_t i) {
  return kPlotHeight + 4 + kLegendRow * (double(i) + 0.5);
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

struct Rgb {
  double r, g, b;
};

Rgb parse_hex(std::string_view hex) {
  auto channel = [&](size_t at) {
    return double(std::stoi(std::string(hex.substr(at, 2)), nullptr, 16)) / 255.0;
  };
  return {channel(1), channel(3), channel(5)};
}

std::string to_hex(Rgb c) {
  auto byte = [](double v) { return int(std::lround(std::clamp(v, 0.0, 1.0) * 255.0)); };
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", byte(c.r), byte(c.g), byte(c.b));
  return buf;
}

Rgb hsl(double h, double s, double l) {
  auto f = [&](double n) {
    const double k = std::fmod(n + h / 30.0, 12.0);
    const double a = s * std::min(l, 1 - l);
    return l - a * std::max(-1.0, std::min({k - 3, 9 - k, 1.0}));
  };
  return {f(0), f(8), f(4)};
}

// Maps data values to pixels along one axis, with ticks at round numbers.
struct Scale {
  double lo = 0, hi = 1;    // data range (log10 of it when log)
  double from = 0, to = 1;  // pixel range
  bool log = false;
  std::vector<double> ticks;  // data values

  double operator()(double v) const {
    const double t = log ? std::log10(v) : v;
    return from + (t - lo) / (hi - lo) * (to - from);
  }
};

double nice_step(double range, int target) {
  const double raw = range / target;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * power >= raw) return m * power;
  return 10 * power;
}

// A linear scale over [lo, hi] widened to round tick values.
Scale linear_scale(double lo, double hi, double from, double to, int target = 5) {
  if (!(hi > lo)) {  // one value (or none): a window around it
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double step = nice_step(hi - lo, target);
  Scale s;
  s.lo = std::floor(lo / step + 1e-9) * step;
  s.hi = std::ceil(hi / step - 1e-9) * step;
  s.from = from;
  s.to = to;
  for (double t = s.lo; t <= s.hi + step * 1e-6; t += step)
    s.ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return s;
}

// A log10 scale over positive [lo, hi], widened to whole decades; ticks at 1, 2, 5 x 10^n
// when the range spans few decades.
Scale log_scale(double lo, double hi, double from, double to) {
  Scale s;
  s.log = true;
  s.lo = std::floor(std::log10(lo));
  s.hi = std::ceil(std::log10(hi));
  if (s.hi <= s.lo) s.hi = s.lo + 1;
  s.from = from;
  s.to = to;
  const bool fine = s.hi - s.lo <= 2;
  for (double d = s.lo; d <= s.hi; ++d)
    for (double m : {1.0, 2.0, 5.0})
      if ((m == 1.0 || fine) && d + std::log10(m) <= s.hi + 1e-9)
        s.ticks.push_back(m * std::pow(10.0, d));
  return s;
}

std::string open_figure(const Chart& chart, double height) {
  return "<figure class=\"chart\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
         num(kWidth) + "\" height=\"" + num(height) + "\" viewBox=\"0 0 " + num(kWidth) + " " +
         num(height) + "\" role=\"img\" aria-label=\"" + escape(chart.title) + "\">" +
         "<text class=\"title\" x=\"" + num(kWidth / 2) + "\" y=\"20\" text-anchor=\"middle\">" +
         escape(chart.title) + "</text>";
}

std::string close_figure(const Chart& chart) {
  return "</svg><figcaption class=\"hint\">" + escape(chart.hint) + "</figcaption></figure>";
}

std::string text(double x, double y, const std::string& content, const char* anchor,
                 const char* cls = "label", const std::string& extra = "") {
  return "<text class=\"" + std::string(cls) + "\" x=\"" + num(x) + "\" y=\"" + num(y) +
         "\" text-anchor=\"" + anchor + "\"" + extra + ">" + escape(content) + "</text>";
}

// A heatmap cell's printed value: shares and load ratios to 2 decimals, so that every label
// fits its cell (0.000153 would spill over); the cell's tooltip keeps 3 significant digits.
std::string cell_label(double v) {
  if (std::abs(v) >= 100) return format_number(v);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// The ticks' labels with as few significant digits (3 at least) as keep them apart: over a
// narrow range (11.60M to 11.65M) 3 digits would print the same label on every tick.
std::vector<std::string> tick_labels(const std::vector<double>& ticks) {
  std::vector<std::string> labels;
  for (int digits = 3; digits <= 12; ++digits) {
    labels.clear();
    for (double t : ticks) labels.push_back(format_number(t, digits));
    if (std::adjacent_find(labels.begin(), labels.end()) == labels.end()) break;
  }
  return labels;
}

// Axis lines, ticks, tick labels, grid lines and both axis labels.
std::string axes(const Chart& chart, const Scale& x, const Scale& y) {
  std::string out;
  const std::vector<std::string> y_labels = tick_labels(y.ticks);
  for (size_t i = 0; i < y.ticks.size(); ++i) {
    const double py = y(y.ticks[i]);
    out += "<line class=\"grid\" x1=\"" + num(x.from) + "\" x2=\"" + num(x.to) + "\" y1=\"" +
           num(py) + "\" y2=\"" + num(py) + "\"/>";
    out += text(x.from - 6, py + 4, y_labels[i], "end", "tick");
  }
  const std::vector<std::string> x_labels = tick_labels(x.ticks);
  for (size_t i = 0; i < x.ticks.size(); ++i) {
    const double px = x(x.ticks[i]);
    out += "<line class=\"axis\" x1=\"" + num(px) + "\" x2=\"" + num(px) + "\" y1=\"" +
           num(y.from) + "\" y2=\"" + num(y.from + 5) + "\"/>";
    out += text(px, y.from + 18, x_labels[i], "middle", "tick");
  }
  out += "<line class=\"axis\" x1=\"" + num(x.from) + "\" x2=\"" + num(x.to) + "\" y1=\"" +
         num(y.from) + "\" y2=\"" + num(y.from) + "\"/>";
  out += "<line class=\"axis\" x1=\"" + num(x.from) + "\" x2=\"" + num(x.from) + "\" y1=\"" +
         num(y.to) + "\" y2=\"" + num(y.from) + "\"/>";
  out += text((x.from + x.to) / 2, y.from + 38, chart.x_label, "middle", "axis-label");
  const double mid = (y.from + y.to) / 2;
  out += text(16, mid, chart.y_label, "middle", "axis-label",
              " transform=\"rotate(-90 16 " + num(mid) + ")\"");
  return out;
}

std::string ref_line(const RefLine& r, const Scale& x, const Scale& y) {
  const double py = y(r.y);
  return "<line class=\"ref\" x1=\"" + num(x.from) + "\" x2=\"" + num(x.to) + "\" y1=\"" + num(py) +
         "\" y2=\"" + num(py) + "\"/>" + text(x.to - 4, py - 4, r.label, "end", "ref-label");
}

std::string legend_entry(double x, double y, const std::string& colour, const std::string& name,
                         bool dashed, bool box) {
  std::string swatch = box ? "<rect x=\"" + num(x) + "\" y=\"" + num(y - 9) +
                                 "\" width=\"18\" height=\"10\" fill=\"" + colour + "\"/>"
                           : "<line x1=\"" + num(x) + "\" x2=\"" + num(x + 18) + "\" y1=\"" +
                                 num(y - 4) + "\" y2=\"" + num(y - 4) + "\" stroke=\"" + colour +
                                 "\" stroke-width=\"2.5\"" +
                                 (dashed ? " stroke-dasharray=\"6 3\"" : "") + "/>";
  return "<g class=\"legend\">" + swatch + text(x + 24, y, name, "start", "legend-label") + "</g>";
}

// Words of `s` in lines of about `width` characters.
std::vector<std::string> wrap(const std::string& s, size_t width) {
  std::vector<std::string> lines{""};
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(' ', start);
    if (end == std::string::npos) end = s.size();
    const std::string word = s.substr(start, end - start);
    if (!lines.back().empty() && lines.back().size() + 1 + word.size() > width) lines.push_back("");
    lines.back() += (lines.back().empty() ? "" : " ") + word;
    start = end + 1;
  }
  return lines;
}

std::string series_colour(const Series& s, size_t index) {
  return expert_colour(s.colour >= 0 ? s.colour : int64_t(index), 10);
}

}  // namespace

std::string escape(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (char c : in) switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  return out;
}

std::string format_number(double v) {
  return format_number(v, 3);
}

std::string format_number(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  const double a = std::abs(v);
  char buf[32];
  static constexpr std::array<std::pair<double, const char*>, 4> kSuffixes{
      {{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}}};
  for (const auto& [scale, suffix] : kSuffixes)
    if (a >= scale) {
      std::snprintf(buf, sizeof buf, "%.*g%s", digits, v / scale, suffix);
      return buf;
    }
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

std::string expert_colour(int64_t expert, int64_t experts) {
  static constexpr std::array<const char*, 10> kTableau{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                                        "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                                                        "#9c755f", "#bab0ac"};
  if (expert < 0) return "#cccccc";
  if (experts <= 10) return kTableau[size_t(expert % 10)];
  // 16 hues visited 7 apart (so experts e and e+1 differ by 157 degrees), then tiers.
  static constexpr std::array<std::pair<double, double>, 4> kTiers{
      {{0.70, 0.45}, {0.85, 0.72}, {0.60, 0.28}, {0.35, 0.58}}};
  const int64_t e = expert % 64;
  const double hue = double((e * 7) % 16) * 22.5;
  const auto [s, l] = kTiers[size_t(e / 16)];
  return to_hex(hsl(hue, s, l));
}

std::string text_colour_on(std::string_view background) {
  const Rgb c = parse_hex(background);
  auto linear = [](double v) {
    return v <= 0.04045 ? v / 12.92 : std::pow((v + 0.055) / 1.055, 2.4);
  };
  const double lum = 0.2126 * linear(c.r) + 0.7152 * linear(c.g) + 0.0722 * linear(c.b);
  // The contrast ratio against black is (lum + 0.05) / 0.05, against white 1.05 / (lum + 0.05).
  return (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) ? "#000" : "#fff";
}

std::string scale_colour(double t) {
  static constexpr std::array<const char*, 10> kViridis{"#440154", "#482878", "#3e4989", "#31688e",
                                                        "#26828e", "#1f9e89", "#35b779", "#6ece58",
                                                        "#b5de2b", "#fde725"};
  if (!std::isfinite(t)) return "#cccccc";
  t = std::clamp(t, 0.0, 1.0) * double(kViridis.size() - 1);
  const size_t i = std::min(size_t(t), kViridis.size() - 2);
  const double f = t - double(i);
  const Rgb a = parse_hex(kViridis[i]), b = parse_hex(kViridis[i + 1]);
  return to_hex({a.r + (b.r - a.r) * f, a.g + (b.g - a.g) * f, a.b + (b.b - a.b) * f});
}

std::string line_chart(const Chart& chart, std::span<const Series> series,
                       const LineOptions& options) {
  const double height = height_with_legend(series.size());
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || (options.log_x && s.x[i] <= 0))
        continue;
      x_lo = std::min(x_lo, s.x[i]);
      x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, s.y[i]);
      y_hi = std::max(y_hi, s.y[i]);
    }
  if (!std::isfinite(x_lo)) x_lo = x_hi = y_lo = y_hi = options.log_x ? 1 : 0;
  for (const RefLine& r : options.ref_lines) {
    y_lo = std::min(y_lo, r.y);
    y_hi = std::max(y_hi, r.y);
  }
  if (options.y_min) y_lo = *options.y_min;
  if (options.y_max) y_hi = std::max(*options.y_max, y_lo);
  const double plot_right = kWidth - kRight;
  const Scale x = options.log_x ? log_scale(x_lo, x_hi, kLeft, plot_right)
                                : linear_scale(x_lo, x_hi, kLeft, plot_right, 6);
  const Scale y = linear_scale(y_lo, y_hi, kPlotHeight - kBottom, kTop);

  std::string out = open_figure(chart, height) + axes(chart, x, y);
  for (const RefLine& r : options.ref_lines) out += ref_line(r, x, y);
  for (size_t si = 0; si < series.size(); ++si) {
    const Series& s = series[si];
    const std::string colour = series_colour(s, si);
    std::string path, dots;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || (options.log_x && s.x[i] <= 0))
        continue;
      const std::string px = num(x(s.x[i])), py = num(y(s.y[i]));
      path += (path.empty() ? "M" : " L") + px + " " + py;
      if (s.dots || s.x.size() == 1)
        dots += "<circle class=\"mark\" cx=\"" + px + "\" cy=\"" + py + "\" r=\"3\" fill=\"" +
                colour + "\"><title>" + escape(s.name) + ": " + format_number(s.x[i]) + ", " +
                format_number(s.y[i]) + "</title></circle>";
    }
    if (!path.empty())
      out += "<path class=\"mark series\" d=\"" + path + "\" fill=\"none\" stroke=\"" + colour +
             "\" stroke-width=\"2\"" + (s.dashed ? " stroke-dasharray=\"6 3\"" : "") + "><title>" +
             escape(s.name) + "</title></path>";
    out += dots;
    out += legend_entry(kLeft, legend_row(si), colour, s.name, s.dashed, false);
  }
  return out + close_figure(chart);
}

std::string heatmap(const Chart& chart, const HeatmapData& data) {
  const size_t rows = data.rows.size(), cols = data.columns.size();
  const double plot_right = kWidth - kScaleWidth;
  const double cell_w = (plot_right - kLeft) / double(std::max<size_t>(cols, 1));
  const double cell_h = std::clamp(260.0 / double(std::max<size_t>(rows, 1)), 4.0, 26.0);
  const double scale_height = std::min(160.0, cell_h * double(rows));
  const double height =
      std::max(kTop + cell_h * double(rows) + kBottom + 4,
               kTop + scale_height + 18 + 14 * double(wrap(data.scale_label, 14).size()));
  double hi = data.min;
  for (const auto& row : data.values)
    for (double v : row)
      if (std::isfinite(v)) hi = std::max(hi, v);
  if (data.max) hi = *data.max;
  const double span = hi > data.min ? hi - data.min : 1.0;

  std::string out = open_figure(chart, height);
  const bool values_fit = cell_w >= 34 && cell_h >= 15;
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) {
      const double v = r < data.values.size() && c < data.values[r].size()
                           ? data.values[r][c]
                           : std::numeric_limits<double>::quiet_NaN();
      const std::string fill = scale_colour((v - data.min) / span);
      const double x = kLeft + cell_w * double(c), y = kTop + cell_h * double(r);
      out += "<rect class=\"mark cell\" x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" +
             num(cell_w + 0.5) + "\" height=\"" + num(cell_h + 0.5) + "\" fill=\"" + fill +
             "\"><title>" +
             escape(data.rows[r] + ", " + data.columns[c] + ": " + format_number(v)) +
             "</title></rect>";
      if (values_fit && std::isfinite(v))
        out += text(x + cell_w / 2, y + cell_h / 2 + 4, cell_label(v), "middle", "cell-value",
                    " style=\"fill:" + text_colour_on(fill) + "\"");
    }
  // Row labels, thinned to fit; column labels thinned to about 12.
  const size_t row_every = size_t(std::ceil(13.0 / cell_h));
  for (size_t r = 0; r < rows; r += row_every)
    out += text(kLeft - 6, kTop + cell_h * (double(r) + 0.5) + 4, data.rows[r], "end", "tick");
  const size_t col_every = std::max<size_t>(1, (cols + 11) / 12);
  const double bottom = kTop + cell_h * double(rows);
  for (size_t c = 0; c < cols; c += col_every)
    out += text(kLeft + cell_w * (double(c) + 0.5), bottom + 16, data.columns[c], "middle", "tick");
  out += text((kLeft + plot_right) / 2, bottom + 36, chart.x_label, "middle", "axis-label");
  const double mid = (kTop + bottom) / 2;
  out += text(14, mid, chart.y_label, "middle", "axis-label",
              " transform=\"rotate(-90 14 " + num(mid) + ")\"");
  // Colour scale: a vertical gradient of 20 steps with its range.
  const double sx = plot_right + 24, sh = scale_height;
  for (int i = 0; i < 20; ++i)
    out += "<rect x=\"" + num(sx) + "\" y=\"" + num(kTop + sh * i / 20.0) +
           "\" width=\"14\" height=\"" + num(sh / 20.0 + 0.5) + "\" fill=\"" +
           scale_colour(1.0 - (i + 0.5) / 20.0) + "\"/>";
  out += text(sx + 20, kTop + 9, format_number(hi), "start", "tick");
  out += text(sx + 20, kTop + sh, format_number(data.min), "start", "tick");
  double line_y = kTop + sh + 18;
  for (const std::string& line : wrap(data.scale_label, 14)) {
    out += text(sx, line_y, line, "start", "legend-label");
    line_y += 14;
  }
  return out + close_figure(chart);
}

std::string bar_chart(const Chart& chart, std::span<const std::string> categories,
                      std::span<const BarSeries> series, const std::vector<RefLine>& ref_lines) {
  const double height = height_with_legend(series.size());
  double hi = 0;
  for (const BarSeries& s : series)
    for (double v : s.values)
      if (std::isfinite(v)) hi = std::max(hi, v);
  for (const RefLine& r : ref_lines) hi = std::max(hi, r.y);
  const double plot_right = kWidth - kRight;
  const Scale y = linear_scale(0, hi > 0 ? hi : 1, kPlotHeight - kBottom, kTop);
  Scale x;  // categories: ticks drawn below, not numbers
  x.from = kLeft;
  x.to = plot_right;
  std::string out = open_figure(chart, height) + axes(chart, x, y);
  const double group_w = (plot_right - kLeft) / double(std::max<size_t>(categories.size(), 1));
  const double bar_w = group_w * 0.8 / double(std::max<size_t>(series.size(), 1));
  const size_t label_every = std::max<size_t>(1, (categories.size() + 15) / 16);
  for (size_t c = 0; c < categories.size(); ++c) {
    const double gx = kLeft + group_w * double(c);
    if (c % label_every == 0)
      out += text(gx + group_w / 2, y.from + 18, categories[c], "middle", "tick");
    for (size_t s = 0; s < series.size(); ++s) {
      if (c >= series[s].values.size() || !std::isfinite(series[s].values[c])) continue;
      const double v = series[s].values[c];
      const double top = y(v);
      out += "<rect class=\"mark bar\" x=\"" + num(gx + group_w * 0.1 + bar_w * double(s)) +
             "\" y=\"" + num(top) + "\" width=\"" + num(bar_w) + "\" height=\"" +
             num(y.from - top) + "\" fill=\"" + expert_colour(int64_t(s), 10) + "\"><title>" +
             escape(series[s].name + ", " + categories[c] + ": " + format_number(v)) +
             "</title></rect>";
    }
  }
  for (const RefLine& r : ref_lines) out += ref_line(r, x, y);
  for (size_t s = 0; s < series.size(); ++s)
    out += legend_entry(kLeft, legend_row(s), expert_colour(int64_t(s), 10), series[s].name, false,
                        true);
  return out + close_figure(chart);
}

std::string scatter(const Chart& chart, std::span<const Point> points, bool log_x) {
  const double height = height_with_legend(points.size());
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const Point& p : points) {
    if (!std::isfinite(p.x) || !std::isfinite(p.y) || (log_x && p.x <= 0)) continue;
    x_lo = std::min(x_lo, p.x);
    x_hi = std::max(x_hi, p.x);
    y_lo = std::min(y_lo, p.y);
    y_hi = std::max(y_hi, p.y);
  }
  if (!std::isfinite(x_lo)) x_lo = x_hi = y_lo = y_hi = 1;
  const double plot_right = kWidth - kRight;
  const Scale x = log_x ? log_scale(x_lo, x_hi, kLeft, plot_right)
                        : linear_scale(x_lo, x_hi, kLeft, plot_right);
  const Scale y = linear_scale(y_lo, y_hi, kPlotHeight - kBottom, kTop);
  std::string out = open_figure(chart, height) + axes(chart, x, y);
  for (size_t i = 0; i < points.size(); ++i) {
    const Point& p = points[i];
    if (!std::isfinite(p.x) || !std::isfinite(p.y) || (log_x && p.x <= 0)) continue;
    const std::string colour = expert_colour(int64_t(i), 10);
    out += "<circle class=\"mark point\" cx=\"" + num(x(p.x)) + "\" cy=\"" + num(y(p.y)) +
           "\" r=\"6\" fill=\"" + colour + "\"><title>" +
           escape(p.label + ": " + format_number(p.x) + ", " + format_number(p.y)) +
           "</title></circle>";
    out += legend_entry(kLeft, legend_row(i), colour, p.label, false, true);
  }
  return out + close_figure(chart);
}

}  // namespace moe::svg
