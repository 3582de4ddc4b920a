// ggml's block formats (tensor/quant.h) against llama.cpp's own Python implementation
// (gguf-py's gguf.quants, run by ctest as the fixture reference.generate_quant, which writes
// MOE_REFERENCE_DIR/quant), and their products against the dequantized values.
//
// Tolerances:
//  - dequantization: bit for bit equal to gguf.quants (the same fp32 steps);
//  - Q8_0 and Q4_0 quantization: byte for byte equal to gguf.quants (ggml's reference);
//  - quantize -> dequantize, RMS error over RMS value of normal rows at three scales
//    (rms_bound, about 1.3x what our quantizers measure). Against ggml's own reference quantizers
//    (quantize_row_*_ref of the llama.cpp build in build-llama, measured once with a separate
//    program linked to libggml-base, not part of the suite), on 65,536 values each of normal,
//    heavy-tailed (normal * e^normal), uniform and 0.5%-outlier data, RMS error / RMS value:
//      q4_K 0.0712, 0.0984, 0.0546, 0.0899   q5_K 0.0360, 0.0516, 0.0276, 0.0495
//      q6_K 0.0178, 0.0287, 0.0133, 0.0331
//    the same for ours and ggml's to the last digit: all 1,024 blocks of each type were
//    byte-identical to ggml's (as were q8_0's and q4_0's), though only this test's q8_0 and
//    q4_0 checks hold identity in the suite (gguf-py has no K quantizers);
//  - vec_dot within 1e-5 * sum |w_i a_i| (+1e-30) of the double-precision sum of the
//    dequantized weights times the dequantized activations: the integer block sums are
//    exact, only the fp32 scaling and the sums of the block terms round;
//  - every kernel set: the same bits as the generic kernels (the integer sums are exact and
//    the fp32 steps after them run in one order in every set).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "tensor/bf16.h"
#include "tensor/cpu.h"
#include "tensor/quant.h"
#include "tensor/rng.h"
#include "test_util.h"

