// Hugging Face checkpoint folders (src/model/hf_checkpoint.h) against the plain-PyTorch
// reference tests/reference/hf_reference.py, which builds tiny random folders for Mixtral
// (fp32; bf16 in three shards with a tied head; fp16 with top-1), Qwen2-MoE (two dense/MoE
// layouts, q/k/v biases, the sigmoid-gated shared expert, norm_topk_prob both ways) and OLMoE
// (q/k norm; clip_qkv with biases) and writes each prompt's logits and greedy continuation.
// Tolerance: |ours - torch| <= 1e-4 + 1e-4 |torch| on every logit (both sides compute in fp32
// from the same stored weights, bf16/fp16 upcast; the differences seen are below 2e-5 at
// logits up to 17). Greedy tokens must be equal: the reference picked seeds whose top-1/top-2
// logit gaps exceed 1e-2 and whose router k-th/(k+1)-th probability gaps exceed 1e-3.
// The bad-input tests mutate copies of those folders; each error must name the culprit.
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>

#include "infer/generate.h"
#include "infer/open_model.h"
#include "model/checkpoint.h"
#include "model/hf_checkpoint.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "text/tokenizer.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

const std::string kCases = std::string(MOE_REFERENCE_DIR) + "/hf";

std::vector<int32_t> ids_of(const Tensor& t) {
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < t.numel(); ++i) ids.push_back(static_cast<int32_t>(t[i]));
  return ids;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// A copy of reference case `name` in a fresh temporary folder.
std::string copy_case(const std::string& name) {
  const std::string dir = test::temp_dir(name);
  fs::copy(kCases + "/" + name, dir, fs::copy_options::recursive);
  return dir;
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(read_text(dir + "/config.json"));
  edit(j);
  write_text(dir + "/config.json", j.dump(2));
}

class HfReference : public testing::TestWithParam<std::string> {};

TEST_P(HfReference, LogitsMatchAtEveryPosition) {
  const SafetensorsFile expected =
      read_safetensors(kCases + "/" + GetParam() + ".expected.safetensors");
  const std::vector<int32_t> prompt = ids_of(expected.at("tokens"));
  const Tensor& want = expected.at("logits");
  LoadedModel m = load_model(kCases + "/" + GetParam());
  for (const char* type : {"mixtral", "qwen2_moe", "olmoe"})
    if (GetParam().starts_with(type)) {
      EXPECT_EQ(m.model_type, type);
    }
  const int64_t S = static_cast<int64_t>(prompt.size()), V = m.config.vocab_size;
  ASSERT_EQ(want.shape(), (Shape{S, V}));
  ModelStepOptions eval;
  eval.training = false;
  eval.compute_grad = false;
  m.model->forward(prompt, std::vector<int32_t>(prompt.size(), -1), 1, S, eval);
  const std::span<const float> got = m.model->logits();
  for (int64_t i = 0; i < S * V; ++i)
    ASSERT_NEAR(got[i], want[i], 1e-4 + 1e-4 * std::abs(want[i]))
        << "position " << i / V << ", token " << i % V;
}

TEST_P(HfReference, DecodingAndGreedyGenerationMatch) {
  const SafetensorsFile expected =
      read_safetensors(kCases + "/" + GetParam() + ".expected.safetensors");
  const std::vector<int32_t> prompt = ids_of(expected.at("tokens"));
  const std::vector<int32_t> greedy = ids_of(expected.at("greedy"));
  const Tensor& want = expected.at("logits");
  // The inference engine over the folder as it lies, token by token, against every position's
  // logits (the engine runs bf16 weights as bf16, which the reference rounded the same way).
  const OpenedModel m = open_model(kCases + "/" + GetParam());
  const int64_t V = m.config.vocab_size;
  KvCache cache = m.model->make_cache(static_cast<int64_t>(prompt.size()));
  std::vector<float> logits(V);
  for (size_t t = 0; t < prompt.size(); ++t) {
    m.model->forward(std::span(prompt).subspan(t, 1), cache, logits);
    for (int64_t v = 0; v < V; ++v) {
      const float w = want[static_cast<int64_t>(t) * V + v];
      ASSERT_NEAR(logits[v], w, 1e-4 + 1e-4 * std::abs(w)) << "position " << t << ", token " << v;
    }
  }
  SamplingOptions greedy_options;
  greedy_options.temperature = 0.0f;
  const Generation g =
      generate(*m.model, prompt, static_cast<int64_t>(greedy.size()), greedy_options, 0, -1);
  EXPECT_EQ(g.tokens, greedy);
}

