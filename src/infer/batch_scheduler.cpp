#include "infer/batch_scheduler.h"

#include <algorithm>
#include <cmath>
#include <exception>

#include "tensor/error.h"
#include "tensor/rng.h"

namespace moe {
namespace {

// Bytes of keys and values a decode step's attention reads for `cache`: every position
// filled, in every block (the cache is fp32, [capacity, KV hd] per block for each).
int64_t kv_bytes_read(const KvCache& cache) {
  if (cache.capacity == 0) return 0;
  int64_t values_per_position = 0;
  for (size_t b = 0; b < cache.keys.size(); ++b)
    values_per_position += (cache.keys[b].numel() + cache.values[b].numel()) / cache.capacity;
  return values_per_position * cache.length * static_cast<int64_t>(sizeof(float));
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::None:
      return "none";
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Failed:
      return "failed";
  }
  return "none";
}

// ---- GenerationStream ----

bool GenerationStream::wait(std::vector<TokenEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  ready_.wait_for(lock, timeout, [&] { return !events_.empty() || reason_ != FinishReason::None; });
  for (TokenEvent& e : events_) out.push_back(std::move(e));
  events_.clear();
  return reason_ != FinishReason::None;
}

FinishReason GenerationStream::finish_reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

std::string GenerationStream::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

int64_t GenerationStream::generated_tokens() const {
  std::lock_guard lock(mutex_);
  return emitted_;
}

void GenerationStream::push(TokenEvent event) {
  {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
    ++emitted_;
  }
  ready_.notify_all();
}

void GenerationStream::finish(FinishReason reason, std::string error) {
  {
    std::lock_guard lock(mutex_);
    if (reason_ != FinishReason::None) return;
    reason_ = reason;
    error_ = std::move(error);
  }
  ready_.notify_all();
}

// ---- BatchScheduler ----

struct BatchScheduler::Slot {
  BatchRequest request;
  std::shared_ptr<GenerationStream> stream;
  KvCache cache;
  Rng rng;
  std::vector<std::pair<float, int32_t>> scratch;  // the sampler's
  int64_t prefilled = 0;                           // prompt tokens fed
  int64_t generated = 0;
  int32_t next = -1;  // the token the next decode step feeds
  bool done = false;
  bool prefilling() const { return prefilled < static_cast<int64_t>(request.prompt.size()); }
};

BatchScheduler::BatchScheduler(InferenceModel& model, SchedulerOptions options)
    : model_(model), options_(options), started_(std::chrono::steady_clock::now()) {
  const ModelConfig& c = model.config();
  context_ = options.context > 0 ? options.context : c.max_position_embeddings;
  require(options.parallel >= 1, "the scheduler needs at least one slot");
  require(options.prefill_chunk >= 1, "the prefill chunk must hold at least one token");
  require(options.max_queue >= 0, "the queue length must be >= 0");
  if (context_ > c.max_position_embeddings)
    throw Error("a context of " + std::to_string(context_) +
                " positions is more than the model's " + std::to_string(c.max_position_embeddings));
  totals_.parallel = options.parallel;
  const int64_t experts = c.moe ? c.moe->num_experts : 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.moe && c.is_moe_layer(l)) totals_.moe_layers.push_back(l);
  const size_t layers = totals_.moe_layers.size();
  totals_.expert_load_total.assign(layers, std::vector<int64_t>(size_t(experts), 0));
  totals_.expert_load_minute = totals_.expert_load_total;
  step_load_.assign(layers * size_t(experts), 0);
  for (Second& s : minute_) s.load.assign(step_load_.size(), 0);
}

BatchScheduler::~BatchScheduler() {
  stop();
}

