// The safetensors header: parse + validate (reader side) and layout (writer
// side). No LibTorch here, so the parser builds fast and fuzzes alone.
//
// File layout: 8-byte little-endian N, N bytes of UTF-8 JSON, then the data
// section. The JSON maps tensor names to {"dtype", "shape", "data_offsets"}
// plus an optional "__metadata__" object of string -> string.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "lorakeep/tensor_info.h"

namespace lorakeep::detail {

// The reference implementation refuses headers above this many bytes.
inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;

struct SafetensorsHeader {
  std::uint64_t header_size = 0;  // N, the JSON length including padding
  std::uint64_t data_size = 0;    // bytes after the header
  bool has_metadata = false;      // "__metadata__" present (even if empty)
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;  // in data-offset order

  std::uint64_t data_start() const { return 8 + header_size; }
};

// Parses and validates `file` (the whole file, `file_size` bytes) exactly as
// the reference reader does: size limits, UTF-8, JSON, field types, checked
// arithmetic, contiguous offsets from 0, data ending at the end of the file.
// Stricter than the reference in one place: a tensor name or metadata key that
// appears twice is refused (the reference keeps the last one, so two readers
// could see different tensors in the same file).
// Throws Error(kCorruption) whose message names `path`; Error(kNotSupported)
// for a (zero-element) tensor with a dimension past INT64_MAX.
SafetensorsHeader parse_safetensors_header(const std::uint8_t* file, std::uint64_t file_size, const std::string& path);

// Byte length of `numel` elements of `dtype`; false on 64-bit overflow or a
// sub-byte dtype whose bits do not end on a byte boundary.
bool checked_byte_size(Dtype dtype, const std::vector<std::uint64_t>& shape, std::uint64_t* bytes);

struct HeaderLayout {
  std::string header;               // JSON, space-padded to a multiple of 8
  std::vector<TensorInfo> tensors;  // in file order, offsets filled in
  std::uint64_t data_size = 0;
};

// The header the reference writer produces for these tensors: sorted by dtype
// alignment (descending) then name (bytewise), compact JSON, "__metadata__"
// first (keys sorted; the reference uses hash order for two or more keys),
// padded with spaces to a multiple of 8 bytes. `tensors` need name, dtype and
// shape. Throws Error(kInvalidArgument) for duplicate or reserved names.
HeaderLayout layout_safetensors_header(std::vector<TensorInfo> tensors,
                                       const std::map<std::string, std::string>& metadata);

// Appends `s` as a JSON string literal escaped as serde_json does.
void append_json_string(std::string& out, const std::string& s);

}  // namespace lorakeep::detail
