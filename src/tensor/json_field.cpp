#include "tensor/json_field.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "tensor/error.h"

namespace moe {
namespace {

void require_type(bool ok, const char* what, const std::string& key, const char* expected) {
  if (!ok) throw Error(std::string(what) + " field '" + key + "' must be " + expected);
}

// 1e-05, 0.02, 1e+12: six significant digits are plenty for a bound or an offending value.
std::string real_str(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

}  // namespace

std::string json_error_text(const std::exception& e) {
  std::string text = e.what();
  if (text.starts_with("[json.exception.")) {
    const size_t end = text.find("] ");
    if (end != std::string::npos) text.erase(0, end + 2);
  }
  return text;
}

int64_t json_int(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_number_integer(), what, key, "an integer");
  // nlohmann keeps integers above INT64_MAX as unsigned; get<int64_t> would wrap them.
  require_type(!v.is_number_unsigned() ||
                   v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
               what, key, "an integer that fits in 64 bits");
  return v.get<int64_t>();
}

double json_number(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_number(), what, key, "a number");
  const double x = v.get<double>();
  require_type(std::isfinite(x), what, key, "a finite number");
  return x;
}

float json_float(const nlohmann::json& v, const char* what, const std::string& key) {
  const double x = json_number(v, what, key);
  // Beyond float's range the conversion is undefined (in practice inf).
  require_type(std::fabs(x) <= double(std::numeric_limits<float>::max()), what, key,
               "a number within float range (|x| <= 3.4e38)");
  return static_cast<float>(x);
}

bool json_bool(const nlohmann::json& v, const char* what, const std::string& key) {
  require_type(v.is_boolean(), what, key, "true or false");
  return v.get<bool>();
}

void require_int_in_range(int64_t value, int64_t lo, int64_t hi, const char* what,
                          const std::string& key, const char* note) {
  if (value < lo || value > hi)
    throw Error(std::string(what) + " field '" + key + "' must be in [" + std::to_string(lo) +
                ", " + std::to_string(hi) + "]" + note + ", got " + std::to_string(value));
}

void require_real_in_range(double value, double lo, double hi, const char* what,
                           const std::string& key, Lower lower, const char* note) {
  const bool above = lower == Lower::Inclusive ? value >= lo : value > lo;
  if (!(std::isfinite(value) && above && value <= hi))  // NaN fails every comparison
    throw Error(std::string(what) + " field '" + key + "' must be in " +
                (lower == Lower::Inclusive ? "[" : "(") + real_str(lo) + ", " + real_str(hi) + "]" +
                note + ", got " + real_str(value));
}

}  // namespace moe