std::shared_ptr<GenerationStream> BatchScheduler::submit(BatchRequest request) {
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  if (prompt == 0) throw Error("the prompt holds no token");
  if (prompt > context_)
    throw Error("the prompt has " + std::to_string(prompt) + " tokens, more than the context of " +
                std::to_string(context_));
  if (request.max_tokens < 1) throw Error("max_tokens must be at least 1");
  const int64_t V = model_.config().vocab_size;
  for (int32_t t : request.prompt)
    if (t < 0 || t >= V)
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                  std::to_string(V) + ")");
  auto stream = std::make_shared<GenerationStream>();
  stream->prompt_tokens_ = prompt;
  {
    std::lock_guard lock(mutex_);
    if (closed_ || static_cast<int64_t>(queue_.size()) >= options_.max_queue) return nullptr;
    queue_.emplace_back(std::move(request), stream);
    totals_.queued = static_cast<int64_t>(queue_.size());
  }
  wake_.notify_all();
  return stream;
}

void BatchScheduler::start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
}

void BatchScheduler::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
}

void BatchScheduler::cancel_all() {
  {
    std::lock_guard lock(mutex_);
    for (auto& [request, stream] : queue_) stream->cancel();
    cancel_running_ = true;
  }
  wake_.notify_all();
}

void BatchScheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    stopping_ = true;
  }
  cancel_all();
  if (thread_.joinable()) thread_.join();
}

bool BatchScheduler::idle() const {
  std::lock_guard lock(mutex_);
  return queue_.empty() && totals_.active == 0;
}

void BatchScheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(
          lock, [&] { return stopping_ || cancel_running_ || !queue_.empty() || !slots_.empty(); });
      if (stopping_ && queue_.empty() && slots_.empty()) return;
    }
    if (step() && options_.step_pause.count() > 0) std::this_thread::sleep_for(options_.step_pause);
  }
}

bool BatchScheduler::step() {
  {
    std::lock_guard lock(mutex_);
    if (cancel_running_) {
      for (auto& slot : slots_) slot->stream->cancel();
      cancel_running_ = false;
    }
  }
  release_finished();
  admit();
  if (slots_.empty()) return false;
  std::vector<Slot*> decoding, prefilling;
  for (auto& slot : slots_) (slot->prefilling() ? prefilling : decoding).push_back(slot.get());
  try {
    if (!decoding.empty()) decode(decoding);
    if (!prefilling.empty()) prefill(prefilling);
  } catch (const std::exception& e) {
    // The engine refused (it should not: submit() checked the request). Every running request
    // ends with the reason; the server goes on with the next ones.
    for (auto& slot : slots_) {
      slot->stream->finish(FinishReason::Failed, e.what());
      slot->done = true;
    }
  }
  release_finished();
  return true;
}

