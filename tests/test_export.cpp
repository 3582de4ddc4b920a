// `moe export` (model/hf_export.h): tiny random models of each exportable layout are saved as
// runs, loaded back as the CLI does, exported as Hugging Face folders and read by
// tests/reference/hf_reference.py, a plain-PyTorch Mixtral / Qwen2-MoE forward that knows
// nothing of our storage. Its logits must match our Transformer's eval forward:
//   fp32 export:  |ours - torch| <= 2e-5 + 2e-4 |torch|   (fp32 both; logits of order 1)
//   bf16 export:  |ours - torch| <= 0.1 + 0.05 |torch|   (weights rounded to 8 mantissa bits)
// The layouts with no Hugging Face equivalent are refused with one line naming the feature.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/hf_export.h"
#include "tensor/error.h"
#include "tensor/rng.h"
#include "tensor/safetensors.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

const std::vector<int32_t> kTokens = {3, 17, 5, 60, 22, 9, 41, 3, 30, 11, 57, 2};

ModelConfig base_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.rope_theta = 10000.0;
  c.initializer_range = 0.2f;  // logits of order 1, routing far from ties
  return c;
}

MoeConfig base_moe() {
  MoeConfig m;
  m.hidden_size = 32;
  m.moe_intermediate_size = 24;
  m.num_experts = 4;
  m.top_k = 2;
  return m;
}

struct Case {
  std::string name;
  ModelConfig config;
  std::string model_type;  // expected
  HfDtype dtype = HfDtype::F32;
};

std::vector<Case> export_cases() {
  std::vector<Case> cases;
  {  // Mixtral as it is; training-only options (capacity, jitter) don't stop the export.
    ModelConfig c = base_config();
    MoeConfig m = base_moe();
    m.capacity_factor = 1.25f;
    m.eval_capacity_factor = 0.0f;
    m.jitter_eps = 0.1f;
    c.moe = m;
    cases.push_back({"mixtral", c, "mixtral"});
    cases.push_back({"mixtral_bf16", c, "mixtral", HfDtype::BF16});
  }
  {  // Noisy top-k (clean logits at eval), a routed scaling factor, tied embeddings, a head_dim
     // other than hidden_size / heads.
    ModelConfig c = base_config();
    c.tie_word_embeddings = true;
    c.head_dim = 16;
    MoeConfig m = base_moe();
    m.router_type = RouterType::NoisyTopK;
    m.routed_scaling_factor = 2.5f;
    c.moe = m;
    cases.push_back({"mixtral_noisy_scaled", c, "mixtral"});
  }
  {  // Softmax then top-k with the Mixtral renormalisation: Mixtral too.
    ModelConfig c = base_config();
    MoeConfig m = base_moe();
    m.router_type = RouterType::SoftmaxTopK;
    m.norm_topk_prob = true;
    c.moe = m;
    cases.push_back({"mixtral_softmax_topk", c, "mixtral"});
  }
  {  // Gated shared experts, a dense first block, unnormalised gates, tied embeddings.
    ModelConfig c = base_config();
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 1;
    c.tie_word_embeddings = true;
    MoeConfig m = base_moe();
    m.router_type = RouterType::SoftmaxTopK;
    m.norm_topk_prob = false;
    m.n_shared_experts = 2;
    m.shared_expert_intermediate_size = 8;
    m.shared_expert_gate = true;
    c.moe = m;
    cases.push_back({"qwen_gated_shared", c, "qwen2_moe"});
  }
  {  // An ungated shared expert, MoE every other block, a routed scaling factor.
    ModelConfig c = base_config();
    c.num_hidden_layers = 4;
    c.moe_layer_freq = 2;
    MoeConfig m = base_moe();
    m.n_shared_experts = 1;
    m.shared_expert_intermediate_size = 16;
    m.routed_scaling_factor = 1.5f;
    c.moe = m;
    cases.push_back({"qwen_plain_shared_sparse_step", c, "qwen2_moe"});
  }
  {  // Unnormalised top-k gates and no shared expert; groups that restrict nothing.
    ModelConfig c = base_config();
    MoeConfig m = base_moe();
    m.router_type = RouterType::SoftmaxTopK;
    m.norm_topk_prob = false;
    m.n_group = 2;
    m.topk_group = 2;
    c.moe = m;
    cases.push_back({"qwen_no_shared", c, "qwen2_moe"});
  }
  {  // No MoE block at all.
    ModelConfig c = base_config();
    cases.push_back({"dense", c, "qwen2_moe"});
  }
  return cases;
}

