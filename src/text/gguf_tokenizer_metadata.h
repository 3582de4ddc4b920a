#pragma once
// The tokenizer of a model folder as GGUF metadata (tokenizer.ggml.*), the inverse of
// text/gguf_tokenizer.h, laid out as llama.cpp's convert_hf_to_gguf.py lays it out:
//   - tokenizer.model (sentencepiece BPE: runs of `moe train`, Mixtral) -> model "llama":
//     pieces, scores, piece types, unk/bos/eos ids, add_space_prefix (the normalizer's dummy
//     prefix);
//   - tokenizer.json (byte-level BPE: Qwen2-MoE, OLMoE) -> model "gpt2": tokens by id with the
//     added tokens (special -> control, others user-defined), merges "a b", and
//     tokenizer.ggml.pre named after the pre-tokenizer's rules.
// A vocabulary shorter than the model's embedding is padded with unused "[PADn]" tokens, as the
// converter pads it. The chat template of tokenizer_config.json goes along.
#include <cstdint>
#include <string>

namespace moe {

class GgufHeader;
class GgufWriter;

// Where a folder's tokenizer comes from, for what its files do not say: runs of `moe train`
// never start prompts with BOS; a Hugging Face sentencepiece model does unless its
// tokenizer_config.json says otherwise.
enum class TokenizerFolderKind { Run, HuggingFace };

// Throws Error naming the folder or file when it has no tokenizer llama.cpp can read, or one
// with more tokens than vocab_size.
void add_folder_tokenizer_metadata(const std::string& dir, TokenizerFolderKind kind,
                                   int64_t vocab_size, GgufWriter& out);

// Every tokenizer.* key of a GGUF file's header, copied as it is.
void copy_tokenizer_metadata(const GgufHeader& header, GgufWriter& out);

}  // namespace moe
