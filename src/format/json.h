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

// A JSON integer within [lo, hi] (JSON integers may be any 64-bit value,
// signed or not). False for anything else.
bool json_integer(const OrderedJson& v, std::int64_t* out, std::int64_t lo = INT64_MIN, std::int64_t hi = INT64_MAX);

}  // namespace lorakeep::detail
