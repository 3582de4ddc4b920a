#include "cli/serve_cmd.h"

#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "cli/prompt.h"
#include "cli/serve_api.h"
#include "cli/serve_chat.h"
#include "cli/serve_page.h"
#include "infer/batch_scheduler.h"
#include "infer/open_model.h"
#include "model/hf_checkpoint.h"
#include "run/checkpoint.h"
#include "tensor/error.h"
#include "text/folder_tokenizer.h"

namespace moe::cli {

CLI::App* add_serve_command(CLI::App& app, ServeCommand& c) {
  CLI::App* serve = app.add_subcommand(
      "serve", "Serve a model over an OpenAI-compatible HTTP API (docs/SERVE.md)");
  serve
      ->add_option("-m,--model", c.model,
                   "Run folder, Hugging Face checkpoint folder (mixtral, qwen2_moe, olmoe) or "
                   "GGUF file (llama, qwen2moe, olmoe)")
      ->required()
      ->check(CLI::ExistingPath);
  serve->add_option("--host", c.host, "Address to listen on (127.0.0.1: this machine only)")
      ->capture_default_str();
  serve->add_option("--port", c.port, "Port; 0 = any free one (printed)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  serve->add_option("--parallel", c.parallel, "Requests decoded together, one slot each")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{256}));
  serve
      ->add_option("--ctx-size", c.ctx_size,
                   "Positions per slot, prompt and answer (0 = the model's context)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  serve
      ->add_option("--max-queue", c.max_queue,
                   "Requests waiting for a slot before more get 503 with Retry-After")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 16));
  serve->add_option("--prefill-chunk", c.prefill_chunk, "Prompt tokens prefilled per step")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  serve->add_option("--api-key", c.api_key, "Require 'Authorization: Bearer KEY' on /v1/ requests");
  serve
      ->add_option("--chat-template", c.chat_template,
                   "mixtral, chatml or olmoe (default: recognised from tokenizer_config.json, or "
                   "a GGUF file's tokenizer.chat_template)")
      ->check(CLI::IsMember({"mixtral", "chatml", "olmoe"}));
  serve->add_option("--alias", c.alias, "The model's id in the API (default: the folder's name)");
  serve->add_option("--max-body", c.max_body, "Largest request body in bytes (larger: 413)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 30));
  serve
      ->add_option("--shutdown-timeout", c.shutdown_timeout,
                   "Seconds SIGTERM lets running requests finish before cancelling them")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  serve
      ->add_option("--expert-cache", c.decoder.expert_cache,
                   "Experts per MoE layer kept in RAM, the rest read from the model's files (0 = "
                   "all mapped)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 16));
  serve->add_option("--cache-policy", c.cache_policy, "Expert cache eviction: lru or lfu")
      ->capture_default_str()
      ->check(CLI::IsMember({"lru", "lfu"}));
  serve->add_flag("--prefetch", c.decoder.prefetch,
                  "With --expert-cache: read the next layer's likely experts ahead");
  // Not in --help: tests slow a tiny model down with it to hold slots and fill the queue.
  serve
      ->add_option("--debug-step-delay", c.debug_step_delay_ms,
                   "Milliseconds to pause after each step")
      ->check(CLI::Range(int64_t{0}, int64_t{10000}))
      ->group("");
  return serve;
}

namespace {

using Clock = std::chrono::steady_clock;

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string random_hex(size_t digits) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(digits, '0');
  for (char& c : s) c = kHex[rng() % 16];
  return s;
}

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

// The model, its tokenizer and the scheduler, and the HTTP routes over them.
class ModelServer {
 public:
  ModelServer(const ServeCommand& c, OpenedModel opened, FolderTokenizer tokenizer,
              ChatTemplate chat)
      : command_(c),
        opened_(std::move(opened)),
        tokenizer_(std::move(tokenizer)),
        chat_(chat),
        scheduler_(*opened_.model, {c.parallel, c.ctx_size, c.prefill_chunk, c.max_queue,
                                    std::chrono::milliseconds(c.debug_step_delay_ms)}) {
    name_ = c.alias;
    if (name_.empty()) {
      name_ = std::filesystem::path(c.model).lexically_normal().filename().string();
      if (name_.empty())
        name_ = std::filesystem::path(c.model).lexically_normal().parent_path().filename().string();
    }
    created_ = unix_time();
  }

  void install(httplib::Server& server);
  BatchScheduler& scheduler() { return scheduler_; }
  void set_stopping() { stopping_.store(true); }
  const std::string& name() const { return name_; }

 private:
  void count(const std::string& outcome) {
    std::lock_guard lock(counters_mutex_);
    ++outcomes_[outcome];
  }
  void fail(httplib::Response& res, const ApiError& e);
  void generation(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  std::vector<int32_t> prompt_ids(const ApiRequest& r);
  void answer_whole(const ApiRequest& r, const std::vector<int32_t>& prompt,
                    std::vector<std::shared_ptr<GenerationStream>> streams, httplib::Response& res);
  void answer_stream(const ApiRequest& r, const std::vector<int32_t>& prompt,
                     std::vector<std::shared_ptr<GenerationStream>> streams,
                     httplib::Response& res);
  std::string metrics() const;
  nlohmann::json moe_layers() const;

  const ServeCommand& command_;
  OpenedModel opened_;
  FolderTokenizer tokenizer_;
  ChatTemplate chat_;
  BatchScheduler scheduler_;
  std::string name_;
  int64_t created_ = 0;
  std::atomic<bool> stopping_{false};
  mutable std::mutex counters_mutex_;
  std::map<std::string, int64_t> outcomes_;  // requests by outcome, for /metrics
};

void ModelServer::fail(httplib::Response& res, const ApiError& e) {
  static const std::map<int, std::string> kOutcome = {{400, "bad_request"}, {401, "unauthorized"},
                                                      {404, "not_found"},   {413, "too_large"},
                                                      {500, "failed"},      {503, "busy"}};
  const auto it = kOutcome.find(e.status);
  count(it == kOutcome.end() ? "error" : it->second);
  send_json(res, e.status, error_body(e));
}

void ModelServer::install(httplib::Server& server) {
  // The key guards /v1/ only: /health and /metrics stay open to probes and scrapers on the
  // host, as llama-server does.
  server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (command_.api_key.empty() || !req.path.starts_with("/v1/"))
      return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + command_.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    fail(res,
         {401, "a valid API key is required: Authorization: Bearer KEY", "", "invalid_api_key"});
    return httplib::Server::HandlerResponse::Handled;
  });
  // Answers httplib gives itself (413 for a body over --max-body, 404 for an unknown path)
  // get OpenAI's error object too.
  server.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      fail(res, {413, "the request body is larger than " + std::to_string(command_.max_body) +
                          " bytes (--max-body)"});
    else if (res.status == 404)
      fail(res, {404, "no route " + req.method + " " + req.path, "", "not_found"});
    else
      fail(res, {res.status, "the request could not be handled"});
  });
  server.set_exception_handler(
      [this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        fail(res, {500, what, "", "", "server_error"});
      });
  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generation(Endpoint::Completions, req, res);
  });
  server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generation(Endpoint::Chat, req, res);
  });
  server.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const nlohmann::json model = {{"id", name_},
                                  {"object", "model"},
                                  {"created", created_},
                                  {"owned_by", "moe"},
                                  {"chat_template", chat_template_name(chat_)},
                                  {"context", scheduler_.context()}};
    send_json(res, 200, {{"object", "list"}, {"data", {model}}});
  });
  server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (stopping_.load())
      send_json(res, 503, {{"status", "shutting down"}});
    else
      send_json(res, 200, {{"status", "ok"}});
  });
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics(), "text/plain; version=0.0.4");
  });
  server.Get("/", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(kServePage), "text/html; charset=utf-8");
  });
}

