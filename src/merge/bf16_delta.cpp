// Compiled with -O3 whatever the build type (src/CMakeLists.txt): one pass
// that vectorizes, where ATen takes eight (conversions to and from F32
// included). On x86-64 it is also cloned for AVX2 and picked at load time.
#include "merge/bf16_delta.h"

#include <cstring>

namespace lorakeep::detail {
namespace {

inline float widen(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline std::uint16_t narrow(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  // NaN tested on the bits, not with f != f: a select the loop can vectorize.
  return static_cast<std::uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

}  // namespace

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
__attribute__((target_clones("avx2", "default")))
#endif
#endif
std::int64_t
bf16_delta(const std::uint16_t* __restrict base, const std::uint16_t* __restrict tuned, std::uint16_t* __restrict delta,
           std::int64_t n) {
  std::int64_t inexact = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = widen(base[i]);
    const std::uint16_t d = narrow(widen(tuned[i]) - a);
    delta[i] = d;
    inexact += narrow(a + widen(d)) != tuned[i];
  }
  return inexact;
}

}  // namespace lorakeep::detail
