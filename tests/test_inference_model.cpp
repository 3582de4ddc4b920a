// InferenceModel, the one inference forward, against the training Transformer it must equal.
// Both run the same model: the Transformer from its own store, the engine from the store's
// tensors under their Hugging Face names (as a run folder's model.safetensors holds them). For
// every layout and router (MoE in every block, every other block with dense blocks between,
// shared experts with and without their sigmoid gate, both softmax routers, tied embeddings,
// sigmoid scores with a learned bias, group limits and scaling, expert choice by thresholds,
// sequence routing with noisy top-k and jitter, an explicit evaluation capacity, and every
// config field the engine reads at a non-default value):
//   - fp32 weights: prefill of the whole prompt, token-by-token decode, a prefill then a
//     decode, and a prefill then a second prefill onto the filled cache all give the
//     Transformer's last-position logits within 1e-4 + 1e-4 |b| (an
//     explicit eval capacity drops over a forward's tokens: prefill only, the documented
//     exception to causality);
//   - bf16 weights: token-by-token decode multiplies the bf16 weights exactly, so against
//     the Transformer holding the same rounded values the tolerance stays 1e-4 + 1e-4 |b|.
//     Prefill may round activations to bf16 too (AVX512-BF16): 0.05 + 0.02 |b| there, checked
//     for the softmax layouts (thresholds and sequence means near a decision could flip).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine_util.h"
#include "infer/expert_cache.h"
#include "infer/inference_model.h"
#include "infer/open_model.h"
#include "model/checkpoint.h"
#include "model/hf_layout.h"
#include "model/transformer.h"
#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/quant.h"
#include "tensor/safetensors.h"
#include "tensor/threads.h"
#include "test_util.h"

