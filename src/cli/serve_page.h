#pragma once
// `moe serve`'s page at GET /: one self-contained HTML file (no outside resources) with a chat
// box that streams the answer, each token coloured by the expert it used in a chosen MoE layer,
// and a per-expert load bar fed by /metrics.
#include <string_view>

namespace moe::cli {

extern const std::string_view kServePage;

}  // namespace moe::cli
