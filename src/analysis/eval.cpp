#include "analysis/eval.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>

#include "analysis/routing_metrics.h"
#include "model/checkpoint.h"
#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "run/checkpoint.h"
#include "run/run_folder.h"
#include "run/train_options.h"
#include "run/training_record.h"
#include "tensor/error.h"
#include "tensor/sha256.h"
#include "tensor/threads.h"
#include "text/data.h"
#include "text/token_cache.h"
#include "text/tokenizer.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

// The text evaluated: token ids, and for each position its document (-1: none) and domain.
struct Source {
  std::string name;
  std::vector<int32_t> ids;
  std::vector<int32_t> doc;          // [N] document index, -1 outside every document
  std::vector<int32_t> doc_domain;   // [documents] index into domains
  std::vector<std::string> domains;  // in order of first appearance
};

int32_t domain_index(Source& s, const std::string& domain) {
  const auto it = std::find(s.domains.begin(), s.domains.end(), domain);
  if (it != s.domains.end()) return static_cast<int32_t>(it - s.domains.begin());
  s.domains.push_back(domain);
  return static_cast<int32_t>(s.domains.size() - 1);
}

// The run's validation stream and the documents (with domains) documents.jsonl places in it
// (in the run's data/ or in the token cache entry it names, rebuilt there when gone:
// text/token_cache.h).
Source validation_source(const std::string& dir, int64_t vocab) {
  Source s;
  s.name = "valid";
  const std::string tokens_dir = run_tokens_dir(dir, /*rebuild=*/true);
  const TokenStream stream(tokens_dir + "/valid.tokens");
  s.ids.resize(stream.size());
  for (int64_t i = 0; i < stream.size(); ++i) {
    s.ids[i] = stream[i];
    if (s.ids[i] >= vocab)
      throw Error(tokens_dir + "/valid.tokens: token " + std::to_string(s.ids[i]) +
                  " is outside the model's vocabulary of " + std::to_string(vocab));
  }
  s.doc.assign(s.ids.size(), -1);
  const std::string index = tokens_dir + "/documents.jsonl";
  std::ifstream in(index);
  if (!in) throw Error("cannot open '" + index + "' (the run's document index)");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const std::string where = index + " line " + std::to_string(n);
    if (!j.is_object() || !j.contains("split") || !j.contains("domain") || !j.contains("begin") ||
        !j.contains("end") || !j["begin"].is_number_integer() || !j["end"].is_number_integer() ||
        !j["split"].is_string() || !j["domain"].is_string())
      throw Error(where + ": expected an object with split, domain, begin and end");
    if (j["split"] != "valid") continue;
    const int64_t begin = j["begin"], end = j["end"];
    if (begin < 0 || end < begin || end > stream.size())
      throw Error(where + ": span [" + std::to_string(begin) + ", " + std::to_string(end) +
                  ") lies outside valid.tokens (" + std::to_string(stream.size()) + " tokens)");
    const auto d = static_cast<int32_t>(s.doc_domain.size());
    s.doc_domain.push_back(domain_index(s, j["domain"]));
    std::fill(s.doc.begin() + begin, s.doc.begin() + end, d);
  }
  return s;
}

// A text file (or any corpus moe train reads), every document tokenised and ended by EOS.
Source text_source(const std::string& path, const Tokenizer& tokenizer) {
  Source s;
  s.name = path;
  if (fs::is_regular_file(path)) {
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.find_first_not_of(" \t\r\n") == std::string::npos)
      throw Error("text '" + path + "' is empty: it holds no token to evaluate");
  }
  for (const Document& d : read_corpus(path)) {
    std::vector<int32_t> ids = tokenizer.encode(d.text);
    if (ids.empty()) continue;
    ids.push_back(tokenizer.eos_id());
    const auto doc = static_cast<int32_t>(s.doc_domain.size());
    s.doc_domain.push_back(domain_index(s, d.domain));
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.doc.insert(s.doc.end(), ids.size(), doc);
  }
  if (s.ids.empty()) throw Error("text '" + path + "' is empty: it holds no token to evaluate");
  return s;
}

// One MoE layer's routes of the positions routed so far, per position.
struct LayerRoutes {
  std::vector<int32_t> top1;            // [N] first pick (-1: no expert)
  std::vector<float> top1_gate;         // [N]
  std::vector<int64_t> set_offsets{0};  // [N + 1] CSR into set_experts
  std::vector<int32_t> set_experts;     // each position's experts, ascending
  std::vector<int64_t> counts;          // [E] assignments
  int64_t assignments = 0, dropped = 0;
};

