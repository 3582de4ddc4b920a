#include "cli/serve_api.h"

#include <algorithm>
#include <limits>

namespace moe::cli {

nlohmann::json error_body(const ApiError& e) {
  nlohmann::json error = {
      {"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) error["param"] = e.param;
  if (!e.code.empty()) error["code"] = e.code;
  return {{"error", error}};
}

std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError{400, message, param};
}

// The field's value when present and not null.
const nlohmann::json* field(const nlohmann::json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

bool read_bool(const nlohmann::json& body, const char* name, bool fallback) {
  const nlohmann::json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) bad(name, std::string(name) + " must be true or false");
  return v->get<bool>();
}

std::optional<int64_t> read_int(const nlohmann::json& body, const char* name, int64_t lo,
                                int64_t hi) {
  const nlohmann::json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer())
    bad(name, std::string(name) + " must be an integer, got " + v->dump());
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi)
    bad(name, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                  "], got " + std::to_string(x));
  return x;
}

std::optional<float> read_number(const nlohmann::json& body, const char* name, double lo,
                                 double hi) {
  const nlohmann::json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(name, std::string(name) + " must be a number, got " + v->dump());
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    bad(name, std::string(name) + " must be in [" + nlohmann::json(lo).dump() + ", " +
                  nlohmann::json(hi).dump() + "], got " + v->dump());
  return float(x);
}

std::string message_content(const nlohmann::json& m, size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  const nlohmann::json* c = field(m, "content");
  if (!c) return "";
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) bad(param, param + " must be a string or an array of text parts");
  // [{"type": "text", "text": "..."}]: the text parts joined.
  std::string text;
  for (const nlohmann::json& part : *c) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part.at("text").is_string())
      bad(param, param + ": only parts {\"type\": \"text\", \"text\": \"...\"} are supported");
    text += part.at("text").get<std::string>();
  }
  return text;
}

void read_prompt(const nlohmann::json& body, ApiRequest& r) {
  const nlohmann::json* p = field(body, "prompt");
  if (!p) bad("prompt", "prompt is required");
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    return;
  }
  if (p->is_array() && p->size() == 1 && p->at(0).is_string()) {
    r.prompt = p->at(0).get<std::string>();
    return;
  }
  if (p->is_array() && !p->empty() &&
      std::all_of(p->begin(), p->end(),
                  [](const nlohmann::json& x) { return x.is_number_integer(); })) {
    for (const nlohmann::json& x : *p) {
      const int64_t id = x.get<int64_t>();
      if (id < 0 || id > std::numeric_limits<int32_t>::max())
        bad("prompt", "prompt: token id " + std::to_string(id) + " is out of range");
      r.prompt_ids.push_back(int32_t(id));
    }
    r.prompt_is_ids = true;
    return;
  }
  bad("prompt", "prompt must be a string, an array of one string or an array of token ids");
}

void read_messages(const nlohmann::json& body, ApiRequest& r) {
  const nlohmann::json* m = field(body, "messages");
  if (!m || !m->is_array() || m->empty())
    bad("messages", "messages must be a non-empty array of {role, content} objects");
  for (size_t i = 0; i < m->size(); ++i) {
    const nlohmann::json& message = m->at(i);
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!message.is_object() || !message.contains("role") || !message.at("role").is_string())
      bad(param, param + " must be an object with a string role");
    r.messages.push_back({message.at("role").get<std::string>(), message_content(message, i)});
  }
}

void read_stop(const nlohmann::json& body, ApiRequest& r) {
  const nlohmann::json* s = field(body, "stop");
  if (!s) return;
  if (s->is_string()) {
    r.stop.push_back(s->get<std::string>());
  } else if (s->is_array() && s->size() <= 4 &&
             std::all_of(s->begin(), s->end(),
                         [](const nlohmann::json& x) { return x.is_string(); })) {
    for (const nlohmann::json& x : *s) r.stop.push_back(x.get<std::string>());
  } else {
    bad("stop", "stop must be a string or an array of at most 4 strings");
  }
  std::erase_if(r.stop, [](const std::string& x) { return x.empty(); });
}

