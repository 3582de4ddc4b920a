#pragma once
// Pure functions behind `moe eval`'s routing figures (docs/FORMULAS.md, "Routing analysis"):
// each takes plain arrays, so each is checked alone on hand-computed cases.
#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moe {

// Normalised mutual information of a contingency table (rows x cols counts, row-major):
// I(R; C) / ((H(R) + H(C)) / 2), natural logarithms (the base cancels). 0 when either
// variable takes a single value (nothing to explain) or the table is empty.
double normalized_mutual_information(std::span<const int64_t> table, int64_t rows, int64_t cols);

// Assignments a per-expert capacity would drop: sum over experts of max(0, count_e - capacity).
// The dispatcher keeps exactly `capacity` of an over-full expert's assignments whatever its
// drop policy (which only chooses which ones), so this is its drop count. capacity < 0: none.
int64_t assignments_over_capacity(std::span<const int64_t> counts, int64_t capacity);

// How often a position's top-1 expert equals the previous position's, against the chance rate
// sum_i f_i^2 (f_i: the share of positions whose top-1 is i). top1: [N] expert per position
// (-1: routed nowhere, never counts as a repeat and is left out of f); segment: [N], and only
// neighbours with the same segment id (the same document in the same window) form a pair.
struct RepeatRate {
  double rate = 0;    // repeats / pairs (0 when there is no pair)
  double chance = 0;  // sum_i f_i^2
  int64_t pairs = 0;
};
RepeatRate consecutive_repeats(std::span<const int32_t> top1, std::span<const int64_t> segment,
                               int64_t experts);

// Ten bins of width 0.1 over [0, 1]: bin b holds gates in [b/10, (b+1)/10), the last one
// [0.9, 1] and anything above 1 (routed_scaling_factor can scale gates past 1).
std::array<int64_t, 10> gate_histogram(std::span<const float> gates);

// Share of positions whose value differs between a and b (both [N]).
double changed_share(std::span<const int32_t> a, std::span<const int32_t> b);

// Coarse token classes, in the order of `kTokenClassNames`.
enum class TokenClass { Letters, Digits, Punctuation, Whitespace, CodeSymbols };
inline constexpr std::array<const char*, 5> kTokenClassNames = {"letters", "digits", "punctuation",
                                                                "whitespace", "code_symbols"};
// A tokenizer piece's class: letters when it holds a letter (any non-ASCII character counts as
// one), else digits when it holds a digit, else code symbols when it holds one of {}[]<>=+*/%&|
// ^~#_\@$`, else punctuation when it holds other ASCII punctuation, else whitespace (the
// word-start mark U+2581, the newline and tab marks U+21B5 / U+21E5, spaces, control pieces).
TokenClass classify_piece(std::string_view piece);

// Tokens over-represented at one expert: lift = (n_ve / n_e) / (n_v / N), n_ve the expert's
// count of token v, n_e its total, n_v the token's count over all experts, N the total.
struct TokenLift {
  int32_t token = 0;
  double lift = 0;
  int64_t count = 0;  // n_ve
};
// expert_counts, token_totals: [V]. The `limit` highest lifts among tokens with n_ve >=
// min_count, ties broken by higher count, then lower id.
std::vector<TokenLift> top_tokens_by_lift(std::span<const int64_t> expert_counts,
                                          std::span<const int64_t> token_totals, int64_t min_count,
                                          size_t limit);

}  // namespace moe
