// moe: train, run and inspect sparse Mixture-of-Experts transformers.
// Exit codes: 0 success, 2 bad input (moe::Error or bad arguments), 1 internal failure.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/bench_layer.h"
#include "cli/bench_train.h"
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
  moe::TrainOptions& t = train_cmd.options;
  CLI::App* train =
      app.add_subcommand("train", "Train an MoE language model on the shipped corpus");
  train->add_option("--config", t.config, "Model config JSON (default: configs/default.json)")
      ->check(CLI::ExistingFile);
  train->add_option("--out", t.out_dir, "Run folder")->capture_default_str();
  train->add_option("--resume", train_cmd.resume, "Continue the run in this folder exactly")
      ->check(CLI::ExistingDirectory);
  CLI::Option* steps_opt = train->add_option("--steps", t.steps, "Optimizer steps")
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
  train->add_flag("!--no-sample", train_cmd.sample, "Skip the sample generation at the end");

  moe::cli::GenerateCommand gen;
  CLI::App* generate = app.add_subcommand("generate", "Generate text from a trained run");
  generate->add_option("--model", gen.model, "Run folder")
      ->required()
      ->check(CLI::ExistingDirectory);
  generate->add_option("--prompt", gen.prompt, "Prompt text")->required();
  generate->add_option("--max-tokens", gen.max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  generate->add_option("--temperature", gen.sampling.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  generate->add_option("--top-k", gen.sampling.top_k, "0 = all")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--top-p", gen.sampling.top_p, "Nucleus mass")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  generate->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();

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
    if (*train) return moe::cli::run_train(train_cmd, steps_opt->count() ? t.steps : 0);
    if (*generate) return moe::cli::run_generate(gen);
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
