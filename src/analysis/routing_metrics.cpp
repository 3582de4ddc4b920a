#include "analysis/routing_metrics.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <string>

#include "tensor/error.h"

namespace moe {
namespace {

// -sum p ln p over counts with total `total`.
double entropy_of(std::span<const int64_t> counts, double total) {
  double h = 0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = double(c) / total;
      h -= p * std::log(p);
    }
  return h;
}

}  // namespace

double normalized_mutual_information(std::span<const int64_t> table, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0 || static_cast<int64_t>(table.size()) != rows * cols)
    throw Error("NMI: the table must hold rows x cols = " + std::to_string(rows) + " x " +
                std::to_string(cols) + " counts, got " + std::to_string(table.size()));
  std::vector<int64_t> row_sum(rows, 0), col_sum(cols, 0);
  double total = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t n = table[r * cols + c];
      if (n < 0) throw Error("NMI: negative count in the table");
      row_sum[r] += n;
      col_sum[c] += n;
      total += double(n);
    }
  if (total == 0) return 0;
  const double h_rows = entropy_of(row_sum, total), h_cols = entropy_of(col_sum, total);
  if (h_rows <= 0 || h_cols <= 0) return 0;
  double mi = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (const int64_t n = table[r * cols + c]; n > 0)
        mi += double(n) / total *
              std::log(double(n) * total / (double(row_sum[r]) * double(col_sum[c])));
  return std::clamp(mi / ((h_rows + h_cols) / 2), 0.0, 1.0);
}

int64_t assignments_over_capacity(std::span<const int64_t> counts, int64_t capacity) {
  if (capacity < 0) return 0;
  int64_t over = 0;
  for (int64_t c : counts) over += std::max<int64_t>(0, c - capacity);
  return over;
}

RepeatRate consecutive_repeats(std::span<const int32_t> top1, std::span<const int64_t> segment,
                               int64_t experts) {
  if (top1.size() != segment.size())
    throw Error("consecutive repeats: top1 and segment differ in length");
  RepeatRate r;
  std::vector<int64_t> count(experts, 0);
  int64_t routed = 0, repeats = 0;
  for (size_t i = 0; i < top1.size(); ++i) {
    if (top1[i] >= 0) {
      if (top1[i] >= experts) throw Error("consecutive repeats: expert index out of range");
      ++count[top1[i]];
      ++routed;
    }
    if (i > 0 && segment[i] == segment[i - 1]) {
      ++r.pairs;
      if (top1[i] >= 0 && top1[i] == top1[i - 1]) ++repeats;
    }
  }
  if (r.pairs > 0) r.rate = double(repeats) / double(r.pairs);
  for (int64_t c : count)
    if (routed > 0) r.chance += (double(c) / double(routed)) * (double(c) / double(routed));
  return r;
}

std::array<int64_t, 10> gate_histogram(std::span<const float> gates) {
  std::array<int64_t, 10> bins{};
  for (float g : gates) {
    const int b = std::clamp(static_cast<int>(std::floor(double(g) * 10.0)), 0, 9);
    ++bins[b];
  }
  return bins;
}

double changed_share(std::span<const int32_t> a, std::span<const int32_t> b) {
  if (a.size() != b.size()) throw Error("changed share: the two routings differ in length");
  if (a.empty()) return 0;
  int64_t changed = 0;
  for (size_t i = 0; i < a.size(); ++i) changed += a[i] != b[i];
  return double(changed) / double(a.size());
}

TokenClass classify_piece(std::string_view piece) {
  constexpr std::string_view kCode = "{}[]<>=+*/%&|^~#_\\@$`";
  // Control pieces (<s>, </s>, <unk>) separate documents: whitespace. Byte pieces <0xNN> are
  // classified by their byte.
  if (piece.size() == 6 && piece.starts_with("<0x") && piece.ends_with('>')) {
    int byte = 0;
    std::from_chars(piece.data() + 3, piece.data() + 5, byte, 16);
    if (byte >= 0x80) return TokenClass::Letters;
    const char c = static_cast<char>(byte);
    return classify_piece(std::string_view(&c, 1));
  }
  if (piece == "<s>" || piece == "</s>" || piece == "<unk>") return TokenClass::Whitespace;
  bool digit = false, code = false, punct = false;
  for (size_t i = 0; i < piece.size(); ++i) {
    const auto c = static_cast<unsigned char>(piece[i]);
    if (c >= 0x80) {
      // U+2581 (word start), U+21B5 (newline), U+21E5 (tab) are this tokenizer's whitespace.
      const std::string_view rest = piece.substr(i);
      if (rest.starts_with("\u2581") || rest.starts_with("\u21B5") || rest.starts_with("\u21E5")) {
        i += 2;
        continue;
      }
      return TokenClass::Letters;
    }
    if (std::isalpha(c)) return TokenClass::Letters;
    if (std::isdigit(c))
      digit = true;
    else if (kCode.find(static_cast<char>(c)) != std::string_view::npos)
      code = true;
    else if (std::ispunct(c))
      punct = true;
  }
  if (digit) return TokenClass::Digits;
  if (code) return TokenClass::CodeSymbols;
  if (punct) return TokenClass::Punctuation;
  return TokenClass::Whitespace;
}

std::vector<TokenLift> top_tokens_by_lift(std::span<const int64_t> expert_counts,
                                          std::span<const int64_t> token_totals, int64_t min_count,
                                          size_t limit) {
  if (expert_counts.size() != token_totals.size())
    throw Error("token lift: expert and total counts differ in vocabulary size");
  double n_e = 0, total = 0;
  for (size_t v = 0; v < token_totals.size(); ++v) {
    n_e += double(expert_counts[v]);
    total += double(token_totals[v]);
  }
  std::vector<TokenLift> out;
  if (n_e == 0) return out;
  for (size_t v = 0; v < token_totals.size(); ++v) {
    const int64_t n = expert_counts[v];
    if (n < std::max<int64_t>(min_count, 1)) continue;
    const double lift = (double(n) / n_e) / (double(token_totals[v]) / total);
    out.push_back({static_cast<int32_t>(v), lift, n});
  }
  std::sort(out.begin(), out.end(), [](const TokenLift& a, const TokenLift& b) {
    if (a.lift != b.lift) return a.lift > b.lift;
    if (a.count != b.count) return a.count > b.count;
    return a.token < b.token;
  });
  if (out.size() > limit) out.resize(limit);
  return out;
}

}  // namespace moe