void read_sampling(const nlohmann::json& body, ApiRequest& r) {
  if (auto t = read_number(body, "temperature", 0.0, 2.0)) r.sampling.temperature = *t;
  if (auto p = read_number(body, "top_p", 0.0, 1.0)) r.sampling.top_p = *p;
  if (auto k = read_int(body, "top_k", 0, int64_t{1} << 30)) r.sampling.top_k = *k;
  if (const nlohmann::json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) bad("seed", "seed must be an integer, got " + seed->dump());
    r.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
  }
  const char* max_name = r.endpoint == Endpoint::Chat && field(body, "max_completion_tokens")
                             ? "max_completion_tokens"
                             : "max_tokens";
  r.max_tokens = read_int(body, max_name, 1, int64_t{1} << 30);
  r.n = read_int(body, "n", 1, 16).value_or(1);
}

void read_logprobs(const nlohmann::json& body, ApiRequest& r) {
  if (r.endpoint == Endpoint::Completions) {
    // logprobs: the number of alternatives (0 = the chosen token's alone), at most 5.
    if (auto n = read_int(body, "logprobs", 0, 5)) r.top_logprobs = *n;
    return;
  }
  const bool wanted = read_bool(body, "logprobs", false);
  const auto top = read_int(body, "top_logprobs", 0, 20);
  if (top && !wanted) bad("top_logprobs", "top_logprobs needs logprobs: true");
  if (wanted) r.top_logprobs = top.value_or(0);
}

}  // namespace

ApiRequest parse_request(Endpoint endpoint, const std::string& body_text) {
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(body_text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ApiError{400, std::string("the body is not valid JSON: ") + e.what()};
  }
  if (!body.is_object()) throw ApiError{400, "the body must be a JSON object"};
  ApiRequest r;
  r.endpoint = endpoint;
  if (const nlohmann::json* m = field(body, "model")) {
    if (!m->is_string()) bad("model", "model must be a string");
    r.model = m->get<std::string>();
  }
  if (endpoint == Endpoint::Completions)
    read_prompt(body, r);
  else
    read_messages(body, r);
  read_sampling(body, r);
  read_stop(body, r);
  read_logprobs(body, r);
  r.stream = read_bool(body, "stream", false);
  if (const nlohmann::json* o = field(body, "stream_options")) {
    if (!o->is_object()) bad("stream_options", "stream_options must be an object");
    r.include_usage = read_bool(*o, "include_usage", false);
  }
  if (const nlohmann::json* moe = field(body, "moe")) {
    if (!moe->is_object()) bad("moe", "moe must be an object such as {\"routes\": true}");
    r.routes = read_bool(*moe, "routes", false);
  }
  return r;
}

// ---- ChoiceText ----

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
constexpr size_t kPromptTail = 4;  // prompt tokens decoded before the generated ones

// Length of the longest proper prefix of `stop` that `text` ends with.
size_t partial_stop_suffix(std::string_view text, std::string_view stop) {
  for (size_t n = std::min(text.size(), stop.size() - 1); n > 0; --n)
    if (text.ends_with(stop.substr(0, n))) return n;
  return 0;
}

}  // namespace

ChoiceText::ChoiceText(const FolderTokenizer& tokenizer, std::span<const int32_t> prompt,
                       std::vector<std::string> stops)
    : tokenizer_(&tokenizer), stops_(std::move(stops)) {
  const size_t tail = std::min(prompt.size(), kPromptTail);
  ids_.assign(prompt.end() - std::ptrdiff_t(tail), prompt.end());
  tail_chars_ = tokenizer.decode(ids_).size();
}

