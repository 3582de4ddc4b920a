#include "tensor/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <utility>

#include "tensor/error.h"

namespace moe {

// Values are copied out of the file as they lie: little-endian, as GGUF stores them.
static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");

namespace {

// ggml's block layouts, by type number (ggml.c's type_traits; gguf-py's GGML_QUANT_SIZES).
constexpr size_t kGgmlTypeCount = 43;
constexpr std::array<GgmlTypeTraits, kGgmlTypeCount> kGgmlTypes = [] {
  std::array<GgmlTypeTraits, kGgmlTypeCount> t{};  // name nullptr: no such type
  t[0] = {"f32", 1, 4};
  t[1] = {"f16", 1, 2};
  t[2] = {"q4_0", 32, 18};
  t[3] = {"q4_1", 32, 20};
  t[6] = {"q5_0", 32, 22};
  t[7] = {"q5_1", 32, 24};
  t[8] = {"q8_0", 32, 34};
  t[9] = {"q8_1", 32, 36};
  t[10] = {"q2_K", 256, 84};
  t[11] = {"q3_K", 256, 110};
  t[12] = {"q4_K", 256, 144};
  t[13] = {"q5_K", 256, 176};
  t[14] = {"q6_K", 256, 210};
  t[15] = {"q8_K", 256, 292};
  t[16] = {"iq2_xxs", 256, 66};
  t[17] = {"iq2_xs", 256, 74};
  t[18] = {"iq3_xxs", 256, 98};
  t[19] = {"iq1_s", 256, 50};
  t[20] = {"iq4_nl", 32, 18};
  t[21] = {"iq3_s", 256, 110};
  t[22] = {"iq2_s", 256, 82};
  t[23] = {"iq4_xs", 256, 136};
  t[24] = {"i8", 1, 1};
  t[25] = {"i16", 1, 2};
  t[26] = {"i32", 1, 4};
  t[27] = {"i64", 1, 8};
  t[28] = {"f64", 1, 8};
  t[29] = {"iq1_m", 256, 56};
  t[30] = {"bf16", 1, 2};
  t[34] = {"tq1_0", 256, 54};
  t[35] = {"tq2_0", 256, 66};
  t[39] = {"mxfp4", 32, 17};
  t[40] = {"nvfp4", 64, 36};
  t[41] = {"q1_0", 128, 18};
  t[42] = {"q2_0", 64, 18};
  return t;
}();

// ggml's GGML_MAX_DIMS and GGML_MAX_NAME (which counts the terminating zero).
constexpr uint32_t kMaxDims = 4;
constexpr size_t kMaxTensorName = 63;
// The fewest bytes an entry can take: a metadata entry is a key's length, one byte of key, a
// type and a one-byte value; a tensor entry a name's length, n_dims, a type and an offset.
constexpr uint64_t kMinMetadataEntryBytes = 8 + 1 + 4 + 1;
constexpr uint64_t kMinTensorEntryBytes = 8 + 4 + 4 + 8;

// A name from the file, fit for a one-line message: control bytes escaped, long names cut.
std::string printable(std::string_view name) {
  constexpr size_t kShown = 80;
  std::string out;
  for (const char c : name.substr(0, kShown)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte != 0x7f) {
      out += c;
      continue;
    }
    constexpr char kHex[] = "0123456789abcdef";
    out += "\\x";
    out += kHex[byte >> 4];
    out += kHex[byte & 15];
  }
  if (name.size() > kShown) out += "...(" + std::to_string(name.size()) + " bytes)";
  return out;
}

// Reads the header front to back; every read is checked against the bytes that remain.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, const std::string& source)
      : bytes_(bytes), source_(source) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return bytes_.size() - position_; }

  [[noreturn]] void fail(const std::string& message) const {
    throw Error(source_ + ": " + message);
  }

  // what + part names the field in the message, built only when the check fails (a vocabulary
  // is read string by string).
  void need(uint64_t bytes, std::string_view what, std::string_view part = {}) const {
    if (bytes > remaining())
      fail("truncated: " + std::string(what) + std::string(part) + " at byte " +
           std::to_string(position_) + " needs " + std::to_string(bytes) + " bytes, the file has " +
           std::to_string(remaining()) + " left");
  }

  template <typename T>
  T read(std::string_view what, std::string_view part = {}) {
    need(sizeof(T), what, part);
    T value;
    std::memcpy(&value, bytes_.data() + position_, sizeof(T));
    position_ += sizeof(T);
    return value;
  }

  // A u64 length, then that many bytes.
  std::string read_string(std::string_view what, std::string_view part = {}) {
    if (remaining() < sizeof(uint64_t))
      need(sizeof(uint64_t), what, std::string(part) + "'s length");
    const auto length = read<uint64_t>(what);
    if (length > remaining())
      need(length, what, std::string(part) + " of " + std::to_string(length) + " bytes");
    std::string text(reinterpret_cast<const char*>(bytes_.data() + position_), length);
    position_ += length;
    return text;
  }

 private:
  std::span<const std::byte> bytes_;
  const std::string& source_;
  uint64_t position_ = 0;
};

