#include "cli/logits_cmd.h"

#include <bit>
#include <cstdio>
#include <span>
#include <vector>

#include "infer/open_model.h"
#include "model/hf_checkpoint.h"
#include "tensor/atomic_file.h"
#include "tensor/error.h"
#include "train/checkpoint.h"

namespace moe::cli {

CLI::App* add_logits_command(CLI::App& app, LogitsCommand& c) {
  CLI::App* cmd = app.add_subcommand(
      "logits", "Write the last position's next-token logits as raw little-endian float32");
  cmd->add_option("-m,--model", c.model, "Run folder or Hugging Face checkpoint folder")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--tokens", c.tokens, "Token ids, comma-separated: 1,2,3")
      ->required()
      ->delimiter(',');
  cmd->add_option("--out", c.out, "File to write (vocab_size float32 values)")->required();
  return cmd;
}

namespace {

// --tokens against the model: within its context, every id in its vocabulary.
std::vector<int32_t> checked_ids(const std::vector<int64_t>& tokens, const ModelConfig& config) {
  const int64_t V = config.vocab_size, S = static_cast<int64_t>(tokens.size());
  if (S > config.max_position_embeddings)
    throw Error("--tokens holds " + std::to_string(S) + " ids, more than the model's context (" +
                std::to_string(config.max_position_embeddings) + ")");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t id = tokens[i];
    if (id < 0 || id >= V)
      throw Error("--tokens: id " + std::to_string(id) + " (position " + std::to_string(i) +
                  ") is outside the vocabulary [0, " + std::to_string(V) + ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// Any model runs mapped as it lies through the inference engine (bf16 stays bf16: a Mixtral's
// 93 GB are not widened to 186 GB of fp32), one token at a time: the decode kernels accumulate
// in fp32 over fp32 activations, where bf16 prefill would round the activations to bf16.
std::vector<float> last_logits(const std::string& dir, const std::vector<int64_t>& tokens) {
  if (!is_hf_checkpoint(dir)) recover_for_reading(dir);  // a run's interrupted save, as generate
  const OpenedModel m = open_model(dir);
  const std::vector<int32_t> ids = checked_ids(tokens, m.config);
  KvCache cache = m.model->make_cache(static_cast<int64_t>(ids.size()));
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  for (size_t i = 0; i < ids.size(); ++i)
    m.model->forward(std::span(ids).subspan(i, 1), cache, logits);
  return logits;
}

}  // namespace

int run_logits(const LogitsCommand& c) {
  static_assert(std::endian::native == std::endian::little, "the file is little-endian floats");
  const std::vector<float> last = last_logits(c.model, c.tokens);
  AtomicFile file(c.out);
  file.write(last.data(), last.size() * sizeof(float));
  file.commit();
  std::fprintf(stderr, "moe: wrote %zu logits after %zu tokens to %s\n", last.size(),
               c.tokens.size(), c.out.c_str());
  return 0;
}

}  // namespace moe::cli
