#include "parallel/watchdog.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moe {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

double Watchdog::limit_from_environment() {
  const char* text = std::getenv("MOE_MPI_TIMEOUT");
  if (!text || !*text) return kDefaultLimit;
  char* end = nullptr;
  const double limit = std::strtod(text, &end);
  if (*end != '\0' || !(limit >= 0)) {
    std::fprintf(stderr,
                 "moe: warning: MOE_MPI_TIMEOUT '%s' is not a number of seconds; using %g\n", text,
                 kDefaultLimit);
    return kDefaultLimit;
  }
  return limit;
}

Watchdog::Watchdog(int rank, double limit_seconds) : rank_(rank), limit_(limit_seconds) {
  if (limit_ > 0) thread_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

Watchdog::Call::Call(Watchdog& watchdog) : watchdog_(watchdog) {
  watchdog_.call_started_ns_.store(now_ns());
}

Watchdog::Call::~Call() {
  watchdog_.call_started_ns_.store(0);
}

void Watchdog::watch() {
  // Checks ten times per limit (at least every second), so it fires within 1.1 limits.
  const auto period = std::chrono::duration<double>(std::min(1.0, limit_ / 10));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, period, [this] { return stop_; })) {
    const int64_t started = call_started_ns_.load();
    if (started == 0) continue;
    const double waited = double(now_ns() - started) * 1e-9;
    if (waited < limit_) continue;
    std::fprintf(stderr,
                 "moe: rank %d: error: waited %.0f s in one collective call for the other ranks "
                 "(one of them hung or was stopped); ending the job (limit: MOE_MPI_TIMEOUT=%g)\n",
                 rank_, waited, limit_);
    std::fflush(stderr);
    std::_Exit(3);  // MPI may not be called from this thread; mpirun ends the others
  }
}

}  // namespace moe
