#include "tensor/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tensor/atomic_file.h"
#include "tensor/bf16.h"
#include "tensor/error.h"
#include "tensor/json_field.h"

namespace moe {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

size_t dtype_size(const std::string& dtype, const std::string& where) {
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  throw Error(where + ": unsupported dtype '" + dtype + "' (expected F32, F16 or BF16)");
}

// The header's length from the file's first 8 bytes (little-endian), checked against the file
// and against the bytes read. head: the file's first bytes.
uint64_t header_length(std::span<const char> head, uint64_t file_size, const std::string& source) {
  require(file_size >= 8 && head.size() >= 8, source +
                                                  ": file too short for a safetensors header (" +
                                                  std::to_string(file_size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(head[i]);
  require(header_len <= kMaxHeaderBytes,
          source + ": header length " + std::to_string(header_len) + " exceeds 100 MB");
  require(header_len <= file_size - 8, source + ": header length " + std::to_string(header_len) +
                                           " runs past the end of the file");
  require(head.size() - 8 >= header_len, source + ": header cut short");
  return header_len;
}

void read_metadata(const nlohmann::json& entry, const std::string& source,
                   std::map<std::string, std::string>& metadata) {
  require(entry.is_object(), source + ": __metadata__ is not an object");
  for (auto& [key, value] : entry.items()) {
    require(value.is_string(), source + ": __metadata__['" + key + "'] is not a string");
    metadata[key] = value.get<std::string>();
  }
}

// The bytes a tensor of `shape` and `elem`-byte values holds. Every size comes from the file:
// products are checked, so a shape whose byte count wraps to the offsets' span is refused
// instead of allocated short.
uint64_t tensor_bytes(const Shape& shape, size_t elem, const std::string& dtype,
                      const std::string& where) {
  uint64_t numel = 1;
  for (int64_t dim : shape)
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel) ||
        numel > uint64_t{INT64_MAX})
      throw Error(where + ": shape " + shape_str(shape) + " has more elements than fit in 64 bits");
  uint64_t bytes_needed = 0;
  if (__builtin_mul_overflow(numel, elem, &bytes_needed))
    throw Error(where + ": shape " + shape_str(shape) + " of " + dtype +
                " needs more bytes than fit in 64 bits");
  return bytes_needed;
}

// One tensor's entry: dtype, shape and data_offsets, its byte range inside the data section
// (data_bytes long) and as long as its shape needs.
SafetensorsEntry read_entry(const nlohmann::json& entry, const std::string& where,
                            uint64_t data_bytes) {
  require(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
              entry.contains("data_offsets"),
          where + ": needs dtype, shape and data_offsets");
  require(entry["dtype"].is_string(), where + ": dtype is not a string");
  const std::string dtype = entry["dtype"].get<std::string>();
  const size_t elem = dtype_size(dtype, where);
  Shape shape;
  require(entry["shape"].is_array(), where + ": shape is not an array");
  for (auto& d : entry["shape"]) {
    require(d.is_number_unsigned(), where + ": shape has a non-natural dimension");
    const uint64_t dim = d.get<uint64_t>();
    require(dim < (1ull << 40), where + ": absurd dimension " + std::to_string(dim));
    shape.push_back(static_cast<int64_t>(dim));
  }
  const uint64_t bytes_needed = tensor_bytes(shape, elem, dtype, where);
  auto& offsets = entry["data_offsets"];
  require(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
              offsets[1].is_number_unsigned(),
          where + ": data_offsets must be two natural numbers");
  const uint64_t begin = offsets[0].get<uint64_t>();
  const uint64_t end = offsets[1].get<uint64_t>();
  require(begin <= end && end <= data_bytes,
          where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
              "] out of range (data section is " + std::to_string(data_bytes) +
              " bytes; a truncated file?)");
  require(end - begin == bytes_needed, where + ": shape " + shape_str(shape) + " of " + dtype +
                                           " needs " + std::to_string(bytes_needed) +
                                           " bytes, offsets give " + std::to_string(end - begin));
  const TensorDtype type = dtype == "F32"   ? TensorDtype::F32
                           : dtype == "F16" ? TensorDtype::F16
                                            : TensorDtype::BF16;
  return SafetensorsEntry{type, std::move(shape), begin, end};
}

// The tensors' byte ranges must tile the data section: no overlap, no hole, no trailing bytes.
void check_ranges_tile(std::vector<std::pair<uint64_t, uint64_t>> ranges, uint64_t data_bytes,
                       const std::string& source) {
  std::sort(ranges.begin(), ranges.end());
  uint64_t cursor = 0;
  for (auto [begin, end] : ranges) {
    require(begin >= cursor,
            source + ": tensor data ranges overlap at byte " + std::to_string(begin));
    require(begin == cursor,
            source + ": hole in the data section at byte " + std::to_string(cursor));
    cursor = end;
  }
  require(cursor == data_bytes, source + ": " + std::to_string(data_bytes - cursor) +
                                    " trailing bytes after the last tensor");
}

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw Error("missing tensor '" + name + "'");
  return it->second;
}