void BatchScheduler::admit() {
  std::vector<std::pair<BatchRequest, std::shared_ptr<GenerationStream>>> admitted;
  {
    std::lock_guard lock(mutex_);
    // Requests cancelled while queued (their client left) never take a slot.
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->second->cancelled()) {
        it->second->finish(FinishReason::Cancelled);
        ++totals_.finished[size_t(FinishReason::Cancelled)];
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    while (!queue_.empty() &&
           static_cast<int64_t>(slots_.size() + admitted.size()) < options_.parallel) {
      admitted.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    totals_.queued = static_cast<int64_t>(queue_.size());
    totals_.active = static_cast<int64_t>(slots_.size() + admitted.size());
  }
  for (auto& [request, stream] : admitted) {
    auto slot = std::make_unique<Slot>();
    const int64_t prompt = static_cast<int64_t>(request.prompt.size());
    // The positions this request can fill: its prompt and max_tokens (the last one is never
    // fed back), at most the context.
    slot->cache = model_.make_cache(std::min(prompt + request.max_tokens, context_));
    slot->rng = Rng(request.seed);
    slot->request = std::move(request);
    slot->stream = std::move(stream);
    slots_.push_back(std::move(slot));
  }
}

void BatchScheduler::release_finished() {
  int64_t released = 0;
  std::array<int64_t, 5> ended{};
  for (auto& slot : slots_) {
    if (!slot->done && slot->stream->cancelled()) {
      slot->stream->finish(FinishReason::Cancelled);
      slot->done = true;
    }
    if (slot->done) {
      ++ended[size_t(slot->stream->finish_reason())];
      ++released;
    }
  }
  if (released == 0) return;
  std::erase_if(slots_, [](const std::unique_ptr<Slot>& s) { return s->done; });
  std::lock_guard lock(mutex_);
  for (size_t r = 0; r < ended.size(); ++r) totals_.finished[r] += ended[r];
  totals_.active = static_cast<int64_t>(slots_.size());
}

void BatchScheduler::decode(std::vector<Slot*>& decoding) {
  const int64_t B = static_cast<int64_t>(decoding.size()), V = model_.config().vocab_size;
  std::vector<int32_t> tokens(size_t(B), 0);
  std::vector<KvCache*> caches(size_t(B), nullptr);
  for (int64_t i = 0; i < B; ++i) {
    tokens[size_t(i)] = decoding[size_t(i)]->next;
    caches[size_t(i)] = &decoding[size_t(i)]->cache;
  }
  logits_.resize(size_t(B * V));
  const auto start = std::chrono::steady_clock::now();
  model_.decode_batch(tokens, caches, logits_);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int64_t kv_bytes = 0;
  for (const KvCache* cache : caches) kv_bytes += kv_bytes_read(*cache);
  {
    std::lock_guard lock(mutex_);
    totals_.decode_weight_bytes += model_.weight_bytes_read();
    totals_.decode_kv_bytes += kv_bytes;
    totals_.decode_seconds += seconds;
  }
  count_routes(B, true);
  for (int64_t i = 0; i < B; ++i)
    emit(*decoding[size_t(i)], std::span<const float>(logits_).subspan(size_t(i * V), size_t(V)),
         i);
}

void BatchScheduler::prefill(std::vector<Slot*>& prefilling) {
  const int64_t V = model_.config().vocab_size;
  logits_.resize(std::max(logits_.size(), size_t(V)));
  int64_t budget = options_.prefill_chunk;
  for (Slot* slot : prefilling) {
    const std::span<const int32_t> prompt(slot->request.prompt);
    // Chunks start at multiples of prefill_chunk whatever else runs: the same forwards, the
    // same bits. The first chunk of a step always runs; a later one only when it fits whole.
    while (slot->prefilling()) {
      const int64_t n =
          std::min(options_.prefill_chunk, static_cast<int64_t>(prompt.size()) - slot->prefilled);
      if (n > budget && budget < options_.prefill_chunk) return;
      model_.forward(prompt.subspan(size_t(slot->prefilled), size_t(n)), slot->cache,
                     std::span<float>(logits_).first(size_t(V)));
      slot->prefilled += n;
      budget -= n;
      count_routes(n, false);
      {
        std::lock_guard lock(mutex_);
        totals_.prompt_tokens += n;
      }
      if (!slot->prefilling()) emit(*slot, std::span<const float>(logits_).first(size_t(V)), n - 1);
      if (budget <= 0) return;
    }
  }
}

void BatchScheduler::emit(Slot& slot, std::span<const float> logits, int64_t row) {
  const BatchRequest& r = slot.request;
  const int32_t token = sample_token(logits, r.sampling, slot.rng, slot.scratch);
  if (std::find(r.stop_tokens.begin(), r.stop_tokens.end(), token) != r.stop_tokens.end()) {
    slot.stream->finish(FinishReason::Stop);
    slot.done = true;
    return;
  }
  TokenEvent event;
  event.token = token;
  if (r.top_logprobs >= 0) {
    // log-softmax of the model's logits (before temperature): max, then log of the sum.
    const float top = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float v : logits) sum += std::exp(double(v) - top);
    const double log_z = top + std::log(sum);
    event.logprob = float(logits[size_t(token)] - log_z);
    const int64_t n = std::min<int64_t>(r.top_logprobs, int64_t(logits.size()));
    if (n > 0) {
      std::vector<int32_t> ids(logits.size());
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
      std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
        return logits[size_t(a)] > logits[size_t(b)] ||
               (logits[size_t(a)] == logits[size_t(b)] && a < b);
      });
      for (int64_t i = 0; i < n; ++i)
        event.top.emplace_back(ids[size_t(i)], float(logits[size_t(ids[size_t(i)])] - log_z));
    }
  }
  if (r.routes) {
    for (size_t m = 0; m < totals_.moe_layers.size(); ++m) {
      const RoutingPlan& plan = model_.last_routes(int64_t(m));
      std::vector<int32_t>& experts = event.experts.emplace_back();
      for (int64_t a = 0; a < plan.assignments(); ++a)
        if (plan.token[size_t(a)] == row) experts.push_back(plan.expert[size_t(a)]);
    }
  }
  slot.stream->push(std::move(event));
  ++slot.generated;
  {
    std::lock_guard lock(mutex_);
    ++totals_.generated_tokens;
    ++this_second().tokens;
  }
  if (slot.generated >= r.max_tokens || slot.cache.length >= slot.cache.capacity) {
    // max_tokens drawn, or no room left to feed the token back: OpenAI's "length".
    slot.stream->finish(FinishReason::Length);
    slot.done = true;
    return;
  }
  slot.next = token;
}

