#pragma once
// `moe eval`: a run folder's model in eval mode over its validation split (or a text file):
// loss, and per MoE layer load, drops, gates, specialization by domain and token, and routing
// consistency (noise agreement, consecutive tokens, saturation across kept checkpoints).
// eval_to_json() of the result is exactly what `moe eval --json` prints (the figures are
// defined in docs/FORMULAS.md, "Routing analysis").
#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/param_count.h"
#include "moe/load_metrics.h"

namespace moe {

struct EvalOptions {
  std::string model;  // run folder
  // A UTF-8 text file (or any corpus `moe train --corpus` reads: documents and their domains);
  // empty = the run's validation split.
  std::string text;
  // The factor drop_rate is computed for; nullopt = the config's training capacity_factor.
  std::optional<double> capacity_factor;
  // Tokens evaluated at most, in windows spread evenly over the source (all when it is shorter).
  int64_t max_tokens = 65536;
  // Tokens routed for the noise agreement and for each kept checkpoint (saturation).
  int64_t consistency_tokens = 4096;
  int64_t min_count = 10;       // a token needs this many top-1 hits at an expert to be listed
  int64_t passage_tokens = 64;  // tokens per passage
  int64_t top_tokens = 10;      // listed per expert
};

struct RateAndChance {
  double rate = 0, chance = 0;
};

struct DomainMatrix {
  std::vector<std::string> domains;
  std::vector<std::vector<double>> top1, all_k;  // [domain][expert], rows sum to 1
  double nmi_top1 = 0, nmi_all_k = 0;
};

struct ExpertToken {
  std::string token;  // the tokenizer's piece
  double lift = 0;
  int64_t count = 0;
};

struct LayerEval {
  int64_t layer = 0;  // block index (0-based, as metrics.jsonl)
  int64_t experts = 0, k = 0;
  std::vector<int64_t> counts;  // [E] assignments, all k, eval mode
  LoadMetrics load;
  int64_t assignments = 0, dropped = 0;
  double drop_rate = 0;  // dropped / assignments under the capacity factor
  double mean_top1_gate = 0;
  std::array<int64_t, 10> gate_histogram{};
  std::vector<std::string> alerts;
  std::optional<DomainMatrix> domain_matrix;         // with two or more domains
  std::vector<std::vector<ExpertToken>> top_tokens;  // [E]
  std::vector<std::array<double, 5>> token_classes;  // [E] shares, kTokenClassNames order
  RateAndChance consecutive;
  std::vector<std::pair<std::string, RateAndChance>> consecutive_per_domain;
  // Routed twice with the training noise / jitter on: {top1, topk_set} agreement; nullopt
  // when the router has neither (or selects by expert choice).
  std::optional<std::pair<double, double>> noise_agreement;
};

struct SaturationLayer {
  int64_t layer = 0;
  std::vector<double> changed_from_previous;  // top-1 changed, one per consecutive pair
  std::vector<double> same_as_final;          // top-k set equals the final checkpoint's
};
struct Saturation {
  std::vector<int64_t> steps;  // ascending, the final checkpoint last
  int64_t tokens = 0;
  std::vector<SaturationLayer> layers;
};

struct Passage {
  std::string domain;
  std::vector<std::string> tokens;         // pieces
  std::vector<std::vector<int32_t>> top1;  // [MoE layer][token]
};

struct EvalResult {
  std::string model, source;
  // Which checkpoint was evaluated: its step (-1 when the folder has no trainer state) and the
  // SHA-256 of its model.safetensors, so a saved evaluation is matched to its run (moe report).
  int64_t step = -1;
  std::string model_sha256;
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;
  int64_t seq_len = 0, batch_size = 0;    // the windows evaluated, as the run trained
  std::string router_type;                // the config's ("" for a dense model)
  std::optional<double> capacity_factor;  // drop_rate's; nullopt = dropless
  double train_capacity_factor = 0;
  std::optional<double> eval_capacity_factor;
  int64_t active_params = 0, total_params = 0;
  double active_flops_per_token = 0;
  std::vector<LayerEval> layers;
  std::optional<Saturation> saturation;
  std::vector<Passage> passages;
  std::vector<std::string> warnings;  // one line each, for the user
};

// Evaluates the run in options.model. Throws Error (one line) on a folder without a checkpoint,
// a text that is not UTF-8 or holds no token, and the like; writes nothing (beyond the recovery
// of an interrupted save that every reader of a run folder performs).
EvalResult evaluate_run(const EvalOptions& options);

// The `moe eval --json` object.
nlohmann::json eval_to_json(const EvalResult& result);

// Throws Error unless `eval` (read from `file`) is a whole `moe eval --json` object of the
// checkpoint now in run folder `dir`: every field the report reads, with its type, and the
// same step and model digest.
void require_eval_of_run(const nlohmann::json& eval, const std::string& file,
                         const std::string& dir);

// Quality against compute across runs (from each run's metrics.jsonl and config.json; no
// forward pass): `moe eval --model A --model B ...`.
struct CompareRun {
  std::string model;
  double final_val_loss = 0;  // NaN when never validated
  int64_t final_step = 0;
  int64_t training_tokens = 0;
  double active_flops_per_token = 0;
  int64_t total_params = 0, active_params = 0;
  std::vector<std::pair<int64_t, double>> val_curve;  // (training tokens, validation loss)
};
struct CompareResult {
  std::vector<CompareRun> runs;
  // reach[i][j]: training tokens run i needed to reach run j's final validation loss, linearly
  // interpolated between logged validation points; nullopt when it never did.
  std::vector<std::vector<std::optional<double>>> reach;
};
// Throws Error when a run lacks config.json, tokenizer.model or metrics.jsonl, or when two runs
// use different tokenizers (their losses would not be comparable).
CompareResult compare_runs(const std::vector<std::string>& models);

// Total and active parameters and forward FLOPs per token of the run in `dir` (config
// `config`), with attention counted at the sequence length it was trained at (its
// trainer_state.json; the default training length where there is none). `moe eval`'s
// comparison and `moe report` quote the same figures.
ParamCount run_param_count(const std::string& dir, const ModelConfig& config);
nlohmann::json compare_to_json(const CompareResult& result);

}  // namespace moe
