#include "cli/tokenize_cmd.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "model/hf_checkpoint.h"
#include "tensor/error.h"
#include "text/folder_tokenizer.h"

namespace moe::cli {

CLI::App* add_tokenize_command(CLI::App& app, TokenizeCommand& c) {
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Show how a model folder's tokenizer splits a prompt: ids and pieces");
  cmd->add_option("-m,--model", c.model, "Run folder, Hugging Face checkpoint folder or GGUF file")
      ->required()
      ->check(CLI::ExistingPath);
  add_prompt_options(*cmd, c.prompt);
  cmd->add_flag("--ids-only", c.ids_only, "One line of comma-separated ids (for logits --ids)");
  cmd->add_flag("--json", c.json, "Print {\"ids\": [...], \"pieces\": [...]}");
  return cmd;
}

int run_tokenize(const TokenizeCommand& c) {
  if (!prompt_given(c.prompt)) throw Error("give the text: -p TEXT, -p - or -f FILE");
  if (c.ids_only && c.json) throw Error("--ids-only and --json do not go together");
  const std::string text = read_prompt(c.prompt);
  const FolderTokenizer tokenizer = model_tokenizer(c.model);
  const std::vector<int32_t> ids =
      encode_prompt(c.model, is_hf_checkpoint(c.model), tokenizer, text);
  // A piece may be part of a UTF-8 character (byte-level BPE): shown with U+FFFD in its place.
  const auto quoted = [](const std::string& piece) {
    return nlohmann::json(piece).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  if (c.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (const int32_t id : ids)
      pieces.push_back(nlohmann::json::parse(quoted(tokenizer.piece(id))));
    std::printf("%s\n", nlohmann::json{{"ids", ids}, {"pieces", pieces}}.dump().c_str());
  } else if (c.ids_only) {
    std::string line;
    for (const int32_t id : ids) line += (line.empty() ? "" : ",") + std::to_string(id);
    std::printf("%s\n", line.c_str());
  } else {
    for (const int32_t id : ids) std::printf("%6d %s\n", id, quoted(tokenizer.piece(id)).c_str());
  }
  std::fprintf(stderr, "%zu tokens\n", ids.size());
  return 0;
}

}  // namespace moe::cli
