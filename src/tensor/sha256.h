#pragma once
// SHA-256 (FIPS 180-4): the digest that names and checks cached files (text/token_cache.h).
// Plain portable code, about 200 MB/s: hashing the default corpus and its tokens takes a
// fraction of a second, which is what a cache hit may cost.
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace moe {

class Sha256 {
 public:
  Sha256();
  void update(std::span<const unsigned char> bytes);
  void update(std::string_view text) {
    update({reinterpret_cast<const unsigned char*>(text.data()), text.size()});
  }
  // The digest as 64 lowercase hex digits. Ends the hash: call once.
  std::string hex_digest();

 private:
  void compress(const unsigned char* block);
  std::array<uint32_t, 8> state_;
  std::array<unsigned char, 64> buffer_{};
  uint64_t length_ = 0;  // bytes hashed so far
  size_t buffered_ = 0;
};

std::string sha256_hex(std::string_view text);

// Hashes the file at `path` into `hash` (its bytes only); returns the byte count. Throws Error
// naming the file when it cannot be read.
uint64_t sha256_update_file(Sha256& hash, const std::string& path);
// The file's digest, 64 hex digits.
std::string sha256_file(const std::string& path);

}  // namespace moe