namespace moe {

// The name gtest (and ctest's test names) print for a parameter.
void PrintTo(QuantType type, std::ostream* os) {
  *os << quant_layout(type).name;
}

namespace {
using test::error_of;

constexpr QuantType kWeightTypes[] = {QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_K,
                                      QuantType::Q5_K, QuantType::Q6_K};

std::string type_name(const testing::TestParamInfo<QuantType>& info) {
  return std::string(quant_layout(info.param).name);
}

// The reference file DIR/<ggml name>.<what>, whole; a missing file fails the test.
std::vector<uint8_t> reference_bytes(QuantType type, const std::string& what) {
  const std::string path = std::string(MOE_REFERENCE_DIR) + "/quant/" +
                           std::string(quant_layout(type).name) + "." + what;
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path + " missing: run the fixture reference.generate_quant " +
                "(tests/reference/quant_reference.py, which needs llama.cpp's gguf-py)");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
std::vector<float> reference_floats(QuantType type, const std::string& what) {
  const std::vector<uint8_t> bytes = reference_bytes(type, what);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

std::vector<uint8_t> quantize(QuantType type, std::span<const float> x) {
  std::vector<uint8_t> bytes(static_cast<size_t>(quant_row_bytes(type, std::ssize(x))));
  quantize_row(type, x, bytes);
  return bytes;
}
std::vector<float> dequantize(QuantType type, std::span<const uint8_t> bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(type, bytes, out);
  return out;
}
std::vector<float> normal_values(int64_t n, uint64_t seed, float stddev = 1) {
  std::vector<float> x(static_cast<size_t>(n));
  Rng(seed).fill_normal(x, 0, stddev);
  return x;
}

std::vector<KernelSet> supported_sets() {
  std::vector<KernelSet> sets;
  for (KernelSet set : {KernelSet::Generic, KernelSet::Avx2, KernelSet::Avx512})
    if (cpu_supports(set)) sets.push_back(set);
  return sets;
}

TEST(QuantLayout, BlockSizesAreGgmls) {
  struct Expected {
    QuantType type;
    uint32_t ggml_id;
    int64_t values, bytes;
  };
  for (const Expected& e : {Expected{QuantType::Q4_0, 2, 32, 18},
                            {QuantType::Q8_0, 8, 32, 34},
                            {QuantType::Q4_K, 12, 256, 144},
                            {QuantType::Q5_K, 13, 256, 176},
                            {QuantType::Q6_K, 14, 256, 210},
                            {QuantType::Q8_K, 15, 256, 292}}) {
    EXPECT_EQ(static_cast<uint32_t>(e.type), e.ggml_id);
    EXPECT_EQ(quant_layout(e.type).block_values, e.values);
    EXPECT_EQ(quant_layout(e.type).block_bytes, e.bytes);
    EXPECT_EQ(quant_row_bytes(e.type, 3 * e.values), 3 * e.bytes);
  }
  EXPECT_EQ(activation_type(QuantType::Q4_0), QuantType::Q8_0);
  EXPECT_EQ(activation_type(QuantType::Q6_K), QuantType::Q8_K);
  EXPECT_NE(error_of([] { quant_row_bytes(QuantType::Q4_K, 300); }).find("256 values each"),
            std::string::npos);
  EXPECT_NE(error_of([] { quant_layout(static_cast<QuantType>(7)); }).find("id 7"),
            std::string::npos);
  EXPECT_NE(error_of([] { activation_type(QuantType::Q8_K); }).find("activation format"),
            std::string::npos);
}

// Every finite half round-trips; a value halfway between two halves goes to the even one.
TEST(QuantLayout, FloatToHalfRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00u) == 0x7C00u) continue;  // infinities and NaNs: below
    ASSERT_EQ(float_to_half(half_to_float(static_cast<uint16_t>(h))), h) << std::hex << h;
    if ((h & 0x7FFFu) >= 0x7BFFu) continue;  // the largest finite half has no next one here
    const float low = half_to_float(static_cast<uint16_t>(h));
    const float high = half_to_float(static_cast<uint16_t>(h + 1));
    const float middle = low + (high - low) / 2;  // exact: halves have 11 significant bits
    ASSERT_EQ(float_to_half(middle), (h % 2 == 0) ? h : h + 1) << std::hex << h;
    ASSERT_EQ(float_to_half(std::nextafter(middle, high)), h + 1) << std::hex << h;
    ASSERT_EQ(float_to_half(std::nextafter(middle, low)), h) << std::hex << h;
  }
  EXPECT_EQ(float_to_half(65519.0f), 0x7BFFu);
  EXPECT_EQ(float_to_half(65520.0f), 0x7C00u);
  EXPECT_EQ(float_to_half(-INFINITY), 0xFC00u);
  EXPECT_EQ(float_to_half(NAN) & 0x7E00u, 0x7E00u);
}

class QuantFormat : public testing::TestWithParam<QuantType> {};

TEST_P(QuantFormat, DequantizesAsGgufPy) {
  const QuantType type = GetParam();
  const std::vector<uint8_t> blocks = reference_bytes(type, "blocks");
  const std::vector<float> want = reference_floats(type, "values");
  const QuantLayout& layout = quant_layout(type);
  ASSERT_GT(blocks.size(), 0u);
  ASSERT_EQ(std::ssize(blocks) % layout.block_bytes, 0);
  ASSERT_EQ(std::ssize(want), std::ssize(blocks) / layout.block_bytes * layout.block_values);
  const std::vector<float> got = dequantize(type, blocks, std::ssize(want));
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
        << "value " << i << " (block " << i / layout.block_values << "): " << got[i] << " vs "
        << want[i];
}

// RMS error / RMS value of normal rows, quantized then dequantized: these rows measure q8_0
// 0.0054, q4_0 0.0860, q4_K 0.0716, q5_K 0.0362, q6_K 0.0178 (at every scale: the formats
// are scale-free but for fp16's range).
double rms_bound(QuantType type) {
  switch (type) {
    case QuantType::Q8_0:
      return 0.007;
    case QuantType::Q4_0:
      return 0.11;
    case QuantType::Q4_K:
      return 0.093;
    case QuantType::Q5_K:
      return 0.047;
    case QuantType::Q6_K:
      return 0.023;
    case QuantType::Q8_K:
      break;
  }
  return 0;
}

