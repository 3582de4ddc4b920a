// Tensor, GEMM wrapper, Rng and the safetensors reader's defences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "tensor/atomic_file.h"
#include "tensor/bf16.h"
#include "tensor/cpu.h"
#include "tensor/error.h"
#include "tensor/fast_exp.h"
#include "tensor/gemm.h"
#include "tensor/mapped_safetensors.h"
#include "tensor/params.h"
#include "tensor/rng.h"
#include "tensor/safetensors.h"
#include "tensor/tensor.h"
#include "test_util.h"

namespace moe {
namespace {
using test::error_of;

TEST(Tensor, AlignedAndReusesCapacity) {
  Tensor t({3, 5});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  const float* p = t.data();
  t.resize({5, 3});
  EXPECT_EQ(t.data(), p);
  t.resize({2, 2});
  EXPECT_EQ(t.data(), p);
  EXPECT_EQ(t.numel(), 4);
}

TEST(Tensor, ShapeNumelRefusesOverflow) {
  EXPECT_EQ(shape_numel(Shape{1 << 20, 1 << 20, 1 << 20}), int64_t{1} << 60);
  // 2^32 * 2^32 wrapped to 0 before the check.
  EXPECT_NE(error_of([] {
              shape_numel(Shape{int64_t{1} << 32, int64_t{1} << 32});
            }).find("more elements than fit in 64 bits"),
            std::string::npos);
  EXPECT_THROW(shape_numel(Shape{3, -1}), Error);
}

TEST(Tensor, OutOfMemoryNamesTheBufferAndItsSize) {
  EXPECT_EQ(format_bytes(12), "12 bytes");
  EXPECT_EQ(format_bytes(uint64_t{4} << 30), "4.0 GiB");
  EXPECT_EQ(format_bytes(uint64_t{3} << 19), "1.5 MiB");
  // 2^50 floats = 4 PiB: more than any machine this runs on has.
  EXPECT_EQ(error_of([] { Tensor({int64_t{1} << 50}, "attention scratch"); }),
            "out of memory: attention scratch needs 4.0 PiB");
  try {
    Tensor({int64_t{1} << 40, 1 << 10});
    FAIL() << "allocated 4 PiB";
  } catch (const OutOfMemory& e) {
    EXPECT_EQ(std::string(e.what()),
              "out of memory: tensor of [1099511627776, 1024] needs 4.0 PiB");
    EXPECT_EQ(e.bytes(), uint64_t{1} << 52);
  }
  // 2^62 floats: the byte count itself wraps (to 0 before the fix, then filled: a crash).
  EXPECT_EQ(error_of([] { Tensor({int64_t{1} << 62}); }),
            "out of memory: tensor of [4611686018427387904] needs 16.0 EiB");
  // A failed resize leaves the tensor as it was.
  Tensor t({2, 3});
  t[5] = 7.0f;
  EXPECT_THROW(t.resize({int64_t{1} << 50}, "workspace"), OutOfMemory);
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t[5], 7.0f);
}

TEST(ParamStore, RefusesATotalThatOverflowsAndLabelsItsBuffers) {
  ParamStore store;
  store.add("a", {int64_t{1} << 40, int64_t{1} << 21});  // 2^61
  // 2^63 - 2^40 more: each shape fits, the running total does not.
  const std::string e = error_of([&] {
    store.add("b", {int64_t{1} << 40, (int64_t{1} << 23) - 1});
  });
  EXPECT_NE(e.find("parameter 'b'"), std::string::npos) << e;
  EXPECT_NE(e.find("overflows 64 bits"), std::string::npos) << e;
  EXPECT_EQ(error_of([&] { store.allocate(); }), "out of memory: parameters needs 8.0 EiB");
}

TEST(Gemm, MatchesNaiveForAllTransposes) {
  Rng rng(1);
  const int64_t M = 7, N = 5, K = 9;
  Tensor a({M, K}), at({K, M}), b({K, N}), bt({N, K}), c({M, N});
  rng.fill_normal(a.span(), 0, 1);
  rng.fill_normal(b.span(), 0, 1);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) at[k * M + i] = a[i * K + k];
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < N; ++j) bt[j * K + k] = b[k * N + j];
  for (auto ta : {Trans::No, Trans::Yes})
    for (auto tb : {Trans::No, Trans::Yes}) {
      c.fill(1.0f);
      gemm(ta, tb, M, N, K, 2.0f, ta == Trans::No ? a.data() : at.data(), ta == Trans::No ? K : M,
           tb == Trans::No ? b.data() : bt.data(), tb == Trans::No ? N : K, 0.5f, c.data(), N);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += a[i * K + k] * b[k * N + j];
          EXPECT_NEAR(c[i * N + j], 2 * s + 0.5, 1e-4);
        }
    }
}

