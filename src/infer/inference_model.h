#pragma once
// InferenceModel: the one inference forward of every model `moe` runs (a run of `moe train`,
// a Hugging Face Mixtral, Qwen2-MoE or OLMoE folder), over weights it does not own (views of
// mapped safetensors files, fp32 or bf16), as llama.cpp runs a checkpoint: no saved
// activations, no gradients, a KV cache, and each step reads only what it uses.
//
//   prefill (many tokens): every projection and every expert is a GEMM over all the tokens
//     that need it; attention runs position by position against the cache.
//   decode (one token): each weight the token uses (attention, router, its experts, any
//     shared expert, the LM head) streams from memory once: the step is bound by bandwidth,
//     and weight_bytes_read() says how many bytes that was. The step is one parallel region
//     whose threads share each product's rows, so no fork and join per product.
//
// Block l (pre-norm):  h = x + Attn(RMSNorm(x)),  x' = h + FFN(RMSNorm(h)), FFN dense SwiGLU or
// MoE. The MoE block routes as the training Router evaluates (docs/FORMULAS.md, "Causality"),
// through the same selection functions (moe/selection.h): router logits in fp32, softmax or
// sigmoid scores, top-k with the selection bias and group limits, or expert choice by its
// learned thresholds; sequence routing on the causal prefix mean the KV cache carries; an
// explicit eval_capacity_factor applies to each forward's tokens through the Dispatcher.
// Then the chosen experts' SwiGLU weighted by their gates, plus the shared experts (scaled by
// sigmoid(x w_g) where the model has that gate). Optional per model, found by name: q/k/v
// biases, q/k RMSNorm over the whole projection.
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "infer/expert_cache.h"
#include "infer/weights.h"
#include "model/config.h"
#include "model/hf_layout.h"
#include "moe/dispatcher.h"
#include "moe/router.h"
#include "nn/attention.h"
#include "tensor/tensor.h"

namespace moe {

// Experts in slower memory: with expert_cache > 0, at most that many experts per MoE layer
// are held in RAM and the rest are read from the checkpoint's files on demand (the weights
// must come from files: a MappedCheckpoint).
struct InferenceOptions {
  int64_t expert_cache = 0;  // experts per layer kept in RAM; 0 = all, mapped
  CachePolicy cache_policy = CachePolicy::Lru;
  // Run the next MoE layer's router on the current layer's input and start reading the
  // experts it picks while this layer computes (pre-gated MoE).
  bool prefetch = false;
};

// Intermediates of a forward kept by name, as ggml names its tensors, for comparison with
// another implementation's hooks (`moe logits --dump`). Per block l:
//   blk.l.attn_out          [T, D]  attention's output projection, before the residual add
//   blk.l.moe.router_logits [T, E]  the router's logits (MoE blocks)
//   blk.l.moe.experts       [T, k]  the experts each token chose, highest score first, as
//                                   floats (token choice; expert choice has no fixed k)
//   blk.l.ffn_out           [T, D]  the FFN's output (dense, or routed plus shared experts)
//   norm_out                [T, D]  the final RMSNorm's output
// A forward with a dump runs every token through the batched path, one token too.
struct IntermediateDump {
  std::set<std::string> wanted;  // names to keep; empty = every one
  std::map<std::string, Tensor> tensors;
  bool wants(const std::string& name) const { return wanted.empty() || wanted.contains(name); }
  // Keeps [rows, cols] of `data` under `name` when wanted.
  void keep(const std::string& name, const float* data, int64_t rows, int64_t cols);
};

// What a sequence carries from one forward to the next.
struct KvCache {
  std::vector<Tensor> keys, values;  // per block: [capacity, KV hd] (keys rotated)
  // Sequence routing, per MoE layer: [D] the sum of its inputs over the first route_prefix
  // positions (empty for token-level routing).
  std::vector<Tensor> route_sums;
  int64_t length = 0;  // positions filled
  int64_t capacity = 0;
};

class InferenceModel {
 public:
  // Resolves and checks every tensor's name, dtype and shape against the config; the first
  // one missing or wrong is named in the Error. `weights` must outlive the InferenceModel.
  InferenceModel(const ModelConfig& config, HfArch arch, const WeightSource& weights,
                 const InferenceOptions& options = {});

  KvCache make_cache(int64_t capacity) const;