std::vector<int32_t> ModelServer::prompt_ids(const ApiRequest& r) {
  const bool hf = opened_.kind == ModelKind::HuggingFace;
  if (r.endpoint == Endpoint::Chat) {
    if (chat_ == ChatTemplate::None)
      throw ApiError{400,
                     "this model has no chat template: it serves /v1/completions only "
                     "(moe serve --chat-template NAME picks one)",
                     "messages", "no_chat_template"};
    // BOS as a plain prompt gets it (encode_prompt's rule for this folder).
    const std::vector<int32_t> probe = encode_prompt(command_.model, hf, tokenizer_, "x");
    const int32_t bos =
        !probe.empty() && probe[0] == tokenizer_.bos_id() && tokenizer_.bos_id() >= 0
            ? tokenizer_.bos_id()
            : -1;
    try {
      return render_chat(chat_, r.messages, tokenizer_, bos);
    } catch (const Error& e) {
      throw ApiError{400, e.what(), "messages"};
    }
  }
  if (r.prompt_is_ids) return r.prompt_ids;
  return encode_prompt(command_.model, hf, tokenizer_, r.prompt);
}

void ModelServer::generation(Endpoint endpoint, const httplib::Request& req,
                             httplib::Response& res) {
  try {
    const ApiRequest r = parse_request(endpoint, req.body);
    if (!r.model.empty() && r.model != name_)
      throw ApiError{
          400, "the model '" + r.model + "' is not served here; this server serves '" + name_ + "'",
          "model", "model_not_found"};
    const std::vector<int32_t> prompt = prompt_ids(r);
    const int64_t context = scheduler_.context();
    if (int64_t(prompt.size()) > context)
      throw ApiError{400,
                     "the prompt has " + std::to_string(prompt.size()) +
                         " tokens, more than the context of " + std::to_string(context),
                     endpoint == Endpoint::Chat ? "messages" : "prompt", "context_length_exceeded"};
    BatchRequest base;
    base.prompt = prompt;
    // OpenAI's defaults: 16 tokens for a completion, up to the context for a chat answer.
    base.max_tokens = r.max_tokens.value_or(
        endpoint == Endpoint::Chat ? std::max<int64_t>(1, context - int64_t(prompt.size())) : 16);
    base.sampling = r.sampling;
    base.top_logprobs = r.top_logprobs;
    base.routes = r.routes;
    if (endpoint == Endpoint::Chat)
      base.stop_tokens = chat_stop_tokens(chat_, tokenizer_);
    else if (tokenizer_.eos_id() >= 0)
      base.stop_tokens = {tokenizer_.eos_id()};
    const uint64_t seed =
        r.seed ? *r.seed : (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
    std::vector<std::shared_ptr<GenerationStream>> streams;
    for (int64_t i = 0; i < r.n; ++i) {
      BatchRequest one = base;
      one.seed = seed + uint64_t(i);  // n choices: n draws, each its own seed
      std::shared_ptr<GenerationStream> s;
      try {
        s = scheduler_.submit(std::move(one));
      } catch (const Error& e) {
        for (auto& started : streams) started->cancel();
        throw ApiError{400, e.what()};
      }
      if (!s) {
        for (auto& started : streams) started->cancel();
        res.set_header("Retry-After", "1");
        throw ApiError{503,
                       stopping_.load() ? "the server is shutting down"
                                        : "the server is busy: every slot and the queue are full",
                       "", "server_busy", "server_error"};
      }
      streams.push_back(std::move(s));
    }
    if (r.stream)
      answer_stream(r, prompt, std::move(streams), res);
    else
      answer_whole(r, prompt, std::move(streams), res);
  } catch (const ApiError& e) {
    fail(res, e);
  }
}

// What a choice has so far: its text, the events it used, how it ended.
struct Choice {
  ChoiceText text;
  std::vector<TokenEvent> used;  // every event whose token went into the text
  FinishReason reason = FinishReason::None;
  bool done = false;
  // Takes `events`; ends the choice (and cancels its request) when a stop string appeared.
  // Returns the text to send.
  std::string take(std::vector<TokenEvent>& events, GenerationStream& stream) {
    std::string more;
    for (TokenEvent& e : events) {
      if (done) break;
      more += text.add(e.token);
      used.push_back(std::move(e));
      if (text.stopped()) {
        stream.cancel();
        reason = FinishReason::Stop;
        done = true;
      }
    }
    events.clear();
    return more;
  }
  // After the stream finished: the held-back text, and the reason.
  std::string end(const GenerationStream& stream) {
    done = true;
    reason = stream.finish_reason();
    return reason == FinishReason::Stop || reason == FinishReason::Length ? text.flush() : "";
  }
};

const char* openai_finish(FinishReason r) {
  return r == FinishReason::Stop ? "stop" : "length";
}

nlohmann::json ModelServer::moe_layers() const {
  nlohmann::json layers = nlohmann::json::array();
  const ModelConfig& c = opened_.config;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.moe && c.is_moe_layer(l)) layers.push_back(l);
  return layers;
}