// A x B^T with at most 6 rows of A takes gemm's own streaming path: check it for every row
// count (the 4-row blocks and the remainder), padded strides, both beta cases (beta 0 must
// not read C, here NaN), and a size large enough to be split among the threads.
TEST(Gemm, FewRowsTimesTransposeMatchesNaive) {
  Rng rng(2);
  for (const int64_t N : {int64_t{37}, int64_t{3000}})
    for (int64_t M = 1; M <= 8; ++M) {
      const int64_t K = 129, lda = K + 3, ldb = K + 5, ldc = N + 2;
      Tensor a({M, lda}), b({N, ldb}), c({M, ldc});
      rng.fill_normal(a.span(), 0, 1);
      rng.fill_normal(b.span(), 0, 1);
      for (const float beta : {0.0f, 0.5f}) {
        rng.fill_normal(c.span(), 0, 1);
        if (beta == 0.0f) c.fill(std::nanf(""));
        const Tensor before = c;
        gemm(Trans::No, Trans::Yes, M, N, K, 1.5f, a.data(), lda, b.data(), ldb, beta, c.data(),
             ldc);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < ldc; ++j) {
            if (j >= N) {  // padding untouched
              ASSERT_TRUE(std::isnan(c[i * ldc + j]) || c[i * ldc + j] == before[i * ldc + j]);
              continue;
            }
            double s = 0;
            for (int64_t k = 0; k < K; ++k) s += double(a[i * lda + k]) * b[j * ldb + k];
            const double want = 1.5 * s + (beta == 0.0f ? 0.0 : beta * before[i * ldc + j]);
            ASSERT_NEAR(c[i * ldc + j], want, 1e-5 * (1 + std::abs(want)))
                << "M=" << M << " N=" << N << " beta=" << beta << " at " << i << "," << j;
          }
      }
    }
}

TEST(Bf16, RoundsToNearestEvenAndKeepsSpecials) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0); a hair
  // above rounds up.
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-7f + 0x1p-8f), 0x3F82);  // tie with an odd mantissa: up
  EXPECT_EQ(float_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(float_to_bf16(3.4e38f), 0x7F80);  // past bf16's largest finite: infinity
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(-std::nanf("")))));
}

// gemm_bf16_weight against a double-precision product of the same bf16 weights, for the
// streaming path (m <= 6) and each many-row kernel this CPU runs; k straddles the AVX512
// kernel's 32-wide steps and n, m its 4-wide tiles. Widened kernels multiply exactly: 1e-5
// of sum |a||b|. The AVX512-BF16 kernel rounds A to bf16 first (relative error 2^-9 per
// product): 2^-8 of sum |a||b|.
TEST(Gemm, Bf16WeightMatchesWidenedProduct) {
  Rng rng(5);
  std::vector<Bf16Kernel> kernels = {Bf16Kernel::WidenToSgemm};
  if (use_avx512_bf16()) kernels.push_back(Bf16Kernel::Avx512Bf16);
  for (const Bf16Kernel kernel : kernels)
    for (const int64_t M : {int64_t{1}, int64_t{5}, int64_t{7}, int64_t{33}})
      for (const int64_t N : {int64_t{1}, int64_t{6}, int64_t{300}})
        for (const int64_t K : {int64_t{1}, int64_t{31}, int64_t{32}, int64_t{97}}) {
          const int64_t lda = K + 1, ldb = K + 3, ldc = N + 2;
          Tensor a({M, lda}), wf({N, ldb}), c({M, ldc});
          rng.fill_normal(a.span(), 0, 1);
          rng.fill_normal(wf.span(), 0, 1);
          c.fill(std::nanf(""));
          std::vector<uint16_t> w(static_cast<size_t>(N * ldb));
          for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_bf16(wf[static_cast<int64_t>(i)]);
          gemm_bf16_weight(M, N, K, a.data(), lda, w.data(), ldb, c.data(), ldc, kernel);
          const bool rounds_a = kernel == Bf16Kernel::Avx512Bf16 && M > 6;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double want = 0, scale = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double p = double(a[i * lda + k]) * bf16_to_float(w[j * ldb + k]);
                want += p;
                scale += std::abs(p);
              }
              const double tol = (rounds_a ? 0x1p-8 : 1e-5) * scale + 1e-6;
              ASSERT_NEAR(c[i * ldc + j], want, tol)
                  << "M=" << M << " N=" << N << " K=" << K << " at " << i << "," << j;
            }
        }
}

