#include "format/json_util.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "lorakeep/error.h"
#include "format/utf8.h"
#include "io/read_file.h"

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
      case OrderedJson::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case OrderedJson::parse_event_t::object_end:
        keys.pop_back();
        break;
      case OrderedJson::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
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

std::string read_small_file(const std::string& path, std::uint64_t max_bytes) {
  ReadableFile file(path);
  auto too_big = [&](std::uint64_t size) {
    return Error(ErrorCode::kCorruption, "'" + path + "' is " + std::to_string(size) + " bytes, more than the " +
                                             std::to_string(max_bytes) + " expected");
  };
  if (file.size() > max_bytes) throw too_big(file.size());
  std::string text;
  file.for_each_block(65536, [&](const char* data, std::size_t n) {
    text.append(data, n);
    if (text.size() > max_bytes) throw too_big(text.size());  // it grew while read
  });
  return text;
}

std::string read_file_prefix(const std::string& path, std::size_t n) {
  ReadableFile file(path);
  std::string head(n, '\0');
  std::size_t got = 0;
  for (std::size_t r; got < n && (r = file.read(head.data() + got, n - got)) > 0;) got += r;
  head.resize(got);
  return head;
}

OrderedJson read_json_file(const std::string& path, std::uint64_t max_bytes) {
  return parse_json_strict(read_small_file(path, max_bytes), path);
}

bool json_integer(const OrderedJson& v, std::int64_t* out, std::int64_t lo, std::int64_t hi) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) return false;
  const std::int64_t x = v.get<std::int64_t>();
  if (x < lo || x > hi) return false;
  *out = x;
  return true;
}

bool is_int64_value(double v) {
  // 2^63 is exact in a double; every double below it in magnitude that is
  // integral converts exactly.
  return std::isfinite(v) && v == std::floor(v) && v >= -9223372036854775808.0 && v < 9223372036854775808.0;
}

bool parse_byte_size(std::string_view text, std::uint64_t* bytes) {
  std::size_t i = 0;
  std::uint64_t value = 0;
  if (text.empty() || text[0] < '0' || text[0] > '9') return false;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    if (__builtin_mul_overflow(value, 10u, &value) ||
        __builtin_add_overflow(value, static_cast<std::uint64_t>(text[i] - '0'), &value)) {
      return false;
    }
    ++i;
  }
  std::string unit(text.substr(i));
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, std::uint64_t> kUnits[] = {
      {"", 1},          {"B", 1},          {"KB", 1000ull},     {"MB", 1000ull * 1000},
      {"GB", 1000ull * 1000 * 1000},       {"TB", 1000ull * 1000 * 1000 * 1000},
      {"KIB", 1ull << 10}, {"MIB", 1ull << 20}, {"GIB", 1ull << 30}, {"TIB", 1ull << 40}};
  for (const auto& [name, scale] : kUnits) {
    if (unit == name) return !__builtin_mul_overflow(value, scale, bytes);
  }
  return false;
}

std::string format_bytes(std::uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  return buf;
}

}  // namespace lorakeep::detail
