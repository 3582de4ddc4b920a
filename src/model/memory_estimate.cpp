#include "model/memory_estimate.h"

#include <algorithm>
#include <cmath>

#include "model/param_count.h"
#include "nn/attention.h"
#include "tensor/error.h"

namespace moe {
namespace {

constexpr double kFloat = 4;  // bytes: every activation, parameter and moment is fp32

// Measured (docs/MEMORY.md): peak RSS of `moe train --steps 1` beyond the model's own
// memory is about 17 MiB for a one-sequence batch (the program, its libraries, sentencepiece,
// the run's JSON), plus OpenBLAS's and OpenMP's buffers, which grow with the threads.
constexpr double kRuntimeBase = 24.0 * (1 << 20);
constexpr double kRuntimePerThread = 8.0 * (1 << 20);
// What the count misses, as a share of it (allocator slack, the token-file pages each
// sequence's window touches, transient buffers): measured 1-4% at batches of 32 and more;
// a fifth keeps every measured run below its estimate.
constexpr double kHeadroom = 0.20;
// Address space that each OpenMP thread beyond the first reserves without touching (malloc's
// arena, its stack, OpenBLAS's buffers): 250-340 MiB measured per thread (VmPeak - VmHWM).
constexpr double kAddressSpacePerExtraThread = 384.0 * (1 << 20);

uint64_t saturate(double bytes) {
  if (!(bytes < 1.8e19)) return UINT64_MAX;
  return static_cast<uint64_t>(std::ceil(bytes));
}

// Rows per token that an MoE layer's experts process: k for token choice (an upper bound when
// a capacity drops some), the capacity's share for expert choice.
double expert_rows_per_token(const MoeConfig& m) {
  const double k = static_cast<double>(m.top_k);
  if (m.router_type == RouterType::ExpertChoice) return k * std::max(1.0, m.capacity_factor);
  return k;
}

// Floats per token that one MoE layer keeps: saved for backward, and its own backward
// buffers (each layer owns them, so they add up over layers).
struct MoeFloats {
  double saved = 0, scratch = 0;
};
MoeFloats moe_layer_floats(const MoeConfig& m, int threads, int processes) {
  const double D = double(m.hidden_size);
  const double Fm = double(m.moe_intermediate_size), rows = expert_rows_per_token(m);
  const double shared_F = double(m.n_shared_experts * m.shared_expert_intermediate_size);
  const double E_all = double(m.num_experts);
  const bool noisy = m.router_type == RouterType::NoisyTopK, jitter = m.jitter_eps > 0;
  const bool sequence = m.routing_level == RoutingLevel::Sequence;
  MoeFloats f;
  // Input, router input, logits, scores and probabilities; noise and jitter draws.
  f.saved += D + D + 3 * E_all + (noisy ? 3 * E_all : 0) + (jitter ? 2 * D : 0);
  f.saved += sequence ? D : 0;
  // Routing plan and dispatch order: token, expert, gate, selection and sort, per row.
  f.saved += 7 * rows + 1;
  f.saved += 2 * rows * D;   // permuted inputs and expert outputs
  f.saved += 3 * rows * Fm;  // each expert row's SwiGLU: h13 [2F] and act [F]
  if (shared_F > 0) f.saved += 3 * shared_F + D + 1;
  f.scratch += 2 * rows * D + rows;  // gradients of permuted rows and of gates
  f.scratch += 2 * rows * Fm;        // experts' dh13
  f.scratch += 2 * E_all + D;        // router: dscores, dlogits, dinput
  f.scratch += sequence ? D : 0;
  if (shared_F > 0) f.scratch += 2 * D + 2 * shared_F;
  if (m.router_type == RouterType::ExpertChoice) f.scratch += 2.0 * threads;  // selection
  if (processes > 1) f.scratch += 4 * rows * D;  // rows received from and returned to others
  return f;
}

// Floats per token the model keeps over all blocks: saved activations and backward scratch.
MoeFloats model_floats(const ModelConfig& c, int threads, int processes) {
  const double D = double(c.hidden_size), hd = double(c.resolved_head_dim());
  const double H = double(c.num_attention_heads), KV = double(c.num_key_value_heads);
  const double W = (H + 2 * KV) * hd, C = H * hd, F = double(c.intermediate_size);
  const bool qkv_pre = c.qk_norm || c.clip_qkv > 0.0f;
  MoeFloats f;
  bool any_dense = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    // Input, two norms and their rstd, q/k/v, attention context and log-sum-exp, residual.
    f.saved += 4 * D + 2 + W + C + H + (qkv_pre ? W : 0);
    if (c.is_moe_layer(l)) {
      const MoeFloats m = moe_layer_floats(*c.moe, threads, processes);
      f.saved += m.saved;
      f.scratch += m.scratch;
    } else {
      f.saved += 3 * F;  // h13, act
      any_dense = true;
    }
  }
  f.saved += 2 * D + 1 + 1;    // final stream and norm, token ids
  f.saved += 2.0 * processes;  // the trainer's batch of tokens and targets (whole batch)
  f.scratch += 3 * D + W + C;  // out, dres, dn, dqkv, dctx
  if (any_dense) f.scratch += 2 * F;
  return f;
}

// Parameters this process holds: all but the other processes' experts.
double local_parameters(const ModelConfig& c, int processes) {
  const double total = double(count_params(arch_from_model_config(c, "estimate")).total);
  if (processes <= 1 || !c.moe) return total;
  const MoeConfig& m = *c.moe;
  const double per_expert = 3.0 * double(m.hidden_size) * double(m.moe_intermediate_size);
  const double elsewhere = double(m.num_experts) - double(m.num_experts) / processes;
  return total - double(c.num_moe_layers()) * elsewhere * per_expert;
}

// Sets the headroom to kHeadroom of every other part.
void add_headroom(MemoryEstimate& e) {
  e.headroom = 0;
  double counted = 0;
  for (const auto& [name, bytes] : e.parts()) counted += double(bytes);
  e.headroom = saturate(kHeadroom * counted);
}

}  // namespace

