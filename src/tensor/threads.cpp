#include "tensor/threads.h"

#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <string>

#include "tensor/error.h"

namespace moe {

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

int thread_count() { return omp_get_max_threads(); }

}  // namespace moe
