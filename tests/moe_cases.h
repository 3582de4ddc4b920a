#pragma once
// The MoE layer variants of tests/cases/moe_cases.json, shared by the finite-difference and
// the PyTorch reference tests so both cover the same list.
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/config.h"

namespace moe::test {

struct MoeCase {
  std::string name;
  MoeConfig config;
  int64_t tokens = 0;
  int64_t seq_len = 0;
  bool training = true;
};

inline std::map<std::string, MoeCase> load_moe_cases() {
  std::ifstream in(MOE_CASES_FILE);
  const nlohmann::json all = nlohmann::json::parse(in);
  std::map<std::string, MoeCase> cases;
  for (auto& [name, c] : all.items()) {
    if (name.starts_with("_")) continue;
    cases[name] = {name, moe_config_from_json(c.at("layer")), c.at("tokens").get<int64_t>(),
                   c.at("seq_len").get<int64_t>(), c.at("training").get<bool>()};
  }
  return cases;
}

inline std::vector<std::string> moe_case_names() {
  std::vector<std::string> names;
  for (auto& [name, c] : load_moe_cases()) names.push_back(name);
  return names;
}

}  // namespace moe::test
