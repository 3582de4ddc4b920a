#include "cli/quantize_cmd.h"

#include <cstdio>
#include <filesystem>

#include "cli/prompt.h"
#include "infer/gguf_quantize.h"
#include "infer/open_model.h"
#include "tensor/error.h"

namespace moe::cli {

CLI::App* add_quantize_command(CLI::App& app, QuantizeCommand& c) {
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Write a model as a GGUF file that llama.cpp runs (f32, f16, bf16, q8_0, q4_0, q4_k_m, "
      "q5_k_m, q6_k)");
  cmd->add_option("-m,--model", c.model,
                  "Hugging Face checkpoint folder, GGUF file, or run folder whose setup llama.cpp "
                  "runs (every block MoE, softmax top-k)")
      ->required();
  cmd->add_option("-o,--out", c.out, "The GGUF file to write (replaced if it exists)")->required();
  cmd->add_option("-t,--type", c.type,
                  "f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m or q6_k. Routers, the shared-expert "
                  "gate and norms stay f32; q4_k_m and q5_k_m mix types as llama-quantize does. "
                  "A quantized GGUF is dequantized first, then quantized again")
      ->required();
  return cmd;
}

int run_quantize(const QuantizeCommand& c) {
  // Everything the command line decides is checked before any weight is read.
  const std::optional<GgufFileType> type = parse_gguf_file_type(c.type);
  if (!type)
    throw Error("--type '" + c.type + "' is not one moe writes (" + gguf_file_type_names() + ")");
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(c.model, ec)) throw Error("--model '" + c.model + "' does not exist");
  const fs::path out(c.out);
  const fs::path folder = out.has_parent_path() ? out.parent_path() : fs::path(".");
  if (!fs::is_directory(folder, ec))
    throw Error("--out '" + c.out + "': folder '" + folder.string() + "' does not exist");
  if (fs::is_directory(out, ec)) throw Error("--out '" + c.out + "' is a folder, not a file");
  if (fs::equivalent(c.model, out, ec))
    throw Error("--out '" + c.out + "' is the model itself; write another file");

  prepare_for_reading(c.model);
  const OpenedModel model = open_model(c.model);
  const GgufQuantizeSummary summary = write_llama_cpp_gguf(model, c.model, *type, c.out);
  std::string types;
  for (const auto& [name, count] : summary.tensors_by_type)
    types += (types.empty() ? "" : ", ") + std::to_string(count) + " " + name;
  std::printf("wrote %s: %s, %s (%s), %.1f MiB\n", c.out.c_str(), summary.architecture.c_str(),
              c.type.c_str(), types.c_str(), static_cast<double>(summary.bytes) / (1 << 20));
  return 0;
}

}  // namespace moe::cli
