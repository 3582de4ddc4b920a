#pragma once
// Chart primitives for the HTML report: each returns one <figure> holding an inline <svg>
// (title, axes with labels and ticks, the data, a legend or colour scale) and a one-line hint
// on how to read it. Every data mark (line, point, bar, heatmap cell) carries class "mark",
// so a test can count them. No script, font or image is referenced: the figure renders from
// the page alone.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe::svg {

// Text as HTML/XML: & < > " ' become entities (safe both in elements and in attributes).
std::string escape(std::string_view text);

// A number as a person reads it on an axis: 0.25, 3.5, 12k, 4.1M, 2.5G (3 significant digits,
// or `digits`).
std::string format_number(double v);
std::string format_number(double v, int digits);

// "#rrggbb" for expert `expert` of `experts`: Tableau's 10 categorical colours up to 10
// experts; beyond, 16 hues in 4 lightness/saturation tiers (64 distinct colours), neighbours
// far apart in hue. A negative expert (no expert) is grey.
std::string expert_colour(int64_t expert, int64_t experts);
// "#000" or "#fff", whichever reads better on `background` ("#rrggbb").
std::string text_colour_on(std::string_view background);
// A sequential colour (viridis) for t in [0, 1].
std::string scale_colour(double t);

struct Chart {
  std::string title;
  std::string x_label;  // with units, e.g. "training tokens"
  std::string y_label;  // with units, e.g. "loss (nats/token)"
  std::string hint;     // one line: how to read it
};

struct Series {
  std::string name;
  std::vector<double> x, y;  // same length; non-finite points are skipped
  int64_t colour = -1;       // index into the expert palette; -1: the series' position
  bool dashed = false;
  bool dots = false;  // a circle on every point (sparse series)
};

struct RefLine {
  double y = 0;
  std::string label;
};

struct LineOptions {
  bool log_x = false;
  std::optional<double> y_min, y_max;  // fixed range (default: the data's, padded)
  std::vector<RefLine> ref_lines;      // horizontal dashed red lines (alert thresholds)
};

std::string line_chart(const Chart& chart, std::span<const Series> series,
                       const LineOptions& options = {});

struct HeatmapData {
  std::vector<std::string> rows, columns;   // labels
  std::vector<std::vector<double>> values;  // [row][column]
  std::string scale_label;                  // what the colour means, with units
  double min = 0;
  std::optional<double> max;            // default: the largest value
  std::string row_title, column_title;  // the axes' names (the chart's y and x labels win)
};

std::string heatmap(const Chart& chart, const HeatmapData& data);

struct BarSeries {
  std::string name;
  std::vector<double> values;  // one per category
};

// Grouped bars: one group per category, one bar per series.
std::string bar_chart(const Chart& chart, std::span<const std::string> categories,
                      std::span<const BarSeries> series,
                      const std::vector<RefLine>& ref_lines = {});

struct Point {
  double x = 0, y = 0;
  std::string label;
};

std::string scatter(const Chart& chart, std::span<const Point> points, bool log_x = false);

}  // namespace moe::svg