INSTANTIATE_TEST_SUITE_P(Cases, HfReference,
                         testing::Values("mixtral_f32", "mixtral_bf16_sharded", "mixtral_f16",
                                         "qwen2_moe_f32", "qwen2_moe_bf16", "olmoe_f32",
                                         "olmoe_bf16"));

// A generation's cache holds its own length, not the whole context (a real checkpoint's
// context of 32768 positions would take gigabytes); past it, decoding is an error, and so is a
// cache longer than the context.
TEST(HfCheckpoint, KvCacheHoldsWhatTheGenerationNeeds) {
  const OpenedModel m = open_model(kCases + "/mixtral_f32");
  const int64_t context = m.config.max_position_embeddings;
  EXPECT_EQ(m.model->make_cache(context).capacity, context);
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "the model holds 1 to",
                      test::error_of([&] { m.model->make_cache(context + 1); }));
  KvCache cache = m.model->make_cache(2);
  EXPECT_EQ(cache.capacity, 2);
  std::vector<float> logits(m.config.vocab_size);
  const int32_t ids[] = {1, 2, 3};
  m.model->forward({ids, 1}, cache, logits);
  m.model->forward({ids + 1, 1}, cache, logits);
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "the KV cache holds 2 positions", test::error_of([&] {
                        m.model->forward({ids + 2, 1}, cache, logits);
                      }));
}

TEST(HfCheckpoint, RecognisedByModelType) {
  EXPECT_TRUE(is_hf_checkpoint(kCases + "/olmoe_f32"));
  const std::string run = test::temp_dir("run");
  write_text(run + "/config.json", R"({"vocab_size": 10})");
  EXPECT_FALSE(is_hf_checkpoint(run));
}

TEST(HfCheckpoint, ConfigMapsEachArchitecture) {
  const HfCheckpointConfig q = hf_checkpoint_config(
      nlohmann::json::parse(read_text(kCases + "/qwen2_moe_bf16/config.json")), "q");
  EXPECT_EQ(q.arch, HfArch::Qwen2Moe);
  EXPECT_TRUE(q.config.qkv_bias);
  EXPECT_FALSE(q.config.is_moe_layer(0));
  EXPECT_TRUE(q.config.is_moe_layer(1));
  EXPECT_FALSE(q.config.is_moe_layer(2));
  EXPECT_TRUE(q.config.moe->norm_topk_prob);
  EXPECT_TRUE(q.config.moe->shared_expert_gate);
  const HfCheckpointConfig o = hf_checkpoint_config(
      nlohmann::json::parse(read_text(kCases + "/olmoe_bf16/config.json")), "o");
  EXPECT_TRUE(o.config.qk_norm);
  EXPECT_FLOAT_EQ(o.config.clip_qkv, 1.2f);
  // Mixtral's sliding window that binds caps the context instead of being ignored.
  nlohmann::json mixtral = nlohmann::json::parse(read_text(kCases + "/mixtral_f32/config.json"));
  mixtral["sliding_window"] = 16;
  EXPECT_EQ(hf_checkpoint_config(mixtral, "m").config.max_position_embeddings, 16);
}