uint64_t MemoryEstimate::total() const {
  uint64_t sum = 0;
  for (const auto& [name, bytes] : parts())
    if (__builtin_add_overflow(sum, bytes, &sum)) return UINT64_MAX;
  return sum;
}

std::vector<std::pair<std::string, uint64_t>> MemoryEstimate::parts() const {
  std::vector<std::pair<std::string, uint64_t>> all = {{"parameters", parameters},
                                                       {"gradients", gradients},
                                                       {"AdamW state", optimizer_state},
                                                       {"activations", activations},
                                                       {"KV cache", kv_cache},
                                                       {"logits", logits},
                                                       {"scratch", scratch},
                                                       {"checkpoint copies", checkpoint},
                                                       {"runtime", runtime},
                                                       {"headroom", headroom}};
  std::erase_if(all, [](const auto& part) { return part.second == 0; });
  return all;
}

uint64_t runtime_memory(int threads) {
  return saturate(kRuntimeBase + kRuntimePerThread * std::max(threads, 1));
}

MemoryEstimate estimate_training_memory(const ModelConfig& c, const TrainingShape& s) {
  const int P = std::max(s.processes, 1), threads = std::max(s.threads, 1);
  const double tokens = double(s.batch) / P * double(s.seq);  // this process's share
  const double params = local_parameters(c, P);
  const MoeFloats f = model_floats(c, threads, P);
  MemoryEstimate e;
  e.parameters = e.gradients = saturate(params * kFloat);
  e.optimizer_state = saturate(2 * params * kFloat);
  e.activations = saturate(tokens * f.saved * kFloat);
  e.logits = saturate(tokens * double(c.vocab_size) * kFloat);
  AttentionShape attention{};
  const double attention_scratch = double(attention_scratch_size(attention, threads));
  e.scratch = saturate((tokens * f.scratch + attention_scratch) * kFloat);
  // A save copies the two moments (2P) while the step's buffers stay allocated; a resume reads
  // the weights (P) and the optimizer file whole and parsed (2P + 2P) before any buffer is.
  const double step_buffers = double(e.activations) + double(e.logits) + double(e.scratch);
  double copies = 2 * params * kFloat;
  if (s.resume) copies = std::max(copies, 5 * params * kFloat - step_buffers);
  // Under expert parallelism the root also assembles the whole model and its state.
  if (P > 1) copies += 4 * local_parameters(c, 1) * kFloat;
  e.checkpoint = saturate(copies);
  e.runtime = runtime_memory(threads);
  add_headroom(e);
  e.address_space = saturate(kAddressSpacePerExtraThread * (threads - 1));
  return e;
}

