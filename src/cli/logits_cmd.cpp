#include "cli/logits_cmd.h"

#include <bit>
#include <cstdio>
#include <span>
#include <vector>

#include "infer/open_model.h"
#include "model/hf_checkpoint.h"
#include "run/checkpoint.h"
#include "tensor/atomic_file.h"
#include "tensor/error.h"
#include "tensor/safetensors.h"

namespace moe::cli {

CLI::App* add_logits_command(CLI::App& app, LogitsCommand& c) {
  CLI::App* cmd = app.add_subcommand(
      "logits", "Write the last position's next-token logits as raw little-endian float32");
  cmd->add_option("-m,--model", c.model, "Run folder, Hugging Face checkpoint folder or GGUF file")
      ->required()
      ->check(CLI::ExistingPath);
  CLI::Option* ids =
      cmd->add_option("--ids", c.ids, "Token ids, comma-separated: 1,2,3 (instead of a prompt)")
          ->delimiter(',');
  add_prompt_options(*cmd, c.prompt);
  ids->excludes(c.prompt.text_option)->excludes(c.prompt.file_option);
  cmd->add_option("--dump", c.dump,
                  "Also keep these intermediates of the forward, comma-separated: blk.N.attn_out, "
                  "blk.N.moe.router_logits, blk.N.moe.experts, blk.N.ffn_out, norm_out, or all "
                  "(the prompt then runs as one batch)")
      ->delimiter(',');
  cmd->add_option("--dump-out", c.dump_out, "The safetensors file --dump writes (fp32)");
  cmd->add_option("-o,--out", c.out,
                  "File to write (vocab_size float32 values); - writes to standard output")
      ->required();
  return cmd;
}

namespace {

// The prompt's ids, checked against the model: within its context, every id in its vocabulary.
std::vector<int32_t> prompt_ids(const LogitsCommand& c, const OpenedModel& model) {
  const ModelConfig& config = model.config;
  std::vector<int64_t> given = c.ids;
  if (given.empty()) {
    const std::string text = read_prompt(c.prompt);
    const FolderTokenizer tokenizer = model_tokenizer(model, c.model);
    const std::vector<int32_t> encoded =
        encode_prompt(c.model, model.kind == ModelKind::HuggingFace, tokenizer, text);
    given.assign(encoded.begin(), encoded.end());
  }
  const int64_t V = config.vocab_size, S = static_cast<int64_t>(given.size());
  if (S > config.max_position_embeddings)
    throw Error("the prompt has " + std::to_string(S) + " tokens, more than the model's context (" +
                std::to_string(config.max_position_embeddings) + ")");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < given.size(); ++i) {
    const int64_t id = given[i];
    if (id < 0 || id >= V)
      throw Error("--ids: id " + std::to_string(id) + " (position " + std::to_string(i) +
                  ") is outside the vocabulary [0, " + std::to_string(V) + ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// Any model runs mapped as it lies through the inference engine (bf16 stays bf16: a Mixtral's
// 93 GB are not widened to 186 GB of fp32), one token at a time: the decode kernels accumulate
// in fp32 over fp32 activations, where bf16 prefill would round the activations to bf16.
std::vector<float> last_logits(const LogitsCommand& c, size_t& prompt_tokens) {
  const std::string& dir = c.model;
  if (c.ids.empty() && !prompt_given(c.prompt))
    throw Error("give the prompt: --ids 1,2,3, -p TEXT or -f FILE");
  if (c.dump.empty() != c.dump_out.empty())
    throw Error("--dump and --dump-out go together: the names, and the file they go to");
  prepare_for_reading(dir);
  const OpenedModel m = open_model(dir);
  const std::vector<int32_t> ids = prompt_ids(c, m);
  prompt_tokens = ids.size();
  const auto T = static_cast<int64_t>(ids.size());
  require_inference_memory(m.config, T, c.dump.empty() ? 1 : T, 0, 0,
                           "logits after " + std::to_string(T) + " tokens");
  KvCache cache = m.model->make_cache(static_cast<int64_t>(ids.size()));
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  if (!c.dump.empty()) {
    IntermediateDump dump;
    for (const std::string& name : c.dump)
      if (name != "all") dump.wanted.insert(name);
    m.model->set_dump(&dump);
    m.model->forward(ids, cache, logits);
    m.model->set_dump(nullptr);
    for (const std::string& name : dump.wanted)
      if (!dump.tensors.contains(name))
        throw Error("--dump: this model has no intermediate '" + name +
                    "' (blk.N.attn_out, blk.N.moe.router_logits, blk.N.moe.experts, "
                    "blk.N.ffn_out, norm_out)");
    write_safetensors(c.dump_out, dump.tensors,
                      {{"format", "pt"}, {"tokens", std::to_string(ids.size())}});
    return logits;
  }
  for (size_t i = 0; i < ids.size(); ++i)
    m.model->forward(std::span(ids).subspan(i, 1), cache, logits);
  return logits;
}

}  // namespace

int run_logits(const LogitsCommand& c) {
  static_assert(std::endian::native == std::endian::little, "the file is little-endian floats");
  size_t prompt_tokens = 0;
  const std::vector<float> last = last_logits(c, prompt_tokens);
  if (c.out == "-") {
    if (std::fwrite(last.data(), sizeof(float), last.size(), stdout) != last.size() ||
        std::fflush(stdout) != 0)
      throw Error("cannot write the logits to standard output");
  } else {
    AtomicFile file(c.out);
    file.write(last.data(), last.size() * sizeof(float));
    file.commit();
  }
  std::fprintf(stderr, "moe: wrote %zu logits after %zu tokens to %s\n", last.size(), prompt_tokens,
               c.out == "-" ? "standard output" : c.out.c_str());
  return 0;
}

}  // namespace moe::cli