void ModelServer::answer_whole(const ApiRequest& r, const std::vector<int32_t>& prompt,
                               std::vector<std::shared_ptr<GenerationStream>> streams,
                               httplib::Response& res) {
  std::vector<Choice> choices;
  for (size_t i = 0; i < streams.size(); ++i)
    choices.push_back({ChoiceText(tokenizer_, prompt, r.stop), {}});
  std::vector<TokenEvent> events;
  std::string cancelled;  // why a request ended without an answer
  for (size_t i = 0; i < streams.size(); ++i) {
    Choice& c = choices[i];
    while (!c.done) {
      const bool finished = streams[i]->wait(events, std::chrono::milliseconds(200));
      c.take(events, *streams[i]);
      if (finished && !c.done) c.end(*streams[i]);
    }
    if (c.reason == FinishReason::Failed) cancelled = streams[i]->error();
    if (c.reason == FinishReason::Cancelled && cancelled.empty())
      cancelled = "the request was cancelled: the server is shutting down";
  }
  if (!cancelled.empty()) {
    for (auto& s : streams) s->cancel();
    fail(res, {503, cancelled, "", "", "server_error"});
    return;
  }
  const bool chat = r.endpoint == Endpoint::Chat;
  nlohmann::json out_choices = nlohmann::json::array(), routes = nlohmann::json::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    completion_tokens += int64_t(c.used.size());
    nlohmann::json choice = {
        {"index", i}, {"finish_reason", openai_finish(c.reason)}, {"logprobs", nullptr}};
    if (chat)
      choice["message"] = {{"role", "assistant"}, {"content", c.text.sent()}};
    else
      choice["text"] = c.text.sent();
    if (r.top_logprobs >= 0)
      choice["logprobs"] =
          chat ? chat_logprobs(tokenizer_, c.used) : completion_logprobs(tokenizer_, c.used, 0);
    out_choices.push_back(choice);
    if (r.routes) routes.push_back({{"index", i}, {"tokens", token_routes(tokenizer_, c.used)}});
  }
  const int64_t prompt_tokens = int64_t(prompt.size());
  nlohmann::json body = {{"id", (chat ? "chatcmpl-" : "cmpl-") + random_hex(24)},
                         {"object", chat ? "chat.completion" : "text_completion"},
                         {"created", unix_time()},
                         {"model", name_},
                         {"choices", out_choices},
                         {"usage",
                          {{"prompt_tokens", prompt_tokens},
                           {"completion_tokens", completion_tokens},
                           {"total_tokens", prompt_tokens + completion_tokens}}}};
  if (r.routes) body["moe"] = {{"layers", moe_layers()}, {"choices", routes}};
  count("ok");
  send_json(res, 200, body);
}

