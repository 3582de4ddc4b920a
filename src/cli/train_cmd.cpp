#include "cli/train_cmd.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/generate_cmd.h"
#include "moe/load_metrics.h"
#include "tensor/blas_info.h"
#include "tensor/error.h"

namespace moe::cli {

CLI::App* add_train_command(CLI::App& app, TrainCommand& c) {
  TrainOptions& t = c.options;
  CLI::App* train =
      app.add_subcommand("train", "Train an MoE language model on the shipped corpus");
  train->add_option("--config", t.config, "Model config JSON (default: configs/default.json)")
      ->check(CLI::ExistingFile);
  train->add_option("--out", t.out_dir, "Run folder")->capture_default_str();
  train->add_option("--resume", c.resume, "Continue the run in this folder exactly")
      ->check(CLI::ExistingDirectory);
  c.steps_option = train->add_option("--steps", t.steps, "Optimizer steps")
                       ->capture_default_str()
                       ->check(CLI::PositiveNumber);
  train->add_option("--batch-size", t.batch_size, "Sequences per micro-batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--seq-len", t.seq_len, "Tokens per sequence")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  train->add_option("--grad-accum", t.grad_accum, "Micro-batches per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--lr", t.lr, "Peak learning rate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--min-lr", t.min_lr, "Final learning rate")->capture_default_str();
  train->add_option("--warmup", t.warmup, "Warm-up steps")->capture_default_str();
  train->add_option("--weight-decay", t.weight_decay, "AdamW decay")->capture_default_str();
  train->add_option("--grad-clip", t.grad_clip, "Global gradient-norm clip (0 = off)")
      ->capture_default_str();
  train->add_option("--eval-every", t.eval_every, "Steps between validations")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--eval-batches", t.eval_batches, "Validation batches")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--save-every", t.save_every, "Steps between checkpoints")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--monitor-every", t.monitor_every, "Steps between expert-load reports")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--log-every", t.log_every, "Steps between progress lines")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--corpus", t.corpus, "Corpus (gzip JSONL; default data/corpus.jsonl.gz)")
      ->check(CLI::ExistingFile);
  train->add_option("--seed", t.seed, "Run seed")->capture_default_str();
  train->add_flag("--quiet", t.quiet, "No progress bar");
  train->add_flag("!--no-sample", c.sample, "Skip the sample generation at the end");
  return train;
}

int run_train(TrainCommand c) {
  warn_about_blas_kernel();
  const int64_t steps_given = c.steps_option->count() ? c.options.steps : 0;
  const bool resume = !c.resume.empty();
  if (resume) c.options.out_dir = c.resume;
  const TrainResult r = train(c.options, resume, resume ? steps_given : 0);
  const std::string dir = c.options.out_dir;
  std::printf("run folder: %s (step %lld)\n", dir.c_str(), static_cast<long long>(r.steps_done));
  std::printf("final training loss %.4f", r.final_loss);
  if (!std::isnan(r.val_loss))
    std::printf(", validation loss %.4f (perplexity %.1f)", r.val_loss, std::exp(r.val_loss));
  std::printf("\n");

  // Expert-load summary: the last monitored line of metrics.jsonl.
  std::ifstream metrics(dir + "/metrics.jsonl");
  std::string line, last_experts;
  while (std::getline(metrics, line))
    if (line.find("\"experts\"") != std::string::npos) last_experts = line;
  if (!last_experts.empty()) {
    const auto j = nlohmann::json::parse(last_experts);
    std::printf("expert load over the last %lld steps (one bar per expert):\n",
                static_cast<long long>(c.options.monitor_every));
    for (const auto& layer : j.at("experts")) {
      const auto counts = layer.at("counts").get<std::vector<int64_t>>();
      const LoadMetrics lm = load_metrics(counts);
      std::printf("  layer %2lld |%s|  gini %.3f  entropy %.3f  max/mean %.2f  drop %.1f%%\n",
                  layer.at("layer").get<long long>(), load_bars(counts).c_str(), lm.gini,
                  lm.normalized_entropy, lm.max_over_mean,
                  100.0 * layer.at("drop_rate").get<double>());
    }
  }
  if (c.sample && !r.interrupted) {
    std::printf("sample (prompt \"NAME\\n       \", temperature 0.8):\n");
    SamplingOptions s;
    stream_generation(dir, "NAME\n       ", 120, s, 7);
  }
  return 0;
}

}  // namespace moe::cli