namespace moe {
namespace {

using test::error_of;

constexpr int64_t kVocab = 96, kPrompt = 21;

struct Layout {
  std::string name;
  std::function<void(ModelConfig&)> apply;
  bool causal = true;  // false: routing depends on the forward's tokens (eval capacity)
};

std::vector<Layout> layouts() {
  return {
      {"mixtral", [](ModelConfig&) {}},
      {"softmax_topk_unnormalised_every_other_block",
       [](ModelConfig& c) {
         c.moe->router_type = RouterType::SoftmaxTopK;
         c.moe->norm_topk_prob = false;
         c.moe_layer_freq = 2;
       }},
      {"shared_expert_with_gate_tied",
       [](ModelConfig& c) {
         c.moe->router_type = RouterType::SoftmaxTopK;
         c.moe->n_shared_experts = 1;
         c.moe->shared_expert_intermediate_size = 40;
         c.moe->shared_expert_gate = true;
         c.tie_word_embeddings = true;
       }},
      {"two_shared_experts_no_gate",
       [](ModelConfig& c) {
         c.moe->n_shared_experts = 2;
         c.moe->shared_expert_intermediate_size = 16;
         c.first_k_dense_replace = 1;
       }},
      {"sigmoid_bias_groups_scaled",
       [](ModelConfig& c) {
         c.moe->router_type = RouterType::SigmoidBias;
         c.moe->aux_loss_coeff = 0;
         c.moe->n_group = 3;
         c.moe->topk_group = 2;
         c.moe->routed_scaling_factor = 2.5f;
         c.moe->norm_topk_prob = true;
       }},
      {"expert_choice_thresholds",
       [](ModelConfig& c) {
         c.moe->router_type = RouterType::ExpertChoice;
         c.moe->aux_loss_type = AuxLossType::None;
         c.moe->aux_loss_coeff = 0;
         c.moe->capacity_factor = 1.0;
       }},
      {"sequence_routing_noisy_jitter",
       [](ModelConfig& c) {
         c.moe->router_type = RouterType::NoisyTopK;
         c.moe->jitter_eps = 0.1f;
         c.moe->routing_level = RoutingLevel::Sequence;
         c.moe->route_prefix = 5;
       }},
      {"eval_capacity_position",
       [](ModelConfig& c) {
         c.moe->capacity_factor = 1.0;
         c.moe->eval_capacity_factor = 0.75;
         c.moe->drop_policy = DropPolicy::Position;
       },
       false},
      {"config_fields_off_default",
       [](ModelConfig& c) {
         c.rope_theta = 5e5;
         c.rms_norm_eps = 1e-3f;
         c.head_dim = 12;
         c.num_key_value_heads = 3;
         c.max_position_embeddings = 100;
         c.qkv_bias = true;
         c.qk_norm = true;
         c.clip_qkv = 0.8f;
         c.mlp_only_layers = {1};
         c.moe->num_experts = 5;
         c.moe->top_k = 3;
         c.moe->norm_topk_prob = false;
         c.moe->router_type = RouterType::SoftmaxTopK;
       }},
  };
}

const Layout& layout_named(const std::string& name) {
  static const std::vector<Layout> all = layouts();
  for (const Layout& l : all)
    if (l.name == name) return l;
  throw Error("no layout " + name);
}

ModelConfig config_for(const Layout& layout) {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = 48;
  c.intermediate_size = 64;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  MoeConfig m;
  m.hidden_size = 48;
  m.moe_intermediate_size = 32;
  m.num_experts = 6;
  m.top_k = 2;
  c.moe = m;
  layout.apply(c);
  c.validate();
  return c;
}

struct Model {
  ParamStore store;
  std::unique_ptr<Transformer> transformer;
};

void make_model(const ModelConfig& config, Model& m, bool round_to_bf16) {
  m.transformer = std::make_unique<Transformer>(config, m.store, 1);
  m.store.allocate();
  Rng rng(7);
  rng.fill_normal(m.store.values().span(), 0.0f, 0.2f);
  if (round_to_bf16)
    for (float& v : m.store.values().span()) v = bf16_to_float(float_to_bf16(v));
  // Router state learned in training: a selection bias of the size training gives it, and
  // thresholds near 1/E, so that a token reaches about one or two experts, some none.
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    MoeLayer* moe = m.transformer->moe_layer(l);
    if (!moe) continue;
    rng.fill_normal(moe->router().expert_bias(), 0.0f, 0.05f);
    for (float& theta : moe->router().expert_threshold())
      theta = 1.0f / static_cast<float>(config.moe->num_experts) + 0.02f * rng.normal();
  }
}

OwnedWeights weights_of(Model& m, bool bf16) {
  return test::engine_weights(*m.transformer, m.store, bf16);
}

std::vector<float> transformer_last_logits(Transformer& model, const std::vector<int32_t>& tokens) {
  ModelStepOptions eval;
  eval.training = false;
  eval.compute_grad = false;
  const std::vector<int32_t> targets(tokens.size(), -1);
  model.forward(tokens, targets, 1, static_cast<int64_t>(tokens.size()), eval);
  const auto all = model.logits();
  return {all.end() - kVocab, all.end()};
}

// Feeds tokens [0, split) as one prefill, then the rest one at a time.
std::vector<float> decoder_last_logits(InferenceModel& decoder, const std::vector<int32_t>& tokens,
                                       int64_t split) {
  KvCache cache = decoder.make_cache(64);
  std::vector<float> logits(kVocab);
  const std::span<const int32_t> all(tokens);
  if (split > 0) decoder.forward(all.subspan(0, split), cache, logits);
  for (size_t t = static_cast<size_t>(split); t < tokens.size(); ++t)
    decoder.forward(all.subspan(t, 1), cache, logits);
  EXPECT_EQ(cache.length, static_cast<int64_t>(tokens.size()));
  return logits;
}

// Prefills tokens [0, split), then prefills the rest onto the filled cache (a second turn):
// the logits after each.
std::pair<std::vector<float>, std::vector<float>> decoder_two_prefills(
    InferenceModel& decoder, const std::vector<int32_t>& tokens, int64_t split) {
  KvCache cache = decoder.make_cache(64);
  std::vector<float> first(kVocab), second(kVocab);
  const std::span<const int32_t> all(tokens);
  decoder.forward(all.subspan(0, static_cast<size_t>(split)), cache, first);
  decoder.forward(all.subspan(static_cast<size_t>(split)), cache, second);
  EXPECT_EQ(cache.length, static_cast<int64_t>(tokens.size()));
  return {first, second};
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double abs_tol,
                  double rel_tol, const std::string& what) {
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], abs_tol + rel_tol * std::abs(want[i])) << what << " at " << i;
}

std::vector<int32_t> prompt() {
  std::vector<int32_t> tokens(kPrompt);
  Rng rng(3);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.next_u64() % kVocab);
  return tokens;
}

TEST(InferenceModel, Fp32EqualsTheTransformerInEveryLayout) {
  for (const Layout& layout : layouts()) {
    SCOPED_TRACE(layout.name);
    const ModelConfig config = config_for(layout);
    Model m;
    make_model(config, m, false);
    const OwnedWeights weights = weights_of(m, false);
    InferenceModel decoder(config, HfArch::Mixtral, weights);
    const auto tokens = prompt();
    const auto want = transformer_last_logits(*m.transformer, tokens);
    expect_close(decoder_last_logits(decoder, tokens, kPrompt), want, 1e-4, 1e-4, "prefill");
    if (!layout.causal) continue;
    expect_close(decoder_last_logits(decoder, tokens, 0), want, 1e-4, 1e-4, "decode");
    expect_close(decoder_last_logits(decoder, tokens, 9), want, 1e-4, 1e-4, "prefill+decode");
    // A prefill onto a cache that holds positions: 9 tokens, then the other 12 at once.
    const auto [first, second] = decoder_two_prefills(decoder, tokens, 9);
    const std::vector<int32_t> head(tokens.begin(), tokens.begin() + 9);
    expect_close(first, transformer_last_logits(*m.transformer, head), 1e-4, 1e-4, "prefill of 9");
    expect_close(second, want, 1e-4, 1e-4, "prefill of 9, then of 12 onto the cache");
  }
}

