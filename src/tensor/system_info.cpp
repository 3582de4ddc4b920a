#include "tensor/system_info.h"

#include <omp.h>

#include <cstdlib>

#include "tensor/cpu.h"
#include "tensor/threads.h"

namespace moe {
namespace {

std::string compiler() {
#if defined(__clang__)
  return "Clang " __clang_version__;
#elif defined(__GNUC__)
  return "GCC " __VERSION__;
#else
  return "unknown compiler";
#endif
}

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value && *value ? value : "unset";
}

}  // namespace

std::string version_line() {
  return std::string("moe ") + MOE_VERSION + " (" + compiler() + ", " + MOE_BUILD_TYPE + ", " +
         (MOE_NATIVE_BUILD ? "native: this CPU only" : "portable x86-64") + ")";
}

nlohmann::json system_info() {
  nlohmann::json sets = nlohmann::json::array();
  for (KernelSet set : {KernelSet::Generic, KernelSet::Avx2, KernelSet::Avx512})
    if (cpu_supports(set)) sets.push_back(kernel_set_name(set));
  return {{"version", MOE_VERSION},
          {"compiler", compiler()},
          {"build_type", MOE_BUILD_TYPE},
          {"build_target", MOE_NATIVE_BUILD ? "native" : "portable"},
          {"cpu", cpu_model_name()},
          {"cpu_features", cpu_vector_features()},
          {"kernel_set", kernel_set_name(kernel_set())},
          {"kernel_sets_supported", sets},
          {"bf16_tiles", use_avx512_bf16() ? "avx512-bf16" : "widen+sgemm"},
          {"blas_core", blas_core_name()},
          {"openblas_coretype", environment("OPENBLAS_CORETYPE")},
          {"blas_threads", blas_thread_count()},
          {"omp_threads", omp_get_max_threads()},
          {"omp_wait_policy", environment("OMP_WAIT_POLICY")},
          {"gomp_spincount", environment("GOMP_SPINCOUNT")}};
}

std::string system_info_text() {
  const nlohmann::json info = system_info();
  std::string out = version_line() + "\n";
  for (auto field = info.begin(); field != info.end(); ++field) {
    if (field.key() == "version" || field.key() == "compiler" || field.key() == "build_type")
      continue;
    std::string text;
    if (field->is_string()) {
      text = field->get<std::string>();
    } else if (field->is_array()) {
      for (const auto& item : *field) {
        if (!text.empty()) text += ' ';
        text += item.get<std::string>();
      }
    } else {
      text = field->dump();
    }
    out += field.key();
    out += ": ";
    out += text;
    out += '\n';
  }
  return out;
}

}  // namespace moe