template <typename T>
T read_element(Cursor& in, const std::string& what) {
  if constexpr (std::is_same_v<T, std::string>) {
    return in.read_string(what);
  } else if constexpr (std::is_same_v<T, bool>) {
    const auto stored = in.read<uint8_t>(what);
    if (stored > 1)
      in.fail(what + " is a bool stored as " + std::to_string(stored) + ", not 0 or 1");
    return stored == 1;
  } else {
    return in.read<T>(what);
  }
}

// `count` elements of type T. An array's count the remaining bytes cannot hold is refused
// before any memory is reserved for it (a string takes at least its 8-byte length); a scalar's
// read reports its own truncation.
template <typename T>
std::vector<T> read_elements(Cursor& in, uint64_t count, const std::string& what) {
  constexpr uint64_t kMinBytes = std::is_same_v<T, std::string> ? 8 : sizeof(T);
  if (count > 1 && count > in.remaining() / kMinBytes)
    in.fail(what + " claims " + std::to_string(count) + " elements of " +
            to_string(gguf_value_type_of<T>()) + ", more than the " +
            std::to_string(in.remaining()) + " bytes left in the file hold");
  std::vector<T> elements;
  elements.reserve(count);
  for (uint64_t i = 0; i < count; ++i) elements.push_back(read_element<T>(in, what));
  return elements;
}

GgufValues read_values(Cursor& in, uint32_t type, uint64_t count, const std::string& what) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::U8:
      return read_elements<uint8_t>(in, count, what);
    case GgufValueType::I8:
      return read_elements<int8_t>(in, count, what);
    case GgufValueType::U16:
      return read_elements<uint16_t>(in, count, what);
    case GgufValueType::I16:
      return read_elements<int16_t>(in, count, what);
    case GgufValueType::U32:
      return read_elements<uint32_t>(in, count, what);
    case GgufValueType::I32:
      return read_elements<int32_t>(in, count, what);
    case GgufValueType::F32:
      return read_elements<float>(in, count, what);
    case GgufValueType::Bool:
      return read_elements<bool>(in, count, what);
    case GgufValueType::String:
      return read_elements<std::string>(in, count, what);
    case GgufValueType::U64:
      return read_elements<uint64_t>(in, count, what);
    case GgufValueType::I64:
      return read_elements<int64_t>(in, count, what);
    case GgufValueType::F64:
      return read_elements<double>(in, count, what);
    case GgufValueType::Array:
      in.fail(what + " is an array of arrays, which llama.cpp refuses");
  }
  in.fail(what + " has unknown value type " + std::to_string(type));
}

void read_header_start(Cursor& in, uint32_t& version) {
  const auto magic = in.read<std::array<char, 4>>("the magic 'GGUF'");
  if (std::string_view(magic.data(), 4) != "GGUF")
    in.fail("not a GGUF file (starts with '" + printable({magic.data(), 4}) + "', not 'GGUF')");
  version = in.read<uint32_t>("the version");
  // A big-endian file's version 3 reads here as 0x03000000.
  if (version != 0 && (version & 0xFFFF) == 0)
    in.fail("GGUF version field reads " + std::to_string(version) +
            ": a big-endian file? only little-endian GGUF is read");
  if (version != 2 && version != 3)
    in.fail("GGUF version " + std::to_string(version) + " is not read (versions 2 and 3 are)");
}

void read_metadata(Cursor& in, uint64_t count, std::map<std::string, GgufValue, std::less<>>& out) {
  for (uint64_t i = 0; i < count; ++i) {
    const std::string key = in.read_string("metadata key #", std::to_string(i));
    if (key.empty()) in.fail("metadata key #" + std::to_string(i) + " is empty");
    const std::string what = "metadata '" + printable(key) + "'";
    GgufValue value;
    uint32_t type = in.read<uint32_t>(what, "'s type");
    uint64_t elements = 1;
    if (type == static_cast<uint32_t>(GgufValueType::Array)) {
      value.is_array = true;
      type = in.read<uint32_t>(what, "'s element type");
      elements = in.read<uint64_t>(what, "'s element count");
    }
    value.values = read_values(in, type, elements, what);
    if (!out.emplace(key, std::move(value)).second) in.fail(what + " appears twice");
  }
}

