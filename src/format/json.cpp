#include "format/json.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "lorakeep/error.h"
#include "format/utf8.h"

namespace lorakeep::detail {

OrderedJson parse_json_strict(std::string_view text, const std::string& path) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(text.data());
  const std::size_t bad = find_invalid_utf8(bytes, text.size());
  if (bad != text.size()) {
    throw Error(ErrorCode::kCorruption, "'" + path + "' is not valid UTF-8 at byte " + std::to_string(bad));
  }
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto callback = [&](int, OrderedJson::parse_event_t event, OrderedJson& parsed) {
    switch (event) {
      case OrderedJson::parse_event_t::object_start: keys.emplace_back(); break;
      case OrderedJson::parse_event_t::object_end: keys.pop_back(); break;
      case OrderedJson::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default: break;
    }
    return true;
  };
  OrderedJson j;
  try {
    j = OrderedJson::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const OrderedJson::exception& e) {
    throw Error(ErrorCode::kCorruption, "'" + path + "' is not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) {
    throw Error(ErrorCode::kCorruption, "'" + path + "' has the key '" + duplicate + "' twice in one object");
  }
  return j;
}

bool json_integer(const OrderedJson& v, std::int64_t* out, std::int64_t lo, std::int64_t hi) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) return false;
  const std::int64_t x = v.get<std::int64_t>();
  if (x < lo || x > hi) return false;
  *out = x;
  return true;
}

}  // namespace lorakeep::detail