TEST(HfCheckpointBadInput, MissingShard) {
  const std::string dir = copy_case("mixtral_bf16_sharded");
  fs::remove(dir + "/model-00002-of-00003.safetensors");
  EXPECT_PRED_FORMAT2(testing::IsSubstring,
                      "names shard 'model-00002-of-00003.safetensors', which is missing",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, IndexNamingAFileThatIsNotThere) {
  const std::string dir = copy_case("mixtral_bf16_sharded");
  nlohmann::json index = nlohmann::json::parse(read_text(dir + "/model.safetensors.index.json"));
  index["weight_map"]["model.norm.weight"] = "model-00009-of-00003.safetensors";
  write_text(dir + "/model.safetensors.index.json", index.dump());
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "'model-00009-of-00003.safetensors', which is missing",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, IndexPlacingATensorInTheWrongShardOrLeavingOneOut) {
  const std::string dir = copy_case("mixtral_bf16_sharded");
  nlohmann::json index = nlohmann::json::parse(read_text(dir + "/model.safetensors.index.json"));
  const std::string name = "model.norm.weight";
  const std::string shard = index["weight_map"][name];
  const std::string other = shard == "model-00001-of-00003.safetensors"
                                ? "model-00002-of-00003.safetensors"
                                : "model-00001-of-00003.safetensors";
  index["weight_map"][name] = other;
  write_text(dir + "/model.safetensors.index.json", index.dump());
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "places tensor 'model.norm.weight' in '" + other,
                      test::error_of([&] { load_model(dir); }));
  index["weight_map"].erase(name);
  write_text(dir + "/model.safetensors.index.json", index.dump());
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "holds tensor 'model.norm.weight', which",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, TruncatedSafetensors) {
  const std::string dir = copy_case("mixtral_f32");
  const std::string path = dir + "/model.safetensors";
  fs::resize_file(path, fs::file_size(path) - 100);
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "out of range",
                      test::error_of([&] { load_model(dir); }));
  fs::resize_file(path, 6);
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "too short", test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, NoWeightFiles) {
  const std::string dir = copy_case("olmoe_f32");
  fs::remove(dir + "/model.safetensors");
  EXPECT_PRED_FORMAT2(testing::IsSubstring,
                      "no model.safetensors and no model.safetensors.index.json",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, UnknownModelType) {
  const std::string dir = copy_case("olmoe_f32");
  edit_config(dir, [](nlohmann::json& j) { j["model_type"] = "llama"; });
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "model_type 'llama' is not supported",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, HeadsThatDoNotDivide) {
  const std::string dir = copy_case("qwen2_moe_f32");
  edit_config(dir, [](nlohmann::json& j) { j["num_key_value_heads"] = 3; });
  EXPECT_PRED_FORMAT2(testing::IsSubstring,
                      "num_key_value_heads 3 does not divide num_attention_heads 4",
                      test::error_of([&] { load_model(dir); }));
  edit_config(dir, [](nlohmann::json& j) {
    j["num_key_value_heads"] = 2;
    j["num_attention_heads"] = 6;
  });
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "num_attention_heads 6 does not divide hidden_size 32",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, UnsupportedFeaturesAreNamed) {
  const std::string dir = copy_case("mixtral_f32");
  edit_config(dir, [](nlohmann::json& j) { j["rope_scaling"] = {{"type", "linear"}}; });
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "field 'rope_scaling'",
                      test::error_of([&] { load_model(dir); }));
  edit_config(dir, [](nlohmann::json& j) {
    j["rope_scaling"] = nullptr;
    j["hidden_act"] = "gelu";
  });
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "field 'hidden_act'",
                      test::error_of([&] { load_model(dir); }));
  edit_config(dir, [](nlohmann::json& j) {
    j["hidden_act"] = "silu";
    j.erase("num_local_experts");
  });
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "missing key 'num_local_experts'",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, WrongShapeNamesTheTensor) {
  const std::string dir = copy_case("mixtral_f32");
  edit_config(dir, [](nlohmann::json& j) { j["intermediate_size"] = 25; });
  EXPECT_PRED_FORMAT2(
      testing::IsSubstring,
      "tensor 'model.layers.0.block_sparse_moe.experts.0.w1.weight' has shape [24, 32], "
      "config.json needs [25, 32]",
      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, MissingAndUnexpectedTensorsAreNamed) {
  const std::string dir = copy_case("qwen2_moe_f32");
  edit_config(dir, [](nlohmann::json& j) { j["qkv_bias"] = false; });
  EXPECT_PRED_FORMAT2(testing::IsSubstring,
                      "unexpected tensor 'model.layers.0.self_attn.k_proj.bias'",
                      test::error_of([&] { load_model(dir); }));
  edit_config(dir, [](nlohmann::json& j) {
    j["qkv_bias"] = true;
    j["decoder_sparse_step"] = 1;  // block 0 becomes MoE: its experts are not in the file
  });
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "missing tensor 'model.layers.0.mlp.gate.weight'",
                      test::error_of([&] { load_model(dir); }));
}

