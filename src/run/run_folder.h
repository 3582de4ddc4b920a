#pragma once
// The run folder a `moe train` process writes, and the lock that makes it the only writer.
//
// Lock: <dir>/run.lock, held with flock(LOCK_EX) for as long as the process uses the folder
// (the kernel drops it when the process dies, however it dies); the file holds the holder's
// process id so that a refused writer can name it.
//
// A fresh run never makes an existing run unloadable:
// - into a new or empty folder, it writes there; a run that fails before its first step
//   removes what it made (discard());
// - a folder holding a checkpoint (trainer_state.json) is refused unless `force`; then the new
//   run is built beside it in "<dir>.replacing" and swapped in with one atomic exchange of
//   the two folders right after its first checkpoint, after which the old run is removed;
// - a folder with files a run writes but no checkpoint (a start killed before its first save)
//   is cleared and reused; a folder with anything else in it is refused.
// A stale "<dir>.replacing" (a --force run killed before or after its swap) is removed by the
// next writer of <dir>.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moe {

class RunLock {
 public:
  // Locks <dir>/run.lock; throws Error naming the holder's process id when another process
  // holds it.
  static RunLock acquire(const std::string& dir);
  // As acquire(), but returns nullopt instead of throwing when another process holds the lock
  // or the folder cannot take a lock file (read-only).
  static std::optional<RunLock> try_acquire(const std::string& dir);

  RunLock(RunLock&& other) noexcept;
  RunLock& operator=(RunLock&& other) noexcept;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock();

 private:
  explicit RunLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

inline constexpr const char* kRunLockFile = "run.lock";

// Whether `dir` holds a committed checkpoint.
bool holds_checkpoint(const std::string& dir);

// Throws Error unless `dir` is a folder with a config.json: the one message every command that
// reads a run folder gives for a wrong path ("'x' is not a run folder (no config.json): ...").
void require_run_folder(const std::string& dir);

class RunFolder {
 public:
  // A fresh run into `out` (see above). Throws Error (one line naming --resume and --force when
  // `out` holds a run and `force` is off).
  static RunFolder open_fresh(const std::string& out, bool force);
  // The run in `dir`, locked, with a stale "<dir>.replacing" removed; Error when `dir` holds no
  // checkpoint. (Both take "runs/x/" as "runs/x".)
  static RunFolder open_existing(const std::string& dir);

  // Where the run's files go now: "<out>.replacing" until a --force run's first checkpoint,
  // else `out`.
  const std::string& dir() const { return dir_; }
  // Call after every checkpoint: the first one of a --force run swaps it into place.
  void checkpoint_saved();
  // A fresh run that failed before its first step: removes what it made.
  void discard();

  // The lock, handed to whoever uses the folder after training (the CLI's summary and sample).
  std::shared_ptr<RunLock> lock() const { return lock_; }

 private:
  RunFolder(std::string out, std::string dir, std::shared_ptr<RunLock> lock)
      : out_(std::move(out)), dir_(std::move(dir)), lock_(std::move(lock)) {}
  std::string out_, dir_;
  std::shared_ptr<RunLock> lock_;     // on dir_
  std::optional<RunLock> replaced_;   // --force: the old run's lock until the swap
  std::vector<std::string> created_;  // folders open_fresh made, innermost (`out`) first
};

}  // namespace moe