// Appends a forward's plan. Token choice's first pick is its top-1 (its highest selection
// score); expert choice's is the expert that gave the token its highest gate.
// capacity: drop_rate's per-expert capacity for this forward (-1: none).
void append_routes(const RoutingPlan& plan, int64_t capacity, LayerRoutes& r) {
  const int64_t T = plan.tokens, E = plan.experts, A = plan.assignments();
  const size_t base = r.top1.size();
  r.top1.resize(base + T, -1);
  r.top1_gate.resize(base + T, 0.0f);
  std::vector<int64_t> start(T + 1, 0), batch_counts(E, 0);
  for (int64_t a = 0; a < A; ++a) {
    ++start[plan.token[a] + 1];
    ++batch_counts[plan.expert[a]];
  }
  for (int64_t t = 0; t < T; ++t) start[t + 1] += start[t];
  std::vector<int32_t> experts(A);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t a = 0; a < A; ++a) {
    const int32_t t = plan.token[a];
    experts[fill[t]++] = plan.expert[a];
    if (plan.token_choice) {
      if (a % plan.top_k == 0) {
        r.top1[base + t] = plan.expert[a];
        r.top1_gate[base + t] = plan.gate[a];
      }
    } else if (r.top1[base + t] < 0 || plan.gate[a] > r.top1_gate[base + t]) {
      r.top1[base + t] = plan.expert[a];
      r.top1_gate[base + t] = plan.gate[a];
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    std::sort(experts.begin() + start[t], experts.begin() + start[t + 1]);
    r.set_offsets.push_back(r.set_offsets.back() + start[t + 1] - start[t]);
  }
  r.set_experts.insert(r.set_experts.end(), experts.begin(), experts.end());
  if (r.counts.empty()) r.counts.assign(E, 0);
  for (int64_t e = 0; e < E; ++e) r.counts[e] += batch_counts[e];
  r.assignments += A;
  if (plan.token_choice) r.dropped += assignments_over_capacity(batch_counts, capacity);
}

bool same_set(const LayerRoutes& a, const LayerRoutes& b, size_t n) {
  return std::equal(
      a.set_experts.begin() + a.set_offsets[n], a.set_experts.begin() + a.set_offsets[n + 1],
      b.set_experts.begin() + b.set_offsets[n], b.set_experts.begin() + b.set_offsets[n + 1]);
}

double same_set_share(const LayerRoutes& a, const LayerRoutes& b) {
  const size_t n = a.top1.size();
  if (n == 0) return 0;
  int64_t same = 0;
  for (size_t i = 0; i < n; ++i) same += same_set(a, b, i);
  return double(same) / double(n);
}

// Runs `windows` (start positions, each `seq` tokens followed by its next-token targets)
// through the model in batches of `batch`, collecting each MoE layer's routes. Returns the
// summed cross-entropy over all targets. drop_cf: the factor drop counts use (<= 0: none).
double route_windows(Transformer& model, const std::vector<int32_t>& ids,
                     const std::vector<int64_t>& windows, int64_t seq, int64_t batch, bool training,
                     double drop_cf, const std::vector<int64_t>& moe_layers,
                     std::vector<LayerRoutes>& routes) {
  routes.assign(moe_layers.size(), {});
  ModelStepOptions opt;
  opt.training = training;
  opt.compute_grad = false;
  std::vector<int32_t> tokens, targets;
  double loss_sum = 0;
  for (size_t first = 0; first < windows.size(); first += batch) {
    const int64_t b = std::min<int64_t>(batch, static_cast<int64_t>(windows.size() - first));
    tokens.resize(b * seq);
    targets.resize(b * seq);
    for (int64_t w = 0; w < b; ++w)
      for (int64_t s = 0; s < seq; ++s) {
        tokens[w * seq + s] = ids[windows[first + w] + s];
        targets[w * seq + s] = ids[windows[first + w] + s + 1];
      }
    loss_sum += model.forward(tokens, targets, b, seq, opt) * double(b * seq);
    for (size_t i = 0; i < moe_layers.size(); ++i) {
      const MoeLayer& layer = *model.moe_layer(moe_layers[i]);
      MoeConfig at_cf = layer.config();
      at_cf.capacity_factor = std::max(drop_cf, 0.0);
      append_routes(layer.plan(), at_cf.capacity(b * seq, /*training=*/true), routes[i]);
    }
  }
  return loss_sum;
}

std::vector<int64_t> moe_layer_indices(const Transformer& model) {
  std::vector<int64_t> out;
  for (int64_t l = 0; l < model.num_layers(); ++l)
    if (model.moe_layer(l)) out.push_back(l);
  return out;
}

// Kept checkpoints (moe train --keep-checkpoints) up to the run's own step, ascending.
std::vector<std::pair<int64_t, std::string>> kept_up_to(const std::string& dir, int64_t step) {
  std::vector<std::pair<int64_t, std::string>> out;
  for (auto& [s, path] : kept_checkpoints(dir))
    if (s <= step) out.emplace_back(s, path);
  return out;
}

std::string format_ratio(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, x >= 0.1 ? "%.1f" : "%.2f", x);
  return buf;
}

// Load per expert, drops, and an alert for each overloaded or collapsed expert.
void analyse_load(const LayerRoutes& r, LayerEval& out) {
  out.counts = r.counts;
  out.load = load_metrics(r.counts);
  out.assignments = r.assignments;
  out.dropped = r.dropped;
  out.drop_rate = r.assignments > 0 ? double(r.dropped) / double(r.assignments) : 0.0;
  const double mean =
      out.load.max_over_mean > 0
          ? double(*std::max_element(r.counts.begin(), r.counts.end())) / out.load.max_over_mean
          : 0.0;
  for (int64_t e : out.load.overloaded)
    out.alerts.push_back("expert " + std::to_string(e) + " holds " +
                         format_ratio(double(r.counts[e]) / mean) + "x the mean load");
  for (int64_t e : out.load.starved)
    out.alerts.push_back("expert " + std::to_string(e) + " collapsed: " +
                         format_ratio(mean > 0 ? double(r.counts[e]) / mean : 0.0) +
                         "x the mean load");
}

