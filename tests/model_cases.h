#pragma once
// The whole-model configs of tests/cases/model_cases.json, shared by the finite-difference
// and the PyTorch reference tests. Weights, tokens and targets come from the reference file
// (the finite-difference test draws its own).
#include "case_file.h"
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
  return load_case_file<ModelCase>(
      MODEL_CASES_FILE, [](const std::string& name, const nlohmann::json& c) {
        return ModelCase{name, model_config_from_json(c.at("model")), c.at("batch").get<int64_t>(),
                         c.at("seq").get<int64_t>(), c.at("training").get<bool>()};
      });
}

inline std::vector<std::string> model_case_names() {
  return case_names(load_model_cases());
}

}  // namespace moe::test
