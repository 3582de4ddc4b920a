#pragma once
// The inference engine over a training Transformer's weights, for the tests that hold the two
// forwards equal: the store's tensors under their Hugging Face names (as a run folder's
// model.safetensors holds them), matrices optionally rounded to bf16.
#include <cstdint>
#include <span>
#include <vector>

#include "infer/inference_model.h"
#include "infer/weights.h"
#include "model/hf_layout.h"
#include "model/transformer.h"
#include "tensor/bf16.h"

namespace moe::test {

inline OwnedWeights engine_weights(Transformer& model, ParamStore& store, bool bf16 = false) {
  OwnedWeights w;
  for (const HfTensorView& v : hf_tensor_views(model, store, HfWhich::Values)) {
    if (bf16 && v.shape.size() == 2) {
      std::vector<uint16_t> bits(v.data.size());
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_bf16(v.data[i]);
      w.add_bf16(v.name, v.shape, std::move(bits));
    } else {
      Tensor t(v.shape);
      std::copy(v.data.begin(), v.data.end(), t.data());
      w.add_f32(v.name, std::move(t));
    }
  }
  return w;
}

// Every position's next-token logits, [S, V]: tokens [0, prefill) as one forward (none when
// 0), then one token per forward.
inline std::vector<float> engine_logits(InferenceModel& engine, std::span<const int32_t> tokens,
                                        int64_t prefill = 0) {
  const int64_t S = static_cast<int64_t>(tokens.size()), V = engine.config().vocab_size;
  KvCache cache = engine.make_cache(S);
  std::vector<float> out(static_cast<size_t>(S * V));
  const auto row = [&](int64_t p) {
    return std::span<float>(out).subspan(size_t(p * V), size_t(V));
  };
  if (prefill > 0) engine.forward(tokens.subspan(0, size_t(prefill)), cache, row(prefill - 1));
  for (int64_t p = prefill; p < S; ++p) engine.forward(tokens.subspan(size_t(p), 1), cache, row(p));
  return out;
}

}  // namespace moe::test