// The first pick's gate: its mean and histogram over the routed positions.
void analyse_top1_gates(const LayerRoutes& r, LayerEval& out) {
  std::vector<float> gates;
  double gate_sum = 0;
  for (size_t n = 0; n < r.top1.size(); ++n)
    if (r.top1[n] >= 0) {
      gates.push_back(r.top1_gate[n]);
      gate_sum += r.top1_gate[n];
    }
  out.mean_top1_gate = gates.empty() ? 0.0 : gate_sum / double(gates.size());
  out.gate_histogram = gate_histogram(gates);
}

// Domain of each evaluated position (-1: none). pos: [N] positions in src -> [N].
std::vector<int32_t> position_domains(const Source& src, const std::vector<int64_t>& pos,
                                      int64_t N) {
  std::vector<int32_t> out(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    const int32_t d = src.doc[pos[n]];
    out[n] = d < 0 ? -1 : src.doc_domain[d];
  }
  return out;
}

// Domain x expert shares (top-1 and all k) and their NMI, when two domains or more hold
// evaluated tokens. Returns those domains, in source order.
std::vector<int64_t> analyse_domains(const LayerRoutes& r, const Source& src,
                                     const std::vector<int32_t>& domain_of, LayerEval& out) {
  const int64_t E = out.experts, N = static_cast<int64_t>(r.top1.size());
  const int64_t D = static_cast<int64_t>(src.domains.size());
  std::vector<int64_t> top1_table(D * E, 0), allk_table(D * E, 0), domain_tokens(D, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int32_t d = domain_of[n];
    if (d < 0) continue;
    ++domain_tokens[d];
    if (r.top1[n] >= 0) ++top1_table[d * E + r.top1[n]];
    for (int64_t i = r.set_offsets[n]; i < r.set_offsets[n + 1]; ++i)
      ++allk_table[d * E + r.set_experts[i]];
  }
  std::vector<int64_t> present;  // domains with evaluated tokens, in source order
  for (int64_t d = 0; d < D; ++d)
    if (domain_tokens[d] > 0) present.push_back(d);
  if (present.size() < 2) return present;
  DomainMatrix m;
  std::vector<int64_t> t1, ak;
  for (int64_t d : present) {
    m.domains.push_back(src.domains[d]);
    auto shares = [&](const std::vector<int64_t>& table, std::vector<int64_t>& kept) {
      std::vector<double> row(E, 0.0);
      int64_t sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += table[d * E + e];
      for (int64_t e = 0; e < E; ++e) {
        kept.push_back(table[d * E + e]);
        row[e] = sum > 0 ? double(table[d * E + e]) / double(sum) : 0.0;
      }
      return row;
    };
    m.top1.push_back(shares(top1_table, t1));
    m.all_k.push_back(shares(allk_table, ak));
  }
  const auto rows = static_cast<int64_t>(present.size());
  m.nmi_top1 = normalized_mutual_information(t1, rows, E);
  m.nmi_all_k = normalized_mutual_information(ak, rows, E);
  out.domain_matrix = std::move(m);
  return present;
}

// Tokens and token classes by top-1 expert. The (expert, token) counts are kept sparse (an
// [E, V] table would be large for many experts and a big vocabulary) and laid out one expert
// at a time in a [V] buffer for the lift.
void analyse_tokens(const LayerRoutes& r, const Source& src, const std::vector<int64_t>& pos,
                    const std::vector<std::string>& pieces, const std::vector<int>& piece_class,
                    const EvalOptions& o, LayerEval& out) {
  const int64_t E = out.experts, N = static_cast<int64_t>(r.top1.size());
  const int64_t V = static_cast<int64_t>(pieces.size());
  std::vector<int64_t> totals(V, 0), pairs;  // pairs: e * V + v per top-1 position
  std::vector<std::array<int64_t, 5>> classes(E, std::array<int64_t, 5>{});
  for (int64_t n = 0; n < N; ++n) {
    const int32_t e = r.top1[n];
    if (e < 0) continue;
    const int32_t v = src.ids[pos[n]];
    pairs.push_back(int64_t{e} * V + v);
    ++totals[v];
    ++classes[e][piece_class[v]];
  }
  std::sort(pairs.begin(), pairs.end());
  out.top_tokens.resize(E);
  out.token_classes.assign(E, std::array<double, 5>{});
  std::vector<int64_t> at_expert(V, 0);
  auto next = pairs.begin();
  for (int64_t e = 0; e < E; ++e) {
    const auto end = std::lower_bound(next, pairs.end(), (e + 1) * V);
    for (auto it = next; it != end; ++it) ++at_expert[*it - e * V];
    for (const TokenLift& t :
         top_tokens_by_lift(at_expert, totals, o.min_count, static_cast<size_t>(o.top_tokens)))
      out.top_tokens[e].push_back({pieces[t.token], t.lift, t.count});
    for (auto it = next; it != end; ++it) at_expert[*it - e * V] = 0;
    next = end;
    int64_t sum = 0;
    for (int64_t c : classes[e]) sum += c;
    for (size_t c = 0; c < 5; ++c)
      out.token_classes[e][c] = sum > 0 ? double(classes[e][c]) / double(sum) : 0.0;
  }
}

