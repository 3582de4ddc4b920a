#include "analysis/report.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include "analysis/eval.h"
#include "analysis/svg.h"
#include "run/run_folder.h"
#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace {

using nlohmann::json;
using svg::escape;
using svg::format_number;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Tolerant readers of the evaluation object: an absent or null field reads as absent; a field
// of the wrong type is caught by render_report and named.
const json* field(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}
double number(const json& j, const char* key) {
  const json* f = field(j, key);
  return f ? f->get<double>() : kNaN;
}
const json& array_or_empty(const json& j, const char* key) {
  static const json empty = json::array();
  const json* f = field(j, key);
  return f && f->is_array() ? *f : empty;
}

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string note(const std::string& text) {
  return "<p class=\"note\">" + escape(text) + "</p>";
}

std::string section(const std::string& id, const std::string& title, const std::string& intro,
                    const std::string& body) {
  return "<section id=\"" + id + "\"><h2>" + escape(title) + "</h2>" +
         (intro.empty() ? "" : "<p class=\"intro\">" + escape(intro) + "</p>") + body +
         "</section>";
}

std::vector<std::string> expert_names(size_t experts) {
  std::vector<std::string> names;
  for (size_t e = 0; e < experts; ++e) names.push_back(std::to_string(e));
  return names;
}

// The final validation loss logged in metrics.jsonl; NaN when none.
double final_val_loss(const RunData& run) {
  return run.training.final_val_loss;
}

double final_tokens(const RunData& run) {
  return run.training.metrics.empty() ? kNaN : double(run.training.training_tokens);
}

// Training tokens to reach `target`, by moe eval's rule (run/training_record.h).
std::optional<double> tokens_to_reach(const RunData& run, double target) {
  return moe::tokens_to_reach(run.training.val_curve, target);
}

std::string describe_model(const ModelConfig& c) {
  if (!c.moe) return "dense, " + std::to_string(c.num_hidden_layers) + " blocks";
  return std::to_string(c.moe->num_experts) + " experts, top-" + std::to_string(c.moe->top_k) +
         ", " + std::to_string(c.num_moe_layers()) + " of " + std::to_string(c.num_hidden_layers) +
         " blocks MoE";
}

std::string summary_table(const ReportInputs& in) {
  std::string out =
      "<table><tr><th>run</th><th>model</th><th>total parameters</th><th>active parameters</th>"
      "<th>forward FLOPs per token (active, at the trained context)</th><th>training tokens</th>"
      "<th>final validation loss (nats/token)</th></tr>";
  std::vector<const RunData*> runs{&in.run};
  for (const RunData& r : in.compare) runs.push_back(&r);
  for (const RunData* r : runs)
    out += "<tr><td>" + escape(r->dir) + "</td><td>" + escape(describe_model(r->config)) +
           "</td><td>" + format_number(double(r->params.total)) + "</td><td>" +
           format_number(double(r->params.active)) + "</td><td>" +
           format_number(r->params.forward_flops_per_token) + "</td><td>" +
           format_number(final_tokens(*r)) + "</td><td>" + fixed(final_val_loss(*r), 4) +
           "</td></tr>";
  out += "</table>";
  if (!in.eval.is_null()) {
    const std::string source = field(in.eval, "source") && in.eval["source"].is_string()
                                   ? in.eval["source"].get<std::string>()
                                   : std::string("?");
    out += "<p>Evaluation of <b>" + escape(in.run.dir) + "</b> on " + escape(source) + ": loss " +
           fixed(number(in.eval, "loss"), 4) + " nats/token, perplexity " +
           fixed(number(in.eval, "perplexity"), 1) + ", over " +
           format_number(number(in.eval, "tokens")) + " tokens.</p>";
  }
  return out;
}

