// BatchScheduler (infer/batch_scheduler.h), the continuous batching under `moe serve`, on a
// tiny random MoE model run by the inference engine:
//   - a request gives the same tokens alone or beside others (greedy and seeded sampling,
//     prompts longer than a prefill chunk, requests joining mid-way), and a short greedy one
//     the tokens of the single-prompt generate();
//   - decode steps take every decoding slot at once (rows per step > 1);
//   - a cancelled request frees its slot for the next one within one step; a full queue
//     refuses; bad requests are Errors; stop tokens, max_tokens and a full context end a
//     request with their reasons;
//   - logprobs and routes have their shapes; the decode thread serves concurrent submitters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "engine_util.h"
#include "infer/batch_scheduler.h"
#include "infer/generate.h"
#include "infer/inference_model.h"
#include "model/transformer.h"
#include "tensor/error.h"
#include "tensor/rng.h"

namespace moe {
namespace {

constexpr int64_t kVocab = 64;

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 96;
  MoeConfig m;
  m.hidden_size = 32;
  m.moe_intermediate_size = 16;
  m.num_experts = 6;
  m.top_k = 2;
  c.moe = m;
  c.validate();
  return c;
}

// One random model and its engine, shared by the tests (built once).
struct Engine {
  ParamStore store;
  std::unique_ptr<Transformer> transformer;
  OwnedWeights weights;
  std::unique_ptr<InferenceModel> model;
  Engine() {
    const ModelConfig config = tiny_config();
    transformer = std::make_unique<Transformer>(config, store, 1);
    store.allocate();
    Rng rng(11);
    rng.fill_normal(store.values().span(), 0.0f, 0.3f);
    weights = test::engine_weights(*transformer, store);
    model = std::make_unique<InferenceModel>(config, HfArch::Mixtral, weights);
  }
};

InferenceModel& engine() {
  static Engine e;
  return *e.model;
}

std::vector<int32_t> random_prompt(int64_t length, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(length));
  for (int32_t& t : ids) t = static_cast<int32_t>(rng.next_u64() % kVocab);
  return ids;
}

BatchRequest request(int64_t prompt_length, uint64_t prompt_seed, int64_t max_tokens,
                     float temperature, uint64_t seed) {
  BatchRequest r;
  r.prompt = random_prompt(prompt_length, prompt_seed);
  r.max_tokens = max_tokens;
  r.sampling = {temperature, 0, 1.0f};
  r.seed = seed;
  return r;
}

// The requests of a mixed batch: greedy and seeded, prompts shorter and longer than a chunk.
std::vector<BatchRequest> mixed_requests() {
  return {request(5, 1, 12, 0.0f, 0), request(40, 2, 9, 0.9f, 7),  request(3, 3, 15, 1.0f, 8),
          request(20, 4, 6, 0.0f, 0), request(33, 5, 10, 0.7f, 9), request(1, 6, 11, 1.2f, 10)};
}

std::vector<int32_t> tokens_of(std::vector<TokenEvent>& events) {
  std::vector<int32_t> ids;
  for (const TokenEvent& e : events) ids.push_back(e.token);
  return ids;
}

// Steps `s` on this thread until nothing is queued or running.
void run_to_idle(BatchScheduler& s) {
  for (int i = 0; i < 10000 && !s.idle(); ++i) s.step();
  ASSERT_TRUE(s.idle());
}

std::vector<int32_t> drain(GenerationStream& stream) {
  std::vector<TokenEvent> events;
  EXPECT_TRUE(stream.wait(events, std::chrono::milliseconds(0)));
  return tokens_of(events);
}

std::vector<int32_t> alone(const BatchRequest& r) {
  BatchScheduler s(engine(), {1, 0, 16, 8});
  auto stream = s.submit(r);
  run_to_idle(s);
  return drain(*stream);
}

TEST(BatchScheduler, SameTokensAloneOrBesideOthers) {
  const std::vector<BatchRequest> requests = mixed_requests();
  std::vector<std::vector<int32_t>> want;
  for (const BatchRequest& r : requests) {
    want.push_back(alone(r));
    EXPECT_EQ(static_cast<int64_t>(want.back().size()), r.max_tokens);
  }
  // All at once on 4 slots (two wait for a slot), then joining one every few steps.
  for (int stagger : {0, 3}) {
    BatchScheduler s(engine(), {4, 0, 16, 8});
    std::vector<std::shared_ptr<GenerationStream>> streams;
    for (const BatchRequest& r : requests) {
      streams.push_back(s.submit(r));
      for (int i = 0; i < stagger; ++i) s.step();
    }
    run_to_idle(s);
    for (size_t i = 0; i < requests.size(); ++i)
      EXPECT_EQ(drain(*streams[i]), want[i]) << "request " << i << ", stagger " << stagger;
    const SchedulerStats stats = s.stats();
    EXPECT_GT(stats.decode_rows, stats.decode_steps) << "decode steps never batched rows";
    EXPECT_EQ(stats.active, 0);
    EXPECT_EQ(stats.finished[size_t(FinishReason::Length)], int64_t(requests.size()));
  }
}

