#pragma once
// `moe serve`'s chat templates: the three formats of the model families `moe` runs, built in
// (no Jinja interpreter): Mixtral's [INST], ChatML (Qwen2-MoE) and OLMoE-Instruct's
// <|user|>/<|assistant|> (Tulu) format. The one a folder uses is recognised from the
// chat_template string of its tokenizer_config.json by distinctive substrings.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "text/folder_tokenizer.h"

namespace moe::cli {

enum class ChatTemplate { None, Mixtral, ChatMl, Olmoe };

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
};

// "mixtral", "chatml", "olmoe" -> the template; anything else is an Error listing them.
ChatTemplate chat_template_named(const std::string& name);
const char* chat_template_name(ChatTemplate t);

// The template of model `dir`: a folder's tokenizer_config.json chat_template, or a GGUF
// file's tokenizer.chat_template. None where there is none (runs of `moe train`, base models);
// an Error naming the file where it is none of the built-in ones.
ChatTemplate detect_chat_template(const std::string& dir);

// The prompt ids of `messages` in template `t`, ending with the assistant's opening so the
// model answers: text segments encoded by `tokenizer`, end-of-text ids between turns where
// the template has them; BOS first when `bos` >= 0. Throws Error for a role the template does
// not know or an order it cannot express (Mixtral: user and assistant alternating).
std::vector<int32_t> render_chat(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                 const FolderTokenizer& tokenizer, int32_t bos);

// Token ids that end an assistant turn besides end-of-text (ChatML's <|im_end|>), where the
// tokenizer has them as single tokens.
std::vector<int32_t> chat_stop_tokens(ChatTemplate t, const FolderTokenizer& tokenizer);

}  // namespace moe::cli
