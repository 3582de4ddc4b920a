#pragma once
// Decoder: the inference-only forward of a Mixtral-family model over weights it does not own
// (views of mapped safetensors files, fp32 or bf16), as llama.cpp runs a checkpoint: no saved
// activations, no gradients, a KV cache, and each step reads only what it uses.
//
//   prefill (many tokens): every projection and every expert is a GEMM over all the tokens
//     that need it; attention runs position by position against the cache.
//   decode (one token): each weight the token uses (attention, router, its k experts, any
//     shared expert, the LM head) streams from memory once: the step is bound by bandwidth,
//     and weight_bytes_read() says how many bytes that was. The step is one parallel region
//     whose threads share each product's rows, so no fork and join per product.
//
// Block l (pre-norm):  h = x + Attn(RMSNorm(x)),  x' = h + FFN(RMSNorm(h)), FFN dense SwiGLU or
// MoE: router logits in fp32, top-k (Mixtral: softmax over the k best logits; Qwen2-MoE and
// OLMoE: softmax over all E, top-k, renormalised iff norm_topk_prob), the chosen experts'
// SwiGLU weighted by their gates, plus a shared expert (scaled by sigmoid(x w_g) where the
// checkpoint has that gate). Optional per checkpoint, found by name: q/k/v biases, q/k
// RMSNorm over the whole projection.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "infer/expert_cache.h"
#include "infer/weights.h"
#include "model/config.h"
#include "nn/attention.h"
#include "tensor/tensor.h"

namespace moe {

// How a checkpoint names its MoE tensors.
enum class MoeNaming {
  Mixtral,  // block_sparse_moe.gate, block_sparse_moe.experts.{e}.{w1,w3,w2} (also moe train)
  Qwen2,    // mlp.gate, mlp.experts.{e}.{gate,up,down}_proj, mlp.shared_expert(_gate) (+ OLMoE)
};

// Experts in slower memory: with expert_cache > 0, at most that many experts per MoE layer
// are held in RAM and the rest are read from the checkpoint's files on demand (the weights
// must come from files: a MappedCheckpoint).
struct DecoderOptions {
  int64_t expert_cache = 0;  // experts per layer kept in RAM; 0 = all, mapped
  CachePolicy cache_policy = CachePolicy::Lru;
  // Run the next MoE layer's router on the current layer's input and start reading the
  // experts it picks while this layer computes (pre-gated MoE).
  bool prefetch = false;
};

struct DecoderCache {
  std::vector<Tensor> keys, values;  // per block: [capacity, KV hd] (keys rotated)
  int64_t length = 0;                // positions filled
  int64_t capacity = 0;
};

class Decoder {
 public:
  // Resolves and checks every tensor's name, dtype and shape against the config; the first
  // one missing or wrong is named in the Error. `weights` must outlive the Decoder.
  Decoder(const ModelConfig& config, MoeNaming naming, const WeightSource& weights,
          const DecoderOptions& options = {});

  DecoderCache make_cache(int64_t capacity) const;

  // Runs `tokens` at positions cache.length... through the model, appends their keys and
  // values, and writes the last token's next-token logits: [V]. Ids outside the vocabulary
  // and a cache without room are Errors.
  void forward(std::span<const int32_t> tokens, DecoderCache& cache, std::span<float> logits);

  // Bytes of weights the last forward read, each tensor counted once however many tokens used
  // it (for one token: what the step had to stream from memory).
  int64_t weight_bytes_read() const { return bytes_read_; }
  // Experts of MoE layer m (in depth order) chosen for each token of the last forward: [T, k].
  std::span<const int32_t> last_experts(int64_t moe_layer) const;
  std::span<const float> last_gates(int64_t moe_layer) const;  // their gates: [T, k]
  const ModelConfig& config() const { return config_; }
  // Hits, misses and bytes read from storage; nullptr without an expert cache.
  const ExpertCache* expert_cache() const { return cache_.get(); }