// dims[0] * dims[1] * ..., refused when it does not fit in int64 (ggml's element count).
int64_t checked_elements(Cursor& in, const std::vector<int64_t>& dims, const std::string& what) {
  int64_t elements = 1;
  for (const int64_t d : dims)
    if (__builtin_mul_overflow(elements, d, &elements)) {
      std::string list;
      for (const int64_t e : dims) list += (list.empty() ? "" : ", ") + std::to_string(e);
      in.fail(what + ": dims [" + list + "] hold more elements than fit in 64 bits");
    }
  return elements;
}

GgufTensorInfo read_tensor_info(Cursor& in, uint64_t index) {
  GgufTensorInfo t;
  t.name = in.read_string("tensor #" + std::to_string(index), "'s name");
  const std::string what = "tensor '" + printable(t.name) + "'";
  if (t.name.size() > kMaxTensorName)
    in.fail(what + ": name of " + std::to_string(t.name.size()) + " bytes, ggml allows " +
            std::to_string(kMaxTensorName));
  // ggml keeps names as C strings: "a\0b" would be "a" there.
  if (t.name.find('\0') != std::string::npos) in.fail(what + ": name holds a zero byte");
  const auto n_dims = in.read<uint32_t>(what, "'s dimension count");
  if (n_dims > kMaxDims)
    in.fail(what + " has " + std::to_string(n_dims) + " dimensions, ggml allows " +
            std::to_string(kMaxDims));
  for (uint32_t d = 0; d < n_dims; ++d) {
    const auto dim = in.read<uint64_t>(what, "'s dimensions");
    if (dim > uint64_t{INT64_MAX})
      in.fail(what + ": dimension " + std::to_string(d) + " is " + std::to_string(dim) +
              ", beyond a signed 64-bit count");
    t.dims.push_back(static_cast<int64_t>(dim));
  }
  t.elements = checked_elements(in, t.dims, what);
  const auto type = in.read<uint32_t>(what, "'s type");
  const GgmlTypeTraits* traits = find_ggml_type(type);
  if (!traits) in.fail(what + " has unknown ggml type " + std::to_string(type));
  t.type = static_cast<GgmlType>(type);
  const int64_t row = t.dims.empty() ? 1 : t.dims[0];
  if (row % traits->block_size != 0)
    in.fail(what + ": rows of " + std::to_string(row) + " elements are not whole " + traits->name +
            " blocks of " + std::to_string(traits->block_size));
  const uint64_t blocks = static_cast<uint64_t>(t.elements) / traits->block_size;
  if (__builtin_mul_overflow(blocks, uint64_t{traits->block_bytes}, &t.bytes))
    in.fail(what + ": " + std::to_string(blocks) + " " + traits->name +
            " blocks need more bytes than fit in 64 bits");
  t.offset = in.read<uint64_t>(what, "'s offset");
  return t;
}

uint32_t alignment_of(const GgufHeader& header, const Cursor& in) {
  constexpr std::string_view kKey = "general.alignment";
  if (!header.has(kKey)) return 32;
  const auto alignment = header.get<uint32_t>(kKey);
  if (!std::has_single_bit(alignment))
    in.fail(std::string(kKey) + " is " + std::to_string(alignment) + ", not a power of 2");
  return alignment;
}

// Each tensor's bytes inside the data section (of data_bytes bytes), at a multiple of the
// alignment, and no two tensors sharing a byte.
void check_tensor_data(const Cursor& in, const std::vector<GgufTensorInfo>& tensors,
                       uint32_t alignment, uint64_t data_bytes) {
  for (const GgufTensorInfo& t : tensors) {
    const std::string what = "tensor '" + printable(t.name) + "'";
    if (t.offset % alignment != 0)
      in.fail(what + ": data offset " + std::to_string(t.offset) + " is not a multiple of the " +
              "alignment " + std::to_string(alignment));
    uint64_t end = 0;
    if (__builtin_add_overflow(t.offset, t.bytes, &end) || end > data_bytes)
      in.fail(what + ": its " + std::to_string(t.bytes) + " bytes at data offset " +
              std::to_string(t.offset) + " run past the end of the file (the data section holds " +
              std::to_string(data_bytes) + " bytes; a truncated file?)");
  }
  std::vector<size_t> by_offset(tensors.size());
  std::iota(by_offset.begin(), by_offset.end(), size_t{0});
  std::erase_if(by_offset, [&](size_t i) { return tensors[i].bytes == 0; });
  std::sort(by_offset.begin(), by_offset.end(),
            [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& before = tensors[by_offset[i - 1]];
    const GgufTensorInfo& after = tensors[by_offset[i]];
    if (after.offset < before.offset + before.bytes)
      in.fail("tensors '" + printable(before.name) + "' and '" + printable(after.name) +
              "' overlap at data offset " + std::to_string(after.offset));
  }
}

}  // namespace

