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

// A JSON integer within [lo, hi] (JSON integers may be any 64-bit value,
// signed or not). False for anything else.
bool json_integer(const OrderedJson& v, std::int64_t* out, std::int64_t lo = INT64_MIN, std::int64_t hi = INT64_MAX);

}  // namespace lorakeep::detail
