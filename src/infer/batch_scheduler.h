#pragma once
// Continuous batching over one InferenceModel, for a server's concurrent requests (no HTTP
// here: the server hands in token ids and reads token events back).
//
// One decode thread owns the model. Up to `parallel` requests hold a slot each: their own
// KvCache, sampler and Rng seeded from the request's seed. A scheduling step
//   1. drops cancelled requests (their slot is free for the next step) and admits queued ones
//      into free slots, oldest first;
//   2. runs one decode_batch for every slot past its prompt (one read of each chosen expert
//      for all rows, once the engine batches) and samples each row's next token;
//   3. prefills waiting prompts, at most `prefill_chunk` prompt tokens in all per step, the
//      oldest first, so a long prompt does not stall the others' decoding.
// A slot's tokens depend only on its request: prompt chunks are cut at fixed offsets, and
// each decode row gives what forward() alone gives, so a request yields the same tokens alone
// or beside others at temperature 0 or with a fixed seed.
//
// The decode thread never blocks on a consumer: each request's events go into its own
// GenerationStream, which the consumer (an HTTP connection) drains at its own pace.
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "infer/generate.h"
#include "infer/inference_model.h"

namespace moe {

struct BatchRequest {
  std::vector<int32_t> prompt;  // at least one token
  int64_t max_tokens = 16;
  SamplingOptions sampling;
  uint64_t seed = 0;
  std::vector<int32_t> stop_tokens;  // end-of-text ids: the request ends, the token not emitted
  int64_t top_logprobs = -1;         // < 0: no log-probabilities; else the chosen token's and
                                     // that many most likely alternatives
  bool routes = false;               // each token's experts per MoE layer
};

enum class FinishReason { None, Stop, Length, Cancelled, Failed };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", ...

struct TokenEvent {
  int32_t token = 0;
  float logprob = 0;  // log-softmax of the logits it was drawn from (with top_logprobs >= 0)
  std::vector<std::pair<int32_t, float>> top;  // the most likely tokens and their logprobs
  // With routes: per MoE layer, the experts of the forward whose logits gave this token.
  std::vector<std::vector<int32_t>> experts;
};

// One request's output, shared between the decode thread (writer) and its consumer.
class GenerationStream {
 public:
  // Moves the events that arrived into `out` (appending), waiting up to `timeout` when there
  // are none. Returns true once the request has finished and every event was handed out.
  bool wait(std::vector<TokenEvent>& out, std::chrono::milliseconds timeout);
  // Asks the scheduler to end the request; its slot is freed at the next step.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  FinishReason finish_reason() const;
  std::string error() const;  // why, for FinishReason::Failed
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t generated_tokens() const;  // events emitted so far

 private:
  friend class BatchScheduler;
  void push(TokenEvent event);
  void finish(FinishReason reason, std::string error = {});

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<TokenEvent> events_;
  FinishReason reason_ = FinishReason::None;
  std::string error_;
  int64_t emitted_ = 0;
  int64_t prompt_tokens_ = 0;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  int64_t parallel = 4;        // slots decoding together
  int64_t context = 0;         // positions per slot, prompt and generated; 0 = the model's
  int64_t prefill_chunk = 64;  // prompt tokens prefilled per step, over every waiting prompt
  int64_t max_queue = 64;      // requests waiting for a slot before submit() refuses
  // A pause after every step that did work, in the decode thread: tests make a tiny model as
  // slow as a large one with it, to hold slots and fill the queue.
  std::chrono::milliseconds step_pause{0};
};

// Figures for /metrics, taken under the scheduler's lock.
struct SchedulerStats {
  int64_t parallel = 0, active = 0, queued = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;  // since start
  int64_t decode_steps = 0, decode_rows = 0;        // rows: sum of the batch sizes
  int64_t distinct_experts = 0;                     // sum over decode steps and MoE layers
  double tokens_per_second = 0;                     // generated, over the last minute
  bool expert_cache = false;                        // the model reads experts from storage
  int64_t cache_hits = 0, cache_misses = 0;         // its lookups
  std::array<int64_t, 5> finished{};                // by FinishReason
  std::vector<int64_t> moe_layers;                  // block index of each MoE layer
  // [MoE layer][expert]: assignments of every forward's tokens, prompts included.
  std::vector<std::vector<int64_t>> expert_load_total, expert_load_minute;
  // What the decode steps read and took, summed over them (`moe bench serve` bounds a step
  // by its bytes): weight bytes as the engine counts them (dense once, each distinct expert
  // once), the keys and values each row's attention read, and the seconds in decode_batch.
  int64_t decode_weight_bytes = 0, decode_kv_bytes = 0;
  double decode_seconds = 0;
};

class BatchScheduler {
 public:
  // `model` must outlive the scheduler and be used by nothing else while it runs.
  BatchScheduler(InferenceModel& model, SchedulerOptions options);
  ~BatchScheduler();  // stop()
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Queues a request. nullptr when the queue is full or the scheduler is closed (the caller
  // answers "busy"). Throws Error for a request no slot can run: an empty prompt, a prompt
  // longer than the context, an id outside the vocabulary, max_tokens < 1.
  std::shared_ptr<GenerationStream> submit(BatchRequest request);

  void start();       // the decode thread, looping over step()
  void close();       // refuses new requests; queued and running ones go on
  void cancel_all();  // every queued and running request ends Cancelled at the next step
  void stop();        // cancel_all(), then joins the decode thread
  bool idle() const;  // nothing queued or running
  // One scheduling step on the calling thread (the decode thread's loop body; tests call it
  // directly without start()). Returns false when there was nothing to do.
  bool step();

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }
  int64_t context() const { return context_; }

 private:
  struct Slot;
  void admit();
  void decode(std::vector<Slot*>& decoding);
  void prefill(std::vector<Slot*>& prefilling);
  // Samples slot's next token from `logits` ([V]), emits it, and ends the request where due.
  void emit(Slot& slot, std::span<const float> logits, int64_t row);
  void release_finished();
  // Adds the last forward's routes (its `rows` tokens) to the expert loads.
  void count_routes(int64_t rows, bool decode_step);
  void loop();

  InferenceModel& model_;
  SchedulerOptions options_;
  int64_t context_ = 0;
  std::vector<std::unique_ptr<Slot>> slots_;  // the running requests, oldest first

  mutable std::mutex mutex_;  // guards queue_, closed_, stopping_ and the figures
  std::condition_variable wake_;
  std::deque<std::pair<BatchRequest, std::shared_ptr<GenerationStream>>> queue_;
  bool closed_ = false, stopping_ = false;
  bool cancel_running_ = false;  // cancel_all() asks the decode thread to end every slot
  std::thread thread_;

  // Figures (under mutex_).
  SchedulerStats totals_;
  struct Second {
    int64_t stamp = -1;  // whole seconds since start
    int64_t tokens = 0;
    std::vector<int64_t> load;  // [MoE layers * experts]
  };
  std::array<Second, 60> minute_;
  std::chrono::steady_clock::time_point started_;
  Second& this_second();
  std::vector<int64_t> step_load_;  // scratch [MoE layers * experts]
  std::vector<float> logits_;       // [parallel, V]
};

}  // namespace moe