TEST(InferenceModel, Bf16WeightsStayBf16AndMatchTheRoundedModel) {
  for (const Layout& layout : layouts()) {
    SCOPED_TRACE(layout.name);
    const ModelConfig config = config_for(layout);
    Model m;
    make_model(config, m, true);
    const OwnedWeights weights = weights_of(m, true);
    EXPECT_EQ(weights.at("model.layers.0.self_attn.q_proj.weight").dtype, TensorDtype::BF16);
    InferenceModel decoder(config, HfArch::Mixtral, weights);
    const auto tokens = prompt();
    const auto want = transformer_last_logits(*m.transformer, tokens);
    if (layout.causal)
      expect_close(decoder_last_logits(decoder, tokens, 0), want, 1e-4, 1e-4, "decode");
    const RouterType router = config.moe->router_type;
    if (router == RouterType::TopKSoftmax || router == RouterType::SoftmaxTopK)
      expect_close(decoder_last_logits(decoder, tokens, kPrompt), want, 0.05, 0.02, "prefill");
  }
}

// The decode step runs in one parallel region whose threads share every product's rows; each
// row is still one thread's sum, so the logits do not depend on the thread count, to the bit.
// The model is large enough that every product is split into many shares.
TEST(InferenceModel, DecodeStepGivesTheSameBitsAtAnyThreadCount) {
  for (const std::string name : {"mixtral", "two_shared_experts_no_gate",
                                 "expert_choice_thresholds", "sequence_routing_noisy_jitter"}) {
    const Layout& layout = layout_named(name);
    for (const bool bf16 : {false, true}) {
      SCOPED_TRACE(layout.name + (bf16 ? " bf16" : " fp32"));
      ModelConfig config = config_for(layout);
      config.hidden_size = config.moe->hidden_size = 256;
      config.num_attention_heads = 8;
      config.intermediate_size = 512;
      config.moe->moe_intermediate_size = 384;
      config.validate();
      Model m;
      make_model(config, m, bf16);
      const OwnedWeights weights = weights_of(m, bf16);
      InferenceModel decoder(config, HfArch::Mixtral, weights);
      const std::vector<int32_t> all = prompt(), tokens(all.begin(), all.begin() + 6);
      std::vector<std::vector<float>> logits;
      for (const int threads : {1, 2, 3}) {
        set_threads(threads);
        logits.push_back(decoder_last_logits(decoder, tokens, 0));
      }
      set_threads(0);
      for (size_t i = 0; i < logits[0].size(); ++i) {
        ASSERT_EQ(logits[1][i], logits[0][i]) << "2 threads, logit " << i;
        ASSERT_EQ(logits[2][i], logits[0][i]) << "3 threads, logit " << i;
      }
    }
  }
}

// One decode step reads each weight it uses once: attention, router, the k chosen experts,
// the LM head, the token's embedding row; the experts not chosen are not read.
TEST(InferenceModel, CountsTheBytesADecodeStepReads) {
  const ModelConfig config = config_for(layouts()[0]);
  Model m;
  make_model(config, m, false);
  const OwnedWeights weights = weights_of(m, true);
  InferenceModel decoder(config, HfArch::Mixtral, weights);
  KvCache cache = decoder.make_cache(8);
  std::vector<float> logits(kVocab);
  const int32_t token = 5;
  decoder.forward({&token, 1}, cache, logits);
  const int64_t D = 48, hd = 8, H = 6, KV = 2, F = 32, E = 6, k = 2, L = 3, V = kVocab;
  const int64_t per_layer = 2 * (H * hd * D + 2 * KV * hd * D + D * H * hd)  // bf16 attention
                            + 4 * E * D                                      // fp32 router
                            + 2 * k * 3 * F * D;                             // k bf16 experts
  EXPECT_EQ(decoder.weight_bytes_read(), L * per_layer + 2 * V * D + 2 * D);
  for (int64_t layer = 0; layer < L; ++layer)
    EXPECT_EQ(decoder.last_routes(layer).assignments(), 2);
}

