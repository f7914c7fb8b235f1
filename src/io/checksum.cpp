#include "io/checksum.h"
#include "io/read_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <xxhash.h>
#ifdef LORAKEEP_XXH_DISPATCH
// The runtime-dispatched entry points (AVX2 / AVX-512 where the CPU has
// them): twice as fast as the baseline SSE2 build of XXH3_64bits, and the
// same hash.
#include <xxh_x86dispatch.h>
#define LORAKEEP_XXH3_64 XXH3_64bits_dispatch
#define LORAKEEP_XXH3_64_UPDATE XXH3_64bits_update_dispatch
#else
#define LORAKEEP_XXH3_64 XXH3_64bits
#define LORAKEEP_XXH3_64_UPDATE XXH3_64bits_update
#endif

#include "lorakeep/error.h"

namespace lorakeep::detail {

std::uint64_t xxh3_64(const void* data, std::uint64_t size) { return LORAKEEP_XXH3_64(data, size); }

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}

Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void Xxh3Stream::update(const void* data, std::uint64_t size) {
  LORAKEEP_XXH3_64_UPDATE(static_cast<XXH3_state_t*>(state_), data, size);
}

std::uint64_t Xxh3Stream::digest() const { return XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_)); }

std::string format_checksum(std::uint64_t value) {
  static const char kHex[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, value >>= 4) s[static_cast<std::size_t>(i)] = kHex[value & 0xF];
  return s;
}

bool parse_checksum(const std::string& text, std::uint64_t* value) {
  if (text.size() != 16) return false;
  std::uint64_t v = 0;
  for (char c : text) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = (v << 4) | static_cast<std::uint64_t>(d);
  }
  *value = v;
  return true;
}

std::uint64_t checksum_file(const std::string& path, std::uint64_t* size) {
  ReadableFile file(path);
  Xxh3Stream hash;
  std::uint64_t total = 0;
  file.for_each_block(1 << 20, [&](const char* data, std::size_t n) {
    hash.update(data, n);
    total += n;
  });
  if (size) *size = total;
  return hash.digest();
}

}  // namespace lorakeep::detail
