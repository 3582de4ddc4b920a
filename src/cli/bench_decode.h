#pragma once
// `moe bench decode`: prefill and decode tokens/s of the inference Decoder, with the machine's
// streaming read bandwidth measured in the same run and the share of it that decode reaches
// (bytes of weights each decode step reads, times steps/s, over that bandwidth).
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace moe::cli {

struct BenchDecodeCommand {
  std::string random = "mixtral-d1024";  // a Mixtral-shaped model built in memory
  std::string dtype = "bf16";            // of the random model's matrices: f32 | bf16
  int64_t prompt = 128;                  // prefill length
  int64_t tokens = 32;                   // decode steps timed
  bool json = false;
};

CLI::App* add_bench_decode_command(CLI::App& bench, BenchDecodeCommand& command);
int run_bench_decode(const BenchDecodeCommand& command);

}  // namespace moe::cli
