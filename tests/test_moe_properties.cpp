// Properties of the MoE layer that hold whatever the weights: dropless equals a dense
// reference, large capacity equals dropless, counts add up, expert choice fills every expert,
// uniform routing gives the aux loss alpha, determinism, no allocation in the steady state.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>

#include "moe/moe_layer.h"
#include "nn/swiglu.h"
#include "tensor/error.h"
#include "tensor/threads.h"

// Counts every allocation made through operator new (Tensor uses the aligned form). The
// replacements pair malloc with free, which GCC cannot see through.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<int64_t> g_allocations{0};
void* operator new(size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  return operator new(n);
}
void* operator new(size_t n, std::align_val_t a) {
  ++g_allocations;
  const size_t al = static_cast<size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t a) {
  return operator new(n, a);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}

namespace moe {
namespace {

MoeConfig small_config() {
  MoeConfig c;
  c.hidden_size = 16;
  c.moe_intermediate_size = 12;
  c.num_experts = 6;
  c.top_k = 2;
  c.router_type = RouterType::SoftmaxTopK;
  c.norm_topk_prob = false;
  return c;
}

struct Fixture {
  explicit Fixture(const MoeConfig& c, int64_t tokens, uint64_t seed = 5)
      : layer(c, store, "layer", seed),
        T(tokens),
        x({tokens, c.hidden_size}),
        y({tokens, c.hidden_size}),
        dy({tokens, c.hidden_size}),
        dx({tokens, c.hidden_size}) {
    store.allocate();
    Rng rng(seed);
    layer.init_parameters(rng, 0.3f);
    rng.fill_normal(x.span(), 0.0f, 1.0f);
    rng.fill_normal(dy.span(), 0.0f, 1.0f);
  }
  const RoutingStats& run(bool training = true) {
    const auto& s = layer.forward(x.span(), T, y.span(), {training, 0, {}});
    store.zero_grads();
    layer.backward(dy.span(), dx.span());
    return s;
  }
  ParamStore store;
  MoeLayer layer;
  int64_t T;
  Tensor x, y, dy, dx;
};

TEST(MoeProperties, DroplessEqualsDenseMaskedReference) {
  const MoeConfig c = small_config();
  Fixture f(c, 20);
  f.run();
  const int64_t D = c.hidden_size, F = c.moe_intermediate_size, k = c.top_k;
  // Run every expert on every token, then weight by the gate (0 for experts not picked).
  Tensor h13({1, 2 * F}), act({1, F}), out({1, D});
  const auto& plan = f.layer.plan();
  for (int64_t t = 0; t < f.T; ++t) {
    std::vector<double> expect(D, 0.0);
    for (int64_t e = 0; e < c.num_experts; ++e) {
      float gate = 0.0f;
      for (int64_t j = 0; j < k; ++j)
        if (plan.expert[t * k + j] == e) gate = plan.gate[t * k + j];
      swiglu_forward({1, D, F}, f.x.row(t),
                     f.store.value(f.layer.experts().w13()).subspan(e * 2 * F * D, 2 * F * D),
                     f.store.value(f.layer.experts().w2()).subspan(e * D * F, D * F), h13.span(),
                     act.span(), out.span());
      for (int64_t d = 0; d < D; ++d) expect[d] += gate * out[d];
    }
    for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(f.y[t * D + d], expect[d], 1e-5) << t << "," << d;
  }
}

// How the experts are scheduled (one per thread, largest first; an expert holding more than
// 1/threads of the rows alone, with every thread in its GEMMs) must not change what each
// computes. Layout: a heavy expert, an empty one, few-row ones (gemm's streaming path) and
// one just above that path; each compared with its SwiGLU run by itself.
TEST(Experts, ScheduleKeepsEachExpertsResults) {
  set_threads(2);
  const int64_t E = 5, D = 16, F = 24;
  const std::vector<int64_t> offsets = {0, 60, 60, 63, 70, 74};  // 60, 0, 3, 7, 4 rows
  const int64_t n = offsets.back();
  ParamStore store;
  Experts experts(E, D, F, store, "experts");
  store.allocate();
  Rng rng(3);
  rng.fill_normal(store.values().span(), 0, 0.2f);
  Tensor xp({n, D}), yp({n, D}), dyp({n, D}), dxp({n, D});
  rng.fill_normal(xp.span(), 0, 1);
  rng.fill_normal(dyp.span(), 0, 1);
  store.grads().fill(7.0f);  // overwritten, or zeroed for the empty expert
  experts.forward(xp.span(), offsets, yp.span());
  experts.backward(xp.span(), offsets, dyp.span(), dxp.span(), /*accumulate=*/false);

  auto expect_close = [](std::span<const float> got, std::span<const float> want, const char* what,
                         int64_t e) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::abs(want[i])))
          << what << " of expert " << e << " at " << i;
  };
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    auto w13 = store.value(experts.w13()).subspan(e * 2 * F * D, 2 * F * D);
    auto w2 = store.value(experts.w2()).subspan(e * D * F, D * F);
    auto dw13 = store.grad(experts.w13()).subspan(e * 2 * F * D, 2 * F * D);
    auto dw2 = store.grad(experts.w2()).subspan(e * D * F, D * F);
    if (rows == 0) {
      for (float g : dw13) ASSERT_EQ(g, 0.0f);
      for (float g : dw2) ASSERT_EQ(g, 0.0f);
      continue;
    }
    Tensor h13({rows, 2 * F}), act({rows, F}), y({rows, D}), dh13({rows, 2 * F}), dx({rows, D});
    Tensor want_dw13({2 * F, D}), want_dw2({D, F});
    const auto x = xp.span().subspan(r0 * D, rows * D), dy = dyp.span().subspan(r0 * D, rows * D);
    swiglu_forward({rows, D, F}, x, w13, w2, h13.span(), act.span(), y.span());
    swiglu_backward({rows, D, F}, x, w13, w2, h13.span(), act.span(), dy, dh13.span(), dx.span(),
                    want_dw13.span(), want_dw2.span(), false);
    expect_close(yp.span().subspan(r0 * D, rows * D), y.span(), "y", e);
    expect_close(dxp.span().subspan(r0 * D, rows * D), dx.span(), "dx", e);
    expect_close(dw13, want_dw13.span(), "dw13", e);
    expect_close(dw2, want_dw2.span(), "dw2", e);
  }
}

