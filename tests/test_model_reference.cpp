// Compares the whole model, forward and backward, with the PyTorch reference
// (tests/reference/model_reference.py, run by ctest as the fixture
// reference.generate_model). The reference's weights carry Hugging Face names; they are
// loaded through hf_tensor_views, so the test also checks that layout.
// Tolerance: |ours - torch| <= 3e-5 + 3e-4 |torch| (fp32 both; a few layers deep).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "expect_close.h"
#include "model/hf_layout.h"
#include "model/transformer.h"
#include "model_cases.h"
#include "tensor/safetensors.h"

namespace moe {
namespace {

constexpr double kAbsTol = 3e-5;
constexpr double kRelTol = 3e-4;

void expect_close(std::span<const float> ours, const Tensor& ref, const std::string& what) {
  test::expect_close(ours, ref, what, kAbsTol, kRelTol);
}

std::vector<int32_t> ids(const Tensor& t) {
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = static_cast<int32_t>(t[i]);
  return out;
}

class ModelReference : public testing::TestWithParam<std::string> {};

TEST_P(ModelReference, LogitsLossAndEveryGradientMatchPyTorch) {
  const test::ModelCase c = test::load_model_cases().at(GetParam());
  const std::string path = std::string(MOE_REFERENCE_DIR) + "/model_" + c.name + ".safetensors";
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " missing: run the reference fixture";
  const SafetensorsFile ref = read_safetensors(path);

  ParamStore store;
  Transformer model(c.config, store);
  store.allocate();
  int64_t loaded = 0;
  for (HfTensorView& v : hf_tensor_views(model, store, HfWhich::Values)) {
    const Tensor& t = ref.at(v.name);
    ASSERT_EQ(t.shape(), v.shape) << v.name;
    std::copy(t.data(), t.data() + t.numel(), v.data.data());
    ++loaded;
  }
  // Every reference weight has a home (no tensor silently ignored).
  int64_t ref_weights = 0;
  for (const auto& [name, t] : ref.tensors)
    ref_weights += name.starts_with("model.") || name.starts_with("lm_head.");
  EXPECT_EQ(loaded, ref_weights);

  const auto tokens = ids(ref.at("tokens")), targets = ids(ref.at("targets"));
  ModelStepOptions eval;
  eval.training = c.training;
  eval.compute_grad = false;
  const double ce = model.forward(tokens, targets, c.batch, c.seq, eval);
  expect_close(model.logits(), ref.at("out.logits"), "logits");
  EXPECT_NEAR(ce, ref.at("out.ce_loss")[0], 1e-5 + 1e-5 * std::abs(ref.at("out.ce_loss")[0]));
  EXPECT_NEAR(model.router_loss(), ref.at("out.router_loss")[0], 1e-6);

  ModelStepOptions train;
  train.training = c.training;
  const double ce2 = model.forward(tokens, targets, c.batch, c.seq, train);
  EXPECT_EQ(ce2, ce);  // the same bits with and without the gradient pass
  model.backward();
  for (const HfTensorView& g : hf_tensor_views(model, store, HfWhich::Grads)) {
    // Tied embeddings: the reference's embedding gradient already includes the head's share.
    expect_close(g.data, ref.at("grad." + g.name), "grad " + g.name);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ModelReference, testing::ValuesIn(test::model_case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moe
