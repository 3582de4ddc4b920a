#include "train/ranks.h"

#include <nlohmann/json.hpp>
#include <vector>

namespace moe {

void throw_alike(const Ranks& ranks, const Error& e) {
  if (ranks.comm) throw SharedError(e.what());
  throw e;
}

void require_same_setup(const Ranks& ranks, const ModelConfig& config, const TrainOptions& o) {
  if (!ranks.comm) return;
  const std::string setup =
      model_config_to_json(config).dump() + "\n" + train_options_to_json(o).dump();
  const std::vector<int> differ = ranks_differing_from_root(*ranks.comm, setup);
  if (differ.empty()) return;
  std::string list;
  for (int r : differ) list += (list.empty() ? "" : ", ") + std::to_string(r);
  throw SharedError("rank " + list + " has another model config or other training options " +
                    "than rank 0 (each process reads its own files: they must be the same)");
}

void check_parallel_layout(const Ranks& ranks, const ModelConfig& config, const TrainOptions& o) {
  if (!ranks.comm) return;
  const std::string P = std::to_string(ranks.size);
  if (o.batch_size % ranks.size != 0)
    throw Error("--batch-size " + std::to_string(o.batch_size) + " is not a multiple of the " + P +
                " ranks (each takes an equal share of every batch)");
  if (!config.moe) return;
  const MoeConfig& m = *config.moe;
  if (m.num_experts % ranks.size != 0)
    throw Error("--expert-parallel " + P + " does not divide num_experts " +
                std::to_string(m.num_experts) + " (each rank holds E/P experts)");
}

}  // namespace moe