// A streamed answer: server-sent events, one chunk per batch of new tokens of a choice, then
// the finish chunk of each choice, the usage chunk when asked, and "data: [DONE]". The
// connection's thread waits on the streams; the decode thread never waits on the socket.
// Every send_* returns false when a write failed (the client is gone).
struct StreamJob {
  ApiRequest request;
  bool chat = false;
  const FolderTokenizer* tokenizer = nullptr;
  std::string id, model;
  int64_t created = 0, prompt_tokens = 0;
  std::vector<std::shared_ptr<GenerationStream>> streams;
  std::vector<Choice> choices;
  nlohmann::json layers;
  bool started = false;
  Clock::time_point last_write = Clock::now();

  // Choice `index`'s chunk: the defaults, with `extra`'s fields over them.
  nlohmann::json chunk(size_t index, const nlohmann::json& extra) const {
    nlohmann::json choice = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    choice.update(extra);
    return nlohmann::json{{"id", id},
                          {"object", chat ? "chat.completion.chunk" : "text_completion"},
                          {"created", created},
                          {"model", model},
                          {"choices", {choice}}};
  }
  bool send(httplib::DataSink& sink, const nlohmann::json& j) {
    const std::string event = "data: " + dump_json(j) + "\n\n";
    last_write = Clock::now();
    return sink.write(event.data(), event.size());
  }
  bool all_done() const {
    return std::all_of(choices.begin(), choices.end(), [](const Choice& c) { return c.done; });
  }
  bool send_progress(httplib::DataSink& sink);
  bool send_choice(httplib::DataSink& sink, size_t i, std::chrono::milliseconds wait);
  bool send_keep_alive(httplib::DataSink& sink);
  bool send_end(httplib::DataSink& sink);
};

