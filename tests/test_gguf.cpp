// The GGUF reader: files written by llama.cpp's own writer (gguf-py) read back key by key and
// byte by byte, and crafted files refused one lie at a time, each in one line naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tensor/gguf.h"
#include "test_util.h"

namespace moe {
namespace {

using test::error_of;
using test::temp_dir;
constexpr uint64_t kTwoTo63 = uint64_t{1} << 63;

// GGUF's fields written one at a time, little-endian, so that a test can lie in exactly one.
struct GgufBytes {
  std::vector<std::byte> bytes;

  template <typename T>
  GgufBytes& put(T value) {
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(T));
    return *this;
  }
  GgufBytes& raw(std::string_view text) {
    const auto* p = reinterpret_cast<const std::byte*>(text.data());
    bytes.insert(bytes.end(), p, p + text.size());
    return *this;
  }
  GgufBytes& str(std::string_view text) { return put<uint64_t>(text.size()).raw(text); }
  GgufBytes& header(uint64_t tensors, uint64_t metadata, uint32_t version = 3) {
    return raw("GGUF").put(version).put(tensors).put(metadata);
  }
  GgufBytes& key(std::string_view name, GgufValueType type) {
    return str(name).put(static_cast<uint32_t>(type));
  }
  GgufBytes& array(std::string_view name, GgufValueType element, uint64_t count) {
    return key(name, GgufValueType::Array).put(static_cast<uint32_t>(element)).put(count);
  }
  GgufBytes& tensor(std::string_view name, const std::vector<uint64_t>& dims, GgmlType type,
                    uint64_t offset) {
    return tensor(name, dims, static_cast<uint32_t>(type), offset);
  }
  GgufBytes& tensor(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type,
                    uint64_t offset) {
    str(name).put(static_cast<uint32_t>(dims.size()));
    for (const uint64_t d : dims) put(d);
    return put(type).put(offset);
  }
  GgufBytes& pad(size_t alignment) {
    return zeros((alignment - bytes.size() % alignment) % alignment);
  }
  GgufBytes& zeros(size_t count) {
    bytes.resize(bytes.size() + count);
    return *this;
  }
  // count bytes 0, 1, 2, ... (mod 251), so that a view at the wrong offset shows.
  GgufBytes& pattern(size_t count, uint8_t start) {
    for (size_t i = 0; i < count; ++i) put(static_cast<uint8_t>((start + i) % 251));
    return *this;
  }
};

// A small valid file: a string, a u32 and an array of strings, then an f32 [4, 2], an empty
// f32 [0, 3] and a q8_0 [32]; the last tensor's bytes end the file.
std::vector<std::byte> small_file(uint32_t version = 3) {
  GgufBytes f;
  f.header(3, 3, version);
  f.key("general.architecture", GgufValueType::String).str("llama");
  f.key("llama.block_count", GgufValueType::U32).put<uint32_t>(7);
  f.array("tokenizer.ggml.tokens", GgufValueType::String, 2).str("<s>").str("");
  f.tensor("a", {4, 2}, GgmlType::F32, 0);
  f.tensor("empty", {0, 3}, GgmlType::F32, 32);
  f.tensor("q", {32}, GgmlType::Q8_0, 32);
  f.pad(32).pattern(32, 1).pattern(34, 100);
  return f.bytes;
}

std::string write_file(const std::string& path, const std::vector<std::byte>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return path;
}

// Opens `bytes` as a file; the refusal, which must be one line starting with the file's path,
// without that path. "" when the file opens.
std::string refusal(const std::vector<std::byte>& bytes) {
  const std::string path = write_file(temp_dir("refusal") + "/crafted.gguf", bytes);
  const std::string message = error_of([&] { GgufFile file(path); });
  if (message.empty()) return "";
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
  return message.substr(std::min(message.size(), path.size() + 2));
}

TEST(Gguf, ReadsTheMetadataAndTensorTableOfVersions2And3) {
  for (const uint32_t version : {2u, 3u}) {
    SCOPED_TRACE(version);
    const auto bytes = small_file(version);
    const GgufHeader h = parse_gguf(bytes, "f.gguf");
    EXPECT_EQ(h.version(), version);
    EXPECT_EQ(h.alignment(), 32u);  // the default when general.alignment is absent
    EXPECT_EQ(h.get<std::string>("general.architecture"), "llama");
    EXPECT_EQ(h.get<uint32_t>("llama.block_count"), 7u);
    EXPECT_EQ(h.get_array<std::string>("tokenizer.ggml.tokens"),
              (std::vector<std::string>{"<s>", ""}));
    EXPECT_EQ(h.find("llama.block_count")->type_name(), "u32");
    EXPECT_EQ(h.find("tokenizer.ggml.tokens")->type_name(), "array of string");
    EXPECT_EQ(h.find("absent"), nullptr);
    ASSERT_EQ(h.tensors().size(), 3u);
    EXPECT_EQ(h.tensors()[0].name, "a");  // file order
    const GgufTensorInfo& q = h.tensor("q");
    EXPECT_EQ(q.type, GgmlType::Q8_0);
    EXPECT_EQ(q.dims, (std::vector<int64_t>{32}));
    EXPECT_EQ(q.elements, 32);
    EXPECT_EQ(q.bytes, 34u);
    EXPECT_EQ(q.offset, 32u);
    EXPECT_EQ(h.tensor("a").dims, (std::vector<int64_t>{4, 2}));
    EXPECT_EQ(h.tensor("a").bytes, 32u);
    EXPECT_EQ(h.tensor("empty").elements, 0);
    EXPECT_EQ(h.tensor("empty").bytes, 0u);
    EXPECT_EQ(h.data_start() % 32, 0u);
    EXPECT_EQ(h.data_start() + 66, bytes.size());
    EXPECT_EQ(h.find_tensor("absent"), nullptr);
    EXPECT_EQ(error_of([&] { h.tensor("absent"); }), "f.gguf: missing tensor 'absent'");
  }
}

TEST(Gguf, TypedGettersNameTheKeyAndBothTypes) {
  const GgufHeader h = parse_gguf(small_file(), "f.gguf");
  EXPECT_EQ(error_of([&] { h.get<uint64_t>("llama.block_count"); }),
            "f.gguf: metadata 'llama.block_count' is u32, expected u64");
  EXPECT_EQ(error_of([&] { h.get<int32_t>("llama.block_count"); }),
            "f.gguf: metadata 'llama.block_count' is u32, expected i32");
  EXPECT_EQ(error_of([&] { h.get_array<uint32_t>("llama.block_count"); }),
            "f.gguf: metadata 'llama.block_count' is u32, expected array of u32");
  EXPECT_EQ(error_of([&] { h.get<std::string>("tokenizer.ggml.tokens"); }),
            "f.gguf: metadata 'tokenizer.ggml.tokens' is array of string, expected string");
  EXPECT_EQ(error_of([&] { h.get_array<float>("tokenizer.ggml.scores"); }),
            "f.gguf: metadata 'tokenizer.ggml.scores' is missing (expected array of f32)");
  EXPECT_EQ(error_of([&] { h.get<bool>("general.architecture"); }),
            "f.gguf: metadata 'general.architecture' is string, expected bool");
}

// Mapped, each tensor is a view of the file's own bytes at the data section's start plus its
// offset, aligned in memory to the file's alignment.
TEST(Gguf, ViewsEachTensorsBytesInPlace) {
  const auto bytes = small_file();
  const std::string path = write_file(temp_dir("view") + "/small.gguf", bytes);
  GgufFile moved(path);
  const GgufFile file = std::move(moved);  // the mapping moves with the object
  EXPECT_EQ(file.path(), path);
  const auto a = file.data("a");
  ASSERT_EQ(a.size(), 32u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 32, 0u);
  const size_t start = file.header().data_start();
  EXPECT_EQ(std::memcmp(a.data(), bytes.data() + start, 32), 0);
  const auto q = file.data(file.header().tensor("q"));
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(std::memcmp(q.data(), bytes.data() + start + 32, 34), 0);
  EXPECT_EQ(static_cast<uint8_t>(q[0]), 100);
  EXPECT_TRUE(file.data("empty").empty());
  EXPECT_EQ(error_of([&] { file.data("absent"); }), path + ": missing tensor 'absent'");
}

TEST(Gguf, GeneralAlignmentMovesTheDataSection) {
  GgufBytes f;
  f.header(1, 1).key("general.alignment", GgufValueType::U32).put<uint32_t>(256);
  f.tensor("t", {2}, GgmlType::F16, 0).pad(256).pattern(4, 7);
  const GgufHeader h = parse_gguf(f.bytes, "f");
  EXPECT_EQ(h.alignment(), 256u);
  EXPECT_EQ(h.data_start(), 256u);
}

// What llama.cpp's reader refuses but this one reads (docs/ARCHITECTURE.md): tensors out of
// file order, a gap between them, no padding after the last.
TEST(Gguf, AcceptsTensorsInAnyOrderWithGaps) {
  GgufBytes f;
  f.header(2, 0).tensor("a", {4}, GgmlType::F32, 64).tensor("b", {4}, GgmlType::F32, 0);
  f.pad(32).pattern(16, 1).zeros(48).pattern(16, 50);
  const GgufHeader h = parse_gguf(f.bytes, "f");
  EXPECT_EQ(h.tensor("a").offset, 64u);
  EXPECT_EQ(h.data_start() + 80, f.bytes.size());
}

// Every prefix of a valid file is refused (the last tensor's bytes end the file), each with an
// Error: never a read past the end (the sanitizer build would catch one).
TEST(Gguf, RefusesEveryTruncation) {
  const auto bytes = small_file();
  for (size_t size = 0; size < bytes.size(); ++size) {
    const std::string message =
        error_of([&] { parse_gguf(std::span(bytes).first(size), "cut.gguf"); });
    ASSERT_EQ(message.rfind("cut.gguf: ", 0), 0u) << "prefix of " << size << " bytes: " << message;
  }
  EXPECT_EQ(refusal(std::vector<std::byte>(bytes.begin(), bytes.begin() + 100)),
            "truncated: metadata 'llama.block_count' at byte 98 needs 4 bytes, the file has 2 "
            "left");
  EXPECT_EQ(refusal(std::vector<std::byte>(bytes.begin(), bytes.end() - 1)),
            "tensor 'q': its 34 bytes at data offset 32 run past the end of the file (the data "
            "section holds 65 bytes; a truncated file?)");
}

struct Crafted {
  const char* lie;
  std::vector<std::byte> file;
  std::string refusal;  // a part of the message after "<path>: "
};

std::vector<Crafted> header_lies() {
  using T = GgufValueType;
  std::vector<Crafted> cases;
  const auto add = [&](const char* lie, GgufBytes f, std::string message) {
    cases.push_back({lie, std::move(f.bytes), std::move(message)});
  };
  add("magic", GgufBytes().raw("GGML").put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(0),
      "not a GGUF file (starts with 'GGML', not 'GGUF')");
  add("version 1", GgufBytes().header(0, 0, 1),
      "GGUF version 1 is not read (versions 2 and 3 are)");
  add("version 4", GgufBytes().header(0, 0, 4), "GGUF version 4 is not read");
  add("big-endian", GgufBytes().header(0, 0, 0x03000000u), "a big-endian file?");
  add("tensor count", GgufBytes().header(kTwoTo63, 0),
      "claims 9223372036854775808 tensors, more than the 0 bytes left");
  add("metadata count", GgufBytes().header(0, kTwoTo63).zeros(64),
      "claims 9223372036854775808 metadata entries, more than the 64 bytes left");
  add("key length", GgufBytes().header(0, 1).put<uint64_t>(kTwoTo63).zeros(16),
      "truncated: metadata key #0 of 9223372036854775808 bytes at byte 32 needs "
      "9223372036854775808 bytes, the file has 16 left");
  add("string length", GgufBytes().header(0, 1).key("s", T::String).put<uint64_t>(kTwoTo63),
      "truncated: metadata 's' of 9223372036854775808 bytes");
  add("2^63 strings", GgufBytes().header(0, 1).array("a", T::String, kTwoTo63).zeros(64),
      "metadata 'a' claims 9223372036854775808 elements of string, more than the 64 bytes left");
  add("2^62 u32", GgufBytes().header(0, 1).array("a", T::U32, kTwoTo63 >> 1).zeros(64),
      "metadata 'a' claims 4611686018427387904 elements of u32");
  add("value type", GgufBytes().header(0, 1).key("k", GgufValueType{13}).zeros(8),
      "metadata 'k' has unknown value type 13");
  add("array of arrays", GgufBytes().header(0, 1).array("k", T::Array, 1).zeros(16),
      "metadata 'k' is an array of arrays, which llama.cpp refuses");
  add("bool", GgufBytes().header(0, 1).key("b", T::Bool).put<uint8_t>(2),
      "metadata 'b' is a bool stored as 2, not 0 or 1");
  add("duplicate key",
      GgufBytes().header(0, 2).key("k", T::U8).put<uint8_t>(1).key("k", T::U8).put<uint8_t>(2),
      "metadata 'k' appears twice");
  add("control bytes in a key",
      GgufBytes()
          .header(0, 2)
          .key("a\nb", T::U8)
          .put<uint8_t>(1)
          .key("a\nb", T::U8)
          .put<uint8_t>(1),
      "metadata 'a\\x0ab' appears twice");
  add("empty key", GgufBytes().header(0, 1).key("", T::U8).put<uint8_t>(1).zeros(8),
      "metadata key #0 is empty");
  add("alignment type", GgufBytes().header(0, 1).key("general.alignment", T::I32).put<int32_t>(32),
      "metadata 'general.alignment' is i32, expected u32");
  add("alignment 48", GgufBytes().header(0, 1).key("general.alignment", T::U32).put<uint32_t>(48),
      "general.alignment is 48, not a power of 2");
  add("alignment 0", GgufBytes().header(0, 1).key("general.alignment", T::U32).put<uint32_t>(0),
      "general.alignment is 0, not a power of 2");
  return cases;
}

std::vector<Crafted> tensor_lies() {
  std::vector<Crafted> cases;
  // One tensor entry, then the aligned data section with `data` bytes.
  const auto one = [&](const char* lie, std::string_view name, std::vector<uint64_t> dims,
                       uint32_t type, uint64_t offset, size_t data, std::string message) {
    GgufBytes f;
    f.header(1, 0).tensor(name, dims, type, offset).pad(32).zeros(data);
    cases.push_back({lie, std::move(f.bytes), std::move(message)});
  };
  constexpr auto f32 = static_cast<uint32_t>(GgmlType::F32);
  one("five dims", "t", {1, 1, 1, 1, 1}, f32, 0, 4, "tensor 't' has 5 dimensions, ggml allows 4");
  one("negative dim", "t", {1, kTwoTo63}, f32, 0, 4,
      "tensor 't': dimension 1 is 9223372036854775808, beyond a signed 64-bit count");
  one("elements overflow", "t", {uint64_t{1} << 32, uint64_t{1} << 32}, f32, 0, 4,
      "tensor 't': dims [4294967296, 4294967296] hold more elements than fit in 64 bits");
  one("bytes overflow", "t", {uint64_t{1} << 31, uint64_t{1} << 31}, f32, 0, 4,
      "tensor 't': 4611686018427387904 f32 blocks need more bytes than fit in 64 bits");
  one("partial block", "t", {32, 1}, static_cast<uint32_t>(GgmlType::Q4_K), 0, 144,
      "tensor 't': rows of 32 elements are not whole q4_K blocks of 256");
  one("scalar of blocks", "t", {}, static_cast<uint32_t>(GgmlType::Q8_0), 0, 34,
      "tensor 't': rows of 1 elements are not whole q8_0 blocks of 32");
  one("unknown type", "t", {4}, 99, 0, 16, "tensor 't' has unknown ggml type 99");
  one("removed type", "t", {32}, 4, 0, 32, "tensor 't' has unknown ggml type 4");
  one("type past the table", "t", {4}, 43, 0, 16, "tensor 't' has unknown ggml type 43");
  one("long name", std::string(64, 'n'), {4}, f32, 0, 16, "name of 64 bytes, ggml allows 63");
  one("zero byte in a name", std::string("a\0b", 3), {4}, f32, 0, 16,
      "tensor 'a\\x00b': name holds a zero byte");
  one("misaligned", "t", {4}, f32, 16, 64,
      "tensor 't': data offset 16 is not a multiple of the alignment 32");
  one("offset out of the file", "t", {4}, f32, uint64_t{1} << 40, 16,
      "tensor 't': its 16 bytes at data offset 1099511627776 run past the end of the file");
  one("offset + size wraps", "t", {4}, f32, ~uint64_t{31}, 16,
      "tensor 't': its 16 bytes at data offset 18446744073709551584 run past the end");
  one("data cut short", "t", {4, 4}, f32, 0, 63,
      "tensor 't': its 64 bytes at data offset 0 run past the end of the file (the data section "
      "holds 63 bytes; a truncated file?)");
  {
    GgufBytes f;
    f.header(2, 0).tensor("a", {16}, GgmlType::F32, 0).tensor("b", {16}, GgmlType::F32, 32);
    f.pad(32).zeros(96);
    cases.push_back({"overlap", f.bytes, "tensors 'a' and 'b' overlap at data offset 32"});
  }
  {
    GgufBytes f;
    f.header(2, 0).tensor("t", {4}, GgmlType::F32, 0).tensor("t", {4}, GgmlType::F32, 32);
    f.pad(32).zeros(64);
    cases.push_back({"duplicate name", f.bytes, "tensor 't' appears twice"});
  }
  {
    GgufBytes f;
    f.header(1, 0).tensor("t", {0}, GgmlType::F32, 0);  // 57 bytes: no room to pad to 64
    cases.push_back({"no data section", f.bytes,
                     "truncated: the data section would start at byte 64, past the end of the "
                     "file (57 bytes)"});
  }
  return cases;
}

TEST(Gguf, RefusesEachLieInTheHeaderInOneLine) {
  for (const Crafted& c : header_lies()) {
    SCOPED_TRACE(c.lie);
    EXPECT_NE(refusal(c.file).find(c.refusal), std::string::npos)
        << refusal(c.file) << "\n  expected: " << c.refusal;
  }
}

TEST(Gguf, RefusesEachLieInTheTensorTableInOneLine) {
  for (const Crafted& c : tensor_lies()) {
    SCOPED_TRACE(c.lie);
    EXPECT_NE(refusal(c.file).find(c.refusal), std::string::npos)
        << refusal(c.file) << "\n  expected: " << c.refusal;
  }
}

TEST(Gguf, RefusesWhatIsNotAFile) {
  const std::string dir = temp_dir("not_a_file");
  EXPECT_NE(error_of([&] {
              GgufFile f(dir + "/missing.gguf");
            }).find(dir + "/missing.gguf: cannot open: No such file"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { GgufFile f(dir); }), dir + ": not a regular file");
  EXPECT_EQ(error_of([&] { GgufFile f(write_file(dir + "/empty.gguf", {})); }),
            dir + "/empty.gguf: empty file, not a GGUF file");
}

TEST(Gguf, TypeTableHasGgmlsBlockSizes) {
  const auto expect = [](GgmlType type, const char* name, uint32_t block, uint32_t bytes) {
    const GgmlTypeTraits& t = ggml_type_traits(type);
    EXPECT_STREQ(t.name, name);
    EXPECT_EQ(t.block_size, block) << name;
    EXPECT_EQ(t.block_bytes, bytes) << name;
  };
  expect(GgmlType::F32, "f32", 1, 4);
  expect(GgmlType::F16, "f16", 1, 2);
  expect(GgmlType::BF16, "bf16", 1, 2);
  expect(GgmlType::Q8_0, "q8_0", 32, 34);
  expect(GgmlType::Q4_0, "q4_0", 32, 18);
  expect(GgmlType::Q4_K, "q4_K", 256, 144);
  expect(GgmlType::Q5_K, "q5_K", 256, 176);
  expect(GgmlType::Q6_K, "q6_K", 256, 210);
  expect(GgmlType::Q8_K, "q8_K", 256, 292);
  EXPECT_EQ(find_ggml_type(5), nullptr);  // q4_3, removed from ggml
  EXPECT_EQ(find_ggml_type(1000), nullptr);
}

// --- Against llama.cpp's own writer -------------------------------------------------------

using nlohmann::json;

template <typename T>
void expect_value(const GgufHeader& h, const std::string& key, bool array, const json& want) {
  if (!array) {
    EXPECT_EQ(h.get<T>(key), want.get<T>()) << key;
    return;
  }
  const std::vector<T>& got = h.get_array<T>(key);
  ASSERT_EQ(got.size(), want.size()) << key;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(got[i], want[i].get<T>()) << key << "[" << i << "]";
}

void expect_entry(const GgufHeader& h, const json& entry) {
  const std::string key = entry.at("key"), type = entry.at("type");
  const bool array = entry.at("array");
  const json& want = entry.at("value");
  ASSERT_NE(h.find(key), nullptr) << key;
  EXPECT_EQ(h.find(key)->type_name(), (array ? "array of " : "") + type) << key;
  if (type == "u8") return expect_value<uint8_t>(h, key, array, want);
  if (type == "i8") return expect_value<int8_t>(h, key, array, want);
  if (type == "u16") return expect_value<uint16_t>(h, key, array, want);
  if (type == "i16") return expect_value<int16_t>(h, key, array, want);
  if (type == "u32") return expect_value<uint32_t>(h, key, array, want);
  if (type == "i32") return expect_value<int32_t>(h, key, array, want);
  if (type == "u64") return expect_value<uint64_t>(h, key, array, want);
  if (type == "i64") return expect_value<int64_t>(h, key, array, want);
  if (type == "f32") return expect_value<float>(h, key, array, want);
  if (type == "f64") return expect_value<double>(h, key, array, want);
  if (type == "bool") return expect_value<bool>(h, key, array, want);
  if (type == "string") return expect_value<std::string>(h, key, array, want);
  ADD_FAILURE() << key << ": the manifest names type " << type;
}

std::vector<std::byte> from_hex(const std::string& hex) {
  std::vector<std::byte> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<std::byte>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// The reference files are written by tests/reference/gguf_reference.py (the ctest fixture
// reference.generate_gguf) with gguf-py from llama.cpp's source: missing, they fail this test.
void expect_file_as_gguf_py_wrote_it(const std::string& name) {
  const std::string base = std::string(MOE_REFERENCE_DIR) + "/gguf/" + name;
  std::ifstream manifest_file(base + ".json");
  ASSERT_TRUE(manifest_file.good())
      << base << ".json is missing: run ctest's reference.generate_gguf (gguf-py from "
      << "scripts/llama_cpp_source.sh)";
  const json manifest = json::parse(manifest_file);
  const GgufFile file(base + ".gguf");
  const GgufHeader& h = file.header();
  EXPECT_EQ(h.version(), 3u);
  EXPECT_EQ(h.alignment(), manifest.at("alignment").get<uint32_t>());
  EXPECT_EQ(h.metadata().size(), manifest.at("metadata").size());
  for (const json& entry : manifest.at("metadata")) expect_entry(h, entry);

  const json& tensors = manifest.at("tensors");
  ASSERT_EQ(h.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GgufTensorInfo& t = h.tensors()[i];
    const std::string want_name = tensors[i].at("name");
    SCOPED_TRACE(want_name);
    EXPECT_EQ(t.name, want_name);
    EXPECT_EQ(static_cast<uint32_t>(t.type), tensors[i].at("type").get<uint32_t>());
    EXPECT_EQ(t.dims, tensors[i].at("dims").get<std::vector<int64_t>>());
    const std::vector<std::byte> want = from_hex(tensors[i].at("data"));
    const auto got = file.data(t);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size()), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data()) % h.alignment(), 0u);
  }
}

TEST(Gguf, ReadsWhatGgufPyWritesEveryValueAndTensorType) {
  expect_file_as_gguf_py_wrote_it("all_types");
}

TEST(Gguf, ReadsWhatGgufPyWritesWithItsOwnAlignment) {
  expect_file_as_gguf_py_wrote_it("aligned64");
}

}  // namespace
}  // namespace moe