// How often consecutive positions keep their top-1 expert, against chance: overall and within
// each domain of `present`.
void analyse_repeats(const LayerRoutes& r, const Source& src, const std::vector<int64_t>& segment,
                     const std::vector<int32_t>& domain_of, const std::vector<int64_t>& present,
                     LayerEval& out) {
  const int64_t E = out.experts, N = static_cast<int64_t>(r.top1.size());
  const RepeatRate all = consecutive_repeats(r.top1, segment, E);
  out.consecutive = {all.rate, all.chance};
  for (int64_t d : present) {
    std::vector<int32_t> t;
    std::vector<int64_t> seg;
    for (int64_t n = 0; n < N; ++n)
      if (domain_of[n] == d) {
        t.push_back(r.top1[n]);
        seg.push_back(segment[n]);
      }
    const RepeatRate rd = consecutive_repeats(t, seg, E);
    out.consecutive_per_domain.emplace_back(src.domains[d], RateAndChance{rd.rate, rd.chance});
  }
}

void analyse_layer(const LayerRoutes& r, const Source& src, const std::vector<int64_t>& pos,
                   const std::vector<int64_t>& segment, const std::vector<std::string>& pieces,
                   const std::vector<int>& piece_class, const EvalOptions& o, LayerEval& out) {
  const auto N = static_cast<int64_t>(r.top1.size());
  analyse_load(r, out);
  analyse_top1_gates(r, out);
  const std::vector<int32_t> domain_of = position_domains(src, pos, N);
  const std::vector<int64_t> present = analyse_domains(r, src, domain_of, out);
  analyse_tokens(r, src, pos, pieces, piece_class, o, out);
  analyse_repeats(r, src, segment, domain_of, present, out);
}

// A piece as it reads: byte pieces of printable ASCII become their character.
std::string display_piece(const std::string& piece) {
  if (piece.size() == 6 && piece.starts_with("<0x") && piece.ends_with('>')) {
    int byte = 0;
    std::from_chars(piece.data() + 3, piece.data() + 5, byte, 16);
    if (byte >= 0x20 && byte < 0x7F) return std::string(1, static_cast<char>(byte));
  }
  return piece;
}

}  // namespace

namespace {

// The windows a routing comparison runs: the token stream, the windows' starts, their shape
// and the MoE layers whose routes it records.
struct WindowSet {
  const std::vector<int32_t>& ids;
  const std::vector<int64_t>& windows;
  int64_t seq, batch;
  const std::vector<int64_t>& moe_layers;
};

// The starts of the windows of `seq` tokens evaluated in a stream of N: as many as
// max_tokens allows (one at least), spread evenly over the stream as validation spreads them.
std::vector<int64_t> evaluation_windows(int64_t N, int64_t seq, int64_t max_tokens) {
  const int64_t available = (N - 1) / seq;
  const int64_t count = std::clamp<int64_t>(max_tokens / seq, 1, available);
  std::vector<int64_t> windows(count);
  for (int64_t i = 0; i < count; ++i) windows[i] = eval_window_start(i, count, available, seq);
  return windows;
}

void check_eval_options(const EvalOptions& o) {
  if (o.max_tokens < 1 || o.consistency_tokens < 1 || o.min_count < 1 || o.passage_tokens < 1)
    throw Error("eval: token limits and the minimum count must be positive");
  if (o.capacity_factor && !(*o.capacity_factor >= 0 && *o.capacity_factor <= 1000))
    throw Error("--capacity-factor must lie in [0, 1000] (0 = dropless)");
}

// What was evaluated: the run, its checkpoint, the source and windows, and the model's
// parameters and FLOPs at the window length.
EvalResult describe_evaluation(const std::string& dir, int64_t run_step, const std::string& source,
                               const ModelConfig& config, int64_t seq, int64_t batch) {
  EvalResult res;
  res.model = dir;
  res.step = run_step == std::numeric_limits<int64_t>::max() ? -1 : run_step;
  res.model_sha256 = sha256_file(dir + "/model.safetensors");
  res.source = source;
  res.seq_len = seq;
  res.batch_size = batch;
  ArchSpec arch = arch_from_model_config(config, dir);
  arch.context = seq;
  const ParamCount pc = count_params(arch);
  res.active_params = pc.active;
  res.total_params = pc.total;
  res.active_flops_per_token = pc.forward_flops_per_token;
  return res;
}

// Each id's piece as the report shows it, and its token class.
void vocabulary_pieces(const Tokenizer& tokenizer, int64_t vocab, std::vector<std::string>& pieces,
                       std::vector<int>& piece_class) {
  pieces.resize(static_cast<size_t>(vocab));
  piece_class.resize(static_cast<size_t>(vocab));
  for (int32_t v = 0; v < vocab; ++v) {
    pieces[v] = display_piece(tokenizer.piece(v));
    piece_class[v] = static_cast<int>(classify_piece(tokenizer.piece(v)));
  }
}

// Noisy or jittered routers: how often two routings of `subset` in training mode agree (top-1,
// and the whole top-k set), per MoE layer.
void add_noise_agreement(Transformer& model, const WindowSet& subset,
                         std::vector<LayerEval>& layers) {
  const auto& [ids, few, seq, batch, moe_layers] = subset;
  std::vector<LayerRoutes> first, second;
  route_windows(model, ids, few, seq, batch, true, 0, moe_layers, first);
  route_windows(model, ids, few, seq, batch, true, 0, moe_layers, second);
  for (size_t i = 0; i < moe_layers.size(); ++i)
    layers[i].noise_agreement = {1.0 - changed_share(first[i].top1, second[i].top1),
                                 same_set_share(first[i], second[i])};
}

// The routing figures of the result that come from the config (router, capacity factors, a
// warning for batch-dependent validation); returns the capacity factor drops are counted at.
double describe_routing(const MoeConfig& mc, const EvalOptions& o, EvalResult& res) {
  res.router_type = to_string(mc.router_type);
  res.train_capacity_factor = mc.capacity_factor;
  res.eval_capacity_factor = mc.eval_capacity_factor;
  const double drop_cf = o.capacity_factor.value_or(mc.capacity_factor);
  if (drop_cf > 0 && mc.router_type != RouterType::ExpertChoice) res.capacity_factor = drop_cf;
  if (mc.eval_capacity_factor && *mc.eval_capacity_factor != mc.capacity_factor) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "the run evaluates with eval_capacity_factor %g but trained with "
                  "capacity_factor %g: its validation loss drops assignments by batch",
                  *mc.eval_capacity_factor, mc.capacity_factor);
    res.warnings.push_back(buf);
  }
  return drop_cf;
}