TEST(MoeProperties, LargeCapacityEqualsDropless) {
  MoeConfig dropless = small_config();
  MoeConfig roomy = dropless;
  roomy.capacity_factor = 100.0;
  Fixture a(dropless, 32), b(roomy, 32);
  EXPECT_EQ(b.run().dropped, 0);
  a.run();
  for (int64_t i = 0; i < a.y.numel(); ++i) ASSERT_EQ(a.y[i], b.y[i]);
  for (int64_t i = 0; i < a.dx.numel(); ++i) ASSERT_EQ(a.dx[i], b.dx[i]);
  for (int64_t i = 0; i < a.store.grads().numel(); ++i)
    ASSERT_EQ(a.store.grads()[i], b.store.grads()[i]);
}

TEST(MoeProperties, CountsSumToAssignmentsMinusDrops) {
  for (auto policy : {DropPolicy::Probs, DropPolicy::Position}) {
    MoeConfig c = small_config();
    c.capacity_factor = 0.5;
    c.drop_policy = policy;
    Fixture f(c, 40);
    const auto& s = f.run();
    int64_t routed = 0, kept = 0;
    const int64_t capacity = c.capacity(40, true);
    for (int64_t e = 0; e < c.num_experts; ++e) {
      routed += s.tokens_per_expert[e];
      kept += s.kept_per_expert[e];
      EXPECT_LE(s.kept_per_expert[e], capacity);
      EXPECT_EQ(s.kept_per_expert[e], std::min(s.tokens_per_expert[e], capacity));
    }
    EXPECT_EQ(routed, 40 * c.top_k);
    EXPECT_EQ(kept, routed - s.dropped);
    EXPECT_GT(s.dropped, 0) << "capacity 0.5 must drop something";
  }
}

