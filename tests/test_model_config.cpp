// Model config parsing and validation, block placement of MoE layers, and parameter
// accounting: our count equals the parameters the model really allocates, and the presets
// come within 2% of their published totals.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/param_count.h"
#include "model/transformer.h"
#include "model_cases.h"
#include "tensor/error.h"

namespace moe {
namespace {

std::string error_of(const nlohmann::json& j) {
  try {
    model_config_from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, RejectsBadFieldsNamingThem) {
  const nlohmann::json ok = model_config_to_json(default_model_config());
  EXPECT_EQ(error_of(ok), "");
  auto with = [&](const std::string& key, nlohmann::json v) {
    nlohmann::json j = ok;
    j[key] = std::move(v);
    return error_of(j);
  };
  EXPECT_NE(with("num_key_value_heads", 3).find("num_key_value_heads"), std::string::npos);
  EXPECT_NE(with("hidden_size", -1).find("hidden_size"), std::string::npos);
  EXPECT_NE(with("vocab_size", "big").find("vocab_size"), std::string::npos);
  EXPECT_NE(with("head_dim", 7).find("head_dim"), std::string::npos);
  EXPECT_NE(with("hidden_sise", 8).find("unknown model config field 'hidden_sise'"),
            std::string::npos);
  EXPECT_NE(with("moe_layer_freq", 0).find("moe_layer_freq"), std::string::npos);
  nlohmann::json bad_moe = ok;
  bad_moe["moe"]["top_k"] = ok["moe"]["num_experts"].get<int>() + 1;
  EXPECT_NE(error_of(bad_moe).find("top_k"), std::string::npos);
  bad_moe = ok;
  bad_moe["moe"]["hidden_size"] = 128;
  EXPECT_NE(error_of(bad_moe).find("hidden_size"), std::string::npos);
  EXPECT_NE(error_of(nlohmann::json::array()).find("object"), std::string::npos);
}

// A number beyond double's range is a JSON error of its own kind in nlohmann-json (found by the
// run-folder fuzzer): still one named error, not an uncaught exception.
TEST(ModelConfig, AFileWithAnOverflowingNumberIsAnError) {
  const std::string path = testing::TempDir() + "/moe_overflowing_number.json";
  std::ofstream(path) << R"({"vocab_size": 64, "rms_norm_eps": 0.001E513})";
  try {
    load_model_config(path);
    FAIL() << "loaded a config with 1e510 in it";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not valid JSON"), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, SequenceRoutingNamesItsBadFields) {
  nlohmann::json j = model_config_to_json(default_model_config());
  j["moe"]["routing_level"] = "sequence";
  j["moe"]["route_prefix"] = 16;
  EXPECT_EQ(error_of(j), "");
  j["moe"]["route_prefix"] = 0;
  EXPECT_NE(error_of(j).find("'route_prefix'"), std::string::npos) << error_of(j);
  j["moe"]["route_prefix"] = 257;  // beyond max_position_embeddings 256
  EXPECT_NE(error_of(j).find("moe.route_prefix"), std::string::npos) << error_of(j);
  EXPECT_NE(error_of(j).find("max_position_embeddings (256)"), std::string::npos);
  j["moe"]["route_prefix"] = 16;
  j["moe"]["routing_level"] = "document";
  EXPECT_NE(error_of(j).find("expected one of token, sequence"), std::string::npos) << error_of(j);
  j["moe"]["routing_level"] = "sequence";
  j["moe"]["router_type"] = "expert_choice";
  j["moe"]["aux_loss_type"] = "none";
  j["moe"]["capacity_factor"] = 1.0;
  EXPECT_NE(error_of(j).find("'routing_level'"), std::string::npos) << error_of(j);
}

// Every numeric field has an upper bound too, stated in the error; non-finite or
// out-of-type numbers never pass.
TEST(ModelConfig, EveryNumericFieldHasAStatedRange) {
  const nlohmann::json ok = model_config_to_json(default_model_config());
  auto with = [&](const std::string& key, nlohmann::json v) {
    nlohmann::json j = ok;
    j[key] = std::move(v);
    return error_of(j);
  };
  const std::vector<std::pair<std::string, nlohmann::json>> too_big = {
      {"vocab_size", int64_t{1} << 25},
      {"hidden_size", int64_t{1} << 17},
      {"intermediate_size", int64_t{1} << 21},
      {"num_hidden_layers", 1025},
      {"num_attention_heads", 2048},
      {"num_key_value_heads", 16},  // above num_attention_heads (8)
      {"head_dim", 2048},
      {"max_position_embeddings", int64_t{1} << 21},
      {"rope_theta", 1e300},
      {"rms_norm_eps", 2.0},
      {"initializer_range", 5.0},
      {"moe_layer_freq", 1025},
      {"first_k_dense_replace", 1025}};
  for (const auto& [key, value] : too_big) {
    const std::string e = with(key, value);
    EXPECT_NE(e.find("model config field '" + key + "' must be in "), std::string::npos)
        << key << ": " << e;
  }
  EXPECT_EQ(with("hidden_size", int64_t{1} << 17),
            "model config field 'hidden_size' must be in [1, 65536], got 131072");
  EXPECT_EQ(with("rope_theta", 1e300),
            "model config field 'rope_theta' must be in (1, 1e+12], got 1e+300");
  // Past float's range: was converted to inf.
  EXPECT_NE(with("rms_norm_eps", 1e39).find("float range"), std::string::npos);
  // Past int64's range: nlohmann stores it unsigned, and a plain get wrapped it to -1.
  EXPECT_NE(with("vocab_size", nlohmann::json(UINT64_MAX)).find("fits in 64 bits"),
            std::string::npos);
  // hidden 65536 / 1 head: a head 65536 wide.
  nlohmann::json wide = ok;
  wide["hidden_size"] = 65536;
  wide["num_attention_heads"] = 1;
  wide["num_key_value_heads"] = 1;
  wide["head_dim"] = 0;
  wide.erase("moe");
  EXPECT_NE(error_of(wide).find("at most 1024"), std::string::npos) << error_of(wide);
  // The programmatic path (no JSON) is held to the same ranges.
  ModelConfig c = default_model_config();
  c.rope_theta = std::numeric_limits<double>::infinity();
  EXPECT_THROW(c.validate(), Error);
  c = default_model_config();
  c.initializer_range = std::nanf("");
  EXPECT_THROW(c.validate(), Error);
}

TEST(ModelConfig, LoadReportsFileAndJsonErrors) {
  EXPECT_THROW(load_model_config("/nonexistent/config.json"), Error);
  const std::string path = testing::TempDir() + "/broken_config.json";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fputs("{\"hidden_size\": 64,", f);
  std::fclose(f);
  try {
    load_model_config(path);
    FAIL() << "a truncated file parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, MoeBlockPlacement) {
  ModelConfig c = default_model_config();
  c.num_hidden_layers = 6;
  c.moe_layer_freq = 2;
  std::vector<int64_t> moe_blocks;
  for (int64_t l = 0; l < 6; ++l)
    if (c.is_moe_layer(l)) moe_blocks.push_back(l);
  EXPECT_EQ(moe_blocks, (std::vector<int64_t>{1, 3, 5}));
  c.moe_layer_freq = 1;
  c.first_k_dense_replace = 2;
  EXPECT_EQ(c.num_moe_layers(), 4);
  EXPECT_FALSE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
  c.moe.reset();
  EXPECT_EQ(c.num_moe_layers(), 0);
}

TEST(ModelConfig, ShippedConfigsEqualTheBuiltInOnes) {
  EXPECT_EQ(model_config_to_json(load_model_config(MOE_SOURCE_DIR "/configs/default.json")),
            model_config_to_json(default_model_config()));
  EXPECT_EQ(model_config_to_json(load_model_config(MOE_SOURCE_DIR "/configs/dense-baseline.json")),
            model_config_to_json(dense_baseline_model_config()));
}

TEST(ParamCount, EqualsWhatTheModelAllocates) {
  std::vector<std::pair<std::string, ModelConfig>> configs = {
      {"default", default_model_config()}, {"dense-baseline", dense_baseline_model_config()}};
  for (const auto& [name, c] : test::load_model_cases()) configs.push_back({name, c.config});
  for (const auto& [name, config] : configs) {
    ParamStore store;
    Transformer model(config, store);
    int64_t allocated = 0;
    for (const auto& e : store.entries()) allocated += e.ref.numel;
    EXPECT_EQ(count_params(arch_from_model_config(config, name)).total, allocated) << name;
  }
}

TEST(ParamCount, OverflowIsAnErrorNotANegativeCount) {
  // 2^16 wide, 2^20-wide experts, 2^20 of them, 1024 layers: 3 * 2^66 parameters, which
  // wrapped to a negative total before the count was checked.
  ArchSpec a;
  a.name = "huge";
  a.vocab_size = 1000;
  a.hidden_size = 1 << 16;
  a.num_layers = 1024;
  a.heads = a.kv_heads = 64;
  a.head_dim = 1024;
  a.num_experts = 1 << 20;
  a.top_k = 1;
  a.moe_intermediate_size = 1 << 20;
  try {
    const ParamCount c = count_params(a);
    FAIL() << "counted " << c.total;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "architecture 'huge': the parameter count overflows 64 bits");
  }
  a.num_experts = 1 << 10;  // 3 * 2^56: large, and exact
  EXPECT_EQ(count_params(a).routed_experts, int64_t{3} << 56);
}

TEST(LoadModel, RefusesAConfigTheWeightsCannotHold) {
  // A config that asks for 2^24 * 2^16 * 2 embedding floats (8 TiB) beside a 100-byte
  // weights file: refused before anything that size is allocated.
  const std::string dir = testing::TempDir() + "/huge_config_run";
  std::filesystem::create_directories(dir);
  ModelConfig c = dense_baseline_model_config();
  c.vocab_size = int64_t{1} << 24;
  c.hidden_size = int64_t{1} << 16;
  c.num_attention_heads = 64;
  c.num_key_value_heads = 64;
  c.num_hidden_layers = 1;
  save_model_config(dir, c);
  std::ofstream(dir + "/model.safetensors") << std::string(100, ' ');
  try {
    load_model(dir);
    FAIL() << "loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors: 100 bytes cannot hold the"),
              std::string::npos)
        << e.what();
  }
}

TEST(ParamCount, ActiveCountsOnlyTopKExperts) {
  const ModelConfig c = default_model_config();
  const ParamCount moe = count_params(arch_from_model_config(c, "default"));
  const ParamCount dense = count_params(arch_from_model_config(dense_baseline_model_config(), "d"));
  const int64_t expert = 3 * c.hidden_size * c.moe->moe_intermediate_size;
  EXPECT_EQ(moe.total - moe.active, c.num_moe_layers() * (c.moe->num_experts - 2) * expert);
  // The dense baseline matches the default's active FLOPs up to the routers' products.
  EXPECT_DOUBLE_EQ(moe.forward_flops_per_token - dense.forward_flops_per_token,
                   2.0 * c.num_moe_layers() * c.moe->num_experts * c.hidden_size);
}

TEST(ParamCount, PresetsMatchPublishedTotalsWithinTwoPercent) {
  int64_t checked = 0;
  for (const std::string& name : preset_names()) {
    const ArchSpec a = *find_preset(name);
    const ParamCount c = count_params(a);
    if (a.published_total > 0) {
      EXPECT_NEAR(double(c.total) / a.published_total, 1.0, 0.02) << name;
      ++checked;
    }
    if (a.published_active > 0) {
      EXPECT_NEAR(double(c.active) / a.published_active, 1.0, 0.02) << name;
    }
  }
  EXPECT_EQ(checked, 7);
  // Mixtral 8x7B by hand: 32 x (attention 41.9M + 8 experts x 176.2M + router) + 2 x 131M.
  const ParamCount mixtral = count_params(*find_preset("mixtral-8x7b"));
  EXPECT_EQ(mixtral.total, 46702792704);
  EXPECT_EQ(mixtral.active, 12879925248);
}

}  // namespace
}  // namespace moe
