// The report's chart primitives and page on hand-made data: each section present with its
// data marks, absent data replaced by a note, every piece of text escaped.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>

#include "analysis/report.h"
#include "analysis/svg.h"
#include "tensor/error.h"

namespace moe {
namespace {

using nlohmann::json;

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Every <svg>...</svg> of a page.
std::vector<std::string> svgs(const std::string& html) {
  std::vector<std::string> out;
  for (size_t at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1))
    out.push_back(html.substr(at, html.find("</svg>", at) - at));
  return out;
}

// The heights of the bars of a bar chart, in order.
std::vector<double> bar_heights(const std::string& svg_text) {
  static const std::regex bar(R"re(class="mark bar"[^>]*height="([0-9.]+)")re");
  std::vector<double> out;
  for (auto it = std::sregex_iterator(svg_text.begin(), svg_text.end(), bar);
       it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1]));
  return out;
}

// An evaluation in the schema `moe eval --json` prints: two MoE layers of 4 experts, with
// text that needs escaping in tokens, alerts and domain names.
json eval_fixture() {
  json layer = {{"layer", 1},
                {"experts", 4},
                {"k", 2},
                {"counts", {400, 100, 250, 250}},
                {"cv", 0.42},
                {"gini", 0.2},
                {"entropy", 0.93},
                {"max_over_mean", 1.6},
                {"drop_rate", 0.01},
                {"mean_top1_gate", 0.6},
                {"gate_histogram", {0, 0, 0, 0, 0, 50, 30, 10, 5, 5}},
                {"alerts", {"expert <1> & co"}},
                {"domain_matrix",
                 {{"domains", {"en", "c<h>"}},
                  {"top1", {{0.7, 0.1, 0.1, 0.1}, {0.1, 0.1, 0.4, 0.4}}},
                  {"all_k", {{0.4, 0.2, 0.2, 0.2}, {0.2, 0.2, 0.3, 0.3}}}}},
                {"nmi", {{"top1", 0.31}, {"all_k", 0.2}}},
                {"top_tokens",
                 {{{{"token", "<script>"}, {"lift", 4.0}, {"count", 9}}},
                  {{{"token", "\xE2\x96\x81the"}, {"lift", 2.0}, {"count", 9}}},
                  json::array(),
                  json::array()}},
                {"token_classes",
                 {{{"letters", 0.5}, {"digits", 0.5}},
                  {{"letters", 0.0}, {"digits", 0.0}},
                  json::object(),
                  json::object()}},
                {"consecutive",
                 {{"rate", 0.4},
                  {"chance", 0.27},
                  {"per_domain", {{"en", {{"rate", 0.45}, {"chance", 0.3}}}}}}},
                {"noise_agreement", {{"top1", 0.95}, {"topk_set", 0.9}}}};
  json layer3 = layer;
  layer3["layer"] = 3;
  layer3["noise_agreement"] = nullptr;
  return {{"model", "runs/x"},
          {"source", "valid"},
          {"loss", 4.5},
          {"perplexity", 90.0},
          {"tokens", 1000},
          {"capacity_factor", 1.25},
          {"layers", {layer, layer3}},
          {"saturation",
           {{"steps", {100, 200, 300}},
            {"layers",
             {{{"layer", 1},
               {"changed_from_previous", {0.3, 0.1}},
               {"same_as_final", {0.6, 0.9, 1.0}}}}}}},
          {"passages",
           {{{"domain", "c"},
             {"tokens", {"#include", "\xE2\x96\x81<stdio.h>", "\xE2\x86\xB5", "a&&b", "\"q\""}},
             {"top1", {{0, 1, 2, 3, 0}, {3, 2, 1, 0, -1}}}}}}};  // -1: no expert took it
}

RunData fake_run(const std::string& name, bool moe_model, double final_loss) {
  RunData run;
  std::vector<json> lines;
  run.dir = "runs/" + name;
  run.name = name;
  run.config = moe_model ? default_model_config() : dense_baseline_model_config();
  run.params = count_params(arch_from_model_config(run.config, name));
  for (int step = 1; step <= 4; ++step) {
    json line = {{"step", step}, {"tokens", step * 1000}, {"loss", 6.0 - step * 0.1}};
    if (step % 2 == 0) line["val_loss"] = final_loss + (4 - step) * 0.2;
    if (moe_model)
      line["experts"] = {{{"layer", 1},
                          {"counts", {10 * step, 10, 10, 10}},
                          {"gini", 0.1 * step},
                          {"entropy", 1.0 - 0.1 * step},
                          {"max_over_mean", 1.0 + 0.5 * step}}};
    lines.push_back(line);
  }
  run.training = training_record(std::move(lines));
  return run;
}

