// Small text helpers for messages and options: byte sizes and lists.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lorakeep::detail {

// Whether `v` is integral and representable as an int64 (a cast is defined).
bool is_int64_value(double v);

// "5GB" => 5e9, "2GiB" => 2^31, "500MB", "100KiB", "123" (bytes), as
// Hugging Face's convert_file_size_to_int. False for anything else.
bool parse_byte_size(std::string_view text, std::uint64_t* bytes);

// fixed(2.345, 1) => "2.3": printf's %.*f.
std::string fixed(double value, int decimals);

// 1536 => "1.5 KiB"; for humans.
std::string format_bytes(std::uint64_t bytes);

// Whether `s` ends with `suffix` ("model.index.json", ".json" => true).
bool ends_with(std::string_view s, std::string_view suffix);

// ["a", "b", "c"] => "'a', 'b', 'c'"; past `limit` items "..., and N more".
std::string quoted_list(const std::vector<std::string>& items, std::size_t limit = 8);

}  // namespace lorakeep::detail