 private:
  struct Block {
    const float *attn_norm = nullptr, *ffn_norm = nullptr;
    WeightView q, k, v, o;
    const float *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr;
    const float *q_norm = nullptr, *k_norm = nullptr;  // [H hd], [KV hd]
    bool moe = false;
    ExpertWeights dense;            // a dense block's MLP
    const float* router = nullptr;  // [E, D] fp32
    std::vector<ExpertWeights> experts;
    bool has_shared = false;
    ExpertWeights shared;
    const float* shared_gate = nullptr;  // [D]
    int64_t moe_index = -1;
  };

  // One token (forward with T = 1, its embedding in x_): the whole step in one OpenMP parallel
  // region, the threads sharing every product's output rows and meeting at barriers.
  void decode_step(DecoderCache& cache, std::span<float> logits);
  // One token's routing in the decode step, computed alike by every thread: router logits and
  // scratch [E], the k experts and gates in the router's order and in ascending expert id, and
  // (mapped experts) those experts' weights in that order.
  struct TokenRoute {
    std::vector<float> logits, gates, sorted_gates;
    std::vector<int32_t> order, picks, sorted;
    std::vector<const ExpertWeights*> experts;
  };
  // n: [D], the token's normalised input of MoE block b.
  void route_token(const Block& b, const float* n, TokenRoute& route) const;
  // x: [D], one token's input of block b -> its shared expert's scale: Qwen2-MoE's sigmoid
  // gate, or 1 without one.
  float shared_expert_scale(const Block& b, const float* x) const;
  // row: [(H+2KV) hd] of one token as projected: biases, q/k norms and clamp applied in place.
  void prepare_qkv(const Block& b, float* row) const;
  // logits: [E] of one token -> its k experts (highest first) and gates; order: [E] scratch.
  void pick_experts(const float* logits, int32_t* picks, float* gates, int32_t* order) const;
  // y[rows, N] (row stride ldy) = x[rows, K] (row stride ldx) · w^T; counts w's bytes once.
  void linear(const WeightView& w, const float* x, int64_t rows, int64_t ldx, float* y,
              int64_t ldy);
  // out[rows, D] = SwiGLU expert applied to x[rows, D]; act: scratch.
  void swiglu(const ExpertWeights& e, const float* x, int64_t rows, float* out);
  void moe_ffn(const Block& b, const float* x, int64_t rows, float* out);
  // The k experts per token of MoE block b for inputs x[rows, D]: chosen [rows, k], gates.
  void route(const Block& b, const float* x, int64_t rows, std::vector<int32_t>& chosen,
             std::vector<float>& gates);
  ExpertWeights expert_weights(const Block& b, int64_t e);
  const float* as_f32(const std::string& name, const Shape& shape);
  WeightView matrix(const std::string& name, const Shape& shape);

  ModelConfig config_;
  const WeightSource& weights_;
  DecoderOptions options_;
  std::unique_ptr<ExpertCache> cache_;
  AttentionShape attn_{};
  RopeTable rope_;
  WeightView embed_, head_;
  const float* final_norm_ = nullptr;
  std::vector<Block> blocks_;
  std::vector<Tensor> converted_;  // fp32 copies of small tensors (norms, routers, biases)
  int64_t bytes_read_ = 0;
  std::vector<std::vector<int32_t>> last_experts_;  // per MoE layer: [T, k]
  std::vector<std::vector<float>> last_gates_;      // per MoE layer: [T, k]

  // Scratch, grown to the largest forward (scores_: one row of positions per thread).
  Tensor x_, n_, qkv_, ctx_, out_, rstd_, scores_, gate_act_, up_, rows_in_, rows_out_,
      router_logits_, last_;
  // The decode step's routing: one per thread, and the pre-gating guess.
  std::vector<TokenRoute> routes_;
  TokenRoute guess_;
  int64_t widest_ffn_ = 0;  // the largest F of any expert, dense MLP or shared expert
};

}  // namespace moe
