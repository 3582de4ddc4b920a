#pragma once
// Watchdog: ends this process when one collective call waits longer than a limit. mpirun
// reports a rank that dies and ends the job, but a rank that hangs (stopped, deadlocked) leaves
// the others waiting in their next collective forever, and MPI has no timeout for that. With
// the watchdog every waiting rank gives up after the limit, saying so, and its exit makes
// mpirun end the job; the last committed checkpoint stays as it was.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace moe {

class Watchdog {
 public:
  // limit_seconds <= 0: no watching (no thread).
  Watchdog(int rank, double limit_seconds);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // One collective call, watched from construction to destruction.
  class Call {
   public:
    explicit Call(Watchdog& watchdog);
    ~Call();
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

   private:
    Watchdog& watchdog_;
  };

  // The limit from MOE_MPI_TIMEOUT (seconds; 0 = off), else kDefaultLimit.
  static double limit_from_environment();
  static constexpr double kDefaultLimit = 600;  // a root's long checkpoint write fits

 private:
  void watch();

  int rank_;
  double limit_;
  std::atomic<int64_t> call_started_ns_{0};  // 0: not inside a call
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace moe