// ggml's block-quantized weights (as a GGUF file holds them) in the engine: every matrix but
// the routers quantized, each product of a quantized matrix with its input quantized per block
// (Q8_0 or Q8_K, as ggml does). Against the same engine over the dequantized weights in fp32
// the only difference is the activations' 8-bit rounding, which three layers carry on: logits
// within 0.05 of the largest logit's magnitude (measured: 0.006 to 0.021). The decode step and a
// prefill quantize each row alike and run the same dot kernels, so the two agree as the fp32 paths
// do (1e-4 + 1e-4 |b| apart from attention's order of sums: 2e-3 here), and a decode step's logits
// do not depend on the thread count, to the bit. The decode step counts each quantized matrix at
// its blocks' bytes. Widths are multiples of 256, the K formats' block.
ModelConfig quantizable_config(const std::string& layout) {
  ModelConfig config = config_for(layout_named(layout));
  config.hidden_size = config.moe->hidden_size = 256;
  config.num_attention_heads = 8;
  config.head_dim = 32;
  config.num_key_value_heads = 2;
  config.intermediate_size = 512;
  config.moe->moe_intermediate_size = 256;
  if (config.moe->n_shared_experts > 0) config.moe->shared_expert_intermediate_size = 256;
  config.validate();
  return config;
}

// The store's tensors: 2-D ones quantized (routers excepted), and the same values dequantized.
std::pair<OwnedWeights, OwnedWeights> quantized_weights(Transformer& model, ParamStore& store,
                                                        QuantType type) {
  OwnedWeights quantized, dequantized;
  for (const HfTensorView& v : hf_tensor_views(model, store, HfWhich::Values)) {
    Tensor t(v.shape);
    std::copy(v.data.begin(), v.data.end(), t.data());
    if (v.shape.size() == 2 && !v.name.ends_with("gate.weight")) {
      quantized.add_quantized(v.name, t, type);
      const WeightView q = *quantized.find(v.name);
      const int64_t cols = v.shape[1], row_bytes = quant_row_bytes(type, cols);
      for (int64_t r = 0; r < v.shape[0]; ++r)
        dequantize_row(type, q.blocks().subspan(size_t(r * row_bytes), size_t(row_bytes)),
                       t.span().subspan(size_t(r * cols), size_t(cols)));
    } else {
      quantized.add_f32(v.name, t);
    }
    dequantized.add_f32(v.name, std::move(t));
  }
  return {std::move(quantized), std::move(dequantized)};
}

float largest_magnitude(const std::vector<float>& v) {
  float m = 0;
  for (const float x : v) m = std::max(m, std::abs(x));
  return m;
}

TEST(InferenceModel, QuantizedWeightsMatchTheirDequantizedValues) {
  for (const QuantType type :
       {QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_K, QuantType::Q5_K, QuantType::Q6_K})
    for (const std::string layout : {"mixtral", "shared_expert_with_gate_tied"}) {
      SCOPED_TRACE(std::string(quant_layout(type).name) + " " + layout);
      const ModelConfig config = quantizable_config(layout);
      Model m;
      make_model(config, m, false);
      // Weights of a trained model's scale (1/sqrt(D)-ish): products neither grow nor shrink.
      for (float& v : m.store.values().span()) v *= 0.25f;
      const auto [quantized, dequantized] = quantized_weights(*m.transformer, m.store, type);
      EXPECT_EQ(quantized.at("model.layers.0.self_attn.q_proj.weight").quant, type);
      InferenceModel engine(config, HfArch::Mixtral, quantized),
          reference(config, HfArch::Mixtral, dequantized);
      const std::vector<int32_t> all = prompt(), tokens(all.begin(), all.begin() + 8);
      const auto want = decoder_last_logits(reference, tokens, 0);
      const auto decoded = decoder_last_logits(engine, tokens, 0);
      expect_close(decoded, want, 0.05 * largest_magnitude(want), 0, "decode vs dequantized");
      expect_close(decoder_last_logits(engine, tokens, 8), decoded, 2e-3, 2e-3,
                   "prefill vs decode");
      expect_close(decoder_last_logits(engine, tokens, 5), decoded, 2e-3, 2e-3,
                   "prefill + decode vs decode");
      for (const int threads : {1, 3}) {
        set_threads(threads);
        const auto again = decoder_last_logits(engine, tokens, 0);
        set_threads(0);
        for (size_t i = 0; i < decoded.size(); ++i)
          ASSERT_EQ(again[i], decoded[i]) << threads << " threads, logit " << i;
      }
    }
}

