// Greedy generation by llama.cpp's own library, as llama-simple does it, but printing token ids
// and how decided each choice was, one line each, so that tests/e2e/greedy_gguf.py can compare
// moe's tokens with llama.cpp's and tell a real difference from a near tie.
//
// Usage: llama_greedy MODEL.gguf N_TOKENS PROMPT
// Prints: "prompt ID ID ...", then per generated token "token ID MARGIN RANGE PIECE_HEX" (MARGIN:
// the best logit minus the second best; RANGE: max minus min logit), then "end eog|length".
// The KV cache is F32 and flash attention off, as the other tests run llama.cpp.
#include <llama.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

std::string hex_of_piece(const llama_vocab* vocab, llama_token id) {
  char buf[256];
  const int n = llama_token_to_piece(vocab, id, buf, sizeof buf, 0, true);
  std::string hex;
  char two[3];
  for (int i = 0; i < std::max(n, 0); ++i) {
    std::snprintf(two, sizeof two, "%02x", static_cast<unsigned char>(buf[i]));
    hex += two;
  }
  return hex.empty() ? "-" : hex;
}

void quiet_log(ggml_log_level, const char*, void*) {}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: llama_greedy MODEL.gguf N_TOKENS PROMPT\n");
    return 2;
  }
  const std::string prompt = argv[3];
  const int n_predict = std::atoi(argv[2]);
  llama_log_set(quiet_log, nullptr);
  ggml_backend_load_all();
  llama_model* model = llama_model_load_from_file(argv[1], llama_model_default_params());
  if (!model) {
    std::fprintf(stderr, "llama_greedy: cannot load %s\n", argv[1]);
    return 1;
  }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), static_cast<int>(prompt.size()),
                                       nullptr, 0, true, true);
  std::vector<llama_token> tokens(static_cast<size_t>(n_prompt));
  llama_tokenize(vocab, prompt.c_str(), static_cast<int>(prompt.size()), tokens.data(), n_prompt,
                 true, true);

  llama_context_params params = llama_context_default_params();
  params.n_ctx = static_cast<uint32_t>(n_prompt + n_predict);
  params.n_batch = static_cast<uint32_t>(n_prompt);
  params.n_threads = params.n_threads_batch = 2;
  params.type_k = params.type_v = GGML_TYPE_F32;
  params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context* ctx = llama_init_from_model(model, params);
  if (!ctx) {
    std::fprintf(stderr, "llama_greedy: cannot make a context\n");
    return 1;
  }
  std::printf("prompt");
  for (llama_token id : tokens) std::printf(" %d", id);
  std::printf("\n");

  const int n_vocab = llama_vocab_n_tokens(vocab);
  llama_batch batch = llama_batch_get_one(tokens.data(), n_prompt);
  llama_token next = 0;
  const char* end = "length";
  for (int generated = 0; generated < n_predict; ++generated) {
    if (llama_decode(ctx, batch)) {
      std::fprintf(stderr, "llama_greedy: decode failed\n");
      return 1;
    }
    const float* logits = llama_get_logits_ith(ctx, -1);
    std::vector<int> order(static_cast<size_t>(n_vocab));
    for (int i = 0; i < n_vocab; ++i) order[static_cast<size_t>(i)] = i;
    // Ties go to the lower id, as a first-maximum argmax does (llama.cpp's greedy sampler too).
    std::partial_sort(order.begin(), order.begin() + 2, order.end(), [&](int a, int b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    next = order[0];
    const float range =
        *std::max_element(logits, logits + n_vocab) - *std::min_element(logits, logits + n_vocab);
    std::printf("token %d %.9g %.9g %s\n", next, logits[order[0]] - logits[order[1]], range,
                hex_of_piece(vocab, next).c_str());
    if (llama_vocab_is_eog(vocab, next)) {
      end = "eog";
      break;
    }
    batch = llama_batch_get_one(&next, 1);
  }
  std::printf("end %s\n", end);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