// gemm_few_rows over ranges of W's rows, as the decode step's threads call it, gives gemm's and
// gemm_bf16_weight's bits for every row count it takes.
TEST(Gemm, FewRowsOverRangesGivesTheWholeProductsBits) {
  Rng rng(9);
  const int64_t N = 300, K = 1000;
  for (int64_t M = 1; M <= 6; ++M) {
    Tensor a({M, K}), wf({N, K}), whole({M, N}), parts({M, N});
    rng.fill_normal(a.span(), 0, 1);
    rng.fill_normal(wf.span(), 0, 1);
    std::vector<uint16_t> w(static_cast<size_t>(N * K));
    for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_bf16(wf[static_cast<int64_t>(i)]);
    for (const bool bf16 : {false, true}) {
      if (bf16)
        gemm_bf16_weight(M, N, K, a.data(), K, w.data(), K, whole.data(), N);
      else
        gemm(Trans::No, Trans::Yes, M, N, K, 1.0f, a.data(), K, wf.data(), K, 0.0f, whole.data(),
             N);
      for (const auto& [j0, j1] : {std::pair<int64_t, int64_t>{0, 7}, {7, 150}, {150, N}}) {
        if (bf16)
          gemm_few_rows(M, j0, j1, K, a.data(), K, w.data(), K, parts.data(), N);
        else
          gemm_few_rows(M, j0, j1, K, a.data(), K, wf.data(), K, parts.data(), N);
      }
      for (int64_t i = 0; i < M * N; ++i)
        ASSERT_EQ(parts[i], whole[i]) << "M=" << M << (bf16 ? " bf16" : " fp32") << " at " << i;
    }
  }
}

TEST(Rng, ReproducibleAndRoughlyNormal) {
  Rng a(42), b(42);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  Rng r(7);
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double v = r.normal();
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.02);
  EXPECT_NE(Rng::for_purpose(1, 1).next_u64(), Rng::for_purpose(1, 2).next_u64());
}

std::vector<char> make_file(const std::string& header, size_t data_bytes) {
  std::vector<char> bytes(8 + header.size() + data_bytes, 0);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  return bytes;
}

void expect_rejected(const std::string& header, size_t data_bytes, const std::string& needle) {
  try {
    parse_safetensors(make_file(header, data_bytes), "f");
    FAIL() << "accepted " << header;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RoundTripAtomicWrite) {
  const std::string path = testing::TempDir() + "/rt.safetensors";
  Tensor a({2, 3});
  for (int i = 0; i < 6; ++i) a[i] = static_cast<float>(i) - 2.5f;
  write_safetensors(path, {{"a", a}, {"b", Tensor({4})}}, {{"format", "pt"}});
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const auto f = read_safetensors(path);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.at("a").shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f.at("a")[i], a[i]);
  EXPECT_THROW(f.at("c"), Error);
}

// A process killed while writing leaves "<path>.tmp" behind, possibly longer than the next
// file. The next write must give exactly its own bytes (not them followed by the stale tail),
// over a longer old file too, and leave no temporary; dropped uncommitted, the old file stays.
TEST(AtomicFile, AWriteOverALongerStaleTemporaryGivesExactlyTheNewBytes) {
  const std::string path = test::temp_dir("stale") + "/state.json";
  const auto contents = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::ofstream(path + ".tmp", std::ios::binary) << std::string(5000, 'x');
  write_file_atomic(path, "{\"step\": 12}");
  EXPECT_EQ(contents(), "{\"step\": 12}");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  std::ofstream(path + ".tmp", std::ios::binary) << std::string(5000, 'y');
  {
    AtomicFile f(path);
    f.write("ab", 2);
    f.write("c", 1);
    f.commit();
  }
  EXPECT_EQ(contents(), "abc");  // shorter than both the old file and the stale temporary

  {
    AtomicFile dropped(path);
    dropped.write("never", 5);
  }
  EXPECT_EQ(contents(), "abc");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(Safetensors, ReadsHalfAndBfloat16) {
  // 1.0 in F16 is 0x3C00, -2.0 in BF16 is 0xC000.
  auto bytes = make_file(
      R"({"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[2,4]}})",
      4);
  const size_t base = bytes.size() - 4;
  bytes[base] = 0x00;
  bytes[base + 1] = 0x3C;
  bytes[base + 2] = 0x00;
  bytes[base + 3] = static_cast<char>(0xC0);
  const auto f = parse_safetensors(bytes, "f");
  EXPECT_EQ(f.at("h")[0], 1.0f);
  EXPECT_EQ(f.at("b")[0], -2.0f);
}

