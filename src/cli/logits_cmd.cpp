#include "cli/logits_cmd.h"

#include <bit>
#include <cstdio>

#include "model/checkpoint.h"
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

int run_logits(const LogitsCommand& c) {
  static_assert(std::endian::native == std::endian::little, "the file is little-endian floats");
  recover_for_reading(c.model);  // a run folder's interrupted save, as generate does
  LoadedModel m = load_model(c.model);
  const int64_t V = m.config.vocab_size, S = static_cast<int64_t>(c.tokens.size());
  if (S > m.config.max_position_embeddings)
    throw Error("--tokens holds " + std::to_string(S) + " ids, more than the model's context (" +
                std::to_string(m.config.max_position_embeddings) + ")");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < c.tokens.size(); ++i) {
    const int64_t id = c.tokens[i];
    if (id < 0 || id >= V)
      throw Error("--tokens: id " + std::to_string(id) + " (position " + std::to_string(i) +
                  ") is outside the vocabulary [0, " + std::to_string(V) + ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  const std::vector<int32_t> no_targets(ids.size(), -1);
  ModelStepOptions eval;
  eval.training = false;
  eval.compute_grad = false;
  m.model->forward(ids, no_targets, 1, S, eval);
  const std::span<const float> last = m.model->logits().subspan((S - 1) * V, V);
  AtomicFile file(c.out);
  file.write(last.data(), last.size_bytes());
  file.commit();
  std::fprintf(stderr, "moe: wrote %lld logits after %lld tokens to %s\n",
               static_cast<long long>(V), static_cast<long long>(S), c.out.c_str());
  return 0;
}

}  // namespace moe::cli