// Routing saturation over the run's kept checkpoints (and its own, last), on `subset`;
// nullopt when the run kept none.
std::optional<Saturation> routing_saturation(const std::string& dir, int64_t run_step,
                                             Transformer& model, const WindowSet& subset) {
  const auto kept = kept_up_to(dir, run_step);
  if (kept.empty()) return std::nullopt;
  const auto& [ids, few, seq, batch, moe_layers] = subset;
  Saturation sat;
  sat.tokens = static_cast<int64_t>(few.size()) * seq;
  std::vector<std::vector<LayerRoutes>> at;  // [checkpoint][layer]
  for (const auto& [step, path] : kept) {
    // The run's config with the kept weights: routes are compared under the same options
    // (a later edit of config.json, such as eval_capacity_factor, applies to all).
    LoadedModel k = load_model(dir, path + "/model.safetensors");
    at.emplace_back();
    route_windows(*k.model, ids, few, seq, batch, false, 0, moe_layers, at.back());
    sat.steps.push_back(step);
  }
  if (sat.steps.back() != run_step && run_step != std::numeric_limits<int64_t>::max()) {
    at.emplace_back();  // the run's own checkpoint is the final one
    route_windows(model, ids, few, seq, batch, false, 0, moe_layers, at.back());
    sat.steps.push_back(run_step);
  }
  for (size_t i = 0; i < moe_layers.size(); ++i) {
    SaturationLayer sl;
    sl.layer = moe_layers[i];
    for (size_t c = 0; c < at.size(); ++c) {
      if (c > 0)
        sl.changed_from_previous.push_back(changed_share(at[c - 1][i].top1, at[c][i].top1));
      sl.same_as_final.push_back(same_set_share(at[c][i], at.back()[i]));
    }
    sat.layers.push_back(std::move(sl));
  }
  return sat;
}

// One passage per domain: from the first evaluated position of the domain, the following
// positions of the same document that follow it in the source (across windows that abut).
// pos[n]: where evaluated position n lies in the source; routes: per MoE layer.
std::vector<Passage> domain_passages(const Source& src, const std::vector<int64_t>& pos,
                                     const std::vector<std::string>& pieces,
                                     const std::vector<LayerRoutes>& routes,
                                     int64_t passage_tokens) {
  std::vector<Passage> passages;
  const auto tokens = static_cast<int64_t>(pos.size());
  std::vector<bool> done(src.domains.size(), false);
  for (int64_t n = 0; n < tokens; ++n) {
    const int32_t doc = src.doc[pos[n]];
    const int32_t d = doc < 0 ? -1 : src.doc_domain[doc];
    if (d < 0 || done[d]) continue;
    done[d] = true;
    Passage p;
    p.domain = src.domains[d];
    p.top1.resize(routes.size());
    for (int64_t j = n; j < tokens && j - n < passage_tokens && src.doc[pos[j]] == doc &&
                        (j == n || pos[j] == pos[j - 1] + 1);
         ++j) {
      p.tokens.push_back(pieces[src.ids[pos[j]]]);
      for (size_t i = 0; i < routes.size(); ++i) p.top1[i].push_back(routes[i].top1[j]);
    }
    passages.push_back(std::move(p));
  }
  return passages;
}

// The fp32 model and one forward at the windows the run trained with, checked against the
// memory this process may use before the model is loaded.
void require_evaluation_memory(const std::string& dir, const TrainOptions& trained) {
  const ModelConfig config = load_model_config(dir + "/config.json");
  TrainingShape shape;
  shape.batch = trained.batch_size;
  shape.seq = std::min(trained.seq_len, config.max_position_embeddings);
  shape.threads = thread_count();
  require_memory(estimate_evaluation_memory(config, shape),
                 "evaluating '" + dir + "' in batches of " + std::to_string(shape.batch) + " x " +
                     std::to_string(shape.seq),
                 available_memory(), "fewer --threads, or a machine with more memory");
}