TEST(InferenceModel, CountsAQuantizedDecodeStepAtItsBlocksBytes) {
  const ModelConfig config = quantizable_config("mixtral");
  Model m;
  make_model(config, m, false);
  const auto [quantized, unused] = quantized_weights(*m.transformer, m.store, QuantType::Q4_K);
  InferenceModel engine(config, HfArch::Mixtral, quantized);
  KvCache cache = engine.make_cache(8);
  std::vector<float> logits(kVocab);
  const int32_t token = 5;
  engine.forward({&token, 1}, cache, logits);
  const int64_t D = 256, q = 32 * 8, kv = 32 * 2, F = 256, E = 6, k = 2, L = 3, V = kVocab;
  const auto bytes = [](int64_t rows, int64_t cols) {
    return rows * quant_row_bytes(QuantType::Q4_K, cols);  // 144 bytes per 256 values
  };
  const int64_t per_layer = bytes(q, D) + 2 * bytes(kv, D) + bytes(D, q)  // attention
                            + 4 * E * D                                   // fp32 router
                            + k * (2 * bytes(F, D) + bytes(D, F));        // k experts
  EXPECT_EQ(engine.weight_bytes_read(), L * per_layer + bytes(V, D) + bytes(1, D));
}

// decode_batch, the server's step over several sequences: each row's logits are the bits
// forward() gives its sequence alone, for every layout and router (sequence routing with each
// row's own prefix sums, expert choice's varying number of experts), for fp32, bf16 and
// quantized weights, with the sequences at different positions; the step reads each weight
// once (a tied or dense weight once, not once per row) and lists its rows' routes.
TEST(InferenceModel, DecodeBatchEqualsEachSequenceAlone) {
  const auto check = [](const ModelConfig& config, const WeightSource& weights) {
    InferenceModel alone(config, HfArch::Mixtral, weights),
        batched(config, HfArch::Mixtral, weights);
    const std::vector<int32_t> all = prompt();
    constexpr int64_t B = 5;
    std::vector<KvCache> solo, together;
    std::vector<float> want(B * kVocab), got(B * kVocab), scratch(kVocab);
    for (int64_t r = 0; r < B; ++r) {  // sequence r: a prompt of 2 + 3 r tokens
      const std::span<const int32_t> head(all.data() + r, size_t(2 + 3 * r));
      solo.push_back(alone.make_cache(32));
      together.push_back(batched.make_cache(32));
      alone.forward(head, solo.back(), scratch);
      batched.forward(head, together.back(), scratch);
    }
    std::vector<KvCache*> caches;
    for (KvCache& c : together) caches.push_back(&c);
    for (int step = 0; step < 3; ++step) {
      std::vector<int32_t> next(B);
      for (int64_t r = 0; r < B; ++r) {
        next[size_t(r)] = static_cast<int32_t>((7 * r + 11 * step) % kVocab);
        alone.forward({&next[size_t(r)], 1}, solo[size_t(r)],
                      std::span(want).subspan(size_t(r * kVocab), kVocab));
      }
      batched.decode_batch(next, caches, got);
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(got[i], want[i]) << "step " << step << ", row " << i / kVocab;
      for (int64_t layer = 0; layer < config.num_moe_layers(); ++layer)
        EXPECT_EQ(batched.last_routes(layer).tokens, B);
    }
    for (int64_t r = 0; r < B; ++r) EXPECT_EQ(together[size_t(r)].length, 2 + 3 * r + 3);
  };
  for (const Layout& layout : layouts()) {
    if (!layout.causal) continue;
    SCOPED_TRACE(layout.name);
    const ModelConfig config = config_for(layout);
    for (const bool bf16 : {false, true}) {
      Model m;
      make_model(config, m, bf16);
      check(config, weights_of(m, bf16));
    }
  }
  for (const QuantType type : {QuantType::Q8_0, QuantType::Q4_K}) {
    SCOPED_TRACE(quant_layout(type).name);
    const ModelConfig config = quantizable_config("mixtral");
    Model m;
    make_model(config, m, false);
    check(config, quantized_weights(*m.transformer, m.store, type).first);
  }
}

// A batched step reads the dense weights once for all its rows, and each expert once for the
// rows that chose it: fewer bytes than the rows' single steps together, and no fewer than one.
TEST(InferenceModel, DecodeBatchReadsEachWeightOnce) {
  const ModelConfig config = config_for(layouts()[0]);
  Model m;
  make_model(config, m, false);
  const OwnedWeights weights = weights_of(m, true);
  InferenceModel engine(config, HfArch::Mixtral, weights);
  constexpr int64_t B = 4;
  std::vector<KvCache> caches;
  std::vector<KvCache*> pointers;
  for (int64_t r = 0; r < B; ++r) caches.push_back(engine.make_cache(8));
  for (KvCache& c : caches) pointers.push_back(&c);
  const std::vector<int32_t> tokens = {3, 17, 40, 77};
  std::vector<float> logits(B * kVocab);
  engine.decode_batch(tokens, pointers, logits);
  const int64_t batched = engine.weight_bytes_read();
  int64_t alone = 0, largest = 0;
  for (int64_t r = 0; r < B; ++r) {
    KvCache c = engine.make_cache(8);
    engine.forward({&tokens[size_t(r)], 1}, c, std::span(logits).subspan(0, kVocab));
    alone += engine.weight_bytes_read();
    largest = std::max(largest, engine.weight_bytes_read());
  }
  // Every row's distinct experts: the dense bytes once plus at most E experts per layer.
  const int64_t D = 48, F = 32, E = 6, L = 3;
  EXPECT_LT(batched, alone);
  EXPECT_GE(batched, largest);
  EXPECT_LE(batched, largest + L * (E - 2) * 2 * 3 * F * D + (B - 1) * 2 * D);
}

