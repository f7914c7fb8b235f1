// UTF-8 validation with the rules of Rust's str::from_utf8 (the reference
// safetensors reader): no overlong forms, no surrogates, nothing past U+10FFFF.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lorakeep::detail {

// Returns the offset of the first invalid byte, or `size` if all is valid.
std::size_t find_invalid_utf8(const std::uint8_t* data, std::size_t size);

}  // namespace lorakeep::detail
