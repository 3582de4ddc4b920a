#pragma once
// A JSON file of named test cases ("_"-prefixed keys are comments), read into Case values by
// make(name, json). Shared by the MoE-layer and whole-model case lists.
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe::test {

template <typename Case, typename Make>
std::map<std::string, Case> load_case_file(const char* path, Make make) {
  std::ifstream in(path);
  const nlohmann::json all = nlohmann::json::parse(in);
  std::map<std::string, Case> cases;
  for (auto& [name, c] : all.items())
    if (!name.starts_with("_")) cases[name] = make(name, c);
  return cases;
}

template <typename Case>
std::vector<std::string> case_names(const std::map<std::string, Case>& cases) {
  std::vector<std::string> names;
  for (const auto& [name, c] : cases) names.push_back(name);
  return names;
}

}  // namespace moe::test