// Experts in slower memory: with 1, 2 or all 6 experts per layer in RAM, either policy, with
// and without prefetch, the logits are exactly those of the mapped model (the same weights
// through the same kernels), every lookup is a hit or a miss, and storage bytes are the
// misses' and prefetches' experts.
// Expert choice sends a token to a varying number of experts, none included.
TEST(InferenceModel, ExpertCacheGivesTheSameLogitsAndCountsItsReads) {
  for (const std::string name : {"mixtral", "expert_choice_thresholds"}) {
    SCOPED_TRACE(name);
    const ModelConfig config = config_for(layout_named(name));
    Model m;
    make_model(config, m, true);
    std::map<std::string, Tensor> tensors;
    for (const HfTensorView& v : hf_tensor_views(*m.transformer, m.store, HfWhich::Values)) {
      Tensor t(v.shape);
      std::copy(v.data.begin(), v.data.end(), t.data());
      tensors.emplace(v.name, std::move(t));
    }
    const std::string dir = test::temp_dir("cache_" + name);
    write_safetensors(dir + "/model.safetensors", tensors, {}, StoredDtype::BF16);
    const MappedCheckpoint checkpoint(dir, {dir + "/model.safetensors"});
    const auto tokens = prompt();
    InferenceModel mapped(config, HfArch::Mixtral, checkpoint);
    const auto want = decoder_last_logits(mapped, tokens, 5);

    const int64_t expert_bytes = 2 * 3 * 32 * 48;  // bf16 gate, up, down
    for (const int64_t capacity : {int64_t{1}, int64_t{2}, int64_t{6}})
      for (const CachePolicy policy : {CachePolicy::Lru, CachePolicy::Lfu})
        for (const bool prefetch : {false, true}) {
          SCOPED_TRACE("capacity " + std::to_string(capacity) + (prefetch ? " prefetch" : "") +
                       (policy == CachePolicy::Lfu ? " lfu" : " lru"));
          InferenceModel cached(config, HfArch::Mixtral, checkpoint, {capacity, policy, prefetch});
          const auto got = decoder_last_logits(cached, tokens, 5);
          for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
          const ExpertCacheStats stats = cached.expert_cache()->stats();
          EXPECT_EQ(stats.bytes_read, (stats.misses + stats.prefetched) * expert_bytes);
          EXPECT_GT(stats.hits + stats.misses, 0);
          if (capacity == 6) {
            EXPECT_LE(stats.misses + stats.prefetched, 3 * 6);  // each expert read once
          }
          EXPECT_LE(stats.prefetch_used, stats.prefetched);
          if (!prefetch) {
            EXPECT_EQ(stats.prefetched, 0);
          }
        }
    OwnedWeights in_memory = weights_of(m, true);
    EXPECT_NE(error_of([&] {
                InferenceModel d(config, HfArch::Mixtral, in_memory, {2});
              }).find("is not in a file"),
              std::string::npos);
  }
}