const GgmlTypeTraits* find_ggml_type(uint32_t id) {
  return id < kGgmlTypes.size() && kGgmlTypes[id].name ? &kGgmlTypes[id] : nullptr;
}

const GgmlTypeTraits& ggml_type_traits(GgmlType type) {
  const GgmlTypeTraits* traits = find_ggml_type(static_cast<uint32_t>(type));
  require(traits != nullptr,
          "ggml type " + std::to_string(static_cast<uint32_t>(type)) + " is not defined");
  return *traits;
}

const char* to_string(GgufValueType type) {
  constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                    "bool", "string", "array", "u64", "i64", "f64"};
  const auto index = static_cast<size_t>(type);
  return index < std::size(kNames) ? kNames[index] : "unknown";
}

std::string GgufValue::type_name() const {
  return is_array ? std::string("array of ") + to_string(element_type())
                  : to_string(element_type());
}

const GgufValue* GgufHeader::find(std::string_view key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

void GgufHeader::throw_not_of_type(std::string_view key, GgufValueType type, bool array) const {
  const std::string wanted = (array ? "array of " : "") + std::string(to_string(type));
  const GgufValue* value = find(key);
  throw Error(source_ + ": metadata '" + printable(key) + "' " +
              (value ? "is " + value->type_name() + ", expected " + wanted
                     : "is missing (expected " + wanted + ")"));
}

const GgufTensorInfo* GgufHeader::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufHeader::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) throw Error(source_ + ": missing tensor '" + printable(name) + "'");
  return *t;
}

GgufHeader parse_gguf(std::span<const std::byte> file, const std::string& source) {
  GgufHeader header;
  header.source_ = source;
  Cursor in(file, source);
  read_header_start(in, header.version_);
  const auto tensor_count = in.read<uint64_t>("the tensor count");
  const auto metadata_count = in.read<uint64_t>("the metadata count");
  if (tensor_count > in.remaining() / kMinTensorEntryBytes)
    in.fail("claims " + std::to_string(tensor_count) + " tensors, more than the " +
            std::to_string(in.remaining()) + " bytes left in the file can describe");
  if (metadata_count > in.remaining() / kMinMetadataEntryBytes)
    in.fail("claims " + std::to_string(metadata_count) + " metadata entries, more than the " +
            std::to_string(in.remaining()) + " bytes left in the file can hold");
  read_metadata(in, metadata_count, header.metadata_);
  header.alignment_ = alignment_of(header, in);

  header.tensors_.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    header.tensors_.push_back(read_tensor_info(in, i));
    if (!header.tensor_index_.emplace(header.tensors_.back().name, i).second)
      in.fail("tensor '" + printable(header.tensors_.back().name) + "' appears twice");
  }
  // The data section starts at the first multiple of the alignment after the tensor table.
  header.data_start_ = in.position();
  if (!header.tensors_.empty()) {
    const uint64_t padding =
        (header.alignment_ - in.position() % header.alignment_) % header.alignment_;
    if (padding > in.remaining())
      in.fail("truncated: the data section would start at byte " +
              std::to_string(in.position() + padding) + ", past the end of the file (" +
              std::to_string(file.size()) + " bytes)");
    header.data_start_ += padding;
  }
  check_tensor_data(in, header.tensors_, header.alignment_, file.size() - header.data_start_);
  return header;
}

namespace {

// Closes the descriptor however the constructor leaves.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

GgufFile::Mapping::Mapping(const std::string& path) {
  FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  require(file.fd >= 0, path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  require(::fstat(file.fd, &st) == 0 && S_ISREG(st.st_mode), path + ": not a regular file");
  require(st.st_size > 0, path + ": empty file, not a GGUF file");
  const auto size = static_cast<size_t>(st.st_size);
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, file.fd, 0);
  require(mapped != MAP_FAILED, path + ": cannot map: " + std::strerror(errno));
  base_ = static_cast<const std::byte*>(mapped);
  size_ = size;
}

GgufFile::Mapping::~Mapping() {
  if (base_) ::munmap(const_cast<std::byte*>(base_), size_);
}

GgufFile::Mapping::Mapping(Mapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

GgufFile::Mapping& GgufFile::Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    if (base_) ::munmap(const_cast<std::byte*>(base_), size_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

GgufFile::GgufFile(const std::string& path)
    : mapping_(path), header_(parse_gguf(mapping_.bytes(), path)) {}

std::span<const std::byte> GgufFile::data(const GgufTensorInfo& tensor) const {
  return mapping_.bytes().subspan(header_.data_start() + tensor.offset, tensor.bytes);
}

std::span<const std::byte> GgufFile::data(std::string_view name) const {
  return data(header_.tensor(name));
}

}  // namespace moe