  // Runs `tokens` at positions cache.length... through the model, appends their keys and
  // values, and writes the last token's next-token logits: [V]. Ids outside the vocabulary
  // and a cache without room are Errors.
  void forward(std::span<const int32_t> tokens, KvCache& cache, std::span<float> logits);
  // As forward(), with every token's next-token logits: [T, V] (a perplexity's scores).
  void forward_all(std::span<const int32_t> tokens, KvCache& cache, std::span<float> logits);

  // One decode step for several sequences at once (a server's concurrent requests): tokens[i]
  // is fed to *caches[i], each its own sequence at its own position, and row i of logits
  // ([B, V]) is its next-token logits, the bits forward() gives that sequence alone. Each
  // weight a row uses is read once for all the rows that use it (batch_step.cpp). Afterwards
  // last_routes() lists the step's rows as tokens 0..B-1.
  void decode_batch(std::span<const int32_t> tokens, std::span<KvCache* const> caches,
                    std::span<float> logits);

  // Bytes of weights the last forward read, each tensor counted once however many tokens used
  // it (for one token: what the step had to stream from memory).
  int64_t weight_bytes_read() const { return bytes_read_; }
  // The routes of MoE layer m (in depth order) in the last forward: (token, expert, gate)
  // assignments, token t's first for token choice (k each, highest first); expert choice lists
  // each token's experts in ascending order, as many as reach their thresholds.
  const RoutingPlan& last_routes(int64_t moe_layer) const;
  const ModelConfig& config() const { return config_; }
  // Intermediates of the following forwards go to `dump` (nullptr: none); it must outlive them.
  void set_dump(IntermediateDump* dump) { dump_ = dump; }
  // Hits, misses and bytes read from storage; nullptr without an expert cache.
  const ExpertCache* expert_cache() const { return cache_.get(); }

 private:
  struct Block {
    const float *attn_norm = nullptr, *ffn_norm = nullptr;
    WeightView q, k, v, o;
    QkvExtras extras;  // q/k/v bias, q/k norms, clamp (views of converted_)
    bool moe = false;
    ExpertWeights dense;                    // a dense block's MLP
    const float* router = nullptr;          // [E, D] fp32
    const float* selection_bias = nullptr;  // [E] sigmoid routing's balancing bias
    const float* threshold = nullptr;       // [E] expert choice's learned thresholds
    std::vector<ExpertWeights> experts;
    bool has_shared = false;
    ExpertWeights shared;
    const float* shared_gate = nullptr;  // [D]
    int64_t moe_index = -1;
  };

