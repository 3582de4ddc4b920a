#pragma once
// `moe serve`: an OpenAI-compatible HTTP server (cpp-httplib) over one model, its concurrent
// requests decoded together by the BatchScheduler (infer/batch_scheduler.h). docs/SERVE.md.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "infer/inference_model.h"

namespace moe::cli {

struct ServeCommand {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (the one chosen is printed)
  int64_t parallel = 4;
  int64_t ctx_size = 0;  // 0: the model's max_position_embeddings
  int64_t max_queue = 16;
  int64_t prefill_chunk = 64;
  std::string api_key;
  std::string chat_template;        // empty: from tokenizer_config.json
  std::string alias;                // the model's id in the API; empty: the folder's name
  int64_t max_body = 1 << 20;       // bytes
  double shutdown_timeout = 10;     // seconds SIGTERM waits for running requests
  int64_t debug_step_delay_ms = 0;  // hidden: a pause after each step (tests)
  InferenceOptions decoder;
  std::string cache_policy = "lru";
};

CLI::App* add_serve_command(CLI::App& app, ServeCommand& command);
int run_serve(const ServeCommand& command);

}  // namespace moe::cli
