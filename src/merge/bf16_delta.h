// Private: make-delta's kernel for its usual case, base, tuned model and
// delta all BF16.
#pragma once

#include <cstdint>

namespace lorakeep::detail {

// delta[i] = bf16(f32(tuned[i]) - f32(base[i])), rounded to nearest even as
// c10 rounds (every NaN becomes 0x7FC0); returns how many elements
// bf16(f32(base[i]) + f32(delta[i])), what merge-delta computes, does not
// give back bit for bit. The arrays do not overlap.
std::int64_t bf16_delta(const std::uint16_t* base, const std::uint16_t* tuned, std::uint16_t* delta, std::int64_t n);

}  // namespace lorakeep::detail