std::string loss_section(const ReportInputs& in) {
  std::vector<svg::Series> series;
  std::vector<const RunData*> runs{&in.run};
  for (const RunData& r : in.compare) runs.push_back(&r);
  for (size_t i = 0; i < runs.size(); ++i) {
    svg::Series train{runs[i]->name + " train", {}, {}, int64_t(i), false, false};
    svg::Series valid{runs[i]->name + " validation", {}, {}, int64_t(i), true, true};
    for (const json& line : runs[i]->training.metrics) {
      const json* t = field(line, "tokens");
      if (!t || !t->is_number()) continue;
      if (const json* l = field(line, "loss"); l && l->is_number()) {
        train.x.push_back(t->get<double>());
        train.y.push_back(l->get<double>());
      }
      if (const json* v = field(line, "val_loss"); v && v->is_number()) {
        valid.x.push_back(t->get<double>());
        valid.y.push_back(v->get<double>());
      }
    }
    series.push_back(std::move(train));
    series.push_back(std::move(valid));
  }
  const svg::Chart chart{"Training and validation loss", "training tokens",
                         "cross-entropy loss (nats/token)",
                         "Lower is better. Solid: loss of the training batch at each logged step; "
                         "dashed with dots: loss on held-out validation text. One colour per run."};
  return section("loss", "Loss curves", "", svg::line_chart(chart, series));
}

// The expert-load windows metrics.jsonl holds for one layer: counts and summary figures.
struct LoadHistory {
  int64_t layer = 0;
  std::vector<double> steps, gini, entropy, max_over_mean;
  std::vector<std::vector<double>> relative;  // [window][expert] load / mean load
};

std::vector<LoadHistory> load_histories(const RunData& run) {
  std::vector<LoadHistory> out;
  for (const json& line : run.training.metrics) {
    const json* experts = field(line, "experts");
    const json* step = field(line, "step");
    if (!experts || !experts->is_array() || !step || !step->is_number()) continue;
    for (const json& l : *experts) {
      const int64_t layer = l.value("layer", int64_t{-1});
      auto it = std::find_if(out.begin(), out.end(),
                             [&](const LoadHistory& h) { return h.layer == layer; });
      if (it == out.end()) {
        out.push_back({});
        out.back().layer = layer;
        it = out.end() - 1;
      }
      std::vector<double> counts = l.value("counts", std::vector<double>{});
      double sum = 0;
      for (double c : counts) sum += c;
      const double mean = counts.empty() ? 0 : sum / double(counts.size());
      for (double& c : counts) c = mean > 0 ? c / mean : 0;
      it->steps.push_back(step->get<double>());
      it->gini.push_back(number(l, "gini"));
      it->entropy.push_back(number(l, "entropy"));
      it->max_over_mean.push_back(number(l, "max_over_mean"));
      it->relative.push_back(std::move(counts));
    }
  }
  return out;
}

std::string training_load_section(const RunData& run) {
  const std::vector<LoadHistory> histories = load_histories(run);
  if (histories.empty())
    return section("training-load", "Expert load during training", "",
                   note(run.config.moe ? "metrics.jsonl of " + run.dir +
                                             " holds no expert-load report yet (they are "
                                             "written every --monitor-every steps)."
                                       : run.dir + " is a dense model: it has no experts."));
  std::string body;
  for (const LoadHistory& h : histories) {
    const std::string layer = "layer " + std::to_string(h.layer);
    svg::HeatmapData map;
    size_t experts = 0;
    for (const auto& w : h.relative) experts = std::max(experts, w.size());
    for (size_t e = 0; e < experts; ++e) map.rows.push_back(std::to_string(e));
    for (double s : h.steps) map.columns.push_back(format_number(s));
    map.values.assign(experts, std::vector<double>(h.steps.size(), kNaN));
    for (size_t w = 0; w < h.relative.size(); ++w)
      for (size_t e = 0; e < h.relative[w].size(); ++e) map.values[e][w] = h.relative[w][e];
    map.scale_label = "load / mean load";
    body += "<h3>" + escape(layer) + "</h3><div class=\"row\">";
    body += svg::heatmap({"Expert load over training, " + layer,
                          "training step (end of each monitoring window)", "expert",
                          "Each cell: the expert's share of assignments in that window relative "
                          "to an even share (1 = balanced). Bright rows hog tokens; dark rows "
                          "starve."},
                         map);
    const std::vector<svg::Series> balance{
        {"Gini", h.steps, h.gini, 0, false, true},
        {"normalised entropy", h.steps, h.entropy, 1, true, true}};
    svg::LineOptions unit;
    unit.y_min = 0;
    unit.y_max = 1;
    body += svg::line_chart({"Load balance over training, " + layer, "training step",
                             "Gini / entropy (0 to 1, no unit)",
                             "Balanced routing: Gini near 0 and entropy near 1. Gini rising or "
                             "entropy falling means a few experts take most tokens."},
                            balance, unit);
    svg::LineOptions alert;
    alert.y_min = 0;
    alert.ref_lines = {{3.0, "alert: 3x the mean"}};
    const std::vector<svg::Series> peak{
        {"busiest expert", h.steps, h.max_over_mean, 2, false, true}};
    body += svg::line_chart({"Busiest expert's load over training, " + layer, "training step",
                             "max load / mean load (x)",
                             "1 is perfectly even; above the red line (3x) one expert holds too "
                             "much of the load and its neighbours are underused."},
                            peak, alert);
    body += "</div>";
  }
  return section("training-load", "Expert load during training",
                 "From the trainer's expert-load reports in metrics.jsonl (one per "
                 "--monitor-every window), per MoE layer.",
                 body);
}

