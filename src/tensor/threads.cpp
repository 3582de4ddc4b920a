#include "tensor/threads.h"

#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <string>

#include "tensor/error.h"

// Exported by OpenBLAS's DYNAMIC_ARCH builds (Debian's), not declared in cblas.h.
extern "C" {
char* openblas_get_corename(void);
int openblas_get_num_threads(void);
}

namespace moe {

const char* blas_core_name() {
  return openblas_get_corename();
}

int blas_thread_count() {
  return openblas_get_num_threads();
}

void set_threads(int n) {
  if (n <= 0) {
    if (const char* env = std::getenv("MOE_THREADS"); env && *env) {
      try {
        n = std::stoi(env);
      } catch (const std::exception&) {
        n = 0;
      }
      require(n > 0, std::string("MOE_THREADS must be a positive integer, got '") + env + "'");
    } else {
      n = omp_get_max_threads();
    }
  }
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int thread_count() {
  return omp_get_max_threads();
}

}  // namespace moe
