// GgufWriter (tensor/gguf_writer.h) read back by the strict reader (tensor/gguf.h): every
// metadata type as a scalar and as an array, tensors of several types and odd sizes each at a
// multiple of 32 bytes with its bytes intact; a producer's wrong byte count and a missing folder
// are Errors that leave no file behind.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <numeric>

#include "tensor/error.h"
#include "tensor/gguf.h"
#include "tensor/gguf_writer.h"

namespace moe {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("moe_test_gguf_writer_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

TEST(GgufWriter, RoundTripsThroughTheReader) {
  GgufWriter w;
  w.set("general.architecture", gguf_scalar<std::string>("llama"));
  w.set("a.u8", gguf_scalar<uint8_t>(200));
  w.set("a.i8", gguf_scalar<int8_t>(-5));
  w.set("a.u16", gguf_scalar<uint16_t>(60000));
  w.set("a.i16", gguf_scalar<int16_t>(-30000));
  w.set("a.u32", gguf_scalar<uint32_t>(4000000000u));
  w.set("a.i32", gguf_scalar<int32_t>(-7));
  w.set("a.f32", gguf_scalar(1.5f));
  w.set("a.bool", gguf_scalar(true));
  w.set("a.u64", gguf_scalar<uint64_t>(uint64_t{1} << 40));
  w.set("a.i64", gguf_scalar<int64_t>(-(int64_t{1} << 40)));
  w.set("a.f64", gguf_scalar(0.25));
  w.set("a.strings", gguf_array<std::string>({"<s>", "", "\xe2\x96\x81x"}));
  w.set("a.floats", gguf_array<float>({-1.0f, 0.5f}));
  w.set("a.bools", gguf_array<bool>({true, false, true}));
  w.set("a.empty", gguf_array<int32_t>({}));
  EXPECT_THROW(w.set("a.u8", gguf_scalar<uint8_t>(1)), Error);

  std::vector<uint8_t> odd(3 * 5 * 4);  // f32 [3, 5]: 60 bytes, not a multiple of 32
  std::iota(odd.begin(), odd.end(), uint8_t{1});
  std::vector<uint8_t> blocks(2 * 34, 7);  // q8_0 [2 rows of 32]
  w.add_tensor("odd.weight", GgmlType::F32, {5, 3}, [&](std::vector<uint8_t>& out) { out = odd; });
  w.add_tensor("blocks.weight", GgmlType::Q8_0, {32, 2},
               [&](std::vector<uint8_t>& out) { out = blocks; });
  EXPECT_THROW(w.add_tensor("bad.weight", GgmlType::Q8_0, {24, 2}, {}), Error);
  EXPECT_THROW(w.add_tensor("odd.weight", GgmlType::F32, {1}, {}), Error);

  const std::string path = temp_path("roundtrip.gguf");
  w.write(path);
  {
    const GgufFile file(path);
    const GgufHeader& h = file.header();
    EXPECT_EQ(h.version(), 3u);
    EXPECT_EQ(h.get<std::string>("general.architecture"), "llama");
    EXPECT_EQ(h.get<uint8_t>("a.u8"), 200);
    EXPECT_EQ(h.get<int8_t>("a.i8"), -5);
    EXPECT_EQ(h.get<uint16_t>("a.u16"), 60000);
    EXPECT_EQ(h.get<int16_t>("a.i16"), -30000);
    EXPECT_EQ(h.get<uint32_t>("a.u32"), 4000000000u);
    EXPECT_EQ(h.get<int32_t>("a.i32"), -7);
    EXPECT_EQ(h.get<float>("a.f32"), 1.5f);
    EXPECT_EQ(h.get<bool>("a.bool"), true);
    EXPECT_EQ(h.get<uint64_t>("a.u64"), uint64_t{1} << 40);
    EXPECT_EQ(h.get<int64_t>("a.i64"), -(int64_t{1} << 40));
    EXPECT_EQ(h.get<double>("a.f64"), 0.25);
    EXPECT_EQ(h.get_array<std::string>("a.strings"),
              (std::vector<std::string>{"<s>", "", "\xe2\x96\x81x"}));
    EXPECT_EQ(h.get_array<float>("a.floats"), (std::vector<float>{-1.0f, 0.5f}));
    EXPECT_EQ(h.get_array<bool>("a.bools"), (std::vector<bool>{true, false, true}));
    EXPECT_TRUE(h.get_array<int32_t>("a.empty").empty());
    ASSERT_EQ(h.tensors().size(), 2u);
    const GgufTensorInfo& t = h.tensor("odd.weight");
    EXPECT_EQ(t.dims, (std::vector<int64_t>{5, 3}));
    EXPECT_EQ(h.tensor("blocks.weight").type, GgmlType::Q8_0);
    EXPECT_EQ(h.tensor("blocks.weight").offset % 32, 0u);
    const auto bytes_of = [&](const char* name) {
      const auto span = file.data(name);
      const auto* p = reinterpret_cast<const uint8_t*>(span.data());
      return std::vector<uint8_t>(p, p + span.size());
    };
    EXPECT_EQ(bytes_of("odd.weight"), odd);
    EXPECT_EQ(bytes_of("blocks.weight"), blocks);
  }
  std::filesystem::remove(path);
}

TEST(GgufWriter, LeavesNothingBehindOnError) {
  GgufWriter w;
  w.add_tensor("short.weight", GgmlType::F32, {4}, [](std::vector<uint8_t>& out) {
    out.assign(8, 0);  // 4 f32 values take 16 bytes
  });
  const std::string path = temp_path("short.gguf");
  EXPECT_THROW(w.write(path), Error);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_THROW(GgufWriter().write(temp_path("missing") + "/x.gguf"), Error);
}

}  // namespace
}  // namespace moe