// The chat role chunks once, then whatever each choice has: a short wait on the first pending
// one, none on the rest.
bool StreamJob::send_progress(httplib::DataSink& sink) {
  if (!started) {
    started = true;
    if (chat)
      for (size_t i = 0; i < choices.size(); ++i)
        if (!send(sink, chunk(i, {{"delta", {{"role", "assistant"}, {"content", ""}}}})))
          return false;
  }
  bool waited = false;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (choices[i].done) continue;
    if (!send_choice(sink, i, std::chrono::milliseconds(waited ? 0 : 50))) return false;
    waited = true;
  }
  return true;
}

// Choice i's new text (with its logprobs and routes when asked), then its finish chunk when
// its stream ended.
bool StreamJob::send_choice(httplib::DataSink& sink, size_t i, std::chrono::milliseconds wait) {
  Choice& c = choices[i];
  GenerationStream& stream = *streams[i];
  std::vector<TokenEvent> events;
  const bool finished = stream.wait(events, wait);
  const size_t before = c.used.size();
  std::string text = c.take(events, stream);
  if (finished && !c.done) {
    text += c.end(stream);
    if (c.reason == FinishReason::Failed || c.reason == FinishReason::Cancelled) {
      // Shut down under it (or the engine failed): an error event, then the end.
      const std::string why = c.reason == FinishReason::Failed
                                  ? stream.error()
                                  : "the request was cancelled: the server is shutting down";
      if (!send(sink, error_body({503, why, "", "", "server_error"}))) return false;
      c.reason = FinishReason::Length;
    }
  }
  const std::vector<TokenEvent> fresh(c.used.begin() + std::ptrdiff_t(before), c.used.end());
  if (!text.empty() || !fresh.empty()) {
    nlohmann::json extra;
    if (chat)
      extra["delta"] = {{"content", text}};
    else
      extra["text"] = text;
    if (request.top_logprobs >= 0 && !fresh.empty())
      extra["logprobs"] =
          chat ? chat_logprobs(*tokenizer, fresh) : completion_logprobs(*tokenizer, fresh, 0);
    nlohmann::json j = chunk(i, extra);
    if (request.routes)
      j["moe"] = {{"layers", layers}, {"tokens", token_routes(*tokenizer, fresh)}};
    if (!send(sink, j)) return false;
  }
  if (!c.done) return true;
  nlohmann::json extra = {{"finish_reason", openai_finish(c.reason)}};
  if (chat)
    extra["delta"] = nlohmann::json::object();
  else
    extra["text"] = "";
  return send(sink, chunk(i, extra));
}

// A comment line now and then while nothing comes (queued, a long prefill): a client that left
// is found by the failed write and its request cancelled.
bool StreamJob::send_keep_alive(httplib::DataSink& sink) {
  if (Clock::now() - last_write <= std::chrono::seconds(1)) return true;
  last_write = Clock::now();
  return sink.write(": waiting\n\n", 11);
}

// The usage chunk when asked, then [DONE].
bool StreamJob::send_end(httplib::DataSink& sink) {
  if (request.include_usage) {
    int64_t completion = 0;
    for (const Choice& c : choices) completion += int64_t(c.used.size());
    nlohmann::json usage = {{"id", id},
                            {"object", chat ? "chat.completion.chunk" : "text_completion"},
                            {"created", created},
                            {"model", model},
                            {"choices", nlohmann::json::array()},
                            {"usage",
                             {{"prompt_tokens", prompt_tokens},
                              {"completion_tokens", completion},
                              {"total_tokens", prompt_tokens + completion}}}};
    if (!send(sink, usage)) return false;
  }
  static constexpr std::string_view kDone = "data: [DONE]\n\n";
  return sink.write(kDone.data(), kDone.size());
}