TEST(Svg, EscapesEveryMarkupCharacter) {
  EXPECT_EQ(svg::escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(svg::escape("plain \xE2\x96\x81text"), "plain \xE2\x96\x81text");
}

TEST(Svg, FormatsNumbersWithSiSuffixes) {
  EXPECT_EQ(svg::format_number(1500), "1.5k");
  EXPECT_EQ(svg::format_number(2.5e9), "2.5G");
  EXPECT_EQ(svg::format_number(0.25), "0.25");
  EXPECT_EQ(svg::format_number(std::nan("")), "n/a");
}

TEST(Svg, TickLabelsStayDistinctOverANarrowRange) {
  // Two runs of nearly equal FLOPs (11.60M, 11.65M): 3 significant digits would print "11.6M"
  // under every x tick.
  const std::vector<svg::Point> points{{11.60e6, 6.43, "a"}, {11.65e6, 6.38, "b"}};
  const std::string chart = svg::scatter({"T", "x", "y", "h"}, points);
  std::vector<std::string> labels;
  for (size_t at = chart.find("class=\"tick\""); at != std::string::npos;
       at = chart.find("class=\"tick\"", at + 1)) {
    const size_t open = chart.find('>', at) + 1;
    labels.push_back(chart.substr(open, chart.find('<', open) - open));
  }
  ASSERT_GT(labels.size(), 4u);
  EXPECT_EQ(std::set<std::string>(labels.begin(), labels.end()).size(), labels.size());
  EXPECT_EQ(svg::format_number(11.626e6, 4), "11.63M");
}

TEST(Svg, SixtyFourExpertsGetDistinctColours) {
  std::set<std::string> colours;
  for (int e = 0; e < 64; ++e) colours.insert(svg::expert_colour(e, 64));
  EXPECT_EQ(colours.size(), 64u);
  std::set<std::string> few;
  for (int e = 0; e < 8; ++e) few.insert(svg::expert_colour(e, 8));
  EXPECT_EQ(few.size(), 8u);
  EXPECT_EQ(svg::text_colour_on("#000000"), "#fff");
  EXPECT_EQ(svg::text_colour_on("#ffffff"), "#000");
  EXPECT_EQ(svg::text_colour_on("#fde725"), "#000");  // viridis' yellow end
}

TEST(Svg, BarHeightsAreProportionalToValues) {
  const std::vector<std::string> categories{"a", "b", "c"};
  const std::vector<svg::BarSeries> series{{"s", {1.0, 2.0, 4.0}}};
  const std::string chart =
      svg::bar_chart({"T", "x (unit)", "y (unit)", "hint"}, categories, series);
  const std::vector<double> h = bar_heights(chart);
  ASSERT_EQ(h.size(), 3u);
  // Coordinates are written to 0.1 pixel: the ratios hold within 0.2 pixel.
  EXPECT_NEAR(h[1], 2 * h[0], 0.2);
  EXPECT_NEAR(h[2], 4 * h[0], 0.2);
  EXPECT_NE(chart.find(">x (unit)<"), std::string::npos);
  EXPECT_NE(chart.find(">y (unit)<"), std::string::npos);
  EXPECT_NE(chart.find("<figcaption class=\"hint\">hint</figcaption>"), std::string::npos);
}

TEST(Svg, HeatmapHasOneCellPerValueAndLineChartOnePathPerSeries) {
  svg::HeatmapData map;
  map.rows = {"r0", "r1", "r2"};
  map.columns = {"c0", "c1"};
  map.values = {{0, 1}, {2, 3}, {4, 5}};
  map.scale_label = "units";
  EXPECT_EQ(count(svg::heatmap({"T", "x", "y", "h"}, map), "class=\"mark cell\""), 6u);
  const std::vector<svg::Series> series{{"a", {1, 2, 3}, {1, 2, 1}}, {"b", {1, 2}, {3, 3}}};
  const std::string lines = svg::line_chart({"T", "x", "y", "h"}, series);
  EXPECT_EQ(count(lines, "class=\"mark series\""), 2u);
  EXPECT_NE(lines.find(">a<"), std::string::npos);  // legend
}

TEST(Report, EverySectionHasItsChartsAndDataMarks) {
  ReportInputs in;
  in.run = fake_run("moe", true, 4.6);
  in.compare.push_back(fake_run("dense", false, 4.8));
  in.eval = eval_fixture();
  const std::string html = render_report(in);
  for (const char* id : {"loss", "training-load", "eval-load", "specialization", "passages",
                         "consistency", "compute"})
    EXPECT_NE(html.find("<section id=\"" + std::string(id) + "\">"), std::string::npos) << id;
  const std::vector<std::string> charts = svgs(html);
  // loss 1; training load 3 (one layer); eval load 2 x 2 layers; specialization 1 x 2;
  // consistency 3; compute 3.
  EXPECT_EQ(charts.size(), 1u + 3 + 4 + 2 + 3 + 3);
  for (const std::string& chart : charts) {
    EXPECT_GT(count(chart, "class=\"mark"), 0u) << chart.substr(0, 200);
    EXPECT_NE(chart.find("class=\"title\""), std::string::npos);
  }
  EXPECT_EQ(count(html, "<figcaption class=\"hint\">"), charts.size());
  // The passage: one coloured span per token and layer, and one layer picker per MoE layer.
  EXPECT_EQ(count(html, "title=\"expert "), 2u * 5 - 1);
  EXPECT_EQ(count(html, "title=\"no expert\""), 1u);
  EXPECT_NE(html.find("dropped at capacity factor 1.25: 1.00%"), std::string::npos);
  EXPECT_NE(html.find("letters&nbsp;50% digits&nbsp;50%"), std::string::npos);
  EXPECT_EQ(count(html, "<i>no token has it as top-1</i>"), 2u);  // expert 1 in both layers
  EXPECT_NE(html.find("<td>en</td><td>0.450 (0.300)</td>"), std::string::npos);
  EXPECT_EQ(count(html, "type=\"radio\""), 2u);
  // The dense run's final loss 4.8 lies halfway between the MoE run's validations at 2000
  // (5.0) and 4000 tokens (4.6): reached at 3000, interpolated as moe eval does.
  EXPECT_NE(html.find("<td>moe</td><td>dense (4.8000)</td><td>3k</td>"), std::string::npos);
  EXPECT_NE(html.find("<td>dense</td><td>moe (4.6000)</td><td>not reached</td>"),
            std::string::npos);
}

TEST(Report, EscapesTokensAndNamesAndNeedsNoScript) {
  ReportInputs in;
  in.run = fake_run("a<b>&c", true, 4.6);
  in.eval = eval_fixture();
  const std::string html = render_report(in);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;"), std::string::npos);
  EXPECT_EQ(html.find("a<b>&c"), std::string::npos);
  EXPECT_NE(html.find("a&lt;b&gt;&amp;c"), std::string::npos);
  EXPECT_NE(html.find(">a&amp;&amp;b<"), std::string::npos);
  EXPECT_NE(html.find(">&quot;q&quot;<"), std::string::npos);
  EXPECT_NE(html.find("expert &lt;1&gt; &amp; co"), std::string::npos);
  EXPECT_NE(html.find("c&lt;h&gt;"), std::string::npos);
  EXPECT_NE(html.find("> &lt;stdio.h&gt;<"), std::string::npos);  // word mark shown as a space
  // Nothing fetched: no src attribute, no link element, no url() in the CSS.
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
}

TEST(Report, AbsentDataGivesNotesInsteadOfSections) {
  ReportInputs in;
  in.run = fake_run("dense", false, 4.8);
  const std::string html = render_report(in);
  EXPECT_NE(html.find("No evaluation given"), std::string::npos);
  EXPECT_NE(html.find("dense model: it has no experts"), std::string::npos);
  EXPECT_NE(html.find("One run only"), std::string::npos);
  EXPECT_EQ(html.find("id=\"passages\""), std::string::npos);

  // An evaluation without domains, passages or consistency figures.
  in.eval = eval_fixture();
  in.eval.erase("passages");
  in.eval.erase("saturation");
  for (json& l : in.eval["layers"]) l.erase("domain_matrix");
  in.eval["capacity_factor"] = nullptr;  // dropless
  const std::string partial = render_report(in);
  EXPECT_NE(partial.find("dropped (dropless: no capacity factor): 1.00%"), std::string::npos);
  EXPECT_NE(partial.find("no domain x expert matrix"), std::string::npos);
  EXPECT_NE(partial.find("holds no passages"), std::string::npos);
  EXPECT_NE(partial.find("kept no checkpoints"), std::string::npos);
}

TEST(Report, AFieldOfTheWrongTypeIsANamedError) {
  ReportInputs in;
  in.run = fake_run("moe", true, 4.6);
  in.eval = eval_fixture();
  in.eval["layers"][0]["counts"] = "many";
  EXPECT_THROW(render_report(in), Error);
}

TEST(Report, RunFoldersAreChecked) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "moe_test_report";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  EXPECT_THROW(load_run_data((dir / "absent").string()), Error);
  EXPECT_THROW(load_run_data(dir.string()), Error);  // no config.json
  std::ofstream(dir / "config.json") << R"({"vocab_size": 400, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 32})";
  EXPECT_THROW(load_run_data(dir.string()), Error);             // no metrics.jsonl
  std::ofstream(dir / "metrics.jsonl") << "{\"step\":1,\"tok";  // a torn line only
  EXPECT_THROW(load_run_data(dir.string()), Error);
  std::ofstream(dir / "metrics.jsonl") << "{\"step\":1,\"tokens\":32,\"loss\":6}\n{\"ste";
  const RunData run = load_run_data(dir.string() + "/");
  EXPECT_EQ(run.training.metrics.size(), 1u);
  EXPECT_EQ(run.name, "moe_test_report");

  RunData other = run;
  other.config.vocab_size = 500;
  try {
    check_same_vocabulary(run, other);
    ADD_FAILURE() << "a different vocab_size was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size 500"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