// The figures `moe bench serve` bounds a step by: alone, each decode step reads what one
// token's forward reads and its cache so far; beside others, at least that and at most one
// token's bytes per row (shared weights read once).
TEST(BatchScheduler, DecodeStepsCountTheBytesTheyRead) {
  const ModelConfig c = tiny_config();
  std::vector<float> logits(static_cast<size_t>(kVocab));
  KvCache cache = engine().make_cache(4);
  const int32_t token = 1;
  engine().forward({&token, 1}, cache, logits);
  const int64_t one_token = engine().weight_bytes_read();
  const int64_t kv_per_position = 2 * c.num_hidden_layers * c.num_key_value_heads *
                                  c.resolved_head_dim() * int64_t(sizeof(float));
  const int64_t prompt = 5, tokens = 7;
  {
    BatchScheduler s(engine(), {1, 0, 16, 8});
    s.submit(request(prompt, 1, tokens, 0.0f, 0));
    run_to_idle(s);
    const SchedulerStats stats = s.stats();
    ASSERT_EQ(stats.decode_steps, tokens - 1);  // the first token comes from the prefill
    EXPECT_EQ(stats.decode_weight_bytes, stats.decode_steps * one_token);
    int64_t positions = 0;  // each step's cache after it: prompt + 1, ..., prompt + tokens - 1
    for (int64_t j = 1; j < tokens; ++j) positions += prompt + j;
    EXPECT_EQ(stats.decode_kv_bytes, positions * kv_per_position);
    EXPECT_GT(stats.decode_seconds, 0.0);
  }
  BatchScheduler s(engine(), {4, 0, 16, 8});
  for (const BatchRequest& r : mixed_requests()) s.submit(r);
  run_to_idle(s);
  const SchedulerStats stats = s.stats();
  EXPECT_GE(stats.decode_weight_bytes, stats.decode_steps * one_token);
  EXPECT_LE(stats.decode_weight_bytes, stats.decode_rows * one_token);
  EXPECT_LT(stats.decode_weight_bytes, stats.decode_rows * one_token) << "no weight was shared";
  EXPECT_LE(stats.distinct_experts,
            stats.decode_steps * int64_t(stats.moe_layers.size()) * c.moe->num_experts);
}

TEST(BatchScheduler, GreedyShortPromptGivesTheTokensOfGenerate) {
  const BatchRequest r = request(7, 21, 10, 0.0f, 0);
  const Generation g = generate(engine(), r.prompt, r.max_tokens, r.sampling, 0, -1);
  EXPECT_EQ(alone(r), g.tokens);
}

TEST(BatchScheduler, CancelFreesTheSlotForTheNextRequestWithinOneStep) {
  BatchScheduler s(engine(), {1, 0, 16, 8});
  auto first = s.submit(request(4, 1, 50, 0.0f, 0));
  auto second = s.submit(request(4, 2, 3, 0.0f, 0));
  for (int i = 0; i < 3; ++i) s.step();
  EXPECT_EQ(s.stats().active, 1);
  EXPECT_EQ(s.stats().queued, 1);
  first->cancel();
  s.step();
  EXPECT_EQ(first->finish_reason(), FinishReason::Cancelled);
  EXPECT_EQ(s.stats().queued, 0);            // the second took the freed slot in that step
  EXPECT_EQ(second->generated_tokens(), 1);  // and prefilled its prompt
  run_to_idle(s);
  EXPECT_EQ(second->finish_reason(), FinishReason::Length);
  EXPECT_EQ(s.stats().finished[size_t(FinishReason::Cancelled)], 1);
}

TEST(BatchScheduler, FullQueueAndClosedSchedulerRefuse) {
  BatchScheduler s(engine(), {1, 0, 16, 1});
  EXPECT_NE(s.submit(request(3, 1, 2, 0.0f, 0)), nullptr);
  EXPECT_EQ(s.submit(request(3, 1, 2, 0.0f, 0)), nullptr);  // one waiting already
  s.step();                                                 // it takes the slot
  EXPECT_NE(s.submit(request(3, 1, 2, 0.0f, 0)), nullptr);
  s.close();
  run_to_idle(s);
  EXPECT_EQ(s.submit(request(3, 1, 2, 0.0f, 0)), nullptr);
}