std::string eval_load_section(const json& eval) {
  const json& layers = array_or_empty(eval, "layers");
  if (layers.empty()) return "";
  // capacity_factor null (or absent): dropless, so drop_rate has no factor to name.
  const double factor = number(eval, "capacity_factor");
  const std::string drops = std::isfinite(factor)
                                ? "dropped at capacity factor " + svg::format_number(factor) + ": "
                                : "dropped (dropless: no capacity factor): ";
  std::string body;
  for (const json& l : layers) {
    const std::string layer = "layer " + std::to_string(l.value("layer", int64_t{-1}));
    const std::vector<double> counts = l.value("counts", std::vector<double>{});
    double sum = 0;
    for (double c : counts) sum += c;
    const std::vector<std::string> names = expert_names(counts.size());
    const std::vector<svg::BarSeries> bars{{"assignments", counts}};
    std::vector<svg::RefLine> mean_line;
    if (!counts.empty()) mean_line.push_back({sum / double(counts.size()), "even share"});
    body += "<h3>" + escape(layer) + "</h3><p class=\"figures\">CV " + fixed(number(l, "cv"), 3) +
            " &middot; Gini " + fixed(number(l, "gini"), 3) + " &middot; normalised entropy " +
            fixed(number(l, "entropy"), 3) + " &middot; max/mean " +
            fixed(number(l, "max_over_mean"), 2) + " &middot; " + drops +
            fixed(100.0 * number(l, "drop_rate"), 2) + "% &middot; mean top-1 gate " +
            fixed(number(l, "mean_top1_gate"), 3) + "</p>";
    for (const json& a : array_or_empty(l, "alerts"))
      if (a.is_string())
        body += "<p class=\"alert\">&#9888; " + escape(a.get<std::string>()) + "</p>";
    body += "<div class=\"row\">";
    body += svg::bar_chart(
        {"Tokens per expert (evaluation), " + layer, "expert", "assignments (tokens, all k)",
         "Each bar: the tokens routed to that expert. Bars near the dashed "
         "line are balanced; a bar near 0 is a collapsed expert."},
        names, bars, mean_line);
    const std::vector<double> histogram = l.value("gate_histogram", std::vector<double>{});
    if (!histogram.empty()) {
      std::vector<std::string> bins;
      for (size_t b = 0; b < histogram.size(); ++b)
        bins.push_back(fixed(double(b) / double(histogram.size()), 1));
      const std::vector<svg::BarSeries> gates{{"tokens", histogram}};
      body += svg::bar_chart(
          {"Top-1 gate weights, " + layer, "top-1 gate weight (bins of 0.1, left edge)", "tokens",
           "Confident routing piles up on the right (the top expert gets "
           "most of the weight); a pile on the left means an undecided router."},
          bins, gates);
    }
    body += "</div>";
  }
  return section("eval-load", "Expert load at evaluation",
                 "Routing of the evaluation text in eval mode (no noise), per MoE layer.", body);
}

