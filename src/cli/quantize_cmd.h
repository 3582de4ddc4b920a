#pragma once
// `moe quantize`: a run folder, a Hugging Face folder or a GGUF file written as a GGUF file
// that llama.cpp loads and runs (infer/gguf_quantize.h), in f32, f16, bf16 or one of
// llama.cpp's quantized types.
#include <CLI/CLI.hpp>
#include <string>

namespace moe::cli {

struct QuantizeCommand {
  std::string model;  // run folder, Hugging Face checkpoint folder or GGUF file
  std::string out;    // the GGUF file to write
  std::string type;   // f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k
};

CLI::App* add_quantize_command(CLI::App& app, QuantizeCommand& command);
int run_quantize(const QuantizeCommand& command);

}  // namespace moe::cli