TEST(Safetensors, EmptyTensorsRoundTrip) {
  // A dimension of 0 is legal: the tensor owns no buffer and its data range is empty. Under the
  // sanitizer build this fails if any copy is handed the empty tensor's null pointer.
  const auto f =
      parse_safetensors(make_file(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
                                  R"("h":{"dtype":"BF16","shape":[2,0],"data_offsets":[0,0]}})",
                                  0),
                        "f");
  EXPECT_EQ(f.at("e").shape(), (Shape{0, 3}));
  EXPECT_EQ(f.at("h").numel(), 0);
  const std::string path = testing::TempDir() + "/empty.safetensors";
  write_safetensors(path, {{"e", f.at("e")}, {"a", Tensor({1})}}, {});
  const auto g = read_safetensors(path);
  EXPECT_EQ(g.at("e").shape(), (Shape{0, 3}));
  EXPECT_EQ(g.at("a").numel(), 1);
}

// Mapped, a file's tensors are views of its bytes: fp32 as written, bf16 still bf16 (the
// rounding write_safetensors applied, nothing more). Its header gets the copying reader's
// checks, and data not aligned to its elements is refused rather than read unaligned.
TEST(MappedSafetensors, ViewsTheFileAsWritten) {
  const std::string dir = testing::TempDir();
  Tensor a({3, 5});
  Rng(3).fill_normal(a.span(), 0, 1);
  write_safetensors(dir + "/f32.safetensors", {{"a", a}, {"b", Tensor({2})}});
  write_safetensors(dir + "/bf16.safetensors", {{"a", a}}, {}, StoredDtype::BF16);
  MappedSafetensors f32(dir + "/f32.safetensors"), bf16(dir + "/bf16.safetensors");
  const WeightView va = f32.view("a");
  EXPECT_EQ(va.shape, (Shape{3, 5}));
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(va.f32()[i], a[i]);
  EXPECT_THROW(va.bf16(), Error);
  const auto h = bf16.view("a").bf16();
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(h[i], float_to_bf16(a[i]));
  EXPECT_NE(error_of([&] { f32.view("c"); }).find("missing tensor 'c'"), std::string::npos);
  MappedSafetensors moved = std::move(f32);
  EXPECT_EQ(moved.view("b").numel(), 2);

  const auto write = [&](const std::vector<char>& bytes, size_t keep) {
    std::ofstream(dir + "/bad.safetensors", std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(keep));
    return error_of([&] { MappedSafetensors m(dir + "/bad.safetensors"); });
  };
  // A header of odd length puts a bf16 tensor at an odd byte.
  std::string header = R"({"p":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})";
  if (header.size() % 2 == 0) header += ' ';
  const auto odd = make_file(header, 2);
  EXPECT_NE(write(odd, odd.size()).find("not aligned"), std::string::npos);
  // Mixed dtypes: the data section starts aligned, and a 2-byte bf16 tensor puts the f32
  // tensor after it at byte 2 of the data: that one, not the first, is refused by name. Four
  // bytes of bf16 put it at byte 4, which maps.
  const auto mixed = [&](int bf16_elements) {
    const std::string b_begin = std::to_string(2 * bf16_elements);
    std::string h = R"({"a":{"dtype":"BF16","shape":[)" + std::to_string(bf16_elements) +
                    R"(],"data_offsets":[0,)" + b_begin + R"(]},"b":{"dtype":"F32","shape":[1],)" +
                    R"("data_offsets":[)" + b_begin + "," + std::to_string(2 * bf16_elements + 4) +
                    "]}}";
    while ((8 + h.size()) % 8 != 0) h += ' ';
    return make_file(h, static_cast<size_t>(2 * bf16_elements + 4));
  };
  const auto second_misaligned = mixed(1);
  const std::string refused = write(second_misaligned, second_misaligned.size());
  EXPECT_NE(refused.find("tensor 'b'"), std::string::npos) << refused;
  EXPECT_NE(refused.find("not aligned"), std::string::npos) << refused;
  const auto second_aligned = mixed(2);
  EXPECT_EQ(write(second_aligned, second_aligned.size()), "");
  const auto full = make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_NE(write(full, full.size() - 3).find("out of range"), std::string::npos);
  EXPECT_NE(write(full, 5).find("too short"), std::string::npos);
  EXPECT_NE(write(full, 0).find("too short"), std::string::npos);
}