std::string specialization_section(const json& eval) {
  std::string body;
  for (const json& l : array_or_empty(eval, "layers")) {
    const json* dm = field(l, "domain_matrix");
    if (!dm) continue;
    const std::string layer = "layer " + std::to_string(l.value("layer", int64_t{-1}));
    svg::HeatmapData map;
    map.rows = dm->value("domains", std::vector<std::string>{});
    map.values = dm->value("top1", std::vector<std::vector<double>>{});
    size_t experts = 0;
    for (const auto& row : map.values) experts = std::max(experts, row.size());
    for (size_t e = 0; e < experts; ++e) map.columns.push_back(std::to_string(e));
    map.scale_label = "share of the domain's tokens";
    const json* nmi = field(l, "nmi");
    const double nmi_top1 = nmi ? number(*nmi, "top1") : kNaN;
    const double nmi_all = nmi ? number(*nmi, "all_k") : kNaN;
    body += "<h3>" + escape(layer) +
            "</h3><p class=\"figures\">Normalised mutual information "
            "between domain and expert: " +
            fixed(nmi_top1, 3) + " (top-1), " + fixed(nmi_all, 3) +
            " (all k). 0: routing ignores the domain; 1: the domain decides the expert.</p>";
    body += svg::heatmap(
        {"Domain x expert (top-1), " + layer + ", NMI " + fixed(nmi_top1, 3), "expert", "domain",
         "Each row sums to 1: where a domain's tokens go. A bright cell alone "
         "in its row means that expert specialises in that domain."},
        map);
    const json& top = array_or_empty(l, "top_tokens");
    if (!top.empty()) {
      body +=
          "<table class=\"tokens\"><tr><th>expert</th><th>tokens most over-represented "
          "(lift over corpus frequency; &#9601; starts a word)</th><th>token classes (share of "
          "its tokens)</th></tr>";
      const json& classes = array_or_empty(l, "token_classes");
      for (size_t e = 0; e < top.size(); ++e) {
        const std::string colour = svg::expert_colour(int64_t(e), int64_t(top.size()));
        body += "<tr><td><span class=\"swatch\" style=\"background:" + colour + "\"></span>" +
                std::to_string(e) + "</td><td>";
        for (const json& t : top[e])
          body += "<code>" + escape(t.value("token", std::string())) + "</code>&nbsp;" +
                  fixed(number(t, "lift"), 1) + "x ";
        body += "</td><td>";
        if (e < classes.size()) {
          // All shares 0: no token has this expert as its top-1 (eval's convention).
          std::string shares;
          bool any = false;
          for (const auto& [key, shown] : {std::pair{"letters", "letters"},
                                           {"digits", "digits"},
                                           {"punctuation", "punctuation"},
                                           {"whitespace", "whitespace"},
                                           {"code_symbols", "code symbols"}})
            if (const double share = number(classes[e], key); std::isfinite(share)) {
              shares += std::string(shown) + "&nbsp;" + fixed(100.0 * share, 0) + "% ";
              any = any || share > 0;
            }
          body += any || shares.empty() ? shares : "<i>no token has it as top-1</i>";
        }
        body += "</td></tr>";
      }
      body += "</table>";
    }
  }
  if (body.empty())
    return section("specialization", "Specialization", "",
                   note("The evaluation has no domain x expert matrix (its text has no domain "
                        "labels): section omitted."));
  return section("specialization", "Specialization",
                 "Which domains and tokens each expert takes, on the validation split.", body);
}

