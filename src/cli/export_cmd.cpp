#include "cli/export_cmd.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <filesystem>

#include "model/checkpoint.h"
#include "model/hf_checkpoint.h"
#include "model/hf_export.h"
#include "run/run_folder.h"
#include "tensor/error.h"

namespace moe::cli {
namespace {

// The special tokens Hugging Face's tokenizer files name, read from the sentencepiece model.
HfTokenizer read_tokenizer(const std::string& path, int64_t vocab_size) {
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.Load(path).ok()) throw Error("tokenizer '" + path + "': cannot load");
  if (sp.GetPieceSize() > vocab_size)
    throw Error("tokenizer '" + path + "' has " + std::to_string(sp.GetPieceSize()) +
                " pieces, more than the model's vocab_size " + std::to_string(vocab_size));
  HfTokenizer t;
  t.model_path = path;
  auto piece = [&](int id) { return id >= 0 ? sp.IdToPiece(id) : std::string(); };
  t.bos_id = sp.bos_id();
  t.eos_id = sp.eos_id();
  t.unk_id = sp.unk_id();
  t.bos_piece = piece(t.bos_id);
  t.eos_piece = piece(t.eos_id);
  t.unk_piece = piece(t.unk_id);
  return t;
}

}  // namespace

CLI::App* add_export_command(CLI::App& app, ExportCommand& c) {
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a run as a Hugging Face checkpoint folder (mixtral or qwen2_moe)");
  cmd->add_option("-m,--model", c.model, "Run folder")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--out", c.out, "Folder to write (must be empty unless --force)")->required();
  cmd->add_option("--dtype", c.dtype, "Weights' type in model.safetensors")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--dropless", c.dropless,
                "Export a run whose eval capacity factor drops tokens as dropless");
  cmd->add_flag("--force", c.force, "Write into a non-empty --out, replacing its files");
  return cmd;
}

int run_export(const ExportCommand& c) {
  // The layout is checked before any weight is read, so a refused run fails at once.
  std::error_code ec;
  if (std::filesystem::equivalent(c.model, c.out, ec))
    throw Error("--out '" + c.out + "' is the run folder itself; export into another folder");
  if (is_hf_checkpoint(c.model))
    throw Error("'" + c.model +
                "' is already a Hugging Face checkpoint folder (export writes "
                "runs of moe train as one)");
  require_run_folder(c.model);
  const ModelConfig config = load_model_config(c.model + "/config.json");
  hf_model_type(config, c.dropless);
  const std::string tokenizer_path = c.model + "/tokenizer.model";
  if (!std::filesystem::exists(tokenizer_path))
    throw Error("run '" + c.model + "' has no tokenizer.model");
  const HfTokenizer tokenizer = read_tokenizer(tokenizer_path, config.vocab_size);
  LoadedModel m = load_model(c.model);
  HfExportOptions options;
  options.dtype = c.dtype == "bf16" ? HfDtype::BF16 : HfDtype::F32;
  options.allow_dropless = c.dropless;
  options.force = c.force;
  const std::string type = export_hf_checkpoint(*m.model, *m.store, tokenizer, c.out, options);
  std::printf("exported %s as %s (%s) to %s\n", c.model.c_str(), type.c_str(), c.dtype.c_str(),
              c.out.c_str());
  return 0;
}

}  // namespace moe::cli
