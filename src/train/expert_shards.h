#pragma once
// An expert-parallel run keeps 1/P of every MoE layer's experts per process (rank r holds
// block r of each expert tensor's first dimension, under the tensor's usual name) and a
// replica of everything else; a checkpoint holds the whole model, as one process writes it.
// These move parameters, AdamW moments and router state between the two layouts, and do the
// data-parallel gradient sum and the global gradient norm.
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/transformer.h"
#include "nn/optimizer.h"
#include "tensor/collectives.h"
#include "tensor/params.h"

namespace moe {

// A whole model (every expert) with its optimizer: what a checkpoint holds.
struct FullModel {
  FullModel(const ModelConfig& config, uint64_t seed, const AdamWOptions& options);
  ParamStore store;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<AdamW> optimizer;
};

// The sharded store's tensors split by kind: expert tensors (held in part) and the rest
// (replicated, their gradients summed across processes).
struct ParamSplit {
  std::vector<ParamRef> sharded, replicated;
};
ParamSplit split_params(const Transformer& model, const ParamStore& store);

// This process's part of `full`: parameters, moments, optimizer step and router state.
void copy_from_full(FullModel& full, Transformer& model, ParamStore& store, AdamW& optimizer,
                    int rank, int ranks);
// The whole model on the root (`full`, null elsewhere) from every process's part.
void gather_to_full(Collectives& comm, Transformer& model, ParamStore& store, AdamW& optimizer,
                    FullModel* full);

// Sums the replicated tensors' gradients over all processes, in one message. Expert
// gradients already hold every process's tokens (their rows came through the exchange).
void sum_replicated_grads(Collectives& comm, ParamStore& store, const ParamSplit& split,
                          std::vector<float>& scratch);

// clip_grad_norm over the whole model: replicated tensors counted once, every process's
// experts added. Returns the norm before clipping.
double clip_grad_norm_across(Collectives& comm, ParamStore& store, const ParamSplit& split,
                             double max_norm);

}  // namespace moe