// Saves a run folder as `moe train` leaves it (config.json, model.safetensors).
void save_run(const std::string& dir, const ModelConfig& config, uint64_t seed) {
  fs::create_directories(dir);
  ParamStore store;
  Transformer model(config, store, seed);
  store.allocate();
  Rng rng(seed);
  model.init_parameters(rng);
  save_model_config(dir, config);
  write_safetensors(dir + "/model.safetensors", model_tensors(model, store));
}

std::vector<float> our_logits(LoadedModel& m) {
  std::vector<int32_t> targets(kTokens.begin() + 1, kTokens.end());
  targets.push_back(0);
  ModelStepOptions eval;
  eval.training = false;
  eval.compute_grad = false;
  m.model->forward(kTokens, targets, 1, static_cast<int64_t>(kTokens.size()), eval);
  const auto logits = m.model->logits();
  return {logits.begin(), logits.end()};
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

struct Exported {
  std::string model_type;
  std::vector<float> ours;  // [S, V]
  std::string folder, reference_out;
};

// Every case is built and exported once, then one Python process reads them all.
class Export : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ =
        new fs::path(fs::temp_directory_path() / ("moe_test_export_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    exported_ = new std::map<std::string, Exported>();
    std::string command = std::string(MOE_SYSTEM_PYTHON) + " " + MOE_SOURCE_DIR +
                          "/tests/reference/hf_reference.py --tokens ";
    for (size_t i = 0; i < kTokens.size(); ++i)
      command += (i ? "," : "") + std::to_string(kTokens[i]);
    for (const Case& c : export_cases()) {
      // The bf16 case is the fp32 one's model: same seed.
      std::string model_name = c.name;
      if (model_name.ends_with("_bf16")) model_name.resize(model_name.size() - 5);
      const uint64_t seed = std::hash<std::string>{}(model_name);
      const std::string run = (*root_ / ("run_" + c.name)).string();
      Exported e;
      e.folder = (*root_ / ("hf_" + c.name)).string();
      e.reference_out = (*root_ / ("logits_" + c.name + ".safetensors")).string();
      save_run(run, c.config, seed);
      LoadedModel m = load_model(run);
      HfExportOptions options;
      options.dtype = c.dtype;
      e.model_type = export_hf_checkpoint(*m.model, *m.store, HfTokenizer{}, e.folder, options);
      e.ours = our_logits(m);
      command += " --job " + e.folder + " " + e.reference_out;
      exported_->emplace(c.name, std::move(e));
    }
    reference_status_ =
        std::system((command + " > " + (*root_ / "reference.log").string() + " 2>&1").c_str());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete exported_;
  }

  static fs::path* root_;
  static std::map<std::string, Exported>* exported_;
  static int reference_status_;
};
fs::path* Export::root_ = nullptr;
std::map<std::string, Exported>* Export::exported_ = nullptr;
int Export::reference_status_ = -1;

TEST_F(Export, PyTorchReferenceReadsEveryExportWithOurLogits) {
  std::ifstream log(*root_ / "reference.log");
  const std::string output{std::istreambuf_iterator<char>(log), {}};
  ASSERT_EQ(reference_status_, 0) << "hf_reference.py failed:\n" << output;
  for (const Case& c : export_cases()) {
    SCOPED_TRACE(c.name);
    const Exported& e = exported_->at(c.name);
    EXPECT_EQ(e.model_type, c.model_type);
    EXPECT_EQ(read_json(e.folder + "/config.json")["model_type"], c.model_type);
    const Tensor ref = read_safetensors(e.reference_out).at("logits");
    ASSERT_EQ(ref.numel(), static_cast<int64_t>(e.ours.size()));
    const bool bf16 = c.dtype == HfDtype::BF16;
    const double abs_tol = bf16 ? 0.1 : 2e-5, rel_tol = bf16 ? 0.05 : 2e-4;
    double worst = 0.0, scale = 0.0;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      const double diff = std::abs(double(e.ours[i]) - ref.data()[i]);
      worst = std::max(worst, diff);
      scale = std::max(scale, std::abs(double(ref.data()[i])));
      ASSERT_LE(diff, abs_tol + rel_tol * std::abs(ref.data()[i]))
          << "logit " << i << ": ours " << e.ours[i] << ", torch " << ref.data()[i];
    }
    EXPECT_GT(scale, 0.5) << "logits too small for the tolerance to mean anything";
    std::printf("%-32s %-9s max |ours - torch| = %.3g (max |logit| %.3g)\n", c.name.c_str(),
                e.model_type.c_str(), worst, scale);
  }
}

