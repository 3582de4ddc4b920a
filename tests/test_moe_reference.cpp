// Compares the MoE layer, forward and backward, with the PyTorch reference
// (tests/reference/moe_reference.py, run by ctest as the fixture reference.generate_moe_layer).
// Reference weights use Hugging Face's per-expert names (experts.{e}.w1/w3/w2, [out, in]);
// they are packed here into the layer's stacked w13 and fused shared-expert layout, so the
// test also checks that packing. Tolerance: |ours - torch| <= 2e-5 + 2e-4 |torch| (fp32 both).
// ctest runs every case at 1 and at 2 threads (OMP_NUM_THREADS; see tests/CMakeLists.txt), so
// the cases of over 256 tokens check the threaded branches too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "expect_close.h"
#include "moe/moe_layer.h"
#include "moe_cases.h"
#include "tensor/safetensors.h"

namespace moe {
namespace {

constexpr double kAbsTol = 2e-5;
constexpr double kRelTol = 2e-4;

void expect_close(std::span<const float> ours, const Tensor& ref, const std::string& what) {
  test::expect_close(ours, ref, what, kAbsTol, kRelTol);
}

// Copies [rows, cols] `src` into rows [row0, row0+rows) of a [.., cols] destination.
void put_rows(std::span<float> dst, int64_t row0, const Tensor& src) {
  const int64_t cols = src.dim(1);
  std::copy(src.data(), src.data() + src.numel(), dst.data() + row0 * cols);
}
// Copies [rows, cols] `src` into columns [col0, col0+cols) of a [rows, stride] destination.
void put_cols(std::span<float> dst, int64_t stride, int64_t col0, const Tensor& src) {
  for (int64_t r = 0; r < src.dim(0); ++r)
    std::copy(src.row(r).begin(), src.row(r).end(), dst.data() + r * stride + col0);
}
// The inverse views, for comparing packed gradients with per-expert reference gradients.
Tensor take_rows(std::span<const float> src, int64_t row0, int64_t rows, int64_t cols) {
  Tensor t({rows, cols});
  std::copy(src.data() + row0 * cols, src.data() + (row0 + rows) * cols, t.data());
  return t;
}
Tensor take_cols(std::span<const float> src, int64_t rows, int64_t stride, int64_t col0,
                 int64_t cols) {
  Tensor t({rows, cols});
  for (int64_t r = 0; r < rows; ++r)
    std::copy(src.data() + r * stride + col0, src.data() + r * stride + col0 + cols,
              t.data() + r * cols);
  return t;
}

class MoeReference : public testing::TestWithParam<std::string> {};

TEST_P(MoeReference, ForwardAndBackwardMatchPyTorch) {
  const test::MoeCase c = test::load_moe_cases().at(GetParam());
  const std::string path = std::string(MOE_REFERENCE_DIR) + "/" + c.name + ".safetensors";
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " missing: run the reference fixture";
  const SafetensorsFile ref = read_safetensors(path);
  const MoeConfig& cfg = c.config;
  const int64_t T = c.tokens, D = cfg.hidden_size, F = cfg.moe_intermediate_size,
                E = cfg.num_experts, S = cfg.n_shared_experts,
                Fs = cfg.shared_expert_intermediate_size;

  ParamStore store;
  MoeLayer layer(cfg, store, "layer");
  store.allocate();
  auto set = [&](ParamRef r, const Tensor& t) {
    std::copy(t.data(), t.data() + t.numel(), store.value(r).data());
  };
  set(layer.router().weight(), ref.at("gate.weight"));
  if (cfg.router_type == RouterType::NoisyTopK)
    set(layer.router().noise_weight(), ref.at("gate.noise_weight"));
  const Tensor& bias = ref.at("gate.bias");
  std::copy(bias.data(), bias.data() + E, layer.router().expert_bias().data());
  for (int64_t e = 0; e < E; ++e) {
    auto w13 = store.value(layer.experts().w13()).subspan(e * 2 * F * D, 2 * F * D);
    put_rows(w13, 0, ref.at("experts." + std::to_string(e) + ".w1"));
    put_rows(w13, F, ref.at("experts." + std::to_string(e) + ".w3"));
    put_rows(store.value(layer.experts().w2()), e * D,
             ref.at("experts." + std::to_string(e) + ".w2"));
  }
  // S shared experts sum to one SwiGLU whose hidden units are theirs side by side.
  for (int64_t s = 0; s < S; ++s) {
    put_rows(store.value(layer.shared_w13()), s * Fs,
             ref.at("shared_experts." + std::to_string(s) + ".w1"));
    put_rows(store.value(layer.shared_w13()), S * Fs + s * Fs,
             ref.at("shared_experts." + std::to_string(s) + ".w3"));
    put_cols(store.value(layer.shared_w2()), S * Fs, s * Fs,
             ref.at("shared_experts." + std::to_string(s) + ".w2"));
  }
  if (cfg.shared_expert_gate) set(layer.shared_gate(), ref.at("shared_expert_gate.weight"));

  Tensor y({T, D}), dx({T, D});
  MoeForwardOptions opt{
      c.training, c.seq_len, {ref.at("noise_normal").span(), ref.at("jitter").span()}};
  opt.batch_selection_in_eval = c.batch_selection_in_eval;
  const bool by_thresholds =
      cfg.router_type == RouterType::ExpertChoice && !c.training && !c.batch_selection_in_eval;
  if (by_thresholds)  // one training forward learns the thresholds the evaluation routes by
    layer.forward(ref.at("x_threshold").span(), T, y.span(), {true, c.seq_len, {}});
  const RoutingStats& stats = layer.forward(ref.at("x").span(), T, y.span(), opt);
  if (ref.has("out.threshold"))
    expect_close(layer.router().expert_threshold(), ref.at("out.threshold"), "expert_threshold");
  store.zero_grads();
  layer.backward(ref.at("dy").span(), dx.span());

  // Capacity per group: in training, and in expert choice's batch selection in evaluation.
  const int64_t groups = c.training || c.batch_selection_in_eval ? cfg.capacity_groups : 1;
  EXPECT_EQ(cfg.capacity(T / groups, c.training), static_cast<int64_t>(ref.at("out.capacity")[0]));
  expect_close(y.span(), ref.at("out.y"), "y");
  EXPECT_NEAR(stats.aux_loss, ref.at("out.aux_loss")[0],
              1e-6 + 1e-4 * std::abs(ref.at("out.aux_loss")[0]));
  EXPECT_NEAR(stats.z_loss, ref.at("out.z_loss")[0],
              1e-6 + 1e-4 * std::abs(ref.at("out.z_loss")[0]));
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(stats.tokens_per_expert[e], static_cast<int64_t>(ref.at("out.tokens_per_expert")[e]))
        << e;
    EXPECT_EQ(stats.kept_per_expert[e], static_cast<int64_t>(ref.at("out.kept_per_expert")[e]))
        << e;
  }
  expect_close(dx.span(), ref.at("grad.x"), "dx");
  expect_close(store.grad(layer.router().weight()), ref.at("grad.gate.weight"), "d gate.weight");
  if (cfg.router_type == RouterType::NoisyTopK)
    expect_close(store.grad(layer.router().noise_weight()), ref.at("grad.gate.noise_weight"),
                 "d gate.noise_weight");
  for (int64_t e = 0; e < E; ++e) {
    const std::string n = "experts." + std::to_string(e);
    auto dw13 = store.grad(layer.experts().w13()).subspan(e * 2 * F * D, 2 * F * D);
    expect_close(take_rows(dw13, 0, F, D).span(), ref.at("grad." + n + ".w1"), "d " + n + ".w1");
    expect_close(take_rows(dw13, F, F, D).span(), ref.at("grad." + n + ".w3"), "d " + n + ".w3");
    expect_close(take_rows(store.grad(layer.experts().w2()), e * D, D, F).span(),
                 ref.at("grad." + n + ".w2"), "d " + n + ".w2");
  }
  for (int64_t s = 0; s < S; ++s) {
    const std::string n = "shared_experts." + std::to_string(s);
    expect_close(take_rows(store.grad(layer.shared_w13()), s * Fs, Fs, D).span(),
                 ref.at("grad." + n + ".w1"), "d " + n + ".w1");
    expect_close(take_rows(store.grad(layer.shared_w13()), S * Fs + s * Fs, Fs, D).span(),
                 ref.at("grad." + n + ".w3"), "d " + n + ".w3");
    expect_close(take_cols(store.grad(layer.shared_w2()), D, S * Fs, s * Fs, Fs).span(),
                 ref.at("grad." + n + ".w2"), "d " + n + ".w2");
  }
  if (cfg.shared_expert_gate)
    expect_close(store.grad(layer.shared_gate()), ref.at("grad.shared_expert_gate.weight"),
                 "d shared_expert_gate.weight");
}

INSTANTIATE_TEST_SUITE_P(Variants, MoeReference, testing::ValuesIn(test::moe_case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moe
