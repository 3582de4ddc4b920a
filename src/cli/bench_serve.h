#pragma once
// `moe bench serve`: the server's continuous batching measured in-process (no HTTP). For each
// count C of concurrent clients, C synthetic clients drive one BatchScheduler with C slots, each
// submitting a request, waiting for its last token and submitting the next. Reported per C:
// aggregate output tokens/s, p50/p99 time per output token, decode steps, rows per step,
// distinct experts read per MoE layer per step, and the bound a step's bytes put on tokens/s
// at the measured read bandwidth (docs/SERVE.md, "Measuring").
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace moe::cli {

struct BenchServeCommand {
  std::string model;                     // run folder, Hugging Face folder or GGUF file
  std::string random = "mixtral-d1024";  // a Mixtral-shaped model built in memory (no --model)
  std::string dtype;                     // --random's matrices; empty = bf16
  std::vector<int64_t> clients{1, 2, 4, 8, 16};
  int64_t prompt = 32;              // prompt tokens of each request (random ids)
  int64_t tokens = 64;              // output tokens of each request, all of them (no stop tokens)
  int64_t requests_per_client = 2;  // timed, after one warm-up request per client
  int64_t prefill_chunk = 64;       // as `moe serve --prefill-chunk`
  bool json = false;
};

CLI::App* add_bench_serve_command(CLI::App& bench, BenchServeCommand& command);
int run_bench_serve(const BenchServeCommand& command);

}  // namespace moe::cli