TEST(MoeProperties, DroppedTokenContributesZero) {
  // Capacity 1 per expert: most assignments are dropped; a token with no kept pick gets y = 0.
  MoeConfig c = small_config();
  c.capacity_factor = 0.01;
  c.min_capacity = 1;
  Fixture f(c, 24);
  const auto& s = f.run();
  int64_t over = 0;
  for (int64_t n : s.tokens_per_expert) over += std::max<int64_t>(0, n - 1);
  EXPECT_EQ(s.dropped, over);
  std::vector<bool> has_kept(24, false);
  for (int32_t a : f.layer.dispatcher().kept_assignments())
    has_kept[f.layer.plan().token[a]] = true;
  for (int64_t t = 0; t < 24; ++t) {
    if (has_kept[t]) continue;
    for (int64_t d = 0; d < c.hidden_size; ++d) EXPECT_EQ(f.y[t * c.hidden_size + d], 0.0f);
  }
}

TEST(MoeProperties, PositionPolicyKeepsEarliestTokens) {
  MoeConfig c = small_config();
  c.capacity_factor = 0.5;
  c.drop_policy = DropPolicy::Position;
  Fixture f(c, 30);
  f.run();
  const auto& plan = f.layer.plan();
  // For every expert: every kept token comes before every dropped one.
  std::vector<int32_t> last_kept(c.num_experts, -1);
  std::vector<bool> kept(plan.assignments(), false);
  for (int32_t a : f.layer.dispatcher().kept_assignments()) kept[a] = true;
  for (int64_t a = 0; a < plan.assignments(); ++a) {
    if (kept[a]) last_kept[plan.expert[a]] = std::max(last_kept[plan.expert[a]], plan.token[a]);
  }
  for (int64_t a = 0; a < plan.assignments(); ++a) {
    if (!kept[a]) {
      EXPECT_GT(plan.token[a], last_kept[plan.expert[a]]);
    }
  }
}

TEST(MoeProperties, ProbsPolicyKeepsHighestGates) {
  MoeConfig c = small_config();
  c.capacity_factor = 0.5;
  c.drop_policy = DropPolicy::Probs;
  Fixture f(c, 30);
  f.run();
  const auto& plan = f.layer.plan();
  std::vector<float> lowest_kept(c.num_experts, 1e9f);
  std::vector<bool> kept(plan.assignments(), false);
  for (int32_t a : f.layer.dispatcher().kept_assignments()) kept[a] = true;
  for (int64_t a = 0; a < plan.assignments(); ++a) {
    if (kept[a]) lowest_kept[plan.expert[a]] = std::min(lowest_kept[plan.expert[a]], plan.gate[a]);
  }
  for (int64_t a = 0; a < plan.assignments(); ++a) {
    if (!kept[a]) {
      EXPECT_LE(plan.gate[a], lowest_kept[plan.expert[a]]);
    }
  }
}

TEST(MoeProperties, ExpertChoiceGivesEachExpertExactlyCapacity) {
  MoeConfig c = small_config();
  c.router_type = RouterType::ExpertChoice;
  c.capacity_factor = 1.5;
  c.aux_loss_type = AuxLossType::None;
  Fixture f(c, 24);
  const auto& s = f.run();
  const int64_t C = c.capacity(24, true);
  EXPECT_EQ(C, 12);  // ceil(1.5 * 24 * 2 / 6)
  for (int64_t e = 0; e < c.num_experts; ++e) EXPECT_EQ(s.kept_per_expert[e], C);
  EXPECT_EQ(s.dropped, 0);
}

