#pragma once
// What a run shows and honours before its first step: the preparation phases (hashing,
// reading and tokenising the corpus, training the tokenizer, checking the token cache) get a
// progress line once they have lasted a second, and Ctrl-C stops them from the first second.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "tensor/error.h"

namespace moe {

// SIGINT / SIGTERM for the life of a run: the first asks it to stop (preparation gives up,
// the training loop saves and stops), a second ends the process at once.
class StopSignals {
 public:
  StopSignals();   // installs the handlers and clears any earlier request
  ~StopSignals();  // restores the handlers it replaced
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{};
};

// 0, or the signal that asked the run to stop.
int stop_signal();

// A run stopped by SIGINT / SIGTERM before its first step; the CLI exits 128 + signal.
class Interrupted : public Error {
 public:
  explicit Interrupted(int signal);
  int signal;
};

// Throws Interrupted when a stop was asked for.
void throw_if_stopped();

// One phase's progress line on stderr, shown once the phase has lasted a second:
//   "tokenizing the corpus: 1234 of 5678 documents (21%), 3 s"
// redrawn in place on a terminal; elsewhere one line when shown and one every 10 s. The end
// ("..., done in 4.2 s") is printed only for a line that was shown. advance() may be called
// from any thread.
class PhaseProgress {
 public:
  // total 0: no count, only the time; quiet: nothing at all.
  PhaseProgress(std::string what, int64_t total = 0, std::string unit = "", bool quiet = false);
  ~PhaseProgress();
  PhaseProgress(const PhaseProgress&) = delete;
  PhaseProgress& operator=(const PhaseProgress&) = delete;

  void advance(int64_t n = 1) { done_.fetch_add(n, std::memory_order_relaxed); }

 private:
  std::string line(double seconds) const;
  void tick();

  std::string what_, unit_;
  int64_t total_;
  bool tty_;
  std::atomic<int64_t> done_{0};
  std::chrono::steady_clock::time_point start_;
  bool shown_ = false;
  bool stop_noted_ = false;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool finished_ = false;
  std::thread ticker_;
};

}  // namespace moe