// A display piece: sentencepiece's word-start mark becomes a space.
std::string display_piece(const std::string& piece) {
  std::string out;
  const std::string mark = "\xE2\x96\x81";  // U+2581
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, mark.size(), mark) == 0) {
      out += ' ';
      i += mark.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

std::string passages_section(const json& eval) {
  const json& passages = array_or_empty(eval, "passages");
  const json& layers = array_or_empty(eval, "layers");
  if (passages.empty() || layers.empty())
    return section("passages", "Tokens coloured by expert", "",
                   note("The evaluation holds no passages: section omitted."));
  // Radio buttons before the panels: `#pick-i:checked ~ #panel-i` shows one layer without a
  // script. Every panel is in the page, so a reader without CSS still sees them all.
  std::string style = "<style>";
  std::string tabs = "<div class=\"tabs\">";
  std::string panels;
  for (size_t li = 0; li < layers.size(); ++li) {
    const std::string i = std::to_string(li);
    const std::string layer = "layer " + std::to_string(layers[li].value("layer", int64_t{-1}));
    const int64_t experts = layers[li].value("experts", int64_t{0});
    style += "#pick-" + i + ":checked ~ #panel-" + i + "{display:block}#pick-" + i +
             ":checked + label{background:#333;color:#fff}";
    tabs += "<input type=\"radio\" name=\"passage-layer\" id=\"pick-" + i + "\"" +
            (li == 0 ? " checked" : "") + "><label for=\"pick-" + i + "\">" + escape(layer) +
            "</label>";
    std::string panel = "<div class=\"panel\" id=\"panel-" + i + "\"><p class=\"legend\">" +
                        escape(layer) + ", top-1 expert: ";
    for (int64_t e = 0; e < experts; ++e) {
      const std::string colour = svg::expert_colour(e, experts);
      panel += "<span class=\"tok\" style=\"background:" + colour +
               ";color:" + svg::text_colour_on(colour) + "\">" + std::to_string(e) + "</span> ";
    }
    panel += "</p>";
    for (const json& p : passages) {
      const std::vector<std::string> tokens = p.value("tokens", std::vector<std::string>{});
      const json& top1 = array_or_empty(p, "top1");
      const std::vector<int64_t> route =
          li < top1.size() ? top1[li].get<std::vector<int64_t>>() : std::vector<int64_t>{};
      panel += "<div class=\"passage\"><div class=\"domain\">" +
               escape(p.value("domain", std::string("?"))) + "</div><p class=\"text\">";
      for (size_t t = 0; t < tokens.size(); ++t) {
        const std::string shown = display_piece(tokens[t]);
        if (t < route.size() && route[t] < 0) {  // expert choice: a token no expert took
          panel += "<span class=\"tok unrouted\" title=\"no expert\">" + escape(shown) + "</span>";
        } else if (t < route.size()) {
          const std::string colour = svg::expert_colour(route[t], experts);
          panel += "<span class=\"tok\" style=\"background:" + colour +
                   ";color:" + svg::text_colour_on(colour) + "\" title=\"expert " +
                   std::to_string(route[t]) + "\">" + escape(shown) + "</span>";
        } else {
          panel += "<span class=\"tok\">" + escape(shown) + "</span>";
        }
        if (tokens[t] == "\xE2\x86\xB5") panel += "<br>";  // U+21B5, the tokenizer's newline
      }
      panel += "</p></div>";
    }
    panels += panel + "</div>";
  }
  style += "</style>";
  return section("passages", "Tokens coloured by expert",
                 "A passage of validation text per domain; each token's background is the expert "
                 "its top-1 route chose. Pick a layer with the buttons; hover a token for its "
                 "expert number.",
                 style + tabs + panels + "</div>");
}

// Consecutive-token rate against chance per domain and layer, as a table (domains x layers).
std::string per_domain_consecutive(const json& layers) {
  std::vector<std::string> domains;
  for (const json& l : layers)
    if (const json* c = field(l, "consecutive"))
      if (const json* d = field(*c, "per_domain"); d && d->is_object())
        for (const auto& [name, value] : d->items())
          if (std::find(domains.begin(), domains.end(), name) == domains.end())
            domains.push_back(name);
  if (domains.empty()) return "";
  std::string out =
      "<p>Consecutive tokens routed alike, per domain: the rate against its chance rate (sum of "
      "squared loads of that domain's tokens).</p><table><tr><th>domain</th>";
  for (const json& l : layers)
    out += "<th>layer " + std::to_string(l.value("layer", int64_t{-1})) + ": rate (chance)</th>";
  out += "</tr>";
  for (const std::string& d : domains) {
    out += "<tr><td>" + escape(d) + "</td>";
    for (const json& l : layers) {
      const json* c = field(l, "consecutive");
      const json* per = c ? field(*c, "per_domain") : nullptr;
      const json* v = per ? field(*per, d.c_str()) : nullptr;
      out += "<td>" +
             (v ? fixed(number(*v, "rate"), 3) + " (" + fixed(number(*v, "chance"), 3) + ")"
                : std::string("n/a")) +
             "</td>";
    }
    out += "</tr>";
  }
  return out + "</table>";
}

std::string consistency_section(const json& eval) {
  const json& layers = array_or_empty(eval, "layers");
  std::vector<std::string> names;
  svg::BarSeries rate{"consecutive tokens on the same expert", {}};
  svg::BarSeries chance{"chance (sum of squared loads)", {}};
  svg::BarSeries agree_top1{"top-1 agrees", {}}, agree_set{"top-k set agrees", {}};
  bool any_noise = false;
  for (const json& l : layers) {
    names.push_back("layer " + std::to_string(l.value("layer", int64_t{-1})));
    const json* c = field(l, "consecutive");
    rate.values.push_back(c ? number(*c, "rate") : kNaN);
    chance.values.push_back(c ? number(*c, "chance") : kNaN);
    const json* n = field(l, "noise_agreement");
    any_noise = any_noise || n;
    agree_top1.values.push_back(n ? number(*n, "top1") : kNaN);
    agree_set.values.push_back(n ? number(*n, "topk_set") : kNaN);
  }
  std::string body;
  if (!layers.empty()) {
    const std::vector<svg::BarSeries> consecutive{rate, chance};
    body += "<div class=\"row\">" +
            svg::bar_chart({"Consecutive tokens routed alike", "MoE layer", "share of token pairs",
                            "A first bar well above its chance bar: neighbouring tokens share "
                            "experts (routing follows context, not single tokens)."},
                           names, consecutive);
    if (any_noise) {
      const std::vector<svg::BarSeries> agreement{agree_top1, agree_set};
      body += svg::bar_chart({"Agreement under training noise", "MoE layer", "share of tokens",
                              "The same text routed twice with the training noise on: near 1, "
                              "the noise rarely changes a token's experts."},
                             names, agreement);
    } else {
      body += note("The router has no training noise or jitter: no agreement figure.");
    }
    body += "</div>" + per_domain_consecutive(layers);
  }
  const json* saturation = field(eval, "saturation");
  if (saturation) {
    const std::vector<double> steps = saturation->value("steps", std::vector<double>{});
    std::vector<svg::Series> lines;
    int64_t colour = 0;
    for (const json& l : array_or_empty(*saturation, "layers")) {
      const std::string layer = "layer " + std::to_string(l.value("layer", int64_t{-1}));
      std::vector<double> changed = l.value("changed_from_previous", std::vector<double>{});
      const std::vector<double> same = l.value("same_as_final", std::vector<double>{});
      const std::vector<double> later(steps.begin() + std::min<size_t>(1, steps.size()),
                                      steps.end());
      lines.push_back(
          {layer + ": top-1 changed since previous", later, changed, colour, false, true});
      lines.push_back({layer + ": same top-k as final", steps, same, colour, true, true});
      ++colour;
    }
    svg::LineOptions unit;
    unit.y_min = 0;
    unit.y_max = 1;
    body += svg::line_chart(
        {"Routing saturation across checkpoints", "checkpoint step", "share of validation tokens",
         "Solid falling to 0 and dashed rising to 1: routing has settled; "
         "experts keep the tokens they had."},
        lines, unit);
  } else {
    body += note(
        "No saturation figure: the run kept no checkpoints (train with "
        "--keep-checkpoints).");
  }
  if (layers.empty() && !saturation) return "";
  return section("consistency", "Routing consistency", "", body);
}

std::string compute_section(const ReportInputs& in) {
  std::vector<const RunData*> runs{&in.run};
  for (const RunData& r : in.compare) runs.push_back(&r);
  std::vector<svg::Point> by_flops, by_params;
  double p_lo = std::numeric_limits<double>::infinity(), p_hi = 0;
  for (const RunData* r : runs) {
    const double loss = final_val_loss(*r);
    by_flops.push_back({r->params.forward_flops_per_token, loss, r->name});
    by_params.push_back({double(r->params.total), loss, r->name});
    p_lo = std::min(p_lo, double(r->params.total));
    p_hi = std::max(p_hi, double(r->params.total));
  }
  std::string body = "<div class=\"row\">";
  body += svg::scatter({"Quality against compute per token", "forward FLOPs per token (active)",
                        "final validation loss (nats/token)",
                        "Lower and further left is better: a point below another at the same "
                        "FLOPs got more quality from the same compute per token."},
                       by_flops);
  body += svg::scatter(
      {"Quality against model size", "total parameters", "final validation loss (nats/token)",
       "MoE buys capacity with parameters that are not all active: compare the "
       "loss bought per stored parameter."},
      by_params, p_hi > 10 * p_lo);
  std::vector<svg::Series> valid;
  for (size_t i = 0; i < runs.size(); ++i) {
    svg::Series s{runs[i]->name, {}, {}, int64_t(i), false, true};
    for (const json& line : runs[i]->training.metrics) {
      const json* t = field(line, "tokens");
      const json* v = field(line, "val_loss");
      if (t && v && t->is_number() && v->is_number()) {
        s.x.push_back(t->get<double>());
        s.y.push_back(v->get<double>());
      }
    }
    valid.push_back(std::move(s));
  }
  body += svg::line_chart(
      {"Quality against training tokens", "training tokens", "validation loss (nats/token)",
       "The lower curve at a given number of tokens learned more from the same "
       "data; the horizontal gap between curves is the data one run saves."},
      valid);
  body += "</div>";
  if (runs.size() > 1) {
    body +=
        "<table><tr><th>run</th><th>reaches the final validation loss of</th><th>at (training "
        "tokens, interpolated between validations as moe eval does)</th><th>which that run needed "
        "(training "
        "tokens)</th></tr>";
    for (const RunData* a : runs)
      for (const RunData* b : runs) {
        if (a == b) continue;
        const double target = final_val_loss(*b);
        const std::optional<double> reached = tokens_to_reach(*a, target);
        body += "<tr><td>" + escape(a->name) + "</td><td>" + escape(b->name) + " (" +
                fixed(target, 4) + ")</td><td>" +
                (reached ? format_number(*reached) : std::string("not reached")) + "</td><td>" +
                format_number(tokens_to_reach(*b, target).value_or(kNaN)) + "</td></tr>";
      }
    body += "</table>";
  } else {
    body += note("One run only: add --compare RUN (e.g. a dense baseline) to line runs up.");
  }
  return section("compute", "Quality against compute",
                 "Validation loss of each run (from its metrics.jsonl) against its active "
                 "forward FLOPs per token, its total parameters and its training tokens.",
                 body);
}

constexpr const char* kStyle = R"(
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px auto;max-width:1400px;color:#222;
  background:#fff;line-height:1.4;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin:18px 0 6px}
nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0 12px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}
.row{display:flex;flex-wrap:wrap;gap:12px}
figure.chart{margin:8px 0;border:1px solid #e4e4e4;padding:6px;background:#fff;width:600px}
figcaption.hint{font-size:13px;color:#555;margin-top:4px}
svg text{font-family:"DejaVu Sans",Arial,sans-serif;font-size:12px;fill:#222}
svg text.title{font-size:15px;font-weight:bold}
svg text.axis-label{font-size:13px}svg text.tick{fill:#444}svg text.cell-value{font-size:11px}
svg text.ref-label{fill:#c00;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg line.axis{stroke:#444}svg line.grid{stroke:#e8e8e8}
svg line.ref{stroke:#c00;stroke-dasharray:5 3;stroke-width:1.5}
.note{color:#666;font-style:italic}.intro{color:#444}
.alert{color:#a00;margin:2px 0}.figures{margin:4px 0}
.tok{white-space:pre-wrap;padding:2px 0;border-radius:2px;box-shadow:inset -1px 0 0 #fff;font-family:"DejaVu Sans Mono",monospace;
  font-size:15px}
.legend .tok{padding:2px 6px}
.passage{margin:8px 0;border-left:4px solid #ddd;padding-left:8px}
.domain{font-weight:bold}.text{margin:2px 0;line-height:1.9}
.unrouted{background:#fff;color:#888;outline:1px dashed #aaa}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle}
.tabs>input{position:absolute;opacity:0}
.tabs>label{display:inline-block;padding:4px 12px;border:1px solid #999;border-radius:4px;
  margin:0 6px 6px 0;cursor:pointer}
.panel{display:none}
code{background:#f3f3f3;padding:0 3px;white-space:pre}
)";

}  // namespace

RunData load_run_data(const std::string& dir) {
  namespace fs = std::filesystem;
  require_run_folder(dir);
  RunData run;
  run.dir = dir;
  std::string trimmed = dir;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  run.name = fs::path(trimmed).filename().string();
  run.config = load_model_config(dir + "/config.json");
  run.params = run_param_count(dir, run.config);  // the figures `moe eval` quotes
  run.training = read_training_record(dir);
  return run;
}

void check_same_vocabulary(const RunData& run, const RunData& other) {
  if (run.config.vocab_size != other.config.vocab_size)
    throw Error("--compare run '" + other.dir + "' has vocab_size " +
                std::to_string(other.config.vocab_size) + ", '" + run.dir + "' has " +
                std::to_string(run.config.vocab_size) + ": losses over different vocabularies " +
                "do not compare");
  auto load = [](const RunData& r, sentencepiece::SentencePieceProcessor& sp) {
    const std::string path = r.dir + "/tokenizer.model";
    if (!sp.Load(path).ok()) throw Error("run '" + r.dir + "': cannot load tokenizer.model");
  };
  sentencepiece::SentencePieceProcessor a, b;
  load(run, a);
  load(other, b);
  bool same = a.GetPieceSize() == b.GetPieceSize();
  for (int i = 0; same && i < a.GetPieceSize(); ++i) same = a.IdToPiece(i) == b.IdToPiece(i);
  if (!same)
    throw Error("--compare run '" + other.dir + "' has another tokenizer than '" + run.dir +
                "' (different pieces): losses over different vocabularies do not compare");
}

std::string render_report(const ReportInputs& in) {
  try {
    std::string body = "<h1>MoE report: " + escape(in.run.dir) + "</h1>";
    body +=
        "<nav><a href=\"#loss\">loss</a><a href=\"#training-load\">load in training</a>"
        "<a href=\"#eval-load\">load at evaluation</a><a href=\"#specialization\">"
        "specialization</a><a href=\"#passages\">tokens by expert</a><a href=\"#consistency\">"
        "consistency</a><a href=\"#compute\">quality vs compute</a></nav>";
    body += summary_table(in);
    body += loss_section(in);
    body += training_load_section(in.run);
    if (in.eval.is_null()) {
      body += section("evaluation", "Evaluation", "",
                      note("No evaluation given: the load at evaluation, specialization, token "
                           "passages and consistency sections are omitted."));
    } else {
      const std::string load = eval_load_section(in.eval);
      body += load.empty() ? section("eval-load", "Expert load at evaluation", "",
                                     note("The evaluation has no MoE layer: section omitted."))
                           : load;
      body += specialization_section(in.eval);
      body += passages_section(in.eval);
      const std::string consistency = consistency_section(in.eval);
      body += consistency.empty()
                  ? section("consistency", "Routing consistency", "",
                            note("The evaluation has no consistency figures: section omitted."))
                  : consistency;
    }
    body += compute_section(in);
    return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>MoE report: " +
           escape(in.run.dir) + "</title><style>" + kStyle + "</style></head><body>" + body +
           "</body></html>\n";
  } catch (const json::exception& e) {
    throw Error("evaluation JSON of '" + in.run.dir + "': a field has an unexpected type (" +
                json_error_text(e) + ")");
  }
}

}  // namespace moe