TEST(Safetensors, RejectsEachKindOfCorruption) {
  EXPECT_THROW(parse_safetensors(std::vector<char>(5, 0), "f"), Error);
  auto huge = make_file("{}", 0);
  huge[7] = 0x01;  // header length 2^56
  EXPECT_THROW(parse_safetensors(huge, "f"), Error);
  auto past_end = make_file("{}", 0);
  past_end[0] = 100;
  EXPECT_THROW(parse_safetensors(past_end, "f"), Error);
  expect_rejected("[1,2]", 0, "not a JSON object");
  expect_rejected("{not json", 0, "not valid JSON");
  expect_rejected(R"({"w":{"dtype":"I7","shape":[1],"data_offsets":[0,4]}})", 4, "'w'");
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4, "'w'");
  expect_rejected(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 4, "'w'");
  expect_rejected(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      12, "overlap");
  expect_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, "hole");
  expect_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8, "trailing");
  expect_rejected(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "'a'");
  expect_rejected(R"({"a":{"dtype":"F32","shape":[1]}})", 4, "'a'");
}

// Headers whose sizes overflow 64 bits. The first is the ~100-byte file that crashed
// `moe generate`: 2^31 * 2^31 floats * 4 bytes wraps to exactly 0, matching data_offsets
// [0, 0], and the reader then filled a zero-byte buffer with 2^62 floats.
TEST(Safetensors, RefusesSizesThatOverflow) {
  expect_rejected(
      R"({"w":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})", 0,
      "tensor 'w': shape [2147483648, 2147483648] of F32 needs more bytes than fit in 64 bits");
  // In 16 bits the same shape needs 2^63 bytes: no wrap, and the offsets disagree.
  expect_rejected(R"({"w":{"dtype":"BF16","shape":[2147483648,2147483648],"data_offsets":[0,0]}})",
                  0, "needs 9223372036854775808 bytes, offsets give 0");
  // Element counts that wrap: 2^20 to the fourth is 2^80.
  expect_rejected(
      R"({"w":{"dtype":"F16","shape":[1048576,1048576,1048576,1048576],"data_offsets":[0,0]}})", 0,
      "tensor 'w': shape [1048576, 1048576, 1048576, 1048576] has more elements than fit in 64 "
      "bits");
  // A count of 2^39 * 2^24 = 2^63 fits uint64 but not a Tensor's int64.
  expect_rejected(R"({"w":{"dtype":"F32","shape":[549755813888,16777216],"data_offsets":[0,0]}})",
                  0, "more elements than fit in 64 bits");
  // Offsets at the top of uint64: their difference must not wrap into a plausible size.
  expect_rejected(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551615,3]}})", 4,
                  "out of range");
  expect_rejected(
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551615]}})",
      4, "out of range");
  // And the file itself: a folder opens, but its size reads as absurd.
  EXPECT_THROW(read_safetensors(testing::TempDir()), Error);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(FastExp, WithinAFewUlpOfStdExpAndKeepsSpecialValues) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.000917) {
    const float xf = static_cast<float>(x);
    const double ref = std::exp(double(xf));
    worst = std::max(worst, std::abs(double(fast_exp(xf)) - ref) / ref);
  }
  EXPECT_LT(worst, 2.5e-7) << "worst relative error";
  EXPECT_EQ(fast_exp(0.0f), 1.0f);
  EXPECT_EQ(fast_exp(-1000.0f) < 1e-37f, true);
  EXPECT_TRUE(std::isinf(fast_exp(1000.0f)));
  EXPECT_TRUE(std::isnan(fast_exp(std::nanf(""))));
}

}  // namespace
}  // namespace moe