TEST_F(Export, ConfigsCarryTheLayout) {
  const auto mixtral = read_json(exported_->at("mixtral").folder + "/config.json");
  EXPECT_EQ(mixtral["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(mixtral["num_local_experts"], 4);
  EXPECT_EQ(mixtral["num_experts_per_tok"], 2);
  EXPECT_EQ(mixtral["intermediate_size"], 24);
  EXPECT_EQ(mixtral["rms_norm_eps"], 1e-5);
  EXPECT_EQ(mixtral["torch_dtype"], "float32");
  EXPECT_EQ(read_json(exported_->at("mixtral_bf16").folder + "/config.json")["torch_dtype"],
            "bfloat16");

  const auto gated = read_json(exported_->at("qwen_gated_shared").folder + "/config.json");
  EXPECT_EQ(gated["architectures"][0], "Qwen2MoeForCausalLM");
  EXPECT_EQ(gated["mlp_only_layers"], nlohmann::json::array({0}));
  EXPECT_EQ(gated["decoder_sparse_step"], 1);
  EXPECT_EQ(gated["norm_topk_prob"], false);
  EXPECT_EQ(gated["shared_expert_intermediate_size"], 16);
  EXPECT_EQ(gated["intermediate_size"], 40);
  EXPECT_EQ(gated["moe_intermediate_size"], 24);
  EXPECT_EQ(gated["qkv_bias"], true);
  EXPECT_EQ(gated["tie_word_embeddings"], true);
  const auto sparse =
      read_json(exported_->at("qwen_plain_shared_sparse_step").folder + "/config.json");
  EXPECT_EQ(sparse["decoder_sparse_step"], 2);
  EXPECT_EQ(sparse["norm_topk_prob"], true);
}

TEST_F(Export, TensorNamesFollowEachArchitecture) {
  const SafetensorsFile mixtral =
      read_safetensors(exported_->at("mixtral_noisy_scaled").folder + "/model.safetensors");
  EXPECT_TRUE(mixtral.has("model.layers.1.block_sparse_moe.gate.weight"));
  EXPECT_TRUE(mixtral.has("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
  EXPECT_FALSE(mixtral.has("model.layers.0.block_sparse_moe.gate.noise_weight"));
  EXPECT_FALSE(mixtral.has("lm_head.weight"));  // tied
  EXPECT_EQ(mixtral.at("model.layers.0.self_attn.q_proj.weight").shape(), (Shape{64, 32}));

  const SafetensorsFile qwen =
      read_safetensors(exported_->at("qwen_gated_shared").folder + "/model.safetensors");
  EXPECT_TRUE(qwen.has("model.layers.0.mlp.gate_proj.weight"));  // dense block
  EXPECT_TRUE(qwen.has("model.layers.1.mlp.gate.weight"));
  EXPECT_TRUE(qwen.has("model.layers.1.mlp.experts.0.gate_proj.weight"));
  EXPECT_EQ(qwen.at("model.layers.1.mlp.shared_expert.down_proj.weight").shape(), (Shape{32, 16}));
  EXPECT_EQ(qwen.at("model.layers.2.mlp.shared_expert_gate.weight").shape(), (Shape{1, 32}));
  const Tensor& bias = qwen.at("model.layers.0.self_attn.k_proj.bias");
  EXPECT_EQ(bias.shape(), (Shape{16}));
  for (int64_t i = 0; i < bias.numel(); ++i) EXPECT_EQ(bias.data()[i], 0.0f);
}

// bf16 weights are the fp32 ones rounded to nearest: 8 significant bits, so off by at most
// half a unit in the last place, 2^-8 of the value.
TEST_F(Export, Bf16WeightsAreTheRoundedFp32Ones) {
  const SafetensorsFile f32 =
      read_safetensors(exported_->at("mixtral").folder + "/model.safetensors");
  const SafetensorsFile b16 =
      read_safetensors(exported_->at("mixtral_bf16").folder + "/model.safetensors");
  ASSERT_EQ(f32.tensors.size(), b16.tensors.size());
  for (const auto& [name, t] : f32.tensors) {
    const Tensor& r = b16.at(name);
    ASSERT_EQ(r.shape(), t.shape()) << name;
    for (int64_t i = 0; i < t.numel(); ++i)
      ASSERT_LE(std::abs(r.data()[i] - t.data()[i]), std::ldexp(std::abs(t.data()[i]), -8))
          << name << "[" << i << "]";
  }
}

TEST_F(Export, RefusesANonEmptyFolderUnlessForced) {
  const Exported& e = exported_->at("mixtral");
  LoadedModel m = load_model((*root_ / "run_mixtral").string());
  try {
    export_hf_checkpoint(*m.model, *m.store, HfTokenizer{}, e.folder);
    FAIL() << "a non-empty --out was accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("not empty"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("--force"), std::string::npos) << err.what();
  }
  HfExportOptions force;
  force.force = true;
  EXPECT_EQ(export_hf_checkpoint(*m.model, *m.store, HfTokenizer{}, e.folder, force), "mixtral");
}

TEST_F(Export, CarriesTheTokenizerWithItsSpecialTokens) {
  const std::string sp_model = (*root_ / "fake_tokenizer.model").string();
  std::ofstream(sp_model) << "sentencepiece bytes";
  HfTokenizer tokenizer{sp_model, 1, 2, 0, "<s>", "</s>", "<unk>"};
  LoadedModel m = load_model((*root_ / "run_mixtral").string());
  const std::string out = (*root_ / "with_tokenizer").string();
  export_hf_checkpoint(*m.model, *m.store, tokenizer, out);
  std::ifstream copied(out + "/tokenizer.model");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(copied), {}), "sentencepiece bytes");
  const auto tc = read_json(out + "/tokenizer_config.json");
  EXPECT_EQ(tc["bos_token"], "<s>");
  EXPECT_EQ(tc["eos_token"], "</s>");
  EXPECT_EQ(tc["add_bos_token"], false);
  const auto gen = read_json(out + "/generation_config.json");
  EXPECT_EQ(gen["bos_token_id"], 1);
  EXPECT_EQ(gen["eos_token_id"], 2);
  EXPECT_EQ(read_json(out + "/config.json")["eos_token_id"], 2);
}

// The message of hf_model_type's refusal; fails the test when it accepts.
std::string refusal(const ModelConfig& c) {
  try {
    return "accepted as " + hf_model_type(c);
  } catch (const Error& e) {
    return e.what();
  }
}

void expect_refused_naming(const ModelConfig& c, const std::string& feature) {
  const std::string message = refusal(c);
  EXPECT_NE(message.find(feature), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
  EXPECT_FALSE(message.starts_with("accepted")) << message;
}

TEST(ExportRefusal, NamesTheFeatureWithoutAHuggingFaceEquivalent) {
  ModelConfig c = base_config();
  MoeConfig m = base_moe();

  m.router_type = RouterType::SigmoidBias;
  c.moe = m;
  expect_refused_naming(c, "sigmoid_bias");

  m = base_moe();
  m.router_type = RouterType::ExpertChoice;
  m.capacity_factor = 1.0f;
  m.aux_loss_type = AuxLossType::None;
  c.moe = m;
  expect_refused_naming(c, "expert_choice");

  m = base_moe();
  m.n_group = 2;
  m.topk_group = 1;
  c.moe = m;
  expect_refused_naming(c, "group-limited routing (n_group 2, topk_group 1)");

  // A training capacity evaluates dropless; an eval capacity can drop tokens at inference:
  // refused unless exported as dropless.
  m = base_moe();
  m.capacity_factor = 1.25f;
  c.moe = m;
  EXPECT_EQ(hf_model_type(c, /*allow_dropless=*/false), "mixtral");
  m.eval_capacity_factor = 2.0f;
  c.moe = m;
  expect_refused_naming(c, "eval_capacity_factor 2");
  EXPECT_EQ(hf_model_type(c, /*allow_dropless=*/true), "mixtral");

  // Qwen2-MoE's attention needs head_dim * heads = hidden_size.
  m = base_moe();
  m.n_shared_experts = 1;
  m.shared_expert_intermediate_size = 8;
  c.moe = m;
  c.head_dim = 16;
  expect_refused_naming(c, "head_dim 16");
}

TEST(ExportRefusal, RefusesBeforeWritingAnything) {
  const fs::path root =
      fs::temp_directory_path() / ("moe_test_export_refusal_" + std::to_string(::getpid()));
  fs::remove_all(root);
  ModelConfig c = base_config();
  MoeConfig m = base_moe();
  m.router_type = RouterType::SigmoidBias;
  c.moe = m;
  ParamStore store;
  Transformer model(c, store);
  store.allocate();
  EXPECT_THROW(export_hf_checkpoint(model, store, HfTokenizer{}, (root / "out").string()), Error);
  EXPECT_FALSE(fs::exists(root / "out"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace moe
