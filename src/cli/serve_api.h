#pragma once
// `moe serve`'s OpenAI API without the transport: a request body read into checked parameters
// (an ApiError names the field, as OpenAI's error object does), each choice's text assembled
// from its token events (stop strings cut on the text, an incomplete UTF-8 character held
// back), the log-probability and route objects of a response.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/serve_chat.h"
#include "infer/batch_scheduler.h"
#include "infer/generate.h"
#include "text/folder_tokenizer.h"

namespace moe::cli {

// An answer other than 200, with OpenAI's error object: {"error": {"message", "type", "param",
// "code"}}.
struct ApiError {
  ApiError(int status, std::string message, std::string param = {}, std::string code = {},
           std::string type = "invalid_request_error")
      : status(status),
        message(std::move(message)),
        param(std::move(param)),
        code(std::move(code)),
        type(std::move(type)) {}
  int status = 400;
  std::string message;
  std::string param;  // the request field at fault; empty = null
  std::string code;   // empty = null
  std::string type = "invalid_request_error";
};
nlohmann::json error_body(const ApiError& e);
// JSON text as sent: invalid UTF-8 (a token that is part of a character) becomes U+FFFD.
std::string dump_json(const nlohmann::json& j);

enum class Endpoint { Completions, Chat };

struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;                // empty when not given
  std::string prompt;               // /v1/completions: text ...
  std::vector<int32_t> prompt_ids;  // ... or token ids
  bool prompt_is_ids = false;
  std::vector<ChatMessage> messages;  // /v1/chat/completions
  std::optional<int64_t> max_tokens;
  SamplingOptions sampling{1.0f, 0, 1.0f};  // OpenAI's defaults: temperature 1, no cut-off
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  int64_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int64_t top_logprobs = -1;   // -1: no logprobs
  bool routes = false;         // "moe": {"routes": true}
};

// Throws ApiError (400) for a body that is not JSON, a field of the wrong type or out of range.
ApiRequest parse_request(Endpoint endpoint, const std::string& body);

// One choice's text, built as its tokens arrive. The whole generated text is decoded after
// every token (with a few prompt tokens before it, so a leading space stays); what may still
// change is held back: a trailing U+FFFD (a character whose bytes are not all there yet) and a
// trailing start of a stop string.
class ChoiceText {
 public:
  ChoiceText(const FolderTokenizer& tokenizer, std::span<const int32_t> prompt,
             std::vector<std::string> stops);
  // Adds a token; returns the text that can be sent now (maybe empty).
  std::string add(int32_t token);
  // At the end of a request not cut by a stop string: whatever was held back.
  std::string flush();
  bool stopped() const { return stopped_; }
  const std::string& sent() const { return sent_; }

 private:
  std::string text_now(bool final);
  const FolderTokenizer* tokenizer_;
  std::vector<int32_t> ids_;  // the prompt's tail, then the generated tokens
  size_t tail_chars_ = 0;     // the tail's text length
  std::vector<std::string> stops_;
  std::string sent_;
  bool stopped_ = false;
};

// A token as text for logprobs and routes: its piece, sentencepiece's U+2581 as a space.
std::string token_text(const FolderTokenizer& tokenizer, int32_t id);

// /v1/completions' logprobs object for `events` (tokens, token_logprobs, top_logprobs,
// text_offset, the offsets counted from `offset`).
nlohmann::json completion_logprobs(const FolderTokenizer& tokenizer,
                                   const std::vector<TokenEvent>& events, int64_t offset);
// /v1/chat/completions' logprobs object: {"content": [{token, logprob, bytes, top_logprobs}]}.
nlohmann::json chat_logprobs(const FolderTokenizer& tokenizer,
                             const std::vector<TokenEvent>& events);
// The "moe" routes of `events`: [{"token": id, "text": "...", "experts": [[e...] per layer]}].
nlohmann::json token_routes(const FolderTokenizer& tokenizer,
                            const std::vector<TokenEvent>& events);

}  // namespace moe::cli
