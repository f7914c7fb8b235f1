// Strict JSON parsing for the small metadata files lorakeep reads (sharded
// index, adapter_config.json, trainer_state.json, manifest): duplicate keys
// are refused instead of silently keeping one, and errors name the file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace lorakeep::detail {

using OrderedJson = nlohmann::ordered_json;

// Parses `text` (from `path`, for messages), keeping keys in file order.
// Throws Error(kCorruption) naming the path: invalid UTF-8 or JSON, or a key
// that appears twice in one object.
OrderedJson parse_json_strict(std::string_view text, const std::string& path);

// Reads and parses a whole file (at most `max_bytes`). Throws Error(kNotFound)
// if missing, Error(kIOError) if unreadable, Error(kCorruption) as above or if
// larger than max_bytes.
OrderedJson read_json_file(const std::string& path, std::uint64_t max_bytes = 64ull << 20);

// Reads a whole (small) file. Throws as read_json_file.
std::string read_small_file(const std::string& path, std::uint64_t max_bytes);

// The first `n` bytes of a file (fewer if it is shorter). Throws as
// read_json_file.
std::string read_file_prefix(const std::string& path, std::size_t n);

// A JSON integer within [lo, hi] (JSON integers may be any 64-bit value,
// signed or not). False for anything else.
bool json_integer(const OrderedJson& v, std::int64_t* out, std::int64_t lo = INT64_MIN, std::int64_t hi = INT64_MAX);

// Whether `v` is integral and representable as an int64 (a cast is defined).
bool is_int64_value(double v);

// "5GB" => 5e9, "2GiB" => 2^31, "500MB", "100KiB", "123" (bytes), as
// Hugging Face's convert_file_size_to_int. False for anything else.
bool parse_byte_size(std::string_view text, std::uint64_t* bytes);

// 1536 => "1.5 KiB"; for humans.
std::string format_bytes(std::uint64_t bytes);

}  // namespace lorakeep::detail