void ModelServer::answer_stream(const ApiRequest& r, const std::vector<int32_t>& prompt,
                                std::vector<std::shared_ptr<GenerationStream>> streams,
                                httplib::Response& res) {
  auto job = std::make_shared<StreamJob>();
  job->request = r;
  job->chat = r.endpoint == Endpoint::Chat;
  job->tokenizer = &tokenizer_;
  job->id = (job->chat ? "chatcmpl-" : "cmpl-") + random_hex(24);
  job->model = name_;
  job->created = unix_time();
  job->prompt_tokens = int64_t(prompt.size());
  job->streams = std::move(streams);
  for (size_t i = 0; i < job->streams.size(); ++i)
    job->choices.push_back({ChoiceText(tokenizer_, prompt, r.stop), {}});
  job->layers = moe_layers();
  res.set_header("Cache-Control", "no-cache");
  auto provider = [this, job](size_t, httplib::DataSink& sink) -> bool {
    if (!job->send_progress(sink)) return false;
    if (!job->all_done()) return job->send_keep_alive(sink);
    if (!job->send_end(sink)) return false;
    count("ok");
    sink.done();
    return true;
  };
  // Whatever way the response ends (a client gone, a write timing out on a slow reader), its
  // requests are cancelled: their slots are free at the next step.
  auto release = [this, job](bool success) {
    bool unfinished = false;
    for (auto& s : job->streams) {
      unfinished |= s->finish_reason() == FinishReason::None;
      s->cancel();
    }
    if (!success || unfinished) count("disconnected");
  };
  res.set_chunked_content_provider("text/event-stream", provider, release);
}

std::string ModelServer::metrics() const {
  const SchedulerStats s = scheduler_.stats();
  std::string out;
  char line[256];
  auto metric = [&](const char* name, const char* type, const char* help) {
    std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    out += line;
  };
  auto value = [&](const std::string& name_labels, double v) {
    std::snprintf(line, sizeof line, "%s %.17g\n", name_labels.c_str(), v);
    out += line;
  };
  metric("moe_slots", "gauge", "Slots (requests decoding together)");
  value("moe_slots", double(s.parallel));
  metric("moe_slots_busy", "gauge", "Slots holding a request");
  value("moe_slots_busy", double(s.active));
  metric("moe_queue_length", "gauge", "Requests waiting for a slot");
  value("moe_queue_length", double(s.queued));
  metric("moe_prompt_tokens_total", "counter", "Prompt tokens prefilled");
  value("moe_prompt_tokens_total", double(s.prompt_tokens));
  metric("moe_generated_tokens_total", "counter", "Tokens generated");
  value("moe_generated_tokens_total", double(s.generated_tokens));
  metric("moe_tokens_per_second", "gauge", "Tokens generated per second over the last minute");
  value("moe_tokens_per_second", s.tokens_per_second);
  metric("moe_decode_steps_total", "counter", "Decode steps (one batch of rows each)");
  value("moe_decode_steps_total", double(s.decode_steps));
  metric("moe_decode_rows_total", "counter", "Rows over all decode steps");
  value("moe_decode_rows_total", double(s.decode_rows));
  metric("moe_decode_distinct_experts_total", "counter",
         "Distinct experts read per decode step, summed over steps and MoE layers");
  value("moe_decode_distinct_experts_total", double(s.distinct_experts));
  metric("moe_requests_finished_total", "counter", "Generations ended, by reason");
  for (FinishReason r :
       {FinishReason::Stop, FinishReason::Length, FinishReason::Cancelled, FinishReason::Failed})
    value(std::string("moe_requests_finished_total{reason=\"") + finish_reason_name(r) + "\"}",
          double(s.finished[size_t(r)]));
  metric("moe_requests_total", "counter", "HTTP generation requests, by outcome");
  {
    std::lock_guard lock(counters_mutex_);
    for (const auto& [outcome, n] : outcomes_)
      value("moe_requests_total{outcome=\"" + outcome + "\"}", double(n));
  }
  if (s.expert_cache) {
    metric("moe_expert_cache_hits_total", "counter", "Expert cache lookups found in RAM");
    value("moe_expert_cache_hits_total", double(s.cache_hits));
    metric("moe_expert_cache_misses_total", "counter", "Expert cache lookups read from storage");
    value("moe_expert_cache_misses_total", double(s.cache_misses));
    metric("moe_expert_cache_hit_rate", "gauge", "Hits over lookups since start");
    const int64_t lookups = s.cache_hits + s.cache_misses;
    value("moe_expert_cache_hit_rate", lookups ? double(s.cache_hits) / double(lookups) : 0.0);
  }
  metric("moe_expert_load_total", "counter",
         "Token assignments per expert since start, prompts included (layer: block index)");
  for (size_t m = 0; m < s.moe_layers.size(); ++m)
    for (size_t e = 0; e < s.expert_load_total[m].size(); ++e)
      value("moe_expert_load_total{layer=\"" + std::to_string(s.moe_layers[m]) + "\",expert=\"" +
                std::to_string(e) + "\"}",
            double(s.expert_load_total[m][e]));
  metric("moe_expert_load_last_minute", "gauge",
         "Token assignments per expert over the last minute");
  for (size_t m = 0; m < s.moe_layers.size(); ++m)
    for (size_t e = 0; e < s.expert_load_minute[m].size(); ++e)
      value("moe_expert_load_last_minute{layer=\"" + std::to_string(s.moe_layers[m]) +
                "\",expert=\"" + std::to_string(e) + "\"}",
            double(s.expert_load_minute[m][e]));
  return out;
}