std::string ChoiceText::text_now(bool final) {
  const std::string all = tokenizer_->decode(ids_);
  std::string text = all.size() > tail_chars_ ? all.substr(tail_chars_) : std::string();
  size_t first_stop = std::string::npos;
  for (const std::string& stop : stops_) first_stop = std::min(first_stop, text.find(stop));
  if (first_stop != std::string::npos) {
    text.resize(first_stop);
    stopped_ = true;
    return text;
  }
  if (final) return text;
  size_t hold = 0;
  for (const std::string& stop : stops_) hold = std::max(hold, partial_stop_suffix(text, stop));
  text.resize(text.size() - hold);
  while (text.ends_with(kReplacement)) text.resize(text.size() - kReplacement.size());
  return text;
}

std::string ChoiceText::add(int32_t token) {
  if (stopped_) return {};
  ids_.push_back(token);
  const std::string text = text_now(false);
  // Text once sent stays sent; what is new is what follows it.
  if (text.size() <= sent_.size() || text.compare(0, sent_.size(), sent_) != 0) return {};
  std::string more = text.substr(sent_.size());
  sent_ = text;
  return more;
}

std::string ChoiceText::flush() {
  if (stopped_) return {};
  const std::string text = text_now(true);
  if (text.size() <= sent_.size() || text.compare(0, sent_.size(), sent_) != 0) return {};
  std::string more = text.substr(sent_.size());
  sent_ = text;
  return more;
}

// ---- logprobs and routes ----

std::string token_text(const FolderTokenizer& tokenizer, int32_t id) {
  const std::string piece = tokenizer.piece(id);
  if (!tokenizer.is_sentencepiece()) return piece;
  constexpr std::string_view kWordStart = "\xE2\x96\x81";  // U+2581
  std::string text;
  for (size_t i = 0; i < piece.size();) {
    if (std::string_view(piece).substr(i, kWordStart.size()) == kWordStart) {
      text += ' ';
      i += kWordStart.size();
    } else {
      text += piece[i++];
    }
  }
  return text;
}

namespace {

nlohmann::json bytes_of(const std::string& s) {
  nlohmann::json bytes = nlohmann::json::array();
  for (unsigned char c : s) bytes.push_back(int(c));
  return bytes;
}

}  // namespace

nlohmann::json completion_logprobs(const FolderTokenizer& tokenizer,
                                   const std::vector<TokenEvent>& events, int64_t offset) {
  nlohmann::json tokens = nlohmann::json::array(), logprobs = nlohmann::json::array(),
                 tops = nlohmann::json::array(), offsets = nlohmann::json::array();
  for (const TokenEvent& e : events) {
    const std::string text = token_text(tokenizer, e.token);
    tokens.push_back(text);
    logprobs.push_back(e.logprob);
    nlohmann::json top = nlohmann::json::object();
    for (const auto& [id, lp] : e.top) top[token_text(tokenizer, id)] = lp;
    tops.push_back(top);
    offsets.push_back(offset);
    offset += int64_t(text.size());
  }
  return {{"tokens", tokens},
          {"token_logprobs", logprobs},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

nlohmann::json chat_logprobs(const FolderTokenizer& tokenizer,
                             const std::vector<TokenEvent>& events) {
  nlohmann::json content = nlohmann::json::array();
  for (const TokenEvent& e : events) {
    const std::string text = token_text(tokenizer, e.token);
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [id, lp] : e.top) {
      const std::string alt = token_text(tokenizer, id);
      top.push_back({{"token", alt}, {"logprob", lp}, {"bytes", bytes_of(alt)}});
    }
    content.push_back({{"token", text},
                       {"logprob", e.logprob},
                       {"bytes", bytes_of(text)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

nlohmann::json token_routes(const FolderTokenizer& tokenizer,
                            const std::vector<TokenEvent>& events) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const TokenEvent& e : events)
    tokens.push_back(
        {{"token", e.token}, {"text", token_text(tokenizer, e.token)}, {"experts", e.experts}});
  return tokens;
}

}  // namespace moe::cli