  // One token (forward with T = 1, its embedding in x_): the whole step in one OpenMP parallel
  // region, the threads sharing every product's output rows and meeting at barriers
  // (decode_step.cpp).
  // forward's pieces: the checks and the embeddings into x_; every block over x_'s T rows.
  void embed_tokens(std::span<const int32_t> tokens, KvCache& cache);
  void run_blocks(int64_t T, KvCache& cache);
  class DecodeStep;
  void decode_step(KvCache& cache, std::span<float> logits);
  // Rows of w per share of a product among the threads (decode_step.cpp): about 16 KiB.
  static int64_t share_rows(const WeightView& w);
  // decode_batch's pieces (batch_step.cpp): y[r] = w x[r] for each row with the one-row
  // kernels; block l's attention over rows, each against its own cache; a SwiGLU MLP over
  // rows; the MoE FFN of block b added to out_ for every row.
  void batch_rows(const WeightView& w, const float* x, int64_t rows, int64_t ldx, float* y,
                  int64_t ldy);
  void batch_attention(size_t l, std::span<KvCache* const> caches, int64_t longest);
  void batch_swiglu(const ExpertWeights& e, const float* x, int64_t rows, float* out);
  void batch_moe(const Block& b, const float* n, std::span<KvCache* const> caches);
  // decode_batch as one forward() per sequence (the expert cache, a dump).
  void decode_rows_in_turn(std::span<const int32_t> tokens, std::span<KvCache* const> caches,
                           std::span<float> logits);
  // t grown to at least [rows, cols] (scratch keeps its largest size).
  static void ensure(Tensor& t, int64_t rows, int64_t cols) {
    if (t.numel() < rows * cols) t = Tensor({rows, cols});
  }
  // One token's routing, in the decode step computed alike by every thread: router logits,
  // scores and scratch [E], the experts and gates in the selection's order and in ascending
  // expert id, and (mapped experts) those experts' weights in that order.
  struct TokenRoute {
    std::vector<float> logits, scores, selection, gates, sorted_gates;
    std::vector<int32_t> order, picks, sorted;
    std::vector<const ExpertWeights*> experts;
  };
  // r: [D], the router's input for one token of MoE block b (its normalised input, or for
  // sequence routing the prefix mean) -> its route. With `logits` ([E], already r W_r^T) the
  // router's product is skipped.
  void route_token(const Block& b, const float* r, TokenRoute& route,
                   const float* logits = nullptr) const;
  // The router's input rows of MoE block b for the rows n: [T, D] at positions cache.length...:
  // n itself, or for sequence routing the prefix means, the cache's sums moved on.
  const float* router_input(const Block& b, const float* n, int64_t rows, KvCache& cache);
  // y[rows, N] (row stride ldy) = x[rows, K] (row stride ldx) · w^T; counts w's bytes once.
  void linear(const WeightView& w, const float* x, int64_t rows, int64_t ldx, float* y,
              int64_t ldy);
  // out[rows, D] = SwiGLU expert applied to x[rows, D]; act: scratch.
  void swiglu(const ExpertWeights& e, const float* x, int64_t rows, float* out);
  // out[rows, D] = the MoE FFN of block b on x[rows, D], routed on r[rows, D].
  void moe_ffn(const Block& b, const float* x, const float* r, int64_t rows, float* out);
  // The routes of MoE block b for router inputs r[rows, D] into `plan`.
  void route(const Block& b, const float* r, int64_t rows, RoutingPlan& plan);
  // The routes of `plan` (from route(), its logits still in router_logits_) into dump_.
  void dump_routes(const Block& b, const RoutingPlan& plan);
  ExpertWeights expert_weights(const Block& b, int64_t e);
  // Binding the weights: each tensor's name, shape and dtype checked as it is found.
  void bind_attention(Block& b, const std::string& layer_prefix);
  void bind_moe(Block& b, HfArch arch, int64_t layer,
                std::vector<std::vector<ExpertLocation>>& cached_experts);
  ExpertWeights mlp(const std::string& prefix, int64_t F);  // prefix{gate,up,down}_proj
  TensorLocation locate(const std::string& name, const Shape& shape) const;
  const float* optional_f32(const std::string& name, int64_t n);
  const float* as_f32(const std::string& name, const Shape& shape);
  WeightView matrix(const std::string& name, const Shape& shape);

  ModelConfig config_;
  const WeightSource& weights_;
  InferenceOptions options_;
  std::unique_ptr<ExpertCache> cache_;
  AttentionShape attn_{};
  RopeTable rope_;
  WeightView embed_, head_;
  const float* final_norm_ = nullptr;
  std::vector<Block> blocks_;
  std::vector<Tensor> converted_;  // fp32 copies of small tensors (norms, routers, biases)
  int64_t bytes_read_ = 0;
  std::vector<RoutingPlan> last_routes_;  // per MoE layer
  std::vector<int64_t> moe_blocks_;       // block index of each MoE layer
  Dispatcher dispatcher_;                 // prefill: rows grouped by expert, capacity applied

  // Scratch, grown to the largest forward (scores_: one row of positions per thread).
  Tensor x_, n_, qkv_, ctx_, out_, rstd_, scores_, gate_act_, up_, rows_in_, rows_out_,
      router_logits_, last_, route_in_;
  IntermediateDump* dump_ = nullptr;
  Tensor step_route_n_;  // [MoE layers, D] decode step: each layer's input, for sequence sums
  // The decode step's routing: one per thread, and the pre-gating guess.
  std::vector<TokenRoute> routes_;
  TokenRoute guess_;
  // The decode step's inputs quantized for quantized weights: per thread, a few slots.
  std::vector<std::vector<uint8_t>> quantized_inputs_;
  // decode_batch: each row's route, and a product's input rows quantized.
  std::vector<TokenRoute> batch_routes_;
  std::vector<uint8_t> batch_inputs_;
  int64_t widest_ffn_ = 0;   // the largest F of any expert, dense MLP or shared expert
  int64_t most_routed_ = 0;  // the most experts one token can use: k, or E for expert choice
};

}  // namespace moe