MemoryEstimate estimate_moe_layer_memory(const MoeConfig& m, int64_t tokens, int threads,
                                         int processes, int copies) {
  const int P = std::max(processes, 1);
  const double D = double(m.hidden_size), E = double(m.num_experts) / P;
  const double params =
      E * 3 * D * double(m.moe_intermediate_size) + double(m.num_experts) * D +
      double(m.n_shared_experts) * 3 * D * double(m.shared_expert_intermediate_size);
  const MoeFloats f = moe_layer_floats(m, std::max(threads, 1), P);
  MemoryEstimate e;
  e.parameters = e.gradients = saturate(copies * params * kFloat);
  e.activations = saturate(copies * double(tokens) * (f.saved + 4 * D) * kFloat);
  e.scratch = saturate(copies * double(tokens) * f.scratch * kFloat);
  e.runtime = runtime_memory(std::max(threads, 1));
  add_headroom(e);
  e.address_space = saturate(kAddressSpacePerExtraThread * (std::max(threads, 1) - 1));
  return e;
}

MemoryEstimate estimate_evaluation_memory(const ModelConfig& c, const TrainingShape& s) {
  MemoryEstimate e = estimate_training_memory(c, s);
  e.gradients = e.optimizer_state = e.checkpoint = 0;
  add_headroom(e);
  return e;
}

MemoryEstimate estimate_inference_memory(const ModelConfig& c, const InferenceShape& s) {
  const double D = double(c.hidden_size), hd = double(c.resolved_head_dim());
  const double H = double(c.num_attention_heads), KV = double(c.num_key_value_heads);
  const double W = (H + 2 * KV) * hd, T = double(std::max<int64_t>(s.prompt, 1));
  double rows_per_token = 0, hidden = double(c.intermediate_size), router = 0, expert = 0;
  if (c.moe) {
    const MoeConfig& m = *c.moe;
    rows_per_token = expert_rows_per_token(m);
    hidden = std::max({hidden, double(m.moe_intermediate_size),
                       double(m.n_shared_experts * m.shared_expert_intermediate_size)});
    router = double(m.num_experts);
    expert = 3.0 * D * double(m.moe_intermediate_size) * kFloat;
  }
  MemoryEstimate e;
  e.kv_cache = saturate(double(c.num_hidden_layers) * double(s.positions) * 2 * KV * hd * kFloat);
  // Prefill scratch: the stream, its norm and the block output; q/k/v and the attention
  // context; router logits; the experts' gathered rows in and out and their SwiGLU hidden.
  const double per_token = 3 * D + W + H * hd + router +
                           std::max(1.0, rows_per_token) * (2 * D + 2 * hidden) + 2 * hidden;
  e.activations = saturate(T * per_token * kFloat + double(s.positions) * kFloat);
  e.logits = saturate(double(c.vocab_size) * kFloat);
  if (s.cached_expert_bytes > 0) expert = double(s.cached_expert_bytes);
  e.parameters = saturate(double(s.cached_experts) * double(c.num_moe_layers()) * expert +
                          double(s.resident_weights));
  e.runtime = runtime_memory(std::max(s.threads, 1));
  add_headroom(e);
  e.mapped = s.mapped;
  e.address_space = saturate(kAddressSpacePerExtraThread * (std::max(s.threads, 1) - 1));
  return e;
}

std::string describe_memory_estimate(const MemoryEstimate& e) {
  std::string text = format_bytes(e.total()) + ":";
  bool first = true;
  for (const auto& [name, bytes] : e.parts()) {
    text += (first ? " " : ", ") + name + " " + format_bytes(bytes);
    first = false;
  }
  if (e.mapped > 0) text += "; plus " + format_bytes(e.mapped) + " of mapped files";
  return text;
}

namespace {

// What `estimate` needs under `limit`: memory used, and under ulimit -v / -d also the address
// space reserved beside it.
uint64_t needed_under(const MemoryEstimate& estimate, const MemoryLimit& limit) {
  uint64_t needed = estimate.total();
  if (limit.address_space && __builtin_add_overflow(needed, estimate.address_space, &needed))
    return UINT64_MAX;
  return needed;
}

}  // namespace

bool memory_fits(const MemoryEstimate& estimate, const AvailableMemory& available) {
  for (const MemoryLimit& limit : available.limits)
    if (needed_under(estimate, limit) > limit.headroom) return false;
  return true;
}

void require_memory(const MemoryEstimate& estimate, const std::string& what,
                    const AvailableMemory& available, const std::string& advice) {
  for (const MemoryLimit& limit : available.limits) {
    if (needed_under(estimate, limit) <= limit.headroom) continue;
    const std::string reserved =
        limit.address_space && estimate.address_space > 0
            ? "and " + format_bytes(estimate.address_space) + " more address space, "
            : "";
    throw OutOfMemory(what, estimate.total(),
                      reserved + "but " + format_bytes(limit.headroom) + " (" + limit.name +
                          ") is available" + (advice.empty() ? "" : "; " + advice));
  }
}

}  // namespace moe