TEST(BatchScheduler, RefusesRequestsNoSlotCanRun) {
  BatchScheduler s(engine(), {2, 32, 16, 4});
  EXPECT_THROW(s.submit(request(33, 1, 2, 0.0f, 0)), Error);  // longer than --ctx-size
  BatchRequest outside = request(3, 1, 2, 0.0f, 0);
  outside.prompt[1] = kVocab;
  EXPECT_THROW(s.submit(outside), Error);
  EXPECT_THROW(s.submit(BatchRequest{}), Error);  // no prompt
  BatchRequest none = request(3, 1, 0, 0.0f, 0);
  EXPECT_THROW(s.submit(none), Error);
  EXPECT_THROW({ BatchScheduler past(engine(), {2, 97, 16, 4}); }, Error);  // > the model's context
}

TEST(BatchScheduler, EndsAtStopTokenMaxTokensOrAFullContext) {
  const BatchRequest greedy = request(5, 3, 8, 0.0f, 0);
  const std::vector<int32_t> tokens = alone(greedy);
  // The third greedy token as a stop token: two tokens, then "stop".
  BatchRequest stopped = greedy;
  stopped.stop_tokens = {tokens[2]};
  const auto first_two = std::find(tokens.begin(), tokens.end(), tokens[2]) - tokens.begin();
  BatchScheduler s(engine(), {2, 12, 16, 4});
  auto a = s.submit(stopped);
  BatchRequest long_one = greedy;
  long_one.max_tokens = 100;  // a context of 12: 5 prompt + 7 generated fill it
  auto b = s.submit(long_one);
  run_to_idle(s);
  EXPECT_EQ(a->finish_reason(), FinishReason::Stop);
  EXPECT_EQ(a->generated_tokens(), first_two);
  EXPECT_EQ(b->finish_reason(), FinishReason::Length);
  EXPECT_EQ(b->generated_tokens(), 12 - 5 + 1);  // the last one drawn from the full cache
}

TEST(BatchScheduler, LogprobsAndRoutesHaveTheirShapes) {
  BatchRequest r = request(6, 4, 5, 0.8f, 3);
  r.top_logprobs = 3;
  r.routes = true;
  BatchScheduler s(engine(), {2, 0, 16, 4});
  auto stream = s.submit(r);
  s.submit(request(9, 5, 7, 0.0f, 0));  // a neighbour in every decode step
  run_to_idle(s);
  std::vector<TokenEvent> events;
  stream->wait(events, std::chrono::milliseconds(0));
  ASSERT_EQ(events.size(), 5u);
  for (const TokenEvent& e : events) {
    EXPECT_LE(e.logprob, 0.0f);
    ASSERT_EQ(e.top.size(), 3u);
    EXPECT_GE(e.top[0].second, e.top[1].second);
    EXPECT_GE(e.top[0].second, e.logprob);
    ASSERT_EQ(e.experts.size(), 2u);  // both blocks are MoE
    for (const std::vector<int32_t>& layer : e.experts) {
      ASSERT_EQ(layer.size(), 2u);  // top-2
      for (int32_t x : layer) EXPECT_TRUE(x >= 0 && x < 6);
    }
  }
  const SchedulerStats stats = s.stats();
  ASSERT_EQ(stats.expert_load_total.size(), 2u);
  for (const std::vector<int64_t>& layer : stats.expert_load_total) {
    int64_t load = 0;
    for (int64_t x : layer) load += x;
    // Every fed position routed to 2 experts: prompts, and each token fed back but the last.
    EXPECT_EQ(load, 2 * (stats.prompt_tokens + stats.generated_tokens - 2));
  }
  EXPECT_EQ(stats.expert_load_minute, stats.expert_load_total);
}

TEST(BatchScheduler, DecodeThreadServesConcurrentSubmitters) {
  const std::vector<BatchRequest> requests = mixed_requests();
  std::vector<std::vector<int32_t>> want;
  for (const BatchRequest& r : requests) want.push_back(alone(r));
  BatchScheduler s(engine(), {3, 0, 16, 16});
  s.start();
  std::vector<std::vector<int32_t>> got(requests.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i)
    clients.emplace_back([&, i] {
      auto stream = s.submit(requests[i]);
      ASSERT_NE(stream, nullptr);
      std::vector<TokenEvent> events;
      while (!stream->wait(events, std::chrono::milliseconds(50))) {
      }
      got[i] = tokens_of(events);
    });
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(got[i], want[i]) << "request " << i;
  // stop() with a request running cancels it and returns.
  auto running = s.submit(request(4, 9, 80, 0.0f, 0));
  s.stop();
  EXPECT_NE(running->finish_reason(), FinishReason::None);
}

}  // namespace
}  // namespace moe
