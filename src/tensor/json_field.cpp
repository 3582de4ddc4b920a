#include "tensor/json_field.h"

#include <nlohmann/json.hpp>

#include "tensor/error.h"

namespace moe {
namespace {

void require_type(bool ok, const char* what, const std::string& key, const char* expected) {
  if (!ok) throw Error(std::string(what) + " field '" + key + "' must be " + expected);
}

}  // namespace

int64_t json_int(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_number_integer(), what, key, "an integer");
  return v.get<int64_t>();
}

double json_number(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_number(), what, key, "a number");
  return v.get<double>();
}

float json_float(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_number(), what, key, "a number");
  return v.get<float>();
}

bool json_bool(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_boolean(), what, key, "true or false");
  return v.get<bool>();
}

}  // namespace moe
