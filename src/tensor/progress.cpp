#include "tensor/progress.h"

#include <unistd.h>

#include <cstdio>

namespace moe {
namespace {

std::atomic<int> g_stop_signal{0};

// The first SIGINT / SIGTERM asks the run to stop; a second one ends the process at once
// (every file a run writes is written atomically, so the folders stay consistent).
extern "C" void on_stop_signal(int signal) {
  if (g_stop_signal.exchange(signal) != 0) {
    std::signal(signal, SIG_DFL);
    std::raise(signal);
  }
}

constexpr double kShowAfterSeconds = 1.0;
constexpr double kPlainEverySeconds = 10.0;

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

int stop_signal() {
  return g_stop_signal.load();
}

Interrupted::Interrupted(int s)
    : Error(std::string("interrupted by ") + (s == SIGTERM ? "SIGTERM" : "Ctrl-C") +
            " before the first step; nothing was saved"),
      signal(s) {}

void throw_if_stopped() {
  if (const int s = stop_signal()) throw Interrupted(s);
}

PhaseProgress::PhaseProgress(std::string what, int64_t total, std::string unit, bool quiet)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      tty_(::isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()) {
  if (!quiet) ticker_ = std::thread([this] { tick(); });
}

PhaseProgress::~PhaseProgress() {
  if (!ticker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
  }
  wake_.notify_all();
  ticker_.join();
}

std::string PhaseProgress::line(double seconds) const {
  char text[160];
  const int64_t done = done_.load(std::memory_order_relaxed);
  if (total_ > 0)
    std::snprintf(text, sizeof text, "%s: %lld of %lld %s (%.0f%%), %.0f s", what_.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total_), unit_.c_str(),
                  100.0 * double(done) / double(total_), seconds);
  else
    std::snprintf(text, sizeof text, "%s: %.0f s", what_.c_str(), seconds);
  return text;
}

void PhaseProgress::tick() {
  std::unique_lock<std::mutex> lock(mutex_);
  double last_plain = 0;
  for (;;) {
    const bool finished =
        wake_.wait_for(lock, std::chrono::milliseconds(250), [this] { return finished_; });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (finished) {
      if (!shown_) return;
      char end[64];
      std::snprintf(end, sizeof end, ", done in %.1f s", seconds);
      if (tty_)
        std::fprintf(stderr, "\r%s: done in %.1f s\033[K\n", what_.c_str(), seconds);
      else
        std::fprintf(stderr, "%s%s\n", what_.c_str(), end);
      return;
    }
    // A phase that cannot stop half-way (training the tokenizer) ends first: say so at once.
    if (stop_signal() != 0 && !stop_noted_) {
      std::fprintf(stderr, "%s%s: stopping when this phase ends (Ctrl-C again ends at once)\n",
                   tty_ && shown_ ? "\n" : "", what_.c_str());
      stop_noted_ = true;
    }
    if (seconds < kShowAfterSeconds) continue;
    if (tty_) {
      std::fprintf(stderr, "\r%s\033[K", line(seconds).c_str());
    } else if (!shown_ || seconds - last_plain >= kPlainEverySeconds) {
      std::fprintf(stderr, "%s\n", line(seconds).c_str());
      last_plain = seconds;
    }
    shown_ = true;
  }
}

}  // namespace moe