TEST(MoeProperties, UniformRoutingGivesAuxLossAlpha) {
  MoeConfig c = small_config();
  c.aux_loss_coeff = 0.01f;
  c.z_loss_coeff = 0.0f;
  Fixture f(c, 16);
  auto w = f.store.value(f.layer.router().weight());
  std::fill(w.begin(), w.end(), 0.0f);  // equal logits: P_i = 1/E for every expert
  EXPECT_FLOAT_EQ(f.run().aux_loss, 0.01f);
}

TEST(MoeProperties, UnderflowingSigmoidScoresGiveZeroGatesNotNaN) {
  // Logits of -320: every sigmoid score is 0 in fp32, so renormalising the picked scores and
  // normalising P divide 0 by 0 unless the sums carry DeepSeek-V3's 1e-20.
  MoeConfig c = small_config();
  c.router_type = RouterType::SigmoidBias;
  c.norm_topk_prob = true;
  c.aux_loss_type = AuxLossType::Sequence;
  Fixture f(c, 8);
  std::fill(f.x.span().begin(), f.x.span().end(), 1.0f);
  auto w = f.store.value(f.layer.router().weight());
  std::fill(w.begin(), w.end(), -20.0f);
  const auto& s = f.run();
  for (float g : f.layer.plan().gate) EXPECT_EQ(g, 0.0f);
  EXPECT_TRUE(all_finite(f.y.span()));
  EXPECT_TRUE(all_finite(f.dx.span()));
  EXPECT_TRUE(all_finite(f.store.grads().span()));
  EXPECT_TRUE(std::isfinite(s.aux_loss));
  EXPECT_TRUE(std::isfinite(s.z_loss));
}

TEST(MoeProperties, SameSeedSameBits) {
  MoeConfig c = small_config();
  c.router_type = RouterType::NoisyTopK;
  c.jitter_eps = 0.05f;
  Fixture a(c, 64, 9), b(c, 64, 9);
  a.run();
  b.run();
  for (int64_t i = 0; i < a.y.numel(); ++i) ASSERT_EQ(a.y[i], b.y[i]);
  for (int64_t i = 0; i < a.store.grads().numel(); ++i)
    ASSERT_EQ(a.store.grads()[i], b.store.grads()[i]);
}

TEST(MoeProperties, NoAllocationInSteadyState) {
  MoeConfig c = small_config();
  c.n_shared_experts = 1;
  c.shared_expert_intermediate_size = 8;
  c.capacity_factor = 1.0;
  Fixture f(c, 64);
  f.run();
  f.run();
  const int64_t before = g_allocations.load();
  f.run();
  EXPECT_EQ(g_allocations.load() - before, 0);
}

TEST(MoeProperties, OverwriteGradsEqualsZeroThenAccumulate) {
  MoeConfig c = small_config();
  c.n_shared_experts = 1;
  c.shared_expert_intermediate_size = 8;
  c.shared_expert_gate = true;
  Fixture f(c, 8);  // 8 tokens * 2 picks over 6 experts: some experts may get none
  f.run();
  const Tensor accumulated = f.store.grads();
  f.store.grads().fill(123.0f);
  f.layer.forward(f.x.span(), f.T, f.y.span(), {});
  f.layer.backward(f.dy.span(), f.dx.span(), /*accumulate_grads=*/false);
  for (const auto& e : f.store.entries())
    for (int64_t i = 0; i < e.ref.numel; ++i)
      ASSERT_EQ(f.store.grads()[e.ref.offset + i], accumulated[e.ref.offset + i]) << e.name;
}

TEST(MoeProperties, NonFiniteInputIsAnError) {
  Fixture f(small_config(), 4);
  f.x[5] = std::nanf("");
  EXPECT_THROW(f.layer.forward(f.x.span(), 4, f.y.span(), {}), Error);
}

TEST(MoeProperties, ShapeMismatchIsAnError) {
  Fixture f(small_config(), 4);
  EXPECT_THROW(f.layer.forward(f.x.span(), 5, f.y.span(), {}), Error);
  EXPECT_THROW(f.layer.forward(f.x.span(), 4, f.y.span(), {true, 3, {}}), Error);
}

}  // namespace
}  // namespace moe