TEST_P(QuantFormat, QuantizeDequantizeErrorIsBounded) {
  const QuantType type = GetParam();
  for (float stddev : {1e-3f, 1.0f, 300.0f}) {
    const std::vector<float> x = normal_values(65536, 7, stddev);
    const std::vector<float> back = dequantize(type, quantize(type, x), std::ssize(x));
    double error2 = 0, value2 = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      error2 += (back[i] - double(x[i])) * (back[i] - double(x[i]));
      value2 += double(x[i]) * x[i];
    }
    const double relative_rms = std::sqrt(error2 / value2);
    EXPECT_LT(relative_rms, rms_bound(type)) << "stddev " << stddev;
    if (stddev == 1.0f)
      std::printf("%s: quantize -> dequantize RMS error / RMS value %.4f\n",
                  std::string(quant_layout(type).name).c_str(), relative_rms);
  }
}

// A zero block stays zero; a block with one value gives it back within the rounding of the
// fp16 scales (2^-11 relative each; the K formats' value adds two of them), the zeros too.
TEST_P(QuantFormat, FlatBlocksQuantizeClosely) {
  const QuantType type = GetParam();
  const int64_t n = quant_layout(type).block_values;
  std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
  for (float v : dequantize(type, quantize(type, zeros), n)) ASSERT_EQ(v, 0.0f);
  std::vector<float> one_value = zeros;
  one_value[5] = -0.75f;
  const std::vector<float> back = dequantize(type, quantize(type, one_value), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(back[i], one_value[i], 0.75 * 1.5e-3) << i;
}

// Magnitudes below fp16's range (the scales underflow: the values come back as about zero),
// subnormal floats, and large values: finite blocks with no value much beyond the largest
// input (the K formats' 6-bit sub-block scales round by up to 1/126), finite products.
TEST_P(QuantFormat, ExtremeMagnitudesGiveFiniteBlocks) {
  const QuantType type = GetParam();
  for (float stddev : {1e-40f, 1e-30f, 1e-9f, 1e4f}) {
    const std::vector<float> x = normal_values(4096, 8, stddev);
    float largest = 0;
    for (float v : x) largest = std::max(largest, std::fabs(v));
    const std::vector<uint8_t> q = quantize(type, x);
    for (float v : dequantize(type, q, std::ssize(x))) {
      ASSERT_TRUE(std::isfinite(v)) << "stddev " << stddev;
      ASSERT_LE(std::fabs(v), largest * 1.05f) << "stddev " << stddev;
    }
    EXPECT_TRUE(std::isfinite(vec_dot(type, q, quantize_activations(type, x), std::ssize(x))))
        << "stddev " << stddev;
  }
}

TEST_P(QuantFormat, RefusesNonFiniteValuesAndWrongSizes) {
  const QuantType type = GetParam();
  const int64_t n = quant_layout(type).block_values;
  std::vector<float> x(static_cast<size_t>(n), 1.0f);
  x[3] = NAN;
  std::vector<uint8_t> bytes(static_cast<size_t>(quant_row_bytes(type, n)));
  EXPECT_NE(error_of([&] { quantize_row(type, x, bytes); }).find("value 3"), std::string::npos);
  bytes.pop_back();
  EXPECT_NE(
      error_of([&] { dequantize_row(type, bytes, x); }).find("not " + std::to_string(bytes.size())),
      std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Quant, QuantFormat, testing::ValuesIn(kWeightTypes), type_name);

class GgmlReferenceQuantizer : public testing::TestWithParam<QuantType> {};

TEST_P(GgmlReferenceQuantizer, BytesEqualGgufPy) {
  const QuantType type = GetParam();
  const std::vector<float> source = reference_floats(type, "source");
  const std::vector<uint8_t> want = reference_bytes(type, "quantized");
  ASSERT_GT(source.size(), 0u);
  const std::vector<uint8_t> got = quantize(type, source);
  ASSERT_EQ(got.size(), want.size());
  const int64_t block_bytes = quant_layout(type).block_bytes;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(int(got[i]), int(want[i]))
        << "byte " << i % block_bytes << " of block " << i / block_bytes;
}

INSTANTIATE_TEST_SUITE_P(Quant, GgmlReferenceQuantizer,
                         testing::Values(QuantType::Q8_0, QuantType::Q4_0), type_name);

// Q8_K (the K formats' activations) as ggml's reference: d = max / -127 in fp32 (the value of
// largest magnitude becomes -127), quants to nearest, group sums of 16.
TEST(QuantActivations, Q8KIsGgmls) {
  std::vector<float> x = normal_values(512, 3);
  x[300] = 9.0f;  // the largest magnitude of block 1
  const std::vector<uint8_t> q = quantize(QuantType::Q8_K, x);
  ASSERT_EQ(q.size(), 2u * 292u);
  float d;
  std::memcpy(&d, q.data() + 292, sizeof d);
  EXPECT_EQ(d, 1.0f / (-127.0f / 9.0f));
  const auto* quants = reinterpret_cast<const int8_t*>(q.data() + 292 + 4);
  EXPECT_EQ(quants[300 - 256], -127);
  for (int block = 0; block < 2; ++block)
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += int8_t(q[292 * block + 4 + 16 * g + i]);
      int16_t stored;
      std::memcpy(&stored, q.data() + 292 * block + 260 + 2 * g, sizeof stored);
      ASSERT_EQ(stored, sum) << block << " " << g;
    }
  const std::vector<float> back = dequantize(QuantType::Q8_K, q, 512);
  for (int i = 0; i < 512; ++i) ASSERT_NEAR(back[i], x[i], std::fabs(d) / 2 * 1.0001) << i;
}

TEST(QuantActivations, NonFiniteActivationsGiveNaN) {
  std::vector<float> x = normal_values(512, 5);
  x[40] = INFINITY;
  for (QuantType type : kWeightTypes) {
    const std::vector<uint8_t> w = quantize(type, normal_values(512, 6));
    EXPECT_TRUE(std::isnan(vec_dot(type, w, quantize_activations(type, x), 512)))
        << quant_layout(type).name;
  }
}

// The products: the double-precision sum of the dequantized weights times the dequantized
// activations, and the generic kernels' bits under every kernel set.
class QuantDot : public testing::TestWithParam<QuantType> {
 protected:
  // Row lengths in blocks: 1, below and above the 8 blocks the 32-value kernels take a step,
  // and odd counts.
  std::vector<int64_t> lengths() const {
    const int64_t block = quant_layout(GetParam()).block_values;
    std::vector<int64_t> n;
    for (int64_t blocks : {1, 3, 7, 8, 9, 17, 31})
      if (block * blocks <= 8192) n.push_back(block * blocks);
    return n;
  }
};

struct Reference {
  double dot = 0, magnitude = 0;  // sum w a, sum |w a|
};
Reference reference_dot(QuantType type, std::span<const uint8_t> w, std::span<const uint8_t> a,
                        int64_t n) {
  const std::vector<float> wv = dequantize(type, w, n);
  const std::vector<float> av = dequantize(activation_type(type), a, n);
  Reference r;
  for (int64_t i = 0; i < n; ++i) {
    r.dot += double(wv[i]) * av[i];
    r.magnitude += std::fabs(double(wv[i]) * av[i]);
  }
  return r;
}

TEST_P(QuantDot, EqualsTheDequantizedProduct) {
  const QuantType type = GetParam();
  for (int64_t n : lengths()) {
    const std::vector<uint8_t> w = quantize(type, normal_values(n, 10 + n, 0.02f));
    const std::vector<uint8_t> a = quantize_activations(type, normal_values(n, 20 + n));
    const Reference want = reference_dot(type, w, a, n);
    EXPECT_NEAR(vec_dot(type, w, a, n), want.dot, 1e-5 * want.magnitude + 1e-30)
        << "n " << n << " under " << kernel_set_name(kernel_set());
  }
}

// Blocks of random bytes (gguf-py's reference blocks: any quant, scales of either sign down
// to subnormals), the corners of the integer ranges included.
TEST_P(QuantDot, ArbitraryBlocksEqualTheDequantizedProduct) {
  const QuantType type = GetParam();
  const std::vector<uint8_t> blocks = reference_bytes(type, "blocks");
  const int64_t n =
      std::ssize(blocks) / quant_layout(type).block_bytes * quant_layout(type).block_values;
  for (float stddev : {1.0f, 1e4f}) {
    const std::vector<uint8_t> a = quantize_activations(type, normal_values(n, 30, stddev));
    const Reference want = reference_dot(type, blocks, a, n);
    EXPECT_NEAR(vec_dot(type, blocks, a, n), want.dot, 1e-5 * want.magnitude + 1e-30)
        << "under " << kernel_set_name(kernel_set());
  }
}

// Quantized rows of each length, and gguf-py's random blocks (subnormal, zero and negative
// scales, every quant).
TEST_P(QuantDot, EveryKernelSetGivesTheGenericBits) {
  const QuantType type = GetParam();
  std::vector<std::vector<uint8_t>> rows;
  for (int64_t n : lengths()) rows.push_back(quantize(type, normal_values(n, 40 + n)));
  rows.push_back(reference_bytes(type, "blocks"));
  const KernelSet before = kernel_set();
  for (const std::vector<uint8_t>& w : rows) {
    const int64_t n =
        std::ssize(w) / quant_layout(type).block_bytes * quant_layout(type).block_values;
    const std::vector<uint8_t> a = quantize_activations(type, normal_values(n, 50 + n));
    set_kernel_set(KernelSet::Generic);
    const float want = vec_dot(type, w, a, n);
    for (KernelSet set : supported_sets()) {
      set_kernel_set(set);
      EXPECT_EQ(std::bit_cast<uint32_t>(vec_dot(type, w, a, n)), std::bit_cast<uint32_t>(want))
          << kernel_set_name(set) << ", n " << n;
    }
  }
  set_kernel_set(before);
}

// Odd row counts, threads splitting the rows (the larger shapes), and each row equal to its
// vec_dot with x quantized once.
TEST_P(QuantDot, MatvecEqualsRowByRowProducts) {
  const QuantType type = GetParam();
  const int64_t cols = 8 * quant_layout(type).block_values * (type == QuantType::Q8_0 ? 1 : 2);
  for (int64_t rows : {1, 3, 7, 33, 1001}) {
    const std::vector<float> x = normal_values(cols, 60 + rows);
    const std::vector<uint8_t> w = quantize(type, normal_values(rows * cols, 70 + rows, 0.02f));
    std::vector<float> y(static_cast<size_t>(rows), NAN);
    quantized_matvec(type, w, rows, cols, x, y);
    const std::vector<uint8_t> a = quantize_activations(type, x);
    const int64_t row_bytes = quant_row_bytes(type, cols);
    for (int64_t r = 0; r < rows; ++r) {
      const std::span<const uint8_t> row(w.data() + r * row_bytes, static_cast<size_t>(row_bytes));
      ASSERT_EQ(std::bit_cast<uint32_t>(y[r]), std::bit_cast<uint32_t>(vec_dot(type, row, a, cols)))
          << "row " << r << " of " << rows;
      const Reference want = reference_dot(type, row, a, cols);
      ASSERT_NEAR(y[r], want.dot, 1e-5 * want.magnitude + 1e-30) << "row " << r;
    }
  }
}

TEST_P(QuantDot, RefusesMismatchedSizes) {
  const QuantType type = GetParam();
  const int64_t n = 2 * quant_layout(type).block_values;
  const std::vector<uint8_t> w = quantize(type, normal_values(n, 80));
  const std::vector<uint8_t> a = quantize_activations(type, normal_values(n, 81));
  const std::span<const uint8_t> short_w(w.data(), w.size() - 1);
  EXPECT_NE(error_of([&] { vec_dot(type, short_w, a, n); }).find("weights"), std::string::npos);
  EXPECT_NE(
      error_of([&] { vec_dot(type, w, std::span(a).first(a.size() / 2), n); }).find("activations"),
      std::string::npos);
  std::vector<float> x(static_cast<size_t>(n)), y(2);
  EXPECT_NE(error_of([&] { quantized_matvec(type, w, 2, n, x, y); }).find("rows x cols"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quantized_matvec(type, w, 1, n, x, y); }).find("y rows"),
            std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Quant, QuantDot, testing::ValuesIn(kWeightTypes), type_name);

}  // namespace
}  // namespace moe