// Which reads hit, per policy (expert_cache.h): LRU evicts the expert used longest ago, LFU
// the one used least often so far, ties to the least recent. One layer of 4 experts, 2 slots,
// each expert's matrices filled with its own number, so a view shows which expert it holds.
TEST(ExpertCache, HitsAndMissesOfAFixedSequenceFollowEachPolicy) {
  const int64_t E = 4, values = 6;  // each matrix [2, 3]
  const std::string path = test::temp_dir("policy") + "/experts.bin";
  std::vector<std::vector<ExpertLocation>> experts(1);
  {
    std::ofstream out(path, std::ios::binary);
    uint64_t offset = 0;
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<float> matrix(values, static_cast<float>(e));
      TensorLocation where{path, 0, values * sizeof(float), TensorDtype::F32, {2, 3}, std::nullopt};
      ExpertLocation expert{where, where, where};
      for (TensorLocation* t : {&expert.gate, &expert.up, &expert.down}) {
        out.write(reinterpret_cast<const char*>(matrix.data()),
                  static_cast<std::streamsize>(t->bytes));
        t->offset = offset;
        offset += t->bytes;
      }
      experts[0].push_back(expert);
    }
  }
  const auto run = [&](CachePolicy policy, const std::vector<int64_t>& sequence) {
    ExpertCache cache(experts, 2, policy);
    for (const int64_t e : sequence) {
      const ExpertWeights w = cache.get(0, e);
      for (const WeightView* v : {&w.gate, &w.up, &w.down})
        EXPECT_EQ(v->f32()[values - 1], static_cast<float>(e)) << "expert " << e;
    }
    const ExpertCacheStats stats = cache.stats();
    EXPECT_EQ(stats.bytes_read, stats.misses * 3 * values * int64_t{sizeof(float)});
    return std::make_pair(stats.hits, stats.misses);
  };
  // 0 used three times, then 1, then 2 needs a slot: LRU drops 0 (used longest ago), LFU
  // drops 1 (used once). So 0 misses again under LRU only; 1 misses again under both.
  const std::vector<int64_t> frequent_then_new = {0, 0, 0, 1, 2, 0, 1};
  EXPECT_EQ(run(CachePolicy::Lru, frequent_then_new), std::make_pair(int64_t{2}, int64_t{5}));
  EXPECT_EQ(run(CachePolicy::Lfu, frequent_then_new), std::make_pair(int64_t{3}, int64_t{4}));
  // 0 and 1 used once each when 2 comes: both policies drop 0 (LFU by the tie rule), so 1 hits.
  const std::vector<int64_t> tie = {0, 1, 2, 1, 0};
  EXPECT_EQ(run(CachePolicy::Lru, tie), std::make_pair(int64_t{1}, int64_t{4}));
  EXPECT_EQ(run(CachePolicy::Lfu, tie), std::make_pair(int64_t{1}, int64_t{4}));
  // A hit is a use: 0 read again before 2 comes, so both drop 1 and 0 hits once more.
  const std::vector<int64_t> reused = {0, 1, 0, 2, 0};
  EXPECT_EQ(run(CachePolicy::Lru, reused), std::make_pair(int64_t{2}, int64_t{3}));
  EXPECT_EQ(run(CachePolicy::Lfu, reused), std::make_pair(int64_t{2}, int64_t{3}));
  // A cycle over 3 experts in 2 slots: LRU always drops the next one needed.
  const std::vector<int64_t> cycle = {0, 1, 2, 0, 1, 2, 0, 1, 2};
  EXPECT_EQ(run(CachePolicy::Lru, cycle), std::make_pair(int64_t{0}, int64_t{9}));

  // Prefetch: 0 and 1 read ahead; 1 is then used (a hit that prefetch earned), 3 is not
  // predicted (a miss, evicting the unused 0), and 1 again is a plain hit, counted once.
  ExpertCache cache(experts, 2, CachePolicy::Lru);
  const std::vector<int32_t> guess = {0, 1};
  cache.prefetch(0, guess);
  for (const int64_t e : {1, 3, 1}) EXPECT_EQ(cache.get(0, e).gate.f32()[0], float(e));
  const ExpertCacheStats stats = cache.stats();
  EXPECT_EQ(stats.prefetched, 2);
  EXPECT_EQ(stats.prefetch_used, 1);
  EXPECT_EQ(stats.misses, 1);
  EXPECT_DOUBLE_EQ(stats.prefetch_recall(), 0.5);     // 1 of the 2 experts read for lookups
  EXPECT_DOUBLE_EQ(stats.prefetch_precision(), 0.5);  // 1 of the 2 prefetched experts used
}

TEST(InferenceModel, NamesTheTensorOrTokenThatIsWrong) {
  const ModelConfig config = config_for(layouts()[0]);
  Model m;
  make_model(config, m, false);
  OwnedWeights weights = weights_of(m, false);
  weights.add_f32("model.layers.1.block_sparse_moe.experts.3.w2.weight", Tensor({48, 31}));
  EXPECT_EQ(error_of([&] { InferenceModel d(config, HfArch::Mixtral, weights); }),
            "tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight': shape [48, 31], "
            "expected [48, 32]");
  EXPECT_NE(error_of([&] {
              InferenceModel d(config, HfArch::Qwen2Moe, weights);
            }).find("missing tensor 'model.layers.0.mlp.gate.weight'"),
            std::string::npos);

  const OwnedWeights good = weights_of(m, false);
  InferenceModel decoder(config, HfArch::Mixtral, good);
  KvCache cache = decoder.make_cache(2);
  std::vector<float> logits(kVocab);
  const std::vector<int32_t> bad = {1, kVocab};
  EXPECT_EQ(error_of([&] { decoder.forward(bad, cache, logits); }),
            "token id 96 is outside the vocabulary [0, 96)");
  const std::vector<int32_t> three = {1, 2, 3};
  EXPECT_NE(error_of([&] { decoder.forward(three, cache, logits); }).find("holds 2 positions"),
            std::string::npos);
}