BatchScheduler::Second& BatchScheduler::this_second() {
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_)
          .count();
  Second& s = minute_[size_t(now % int64_t(minute_.size()))];
  if (s.stamp != now) {
    s.stamp = now;
    s.tokens = 0;
    std::fill(s.load.begin(), s.load.end(), 0);
  }
  return s;
}

void BatchScheduler::count_routes(int64_t rows, bool decode_step) {
  std::fill(step_load_.begin(), step_load_.end(), 0);
  const size_t layers = totals_.moe_layers.size();
  if (layers == 0 && !decode_step) return;
  const size_t E = layers ? step_load_.size() / layers : 0;
  int64_t distinct = 0;
  for (size_t m = 0; m < layers; ++m) {
    const RoutingPlan& plan = model_.last_routes(int64_t(m));
    for (int64_t a = 0; a < plan.assignments(); ++a) {
      const int32_t e = plan.expert[size_t(a)];
      if (e >= 0 && size_t(e) < E) ++step_load_[m * E + size_t(e)];
    }
    for (size_t e = 0; e < E; ++e) distinct += step_load_[m * E + e] > 0;
  }
  std::lock_guard lock(mutex_);
  if (const ExpertCache* cache = model_.expert_cache()) {
    const ExpertCacheStats c = cache->stats();
    totals_.expert_cache = true;
    totals_.cache_hits = c.hits;
    totals_.cache_misses = c.misses;
  }
  Second& second = this_second();
  for (size_t m = 0; m < layers; ++m)
    for (size_t e = 0; e < E; ++e) {
      totals_.expert_load_total[m][e] += step_load_[m * E + e];
      second.load[m * E + e] += step_load_[m * E + e];
    }
  if (decode_step) {
    ++totals_.decode_steps;
    totals_.decode_rows += rows;
    totals_.distinct_experts += distinct;
  }
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard lock(mutex_);
  SchedulerStats s = totals_;
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_)
          .count();
  const size_t layers = s.moe_layers.size();
  const size_t E = layers ? step_load_.size() / layers : 0;
  int64_t tokens = 0;
  for (auto& row : s.expert_load_minute) std::fill(row.begin(), row.end(), 0);
  for (const Second& second : minute_) {
    if (second.stamp < 0 || now - second.stamp >= int64_t(minute_.size())) continue;
    tokens += second.tokens;
    for (size_t m = 0; m < layers; ++m)
      for (size_t e = 0; e < E; ++e) s.expert_load_minute[m][e] += second.load[m * E + e];
  }
  s.tokens_per_second =
      double(tokens) / double(std::min<int64_t>(now + 1, int64_t(minute_.size())));
  return s;
}

}  // namespace moe
