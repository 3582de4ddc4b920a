// moe: train, run and inspect sparse Mixture-of-Experts transformers.
// Exit codes: 0 success, 2 bad input (moe::Error or bad arguments), 1 internal failure.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/bench_layer.h"
#include "cli/bench_train.h"
#include "cli/export_cmd.h"
#include "cli/generate_cmd.h"
#include "cli/params.h"
#include "cli/train_cmd.h"
#include "tensor/error.h"
#include "tensor/threads.h"

int main(int argc, char** argv) {
  CLI::App app{"moe: sparse Mixture-of-Experts transformers: train, run, inspect"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads,
                 "Threads for OpenMP loops and OpenBLAS (default: MOE_THREADS or all cores)");

  CLI::App* bench = app.add_subcommand("bench", "Measure throughput");
  bench->require_subcommand(1);
  moe::cli::BenchLayerOptions layer_opts;
  CLI::App* bench_layer = bench->add_subcommand(
      "layer",
      "MoE layer forward and forward+backward tokens/s vs a dense SwiGLU of equal active FLOPs");
  bench_layer->add_option("--case", layer_opts.cases, "mixtral and/or deepseek")
      ->capture_default_str()
      ->check(CLI::IsMember({"mixtral", "deepseek"}));
  bench_layer->add_option("--tokens", layer_opts.tokens, "Token counts T")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_layer->add_option("--min-seconds", layer_opts.min_seconds, "Minimum time per measurement")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 3600.0));
  bench_layer->add_flag("--json", layer_opts.json, "Print one JSON array instead of a table");
  moe::cli::BenchTrainOptions train_bench_opts;
  CLI::App* bench_train = bench->add_subcommand(
      "train", "Training-step tokens/s and peak memory of a model on random tokens");
  bench_train->add_option("--config", train_bench_opts.config, "Model config (default: default)")
      ->check(CLI::ExistingFile);
  bench_train->add_option("--batch-size", train_bench_opts.batch_size)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bench_train->add_option("--seq-len", train_bench_opts.seq_len)
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  bench_train->add_option("--steps", train_bench_opts.steps, "Timed steps (after 3 warm-up)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bench_train->add_flag("--json", train_bench_opts.json, "Print JSON");

  moe::cli::ParamsOptions params_opts;
  CLI::App* params = app.add_subcommand(
      "params", "Total and active parameters and FLOPs per token (no option: every preset)");
  params->add_option("--preset", params_opts.preset,
                     "mixtral-8x7b, mixtral-8x22b, deepseek-v2, deepseek-v3, qwen1.5-moe-a2.7b, "
                     "olmoe-1b-7b, grok-1, default, dense-baseline");
  params->add_option("--config", params_opts.config, "A model config JSON file")
      ->check(CLI::ExistingFile);
  params
      ->add_option("--context", params_opts.context,
                   "Sequence length for attention FLOPs (default: the model's)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  params->add_flag("--json", params_opts.json, "Print JSON");

  moe::cli::TrainCommand train_cmd;
  CLI::App* train = moe::cli::add_train_command(app, train_cmd);
  moe::cli::GenerateCommand gen;
  CLI::App* generate = moe::cli::add_generate_command(app, gen);
  moe::cli::ExportCommand export_cmd;
  CLI::App* export_app = moe::cli::add_export_command(app, export_cmd);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    moe::set_threads(threads);
    if (*bench_layer) return moe::cli::run_bench_layer(layer_opts);
    if (*bench_train) return moe::cli::run_bench_train(train_bench_opts);
    if (*params) return moe::cli::run_params(params_opts);
    if (*train) return moe::cli::run_train(train_cmd);
    if (*generate) return moe::cli::run_generate(gen);
    if (*export_app) return moe::cli::run_export(export_cmd);
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