// Per evaluated position n = w * seq + s of the windows: where it lies in the source (pos) and
// its segment (window, document).
void evaluated_positions(const Source& src, const std::vector<int64_t>& windows, int64_t seq,
                         std::vector<int64_t>& pos, std::vector<int64_t>& segment) {
  const auto count = static_cast<int64_t>(windows.size());
  pos.resize(count * seq);
  segment.resize(count * seq);
  for (int64_t w = 0; w < count; ++w)
    for (int64_t s = 0; s < seq; ++s) {
      const int64_t n = w * seq + s, p = windows[w] + s;
      pos[n] = p;
      segment[n] = w * (static_cast<int64_t>(src.doc_domain.size()) + 1) + src.doc[p] + 1;
    }
}

// Routing consistency (noise agreement, saturation over the kept checkpoints) on a subset of
// the evaluated windows `all`: about consistency_tokens tokens; nothing for a dense model.
void add_routing_consistency(const std::string& dir, int64_t run_step, const MoeConfig* mc,
                             Transformer& model, const WindowSet& all, int64_t consistency_tokens,
                             EvalResult& res) {
  const auto count = static_cast<int64_t>(all.windows.size());
  const int64_t consistency_count = std::clamp<int64_t>(consistency_tokens / all.seq, 1, count);
  std::vector<int64_t> few(consistency_count);  // spread over the evaluated windows
  for (int64_t i = 0; i < consistency_count; ++i)
    few[i] = all.windows[i * count / consistency_count];
  const WindowSet subset{all.ids, few, all.seq, all.batch, all.moe_layers};
  if (mc && mc->router_type != RouterType::ExpertChoice && (mc->uses_noise() || mc->jitter_eps > 0))
    add_noise_agreement(model, subset, res.layers);
  if (mc) res.saturation = routing_saturation(dir, run_step, model, subset);
}

}  // namespace

EvalResult evaluate_run(const EvalOptions& o) {
  const std::string& dir = o.model;
  require_run_folder(dir);
  check_eval_options(o);
  auto no_checkpoint = [&](const char* file) {
    return Error("'" + dir + "' holds no checkpoint (no " + file +
                 "); train one with moe train --out " + dir);
  };
  if (!fs::exists(dir + "/tokenizer.model")) throw no_checkpoint("tokenizer.model");
  // The text is read (and refused) before the run folder is touched: the tokenizer is written
  // once, before the first step, and never changes.
  const Tokenizer tokenizer(dir + "/tokenizer.model");
  std::optional<Source> text;
  if (!o.text.empty()) text = text_source(o.text, tokenizer);

  recover_for_reading(dir);
  if (!fs::exists(dir + "/model.safetensors")) throw no_checkpoint("model.safetensors");
  // Windows as the run trained: its sequence length and batch size.
  TrainOptions trained;
  int64_t run_step = std::numeric_limits<int64_t>::max();
  if (fs::exists(dir + "/trainer_state.json")) {
    const nlohmann::json state = read_json_file(dir + "/trainer_state.json", "trainer state");
    trained = train_options_from_json(state.at("options"));
    if (state.contains("step") && state["step"].is_number_integer()) run_step = state["step"];
  }
  require_evaluation_memory(dir, trained);
  LoadedModel m = load_model(dir);
  Transformer& model = *m.model;
  if (tokenizer.vocab_size() != m.config.vocab_size)
    throw Error("'" + dir + "/tokenizer.model' has " + std::to_string(tokenizer.vocab_size()) +
                " pieces but config.json's vocab_size is " + std::to_string(m.config.vocab_size));

  const Source src = text ? std::move(*text) : validation_source(dir, m.config.vocab_size);
  const auto N = static_cast<int64_t>(src.ids.size());
  if (N < 2)
    throw Error("'" + src.name + "' holds " + std::to_string(N) +
                " token(s); evaluation needs at least 2 (an input and its next token)");
  const int64_t seq = std::min({trained.seq_len, m.config.max_position_embeddings, N - 1});
  const int64_t batch = trained.batch_size;
  const std::vector<int64_t> windows = evaluation_windows(N, seq, o.max_tokens);
  const auto count = static_cast<int64_t>(windows.size());

  EvalResult res = describe_evaluation(dir, run_step, src.name, m.config, seq, batch);

  const std::vector<int64_t> moe_layers = moe_layer_indices(model);
  const MoeConfig* mc = m.config.moe ? &*m.config.moe : nullptr;
  const double drop_cf = mc ? describe_routing(*mc, o, res) : 0;

  std::vector<LayerRoutes> routes;
  const double loss_sum =
      route_windows(model, src.ids, windows, seq, batch, false, drop_cf, moe_layers, routes);
  res.tokens = count * seq;
  res.loss = loss_sum / double(res.tokens);
  res.perplexity = std::exp(res.loss);

  std::vector<int64_t> pos, segment;
  evaluated_positions(src, windows, seq, pos, segment);
  std::vector<std::string> pieces;
  std::vector<int> piece_class;
  vocabulary_pieces(tokenizer, m.config.vocab_size, pieces, piece_class);

  for (size_t i = 0; i < moe_layers.size(); ++i) {
    LayerEval le;
    le.layer = moe_layers[i];
    le.experts = mc->num_experts;
    le.k = mc->top_k;
    analyse_layer(routes[i], src, pos, segment, pieces, piece_class, o, le);
    res.layers.push_back(std::move(le));
  }

  add_routing_consistency(dir, run_step, mc, model, {src.ids, windows, seq, batch, moe_layers},
                          o.consistency_tokens, res);
  res.passages = domain_passages(src, pos, pieces, routes, o.passage_tokens);
  return res;
}

