// XXH3-64 checksums, the ones recorded in lorakeep manifests.
#pragma once

#include <cstdint>
#include <string>

namespace lorakeep::detail {

std::uint64_t xxh3_64(const void* data, std::uint64_t size);

// A file's size and XXH3-64, as a manifest records them.
struct FileDigest {
  std::uint64_t size = 0;
  std::uint64_t xxh3 = 0;
};

// Incremental XXH3-64 over pieces fed in order. Not thread-safe.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;

  void update(const void* data, std::uint64_t size);
  std::uint64_t digest() const;

 private:
  void* state_;  // XXH3_state_t, kept out of this header
};

// 0x00ab... => "00ab..." (16 lowercase hex digits), and back. parse_checksum
// returns false for anything but 16 hex digits.
std::string format_checksum(std::uint64_t value);
bool parse_checksum(const std::string& text, std::uint64_t* value);

// XXH3-64 of a whole file, read in bounded pieces. Throws Error(kNotFound /
// kIOError) naming the path.
std::uint64_t checksum_file(const std::string& path, std::uint64_t* size = nullptr);

}  // namespace lorakeep::detail
