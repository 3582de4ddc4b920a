#include "cli/serve_chat.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "infer/open_model.h"
#include "model/config.h"
#include "tensor/error.h"
#include "tensor/gguf.h"

namespace moe::cli {

ChatTemplate chat_template_named(const std::string& name) {
  if (name == "mixtral") return ChatTemplate::Mixtral;
  if (name == "chatml") return ChatTemplate::ChatMl;
  if (name == "olmoe") return ChatTemplate::Olmoe;
  throw Error("--chat-template must be mixtral, chatml or olmoe, got '" + name + "'");
}

const char* chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::Mixtral:
      return "mixtral";
    case ChatTemplate::ChatMl:
      return "chatml";
    case ChatTemplate::Olmoe:
      return "olmoe";
    case ChatTemplate::None:
      break;
  }
  return "none";
}

namespace {

// Each family's template has a marker the others lack: ChatML's turn token, Mixtral's
// instruction brackets, OLMoE-Instruct's (Tulu's) role tags. `source` names where it was read.
ChatTemplate template_of_text(const std::string& text, const std::string& source) {
  if (text.find("<|im_start|>") != std::string::npos) return ChatTemplate::ChatMl;
  if (text.find("[INST]") != std::string::npos) return ChatTemplate::Mixtral;
  if (text.find("<|user|>") != std::string::npos && text.find("<|assistant|>") != std::string::npos)
    return ChatTemplate::Olmoe;
  throw Error(source +
              ": chat_template is none of the built-in ones (mixtral, chatml, olmoe); pick one "
              "with --chat-template NAME");
}

}  // namespace

ChatTemplate detect_chat_template(const std::string& dir) {
  if (is_gguf_file(dir)) {  // the template llama.cpp's converter copied into the metadata
    const GgufFile file(dir);
    if (!file.header().has("tokenizer.chat_template")) return ChatTemplate::None;
    return template_of_text(file.header().get<std::string>("tokenizer.chat_template"),
                            dir + ": tokenizer.chat_template");
  }
  const std::string path = dir + "/tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return ChatTemplate::None;
  const nlohmann::json j = read_json_file(path, "tokenizer config");
  if (!j.is_object() || !j.contains("chat_template")) return ChatTemplate::None;
  std::string text;
  const nlohmann::json& t = j.at("chat_template");
  if (t.is_string()) {
    text = t.get<std::string>();
  } else if (t.is_array()) {
    // Some folders list named templates: [{"name": "default", "template": "..."}, ...].
    for (const nlohmann::json& named : t)
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named.at("template").is_string())
        text = named.at("template").get<std::string>();
  }
  return template_of_text(text, path);
}

namespace {

// Appends the ids of `text` (nothing for an empty one).
void append(std::vector<int32_t>& ids, const FolderTokenizer& tokenizer, const std::string& text) {
  if (text.empty()) return;
  const std::vector<int32_t> more = tokenizer.encode(text);
  ids.insert(ids.end(), more.begin(), more.end());
}

void check_role(const ChatMessage& m) {
  if (m.role != "system" && m.role != "user" && m.role != "assistant")
    throw Error("messages: role must be system, user or assistant, got '" + m.role + "'");
}

// Mixtral-8x7B-Instruct: "[INST] user [/INST]" then the answer and </s>; no system role, so a
// system message goes before the first user message's text (as Mistral's later templates do).
void render_mixtral(std::vector<int32_t>& ids, const std::vector<ChatMessage>& messages,
                    const FolderTokenizer& tokenizer) {
  std::string system;
  bool user_next = true;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      system += (system.empty() ? "" : "\n\n") + m.content;
      continue;
    }
    if ((m.role == "user") != user_next)
      throw Error(
          "messages: the mixtral template needs user and assistant turns alternating, "
          "starting with user");
    if (m.role == "user") {
      const std::string text = system.empty() ? m.content : system + "\n\n" + m.content;
      system.clear();
      append(ids, tokenizer, "[INST] " + text + " [/INST]");
    } else {
      append(ids, tokenizer, m.content);
      if (tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
    }
    user_next = !user_next;
  }
  if (user_next) throw Error("messages: the last message must be the user's (mixtral template)");
}

// ChatML as Qwen2-MoE's template writes it, with its default system message when none is given.
void render_chatml(std::vector<int32_t>& ids, const std::vector<ChatMessage>& messages,
                   const FolderTokenizer& tokenizer) {
  std::string text;
  if (messages.front().role != "system")
    text += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
  for (const ChatMessage& m : messages)
    text += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  append(ids, tokenizer, text + "<|im_start|>assistant\n");
}

// OLMoE-Instruct (Tulu): "<|user|>\n...\n", answers end with end-of-text.
void render_olmoe(std::vector<int32_t>& ids, const std::vector<ChatMessage>& messages,
                  const FolderTokenizer& tokenizer) {
  for (const ChatMessage& m : messages) {
    append(ids, tokenizer,
           "<|" + m.role + "|>\n" + m.content + (m.role == "assistant" ? "" : "\n"));
    if (m.role == "assistant") {
      if (tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
      append(ids, tokenizer, "\n");
    }
  }
  append(ids, tokenizer, "<|assistant|>\n");
}

}  // namespace

std::vector<int32_t> render_chat(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                 const FolderTokenizer& tokenizer, int32_t bos) {
  if (messages.empty()) throw Error("messages must hold at least one message");
  for (const ChatMessage& m : messages) check_role(m);
  std::vector<int32_t> ids;
  if (bos >= 0) ids.push_back(bos);
  switch (t) {
    case ChatTemplate::Mixtral:
      render_mixtral(ids, messages, tokenizer);
      break;
    case ChatTemplate::ChatMl:
      render_chatml(ids, messages, tokenizer);
      break;
    case ChatTemplate::Olmoe:
      render_olmoe(ids, messages, tokenizer);
      break;
    case ChatTemplate::None:
      throw Error("this model has no chat template");
  }
  return ids;
}

std::vector<int32_t> chat_stop_tokens(ChatTemplate t, const FolderTokenizer& tokenizer) {
  std::vector<int32_t> stops;
  if (tokenizer.eos_id() >= 0) stops.push_back(tokenizer.eos_id());
  if (t == ChatTemplate::ChatMl) {
    const std::vector<int32_t> end = tokenizer.encode("<|im_end|>");
    if (end.size() == 1 && end[0] != tokenizer.eos_id()) stops.push_back(end[0]);
  }
  return stops;
}

}  // namespace moe::cli