namespace {

// One MoE layer's object in the "layers" array of eval_to_json.
nlohmann::json layer_to_json(const LayerEval& l) {
  using nlohmann::json;
  json top_tokens = json::array(), classes = json::array();
  for (const auto& list : l.top_tokens) {
    json a = json::array();
    for (const ExpertToken& t : list)
      a.push_back({{"token", t.token}, {"lift", t.lift}, {"count", t.count}});
    top_tokens.push_back(a);
  }
  for (const auto& shares : l.token_classes) {
    json c = json::object();
    for (size_t i = 0; i < shares.size(); ++i) c[kTokenClassNames[i]] = shares[i];
    classes.push_back(c);
  }
  json per_domain = json::object();
  for (const auto& [d, rc] : l.consecutive_per_domain)
    per_domain[d] = {{"rate", rc.rate}, {"chance", rc.chance}};
  json j = {{"layer", l.layer},
            {"experts", l.experts},
            {"k", l.k},
            {"counts", l.counts},
            {"cv", l.load.cv},
            {"gini", l.load.gini},
            {"entropy", l.load.normalized_entropy},
            {"max_over_mean", l.load.max_over_mean},
            {"assignments", l.assignments},
            {"dropped", l.dropped},
            {"drop_rate", l.drop_rate},
            {"mean_top1_gate", l.mean_top1_gate},
            {"gate_histogram", l.gate_histogram},
            {"alerts", l.alerts},
            {"top_tokens", top_tokens},
            {"token_classes", classes},
            {"consecutive",
             {{"rate", l.consecutive.rate},
              {"chance", l.consecutive.chance},
              {"per_domain", per_domain}}}};
  if (l.domain_matrix) {
    const DomainMatrix& m = *l.domain_matrix;
    j["domain_matrix"] = {{"domains", m.domains}, {"top1", m.top1}, {"all_k", m.all_k}};
    j["nmi"] = {{"top1", m.nmi_top1}, {"all_k", m.nmi_all_k}};
  }
  j["noise_agreement"] = l.noise_agreement ? json{{"top1", l.noise_agreement->first},
                                                  {"topk_set", l.noise_agreement->second}}
                                           : json(nullptr);
  return j;
}

}  // namespace

nlohmann::json eval_to_json(const EvalResult& r) {
  using nlohmann::json;
  json layers = json::array();
  for (const LayerEval& l : r.layers) layers.push_back(layer_to_json(l));
  json out = {{"model", r.model},
              {"checkpoint", {{"step", r.step}, {"model_sha256", r.model_sha256}}},
              {"source", r.source},
              {"loss", r.loss},
              {"perplexity", r.perplexity},
              {"tokens", r.tokens},
              {"seq_len", r.seq_len},
              {"batch_size", r.batch_size},
              {"router_type", r.router_type},
              {"capacity_factor", r.capacity_factor ? json(*r.capacity_factor) : json(nullptr)},
              {"train_capacity_factor", r.train_capacity_factor},
              {"eval_capacity_factor",
               r.eval_capacity_factor ? json(*r.eval_capacity_factor) : json(nullptr)},
              {"active_params", r.active_params},
              {"total_params", r.total_params},
              {"active_flops_per_token", r.active_flops_per_token},
              {"layers", layers},
              {"warnings", r.warnings}};
  if (r.saturation) {
    json sl = json::array();
    for (const SaturationLayer& l : r.saturation->layers)
      sl.push_back({{"layer", l.layer},
                    {"changed_from_previous", l.changed_from_previous},
                    {"same_as_final", l.same_as_final}});
    out["saturation"] = {
        {"steps", r.saturation->steps}, {"tokens", r.saturation->tokens}, {"layers", sl}};
  }
  json passages = json::array();
  for (const Passage& p : r.passages)
    passages.push_back({{"domain", p.domain}, {"tokens", p.tokens}, {"top1", p.top1}});
  out["passages"] = passages;
  return out;
}

