// lorakeep/dtype.h: the element types of the safetensors format.
//
// This header does not include LibTorch: the format layer (header parser,
// index and manifest parsers) uses it on its own. Conversions to and from
// c10::ScalarType live in lorakeep/safetensors.h.
//
// Thread-safety: pure functions; safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace lorakeep {

// In the reference implementation's order of increasing alignment: the writer
// sorts tensors by this order, descending, then by name. Do not reorder.
enum class Dtype : std::uint8_t {
  kBool,
  kF4,      // 4-bit float (E2M1), two per byte
  kF6E2M3,  // 6-bit floats, four per three bytes
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,  // complex64: two F32
  kF64,
  kI64,
  kU64,
};

// "BF16" for Dtype::kBF16: the spelling used in safetensors headers.
std::string_view dtype_name(Dtype dtype);

// "F32" => Dtype::kF32; an unknown or lowercase name => std::nullopt.
std::optional<Dtype> parse_dtype(std::string_view name);

// Bits per element: 4 for kF4, 6 for the F6 types, 8 * bytes otherwise.
int dtype_bits(Dtype dtype);

}  // namespace lorakeep
