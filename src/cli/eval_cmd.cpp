#include "cli/eval_cmd.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "analysis/perplexity.h"
#include "analysis/routing_metrics.h"
#include "cli/prompt.h"
#include "infer/gguf_quantize.h"
#include "infer/open_model.h"
#include "model/hf_checkpoint.h"
#include "moe/load_metrics.h"
#include "tensor/error.h"

namespace moe::cli {

CLI::App* add_eval_command(CLI::App& app, EvalCommand& c) {
  CLI::App* eval = app.add_subcommand(
      "eval",
      "Loss and routing figures of a trained run (load, drops, specialization, consistency); "
      "with several --model, quality against compute; for a Hugging Face folder or a GGUF "
      "file (or a run with --ctx), the perplexity of --text as llama-perplexity measures it");
  eval->add_option("-m,--model", c.models,
                   "Run folder (repeat to compare runs), Hugging Face folder or GGUF file")
      ->required()
      ->check(CLI::ExistingPath);
  CLI::Option* text = eval->add_option(
      "--text", c.options.text,
      "A UTF-8 text file to evaluate (documents split on blank lines), instead of the split");
  text->check(CLI::ExistingPath);
  eval->add_option("--split", c.split, "The run's split to evaluate")
      ->capture_default_str()
      ->check(CLI::IsMember({"valid"}))
      ->excludes(text);
  eval->add_option("--capacity-factor", c.capacity_factor,
                   "Capacity factor the drop rate is computed for (0 = dropless; default: the "
                   "config's capacity_factor)")
      ->check(CLI::Range(0.0, 1000.0));
  eval->add_option("--max-tokens", c.options.max_tokens,
                   "Tokens evaluated at most, in windows spread over the whole source")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  eval->add_option("--consistency-tokens", c.options.consistency_tokens,
                   "Tokens routed twice for the noise agreement and once per kept checkpoint")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  eval->add_option("--min-count", c.options.min_count,
                   "Top-1 hits a token needs at an expert to be listed among its top tokens")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  eval->add_option("--ctx", c.ctx,
                   "Perplexity: tokens per chunk, each a fresh sequence scored on its second "
                   "half (llama-perplexity's -c; default 512, or the model's positions)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->needs(text);
  eval->add_option("--chunks", c.chunks, "Perplexity: chunks evaluated at most (default: all)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  eval->add_option("--quantize", c.quantize,
                   "Perplexity (of a run too, without --ctx): first quantize a run or Hugging Face "
                   "folder in memory to this type, each tensor as `moe quantize` types it (" +
                       gguf_file_type_names() + "); dense blocks between MoE blocks included")
      ->needs(text);
  eval->add_flag("--json", c.json, "Print one JSON object");
  return eval;
}

namespace {

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

// One row per MoE layer: load, drops, gates, specialization and consistency; then the alerts.
void print_layer_table(const EvalResult& r) {
  std::printf(
      "\nlayer  load per expert  cv     gini   entropy  max/mean  drop    top1 gate  "
      "NMI top1  same-next (chance)  noise agree\n");
  for (const LayerEval& l : r.layers) {
    std::printf("%5lld  |%s|%*s %.3f  %.3f  %.3f    %5.2f     %5.1f%%  %.3f      ",
                static_cast<long long>(l.layer), load_bars(l.counts).c_str(),
                static_cast<int>(std::max<int64_t>(0, 15 - l.experts - 2)), "", l.load.cv,
                l.load.gini, l.load.normalized_entropy, l.load.max_over_mean, 100.0 * l.drop_rate,
                l.mean_top1_gate);
    if (l.domain_matrix)
      std::printf("%.3f     ", l.domain_matrix->nmi_top1);
    else
      std::printf("-         ");
    std::printf("%.3f (%.3f)       ", l.consecutive.rate, l.consecutive.chance);
    if (l.noise_agreement)
      std::printf("%.3f / %.3f", l.noise_agreement->first, l.noise_agreement->second);
    else
      std::printf("-");
    std::printf("\n");
  }
  for (const LayerEval& l : r.layers)
    for (const std::string& a : l.alerts)
      std::printf("warning: layer %lld %s\n", static_cast<long long>(l.layer), a.c_str());
}

// A layer's experts' share of each domain's tokens and each expert's top tokens by lift.
void print_layer_specialization(const LayerEval& l) {
  std::printf("\nlayer %lld: experts' share of each domain's tokens (top-1, %%)\n",
              static_cast<long long>(l.layer));
  if (l.domain_matrix) {
    std::printf("  %-8s", "domain");
    for (int64_t e = 0; e < l.experts; ++e) std::printf(" %5lld", static_cast<long long>(e));
    std::printf("\n");
    const DomainMatrix& m = *l.domain_matrix;
    for (size_t d = 0; d < m.domains.size(); ++d) {
      std::printf("  %-8s", m.domains[d].c_str());
      for (double s : m.top1[d]) std::printf(" %5.1f", 100.0 * s);
      std::printf("\n");
    }
  }
  std::printf("  top tokens by lift (token lift):\n");
  for (int64_t e = 0; e < l.experts; ++e) {
    std::printf("  expert %2lld:", static_cast<long long>(e));
    if (l.top_tokens[e].empty()) std::printf(" -");
    for (size_t i = 0; i < l.top_tokens[e].size() && i < 6; ++i)
      std::printf(" %s %.1f", l.top_tokens[e][i].token.c_str(), l.top_tokens[e][i].lift);
    std::printf("\n");
  }
}

// Per MoE layer, the share of top-k sets at each kept checkpoint that match the last one's.
void print_saturation(const Saturation& s) {
  std::printf(
      "\nrouting saturation over kept checkpoints (%lld tokens): top-k set as at step "
      "%lld, per step\n",
      static_cast<long long>(s.tokens), static_cast<long long>(s.steps.back()));
  std::printf("  %-5s", "layer");
  for (int64_t step : s.steps) std::printf(" %7lld", static_cast<long long>(step));
  std::printf("\n");
  for (const SaturationLayer& l : s.layers) {
    std::printf("  %5lld", static_cast<long long>(l.layer));
    for (double v : l.same_as_final) std::printf(" %6.1f%%", 100.0 * v);
    std::printf("\n");
  }
}

void print_eval(const EvalResult& r) {
  const std::string source = r.source == "valid" ? "the validation split" : "'" + r.source + "'";
  std::printf("run %s on %s: %lld tokens (windows of %lld)\n", r.model.c_str(), source.c_str(),
              static_cast<long long>(r.tokens), static_cast<long long>(r.seq_len));
  std::printf("loss %.4f  perplexity %.1f\n", r.loss, r.perplexity);
  // Attention's FLOPs grow with the context: counted at the length the run trained at, as
  // `moe params --context S` counts them.
  std::printf(
      "parameters %s total, %s active per token; %s forward FLOPs per token (at context %lld)\n",
      human_count(double(r.total_params)).c_str(), human_count(double(r.active_params)).c_str(),
      human_count(r.active_flops_per_token).c_str(), static_cast<long long>(r.seq_len));
  if (r.layers.empty()) return;
  if (r.capacity_factor)
    std::printf(
        "drop: share of assignments capacity factor %g would drop (batches of %lld x %lld "
        "tokens)\n",
        *r.capacity_factor, static_cast<long long>(r.batch_size),
        static_cast<long long>(r.seq_len));
  else if (r.router_type == "expert_choice")
    std::printf("drop: none (expert choice: each expert takes its tokens, none is dropped)\n");
  else
    std::printf("drop: none (dropless; pass --capacity-factor to see what a capacity drops)\n");
  print_layer_table(r);
  for (const LayerEval& l : r.layers) print_layer_specialization(l);
  if (r.saturation) print_saturation(*r.saturation);
}

void print_compare(const CompareResult& r) {
  std::printf("%-24s %16s %18s %12s %16s\n", "run", "final valid loss", "active FLOPs/token",
              "total params", "training tokens");
  for (const CompareRun& c : r.runs) {
    char loss[32] = "-";
    if (std::isfinite(c.final_val_loss)) std::snprintf(loss, sizeof loss, "%.4f", c.final_val_loss);
    std::printf("%-24s %16s %18s %12s %16lld\n", c.model.c_str(), loss,
                human_count(c.active_flops_per_token).c_str(),
                human_count(double(c.total_params)).c_str(),
                static_cast<long long>(c.training_tokens));
  }
  std::printf("training tokens each run needed to reach another's final validation loss:\n");
  for (size_t i = 0; i < r.runs.size(); ++i)
    for (size_t j = 0; j < r.runs.size(); ++j) {
      if (i == j || !std::isfinite(r.runs[j].final_val_loss)) continue;
      std::printf("  %s to %.4f (%s): ", r.runs[i].model.c_str(), r.runs[j].final_val_loss,
                  r.runs[j].model.c_str());
      if (r.reach[i][j])
        std::printf("%.0f tokens\n", *r.reach[i][j]);
      else
        std::printf("not reached\n");
    }
}

int run_perplexity(const EvalCommand& c) {
  const std::string& path = c.models.front();
  require(!c.options.text.empty(),
          "moe eval -m " + path + ": give --text FILE, the text whose perplexity to measure");
  const std::string text = read_text_file(c.options.text, "--text");
  prepare_for_reading(path);
  OpenedModel m = open_model(path);
  const FolderTokenizer tokenizer = model_tokenizer(m, path);
  std::optional<GgufQuantizeSummary> typed;
  if (!c.quantize.empty()) {
    const std::optional<GgufFileType> type = parse_gguf_file_type(c.quantize);
    require(type.has_value(),
            "--quantize '" + c.quantize + "' is not one of " + gguf_file_type_names());
    typed = quantize_in_memory(m, path, *type, {});
  }
  const bool hugging_face = m.kind == ModelKind::HuggingFace;
  const std::vector<int32_t> ids = encode_prompt(path, hugging_face, tokenizer, text);
  const int64_t ctx = c.ctx > 0 ? c.ctx : std::min<int64_t>(512, m.config.max_position_embeddings);
  require_inference_memory(m.config, ctx, ctx, 0, 0, "moe eval");
  const PerplexityResult r =
      chunked_perplexity(*m.model, ids, ctx, prompt_bos(path, hugging_face, tokenizer), c.chunks);
  if (c.json) {
    nlohmann::json j = {{"model", path},
                        {"text", c.options.text},
                        {"perplexity", r.perplexity},
                        {"mean_nll", r.mean_nll},
                        {"nll_stderr", r.nll_stderr},
                        {"ctx", r.n_ctx},
                        {"chunks", r.chunks},
                        {"scored_tokens", r.scored_tokens},
                        {"text_tokens", r.text_tokens}};
    if (typed) {
      j["quantize"] = c.quantize;
      j["weight_bytes"] = typed->bytes;
      j["tensors_by_type"] = typed->tensors_by_type;
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  if (typed)
    std::printf("%s quantized in memory to %s: %.2f MB of weights\n", path.c_str(),
                c.quantize.c_str(), static_cast<double>(typed->bytes) / 1e6);
  std::printf(
      "%s on %s: perplexity %.4f (mean NLL %.6f +/- %.6f nats) over %lld chunks of %lld "
      "tokens, %lld tokens scored of %lld\n",
      path.c_str(), c.options.text.c_str(), r.perplexity, r.mean_nll, r.nll_stderr,
      static_cast<long long>(r.chunks), static_cast<long long>(r.n_ctx),
      static_cast<long long>(r.scored_tokens), static_cast<long long>(r.text_tokens));
  return 0;
}

}  // namespace

int run_eval(EvalCommand c) {
  const std::string& first = c.models.front();
  require(c.quantize.empty() || c.models.size() == 1,
          "--quantize measures one model's perplexity; give one --model");
  if (c.models.size() == 1 &&
      (c.ctx > 0 || !c.quantize.empty() || is_gguf_file(first) || is_hf_checkpoint(first)))
    return run_perplexity(c);
  if (c.models.size() > 1) {
    const CompareResult r = compare_runs(c.models);
    if (c.json)
      std::printf("%s\n", compare_to_json(r).dump().c_str());
    else
      print_compare(r);
    return 0;
  }
  c.options.model = c.models.front();
  if (c.capacity_factor >= 0) c.options.capacity_factor = c.capacity_factor;
  const EvalResult r = evaluate_run(c.options);
  for (const std::string& w : r.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  if (c.json)
    std::printf("%s\n", eval_to_json(r).dump().c_str());
  else
    print_eval(r);
  return 0;
}

}  // namespace moe::cli
