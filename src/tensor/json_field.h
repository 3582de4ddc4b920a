#pragma once
// Typed reads of one value of a JSON config object, for the model and MoE config parsers. A
// value of the wrong type is an Error naming it: "<what> field '<key>' must be an integer".
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace moe {

int64_t json_int(const nlohmann::json& v, const char* what, const std::string& key);
double json_number(const nlohmann::json& v, const char* what, const std::string& key);
float json_float(const nlohmann::json& v, const char* what, const std::string& key);
bool json_bool(const nlohmann::json& v, const char* what, const std::string& key);

}  // namespace moe
