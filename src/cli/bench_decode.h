#pragma once
// `moe bench decode`: prefill and decode tokens/s of the inference engine, with the machine's
// streaming read bandwidth measured in the same run and the share of it that decode reaches
// (bytes of weights each decode step reads, times steps/s, over that bandwidth).
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace moe::cli {

struct BenchDecodeCommand {
  std::string model;                     // a run or Hugging Face folder; empty = the random model
  std::string random = "mixtral-d1024";  // a Mixtral-shaped model built in memory
  // Matrices' type: f32 | bf16; empty = bf16 for the random model, as stored for a folder (an
  // fp32 folder asked for bf16 is rounded in memory, or into `scratch` with an expert cache).
  std::string dtype;
  int64_t prompt = 128;  // prefill length
  int64_t tokens = 32;   // decode steps timed
  bool json = false;
  // Experts in slower memory: at most this many per layer in RAM (0 = all mapped). The random
  // model is then written to `scratch` first (once; reused while its size matches) so that
  // its experts have a file to be read from.
  int64_t expert_cache = 0;
  std::string cache_policy = "lru";  // lru | lfu
  bool prefetch = false;
  std::string scratch = "/tmp/moe-bench-decode";
};

CLI::App* add_bench_decode_command(CLI::App& bench, BenchDecodeCommand& command);
int run_bench_decode(const BenchDecodeCommand& command);

}  // namespace moe::cli
