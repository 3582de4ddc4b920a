#include "train/expert_shards.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "tensor/error.h"

namespace moe {
namespace {

// Calls f(shard tensor, full tensor, sharded) for every tensor of `shard`: a replicated tensor
// has the same size in both; a sharded one's full tensor is `ranks` blocks of the shard's.
void for_each_pair(const ParamStore& shard, const ParamStore& full, int ranks,
                   const std::function<void(ParamRef, ParamRef, bool)>& f) {
  for (const ParamStore::Entry& e : shard.entries()) {
    const ParamRef whole = full.entry(e.name).ref;
    if (whole.numel == e.ref.numel)
      f(e.ref, whole, false);
    else if (whole.numel == e.ref.numel * ranks)
      f(e.ref, whole, true);
    else
      throw Error("expert shards: tensor '" + e.name + "' holds " + std::to_string(e.ref.numel) +
                  " values, neither the whole model's " + std::to_string(whole.numel) + " nor 1/" +
                  std::to_string(ranks) + " of them");
  }
}

// Router state outside the store (selection bias, expert-choice thresholds): replicated.
void copy_router_state(const Transformer& from, Transformer& to) {
  for (int64_t l = 0; l < from.num_layers(); ++l)
    if (const MoeLayer* m = from.moe_layer(l)) {
      Router& r = to.moe_layer(l)->router();
      std::ranges::copy(m->router().expert_bias(), r.expert_bias().begin());
      std::ranges::copy(m->router().expert_threshold(), r.expert_threshold().begin());
    }
}

double squared_sum(std::span<const float> v) {
  double s = 0.0;
  for (float x : v) s += double(x) * x;
  return s;
}

}  // namespace

FullModel::FullModel(const ModelConfig& config, uint64_t seed, const AdamWOptions& options) {
  model = std::make_unique<Transformer>(config, store, seed);
  store.allocate();
  optimizer = std::make_unique<AdamW>(store, options);
}

ParamSplit split_params(const Transformer& model, const ParamStore& store) {
  std::set<int64_t> expert_offsets;
  for (int64_t l = 0; l < model.num_layers(); ++l)
    if (const MoeLayer* m = model.moe_layer(l)) {
      expert_offsets.insert(m->experts().w13().offset);
      expert_offsets.insert(m->experts().w2().offset);
    }
  ParamSplit split;
  for (const ParamStore::Entry& e : store.entries())
    (expert_offsets.count(e.ref.offset) ? split.sharded : split.replicated).push_back(e.ref);
  return split;
}

void copy_from_full(FullModel& full, Transformer& model, ParamStore& store, AdamW& optimizer,
                    int rank, int ranks) {
  const std::pair<const Tensor*, Tensor*> buffers[] = {
      {&full.store.values(), &store.values()},
      {&full.optimizer->first_moment(), &optimizer.first_moment()},
      {&full.optimizer->second_moment(), &optimizer.second_moment()}};
  for_each_pair(store, full.store, ranks, [&](ParamRef part, ParamRef whole, bool sharded) {
    const int64_t from = whole.offset + (sharded ? rank * part.numel : 0);
    for (const auto& [src, dst] : buffers)
      std::copy(src->data() + from, src->data() + from + part.numel, dst->data() + part.offset);
  });
  optimizer.set_steps(full.optimizer->steps());
  copy_router_state(*full.model, model);
}

void gather_to_full(Collectives& comm, Transformer& model, ParamStore& store, AdamW& optimizer,
                    FullModel* full) {
  const bool root = comm.rank() == 0;
  require(root == (full != nullptr), "gather_to_full: the root alone passes the full model");
  // Every process walks its shard store's entries in the same order, so the gathers match.
  const ParamSplit split = split_params(model, store);
  std::set<int64_t> sharded_offsets;
  for (ParamRef r : split.sharded) sharded_offsets.insert(r.offset);
  for (const ParamStore::Entry& e : store.entries()) {
    const ParamRef part = e.ref;
    const Tensor* sources[] = {&store.values(), &optimizer.first_moment(),
                               &optimizer.second_moment()};
    Tensor* targets[] = {nullptr, nullptr, nullptr};
    ParamRef whole{};
    if (root) {
      whole = full->store.entry(e.name).ref;
      targets[0] = &full->store.values();
      targets[1] = &full->optimizer->first_moment();
      targets[2] = &full->optimizer->second_moment();
    }
    const bool sharded = sharded_offsets.count(part.offset) > 0;
    for (int b = 0; b < 3; ++b) {
      std::span<const float> mine(sources[b]->data() + part.offset, part.numel);
      if (sharded)
        comm.gather(mine, root ? std::span<float>(targets[b]->data() + whole.offset, whole.numel)
                               : std::span<float>());
      else if (root)
        std::ranges::copy(mine, targets[b]->data() + whole.offset);
    }
  }
  if (root) {
    full->optimizer->set_steps(optimizer.steps());
    copy_router_state(model, *full->model);
  }
}

void sum_replicated_grads(Collectives& comm, ParamStore& store, const ParamSplit& split,
                          std::vector<float>& scratch) {
  scratch.clear();
  for (ParamRef r : split.replicated) {
    const auto g = store.grad(r);
    scratch.insert(scratch.end(), g.begin(), g.end());
  }
  comm.sum(scratch);
  auto next = scratch.begin();
  for (ParamRef r : split.replicated) {
    std::copy(next, next + r.numel, store.grad(r).begin());
    next += r.numel;
  }
}

double clip_grad_norm_across(Collectives& comm, ParamStore& store, const ParamSplit& split,
                             double max_norm) {
  double replicated = 0.0, experts = 0.0;
  for (ParamRef r : split.replicated) replicated += squared_sum(store.grad(r));
  for (ParamRef r : split.sharded) experts += squared_sum(store.grad(r));
  comm.sum(std::span(&experts, 1));
  const double norm = std::sqrt(replicated + experts);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (float& g : store.grads().span()) g *= scale;
  }
  return norm;
}

}  // namespace moe
