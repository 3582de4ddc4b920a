#pragma once
// Typed reads of one value of a JSON config object, for the model and MoE config parsers. A
// value of the wrong type is an Error naming it: "<what> field '<key>' must be an integer".
// Numbers are always finite: an integer must fit int64_t, a float must fit a float.
// The range checks are for validate(): every numeric field has a stated range, upper bound
// included, and NaN or inf is never inside one.
#include <cstdint>
#include <exception>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace moe {

int64_t json_int(const nlohmann::json& v, const char* what, const std::string& key);
double json_number(const nlohmann::json& v, const char* what, const std::string& key);
float json_float(const nlohmann::json& v, const char* what, const std::string& key);
bool json_bool(const nlohmann::json& v, const char* what, const std::string& key);

// Throws Error "<what> field '<key>' must be in [lo, hi]<note>, got <value>" unless
// lo <= value <= hi. `note` explains a bound or a value: " (0 = dropless)".
void require_int_in_range(int64_t value, int64_t lo, int64_t hi, const char* what,
                          const std::string& key, const char* note = "");

enum class Lower { Inclusive, Exclusive };  // [lo, hi] or (lo, hi]
// Throws Error "<what> field '<key>' must be in (lo, hi]<note>, got <value>" unless value lies
// in the interval; a non-finite value never does.
void require_real_in_range(double value, double lo, double hi, const char* what,
                           const std::string& key, Lower lower = Lower::Inclusive,
                           const char* note = "");

// nlohmann::json's message without its "[json.exception.parse_error.101] " tag, which means
// nothing to a user: "parse error at line 1, column 2: syntax error ...".
std::string json_error_text(const std::exception& e);

}  // namespace moe