// The Hugging Face reference folders of tests/reference/hf_reference.py (Mixtral fp32, bf16 in
// three shards, fp16; Qwen2-MoE with biases, gated shared expert and two block layouts; OLMoE
// with q/k norm and clip_qkv), mapped as they lie, against PyTorch's logits at every position
// and its greedy tokens. Token-by-token decode multiplies the stored weights exactly:
// 1e-4 + 1e-4 |torch|, as the Transformer's own tests. A prefill of the whole prompt with bf16
// weights may round activations to bf16 (AVX512-BF16, as llama.cpp's bf16 path does): its last
// row within 1.5% of the largest |logit| (seen: 0.19 at logits up to 17, 1.1%).
class HfDecoder : public testing::TestWithParam<std::string> {};

TEST_P(HfDecoder, MappedFolderMatchesThePyTorchReference) {
  const std::string cases = std::string(MOE_REFERENCE_DIR) + "/hf/";
  const SafetensorsFile expected = read_safetensors(cases + GetParam() + ".expected.safetensors");
  std::vector<int32_t> prompt, greedy;
  for (int64_t i = 0; i < expected.at("tokens").numel(); ++i)
    prompt.push_back(static_cast<int32_t>(expected.at("tokens")[i]));
  for (int64_t i = 0; i < expected.at("greedy").numel(); ++i)
    greedy.push_back(static_cast<int32_t>(expected.at("greedy")[i]));
  const Tensor& want = expected.at("logits");
  const OpenedModel m = open_model(cases + GetParam());
  const int64_t V = m.config.vocab_size, S = static_cast<int64_t>(prompt.size());
  const bool bf16 = GetParam().ends_with("bf16") || GetParam().ends_with("bf16_sharded");

  KvCache cache = m.model->make_cache(S + static_cast<int64_t>(greedy.size()));
  std::vector<float> logits(static_cast<size_t>(V));
  for (int64_t t = 0; t < S; ++t) {
    m.model->forward({&prompt[static_cast<size_t>(t)], 1}, cache, logits);
    for (int64_t v = 0; v < V; ++v) {
      const float w = want[t * V + v];
      ASSERT_NEAR(logits[v], w, 1e-4 + 1e-4 * std::abs(w)) << "position " << t << ", token " << v;
    }
  }
  std::vector<int32_t> drawn;
  for (size_t i = 0; i < greedy.size(); ++i) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    drawn.push_back(next);
    m.model->forward({&next, 1}, cache, logits);
  }
  EXPECT_EQ(drawn, greedy);

  KvCache whole = m.model->make_cache(S);
  m.model->forward(prompt, whole, logits);
  double largest = 0;
  for (int64_t v = 0; v < V; ++v)
    largest = std::max(largest, std::abs(double(want[(S - 1) * V + v])));
  for (int64_t v = 0; v < V; ++v) {
    const float w = want[(S - 1) * V + v];
    ASSERT_NEAR(logits[v], w, bf16 ? 0.015 * largest : 1e-4 + 1e-4 * std::abs(w))
        << "prefill, token " << v;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, HfDecoder,
                         testing::Values("mixtral_f32", "mixtral_bf16_sharded", "mixtral_f16",
                                         "qwen2_moe_f32", "qwen2_moe_bf16", "olmoe_f32",
                                         "olmoe_bf16"));

// A run folder (config.json + model.safetensors as `moe train` writes them) opens as it lies,
// mapped, through the same engine, and equals the Transformer it was saved from; a folder that
// is no model is refused in one line naming what is missing.
TEST(OpenModel, RunFolderRunsMappedAndEqualsItsTransformer) {
  // (The HF attention extras, qkv_bias, qk_norm and clip_qkv, are not fields of a run config.)
  for (const std::string name : {"mixtral", "expert_choice_thresholds",
                                 "sigmoid_bias_groups_scaled", "sequence_routing_noisy_jitter"}) {
    SCOPED_TRACE(name);
    const ModelConfig config = config_for(layout_named(name));
    Model m;
    make_model(config, m, false);
    const std::string run = test::temp_dir("run_" + name);
    save_model_config(run, config);
    write_safetensors(run + "/model.safetensors", model_tensors(*m.transformer, m.store));
    const OpenedModel opened = open_model(run);
    EXPECT_EQ(opened.kind, ModelKind::Run);
    const auto tokens = prompt();
    const auto want = transformer_last_logits(*m.transformer, tokens);
    expect_close(decoder_last_logits(*opened.model, tokens, 9), want, 1e-4, 1e-4, "run folder");
  }
  const std::string empty = test::temp_dir("no_model");
  EXPECT_NE(error_of([&] { open_model(empty); }).find("no config.json"), std::string::npos);
}

}  // namespace
}  // namespace moe