// SIGTERM and SIGINT are taken by sigwait on the main thread: blocked here before any thread
// starts, so every thread inherits the mask and none is interrupted.
sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A client gone mid-write is a failed write, not the end of the process.
  signal(SIGPIPE, SIG_IGN);
  return set;
}

}  // namespace

int run_serve(const ServeCommand& c) {
  const sigset_t stop_signals = block_stop_signals();
  InferenceOptions decoder = c.decoder;
  decoder.cache_policy = c.cache_policy == "lfu" ? CachePolicy::Lfu : CachePolicy::Lru;
  prepare_for_reading(c.model);
  OpenedModel opened = open_model(c.model, decoder);
  FolderTokenizer tokenizer = model_tokenizer(opened, c.model);
  require_tokenizer_fits(tokenizer, opened.config, c.model);
  const ChatTemplate chat = c.chat_template.empty() ? detect_chat_template(c.model)
                                                    : chat_template_named(c.chat_template);
  const int64_t context = c.ctx_size > 0 ? c.ctx_size : opened.config.max_position_embeddings;
  if (context > opened.config.max_position_embeddings)
    throw Error("--ctx-size " + std::to_string(context) + " is more than the model's context of " +
                std::to_string(opened.config.max_position_embeddings));
  require_inference_memory(opened.config, context * c.parallel, c.prefill_chunk,
                           decoder.expert_cache, cached_expert_bytes(*opened.model),
                           "serving " + std::to_string(c.parallel) + " slots of " +
                               std::to_string(context) + " positions");
  ModelServer model(c, std::move(opened), std::move(tokenizer), chat);

  httplib::Server server;
  // One thread per connection: the slots, the queue, and a few for /metrics and refusals.
  const size_t threads = size_t(c.parallel + c.max_queue + 8);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(size_t(c.max_body));
  server.set_keep_alive_timeout(2);
  server.set_read_timeout(10);
  server.set_write_timeout(10);  // a reader slower than this loses its connection
  model.install(server);
  int port = c.port;
  if (port == 0) {
    port = server.bind_to_any_port(c.host);
    if (port < 0) throw Error("cannot listen on " + c.host + " (any port)");
  } else if (!server.bind_to_port(c.host, port)) {
    throw Error("cannot listen on " + c.host + ":" + std::to_string(port) +
                " (in use, or not an address of this machine)");
  }
  model.scheduler().start();
  std::thread listener([&server] { server.listen_after_bind(); });
  std::fprintf(stderr,
               "moe serve: listening on http://%s:%d (model '%s', %lld slots of %lld positions, "
               "chat template: %s)\n",
               c.host.c_str(), port, model.name().c_str(), static_cast<long long>(c.parallel),
               static_cast<long long>(context), chat_template_name(chat));
  std::fflush(stderr);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  // Stop taking requests, let the running ones finish for --shutdown-timeout, cancel the rest.
  model.set_stopping();
  model.scheduler().close();
  std::fprintf(stderr, "moe serve: %s: finishing running requests (at most %.0f s)\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM", c.shutdown_timeout);
  const auto deadline = Clock::now() + std::chrono::duration<double>(c.shutdown_timeout);
  while (!model.scheduler().idle() && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!model.scheduler().idle()) {
    std::fprintf(stderr, "moe serve: cancelling the requests still running\n");
    model.scheduler().cancel_all();
  }
  server.stop();
  listener.join();
  model.scheduler().stop();
  std::fprintf(stderr, "moe serve: stopped\n");
  return 0;
}

}  // namespace moe::cli