SafetensorsHeader parse_safetensors_header(std::span<const char> head, uint64_t file_size,
                                           const std::string& source) {
  const uint64_t header_len = header_length(head, file_size, source);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(head.begin() + 8, head.begin() + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": header is not valid JSON: " + json_error_text(e));
  }
  require(header.is_object(), source + ": header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + header_len;
  out.data_bytes = file_size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      read_metadata(entry, source, out.metadata);
      continue;
    }
    SafetensorsEntry tensor = read_entry(entry, source + ": tensor '" + name + "'", out.data_bytes);
    ranges.emplace_back(tensor.begin, tensor.end);
    out.tensors.emplace(name, std::move(tensor));
  }
  check_ranges_tile(std::move(ranges), out.data_bytes, source);
  return out;
}

void convert_to_float(TensorDtype dtype, std::span<const char> raw, std::span<float> out) {
  const size_t n = out.size();
  require(raw.size() == n * dtype_bytes(dtype), "convert_to_float: size mismatch");
  if (dtype == TensorDtype::F32) {
    if (n > 0) std::memcpy(out.data(), raw.data(), n * 4);  // memcpy wants a real pointer
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, raw.data() + 2 * i, 2);
    out[i] = dtype == TensorDtype::F16 ? half_to_float(v) : bf16_to_float(v);
  }
}

SafetensorsFile parse_safetensors(const std::vector<char>& bytes, const std::string& source) {
  const SafetensorsHeader header = parse_safetensors_header(bytes, bytes.size(), source);
  SafetensorsFile file;
  file.metadata = header.metadata;
  const char* data = bytes.data() + header.data_start;
  for (const auto& [name, e] : header.tensors) {
    Tensor t(e.shape, source + ": tensor '" + name + "'");
    convert_to_float(e.dtype, {data + e.begin, data + e.end}, t.span());
    file.tensors.emplace(name, std::move(t));
  }
  return file;
}

namespace {

// Opens a regular file for reading at its start; returns its size. A folder opens as a stream
// whose size reads as absurd: what the path is gets checked first.
std::streamsize open_for_reading(const std::string& path, std::ifstream& in) {
  std::error_code ec;
  require(std::filesystem::is_regular_file(path, ec),
          path + ": cannot open (missing, or not a regular file)");
  in.open(path, std::ios::binary | std::ios::ate);
  require(in.good(), path + ": cannot open");
  const std::streamsize size = in.tellg();
  require(size >= 0, path + ": cannot read its size");
  in.seekg(0);
  return size;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const std::string& path) {
  std::ifstream in;
  const std::streamsize size = open_for_reading(path, in);
  std::vector<char> head(static_cast<size_t>(std::min<std::streamsize>(size, 8)));
  require(static_cast<bool>(in.read(head.data(), static_cast<std::streamsize>(head.size()))),
          path + ": read failed");
  if (head.size() == 8) {
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(head[i]);
    // Only a length the parser would accept is read: the rest is its error to name.
    if (header_len <= kMaxHeaderBytes && header_len <= static_cast<uint64_t>(size) - 8) {
      head.resize(8 + header_len);
      require(static_cast<bool>(in.read(head.data() + 8, static_cast<std::streamsize>(header_len))),
              path + ": read failed");
    }
  }
  return parse_safetensors_header(head, static_cast<uint64_t>(size), path);
}

void read_safetensors_tensor(const std::string& path, const SafetensorsHeader& header,
                             const std::string& name, std::span<float> out) {
  const SafetensorsEntry& e = header.tensors.at(name);
  std::ifstream in(path, std::ios::binary);
  require(in.good(), path + ": cannot open");
  std::vector<char> raw(e.end - e.begin);
  in.seekg(static_cast<std::streamoff>(header.data_start + e.begin));
  require(static_cast<bool>(in.read(raw.data(), static_cast<std::streamsize>(raw.size()))),
          path + ": tensor '" + name + "': read failed (the file changed or was cut short)");
  convert_to_float(e.dtype, raw, out);
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in;
  const std::streamsize size = open_for_reading(path, in);
  std::vector<char> bytes;
  try {
    bytes.resize(static_cast<size_t>(size));
  } catch (const std::bad_alloc&) {
    throw OutOfMemory("reading " + path, static_cast<uint64_t>(size));
  }
  require(static_cast<bool>(in.read(bytes.data(), size)), path + ": read failed");
  return parse_safetensors(bytes, path);
}

namespace {

uint16_t bf16_of(float v, const std::string& tensor) {
  const uint16_t b = float_to_bf16(v);
  if ((b & 0x7F80u) == 0x7F80u)
    throw Error("tensor '" + tensor + "': value " + std::to_string(v) + " overflows bfloat16");
  return b;
}

}  // namespace

void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata, StoredDtype dtype) {
  const bool bf16 = dtype == StoredDtype::BF16;
  const uint64_t element = bf16 ? 2 : 4;
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * element;
    header[name] = {{"dtype", bf16 ? "BF16" : "F32"},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(json.size() >> (8 * i));

  AtomicFile file(path);
  file.write(len, 8);
  file.write(json.data(), json.size());
  std::vector<uint16_t> half;
  for (const auto& [name, t] : tensors) {
    if (!bf16) {
      file.write(t.data(), sizeof(float) * t.numel());
      continue;
    }
    half.resize(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) half[i] = bf16_of(t.data()[i], name);
    file.write(half.data(), sizeof(uint16_t) * half.size());
  }
  file.commit();
}

}  // namespace moe
