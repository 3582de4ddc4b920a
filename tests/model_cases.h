#pragma once
// The whole-model configs of tests/cases/model_cases.json, shared by the finite-difference
// and the PyTorch reference tests. Weights, tokens and targets come from the reference file
// (the finite-difference test draws its own).
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"

namespace moe::test {

struct ModelCase {
  std::string name;
  ModelConfig config;
  int64_t batch = 0;
  int64_t seq = 0;
  bool training = true;
};

inline std::map<std::string, ModelCase> load_model_cases() {
  std::ifstream in(MODEL_CASES_FILE);
  const nlohmann::json all = nlohmann::json::parse(in);
  std::map<std::string, ModelCase> cases;
  for (auto& [name, c] : all.items()) {
    if (name.starts_with("_")) continue;
    cases[name] = {name, model_config_from_json(c.at("model")), c.at("batch").get<int64_t>(),
                   c.at("seq").get<int64_t>(), c.at("training").get<bool>()};
  }
  return cases;
}

inline std::vector<std::string> model_case_names() {
  std::vector<std::string> names;
  for (auto& [name, c] : load_model_cases()) names.push_back(name);
  return names;
}

}  // namespace moe::test
