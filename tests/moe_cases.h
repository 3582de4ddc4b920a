#pragma once
// The MoE layer variants of tests/cases/moe_cases.json, shared by the finite-difference and
// the PyTorch reference tests so both cover the same list.
#include "case_file.h"
#include "moe/config.h"

namespace moe::test {

struct MoeCase {
  std::string name;
  MoeConfig config;
  int64_t tokens = 0;
  int64_t seq_len = 0;
  bool training = true;
  // Evaluation of expert choice with the training-time batch selection (the default is the
  // learned thresholds).
  bool batch_selection_in_eval = false;
};

inline std::map<std::string, MoeCase> load_moe_cases() {
  return load_case_file<MoeCase>(MOE_CASES_FILE,
                                 [](const std::string& name, const nlohmann::json& c) {
                                   return MoeCase{name,
                                                  moe_config_from_json(c.at("layer")),
                                                  c.at("tokens").get<int64_t>(),
                                                  c.at("seq_len").get<int64_t>(),
                                                  c.at("training").get<bool>(),
                                                  c.value("batch_selection_in_eval", false)};
                                 });
}

inline std::vector<std::string> moe_case_names() {
  return case_names(load_moe_cases());
}

}  // namespace moe::test