// transformers ties the head to the embedding whatever the file holds: a stored lm_head.weight
// is left unread then, and an unused RoPE buffer too; anything else unexpected is an error.
TEST(HfCheckpoint, TiedHeadAndRopeBufferInTheFileAreLeftOut) {
  const std::string dir = copy_case("qwen2_moe_f32");
  SafetensorsFile f = read_safetensors(dir + "/model.safetensors");
  edit_config(dir, [](nlohmann::json& j) { j["tie_word_embeddings"] = true; });
  f.tensors.emplace("model.layers.0.self_attn.rotary_emb.inv_freq", Tensor({4}));
  write_safetensors(dir + "/model.safetensors", f.tensors, {{"format", "pt"}});
  LoadedModel m = load_model(dir);
  EXPECT_TRUE(m.config.tie_word_embeddings);
  f.tensors.emplace("model.layers.0.mlp.extra.weight", Tensor({4}));
  write_safetensors(dir + "/model.safetensors", f.tensors, {{"format", "pt"}});
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "unexpected tensor 'model.layers.0.mlp.extra.weight'",
                      test::error_of([&] { load_model(dir); }));
}

TEST(HfCheckpointBadInput, WrongDtypeNamesTheTensor) {
  // The same 4 bytes per element as F32, so only the dtype is wrong.
  const std::string dir = copy_case("mixtral_f32");
  const std::string path = dir + "/model.safetensors";
  std::string bytes = read_text(path);
  const std::string needle = R"("model.norm.weight": {"dtype": "F32")";
  const size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at + needle.size() - 4, 3, "I32");
  write_text(path, bytes);
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "tensor 'model.norm.weight': unsupported dtype 'I32'",
                      test::error_of([&] { load_model(dir); }));
}

// A sentencepiece model of another project (Mixtral's kind: byte fallback, identity
// normalisation, no user-defined newline and tab symbols) gets newlines and tabs as bytes;
// ours keeps its symbols.
TEST(HfTokenizer, ForeignSentencepieceModelKeepsNewlinesAsBytes) {
  const std::string dir = test::temp_dir("tok");
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i)
    texts.push_back("line " + std::to_string(i) + " of some text\n\tindented words here");
  TokenizerTrainOptions o;
  o.vocab_size = 300;
  Tokenizer::train(texts, o, dir + "/ours.model");
  EXPECT_TRUE(Tokenizer(dir + "/ours.model").maps_layout_symbols());

  std::string corpus;
  for (const std::string& t : texts) corpus += t + "\n";
  write_text(dir + "/corpus.txt", corpus);
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + dir + "/corpus.txt --model_prefix=" + dir +
      "/foreign --model_type=bpe --vocab_size=300 --byte_fallback=true --minloglevel=2 "
      "--normalization_rule_name=identity --remove_extra_whitespaces=false");
  ASSERT_TRUE(status.ok()) << status.ToString();
  const Tokenizer foreign(dir + "/foreign.model");
  EXPECT_FALSE(foreign.maps_layout_symbols());
  const std::string text = "some\nwords\there";
  const std::vector<int32_t> ids = foreign.encode(text);
  EXPECT_EQ(foreign.decode(ids), text);
  const std::vector<int32_t> newline = foreign.encode("\n");
  ASSERT_FALSE(newline.empty());
  // "\n" alone: sentencepiece's leading space marker, then the byte piece <0x0A>.
  EXPECT_EQ(foreign.decode({newline.end() - 1, newline.end()}), "\n");
}

TEST(ShardIndex, AcceptsAWeightMapOfPlainFileNames) {
  const auto map = parse_shard_index(
      R"({"metadata": {"total_size": 8}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}})",
      "i");
  EXPECT_EQ(map.size(), 2u);
  EXPECT_EQ(map.at("b"), "m-2.safetensors");
}

TEST(ShardIndex, RefusesWhatIsNotOne) {
  auto error = [](const std::string& text) {
    return test::error_of([&] { parse_shard_index(text, "index.json"); });
  };
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "not valid JSON", error("{"));
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "not a JSON object", error("[]"));
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "needs a \"weight_map\"", error("{}"));
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "weight_map is empty", error(R"({"weight_map": {}})"));
  EXPECT_PRED_FORMAT2(testing::IsSubstring, "is not a file name",
                      error(R"({"weight_map": {"a": 3}})"));
  for (const char* path : {"../x.safetensors", "/etc/passwd", "sub/x.safetensors", ".hidden", ""})
    EXPECT_PRED_FORMAT2(testing::IsSubstring, "not a plain file name",
                        error(nlohmann::json{{"weight_map", {{"a", path}}}}.dump()))
        << path;
}

}  // namespace
}  // namespace moe