void require_eval_of_run(const nlohmann::json& eval, const std::string& file,
                         const std::string& dir) {
  const std::string where = "evaluation file '" + file + "'";
  if (!eval.is_object()) throw Error(where + " is not a JSON object");
  // What the report reads, by type: a file cut short or written by hand fails here, not as
  // "loss n/a" on the page.
  const std::pair<const char*, nlohmann::json::value_t> fields[] = {
      {"model", nlohmann::json::value_t::string},
      {"source", nlohmann::json::value_t::string},
      {"loss", nlohmann::json::value_t::number_float},
      {"tokens", nlohmann::json::value_t::number_integer},
      {"layers", nlohmann::json::value_t::array},
      {"checkpoint", nlohmann::json::value_t::object},
      {"passages", nlohmann::json::value_t::array}};
  for (const auto& [key, type] : fields) {
    if (!eval.contains(key))
      throw Error(where + " lacks '" + key + "': give the whole output of moe eval --json");
    const nlohmann::json& v = eval.at(key);
    const bool integer_type = type == nlohmann::json::value_t::number_integer;
    const bool ok = type == nlohmann::json::value_t::number_float ? v.is_number()
                    : integer_type                                ? v.is_number_integer()
                                                                  : v.type() == type;
    if (!ok) throw Error(where + ": '" + key + "' has the wrong type");
  }
  const nlohmann::json& checkpoint = eval.at("checkpoint");
  if (!checkpoint.contains("step") || !checkpoint["step"].is_number_integer() ||
      !checkpoint.contains("model_sha256") || !checkpoint["model_sha256"].is_string())
    throw Error(where + ": 'checkpoint' lacks its step or model_sha256");
  const std::string digest = sha256_file(dir + "/model.safetensors");
  if (checkpoint["model_sha256"] != digest) {
    const int64_t step = checkpoint["step"];
    throw Error(where + " evaluated '" + eval["model"].get<std::string>() + "' at step " +
                std::to_string(step) + ", another checkpoint than the one now in '" + dir +
                "': evaluate it again (moe eval -m " + dir + " --json > FILE) or leave --eval out");
  }
}

ParamCount run_param_count(const std::string& dir, const ModelConfig& config) {
  int64_t seq = std::min<int64_t>(TrainOptions{}.seq_len, config.max_position_embeddings);
  if (std::filesystem::exists(dir + "/trainer_state.json"))
    seq = train_options_from_json(
              read_json_file(dir + "/trainer_state.json", "trainer state").at("options"))
              .seq_len;
  ArchSpec arch = arch_from_model_config(config, dir);
  arch.context = seq;
  return count_params(arch);
}

CompareResult compare_runs(const std::vector<std::string>& models) {
  CompareResult res;
  std::vector<std::string> first_pieces;
  for (const std::string& dir : models) {
    for (const char* file : {"config.json", "tokenizer.model", "metrics.jsonl"})
      if (!fs::exists(dir + "/" + file))
        throw Error("'" + dir + "' is not a trained run (no " + file + ")");
    CompareRun run;
    run.model = dir;
    const ModelConfig config = load_model_config(dir + "/config.json");
    const Tokenizer tokenizer(dir + "/tokenizer.model");
    std::vector<std::string> pieces(tokenizer.vocab_size());
    for (int32_t v = 0; v < tokenizer.vocab_size(); ++v) pieces[v] = tokenizer.piece(v);
    if (first_pieces.empty()) {
      first_pieces = std::move(pieces);
    } else if (pieces != first_pieces) {
      std::string why =
          std::to_string(pieces.size()) + " pieces against " + std::to_string(first_pieces.size());
      if (pieces.size() == first_pieces.size())
        for (size_t v = 0; v < pieces.size(); ++v)
          if (pieces[v] != first_pieces[v]) {
            why = "piece " + std::to_string(v) + " is '" + pieces[v] + "' against '" +
                  first_pieces[v] + "'";
            break;
          }
      throw Error("runs '" + models.front() + "' and '" + dir + "' use different tokenizers (" +
                  why + "): their losses are not comparable");
    }
    const ParamCount pc = run_param_count(dir, config);
    run.active_flops_per_token = pc.forward_flops_per_token;
    run.total_params = pc.total;
    run.active_params = pc.active;
    const TrainingRecord record = read_training_record(dir);
    run.final_step = record.final_step;
    run.training_tokens = record.training_tokens;
    run.final_val_loss = record.final_val_loss;
    run.val_curve = record.val_curve;
    res.runs.push_back(std::move(run));
  }
  res.reach.assign(res.runs.size(), std::vector<std::optional<double>>(res.runs.size()));
  for (size_t i = 0; i < res.runs.size(); ++i)
    for (size_t j = 0; j < res.runs.size(); ++j)
      if (std::isfinite(res.runs[j].final_val_loss))
        res.reach[i][j] = tokens_to_reach(res.runs[i].val_curve, res.runs[j].final_val_loss);
  return res;
}

nlohmann::json compare_to_json(const CompareResult& r) {
  using nlohmann::json;
  json runs = json::array();
  for (size_t i = 0; i < r.runs.size(); ++i) {
    const CompareRun& c = r.runs[i];
    json reach = json::object();
    for (size_t j = 0; j < r.runs.size(); ++j)
      if (j != i) reach[r.runs[j].model] = r.reach[i][j] ? json(*r.reach[i][j]) : json(nullptr);
    json curve = json::array();
    for (const auto& [t, l] : c.val_curve) curve.push_back({{"tokens", t}, {"val_loss", l}});
    runs.push_back({{"model", c.model},
                    {"final_val_loss",
                     std::isfinite(c.final_val_loss) ? json(c.final_val_loss) : json(nullptr)},
                    {"final_step", c.final_step},
                    {"training_tokens", c.training_tokens},
                    {"active_flops_per_token", c.active_flops_per_token},
                    {"total_params", c.total_params},
                    {"active_params", c.active_params},
                    {"val_curve", curve},
                    {"tokens_to_reach", reach}});
  }
  return {{"runs", runs}};
}

}  // namespace moe
