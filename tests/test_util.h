#pragma once
// Small helpers shared by the unit tests: a fresh temporary folder, and the message of the
// moe::Error a call throws.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "tensor/error.h"

namespace moe::test {

// An empty folder <gtest temp dir>/moe_<suite>.<test>_<name> (normalised, no trailing
// separator), removed first if an earlier run left it. The test's own name, and the kernel set
// it is forced to (ctest runs some tests again under MOE_KERNELS), keep it apart from the
// folders of tests that ctest runs at the same time.
inline std::string temp_dir(const std::string& name) {
  std::string owner;
  if (const auto* info = testing::UnitTest::GetInstance()->current_test_info())
    owner = std::string(info->test_suite_name()) + "." + info->name() + "_";
  if (const char* kernels = std::getenv("MOE_KERNELS")) owner += std::string(kernels) + "_";
  const std::string d = std::filesystem::path(testing::TempDir() + "/moe_" + owner + name)
                            .lexically_normal()
                            .string();
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// What `f` throws as moe::Error, or "" when it throws nothing.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace moe::test
