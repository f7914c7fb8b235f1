#include "base/text.h"

#include <cctype>
#include <cmath>
#include <cstdio>

namespace lorakeep::detail {

bool is_int64_value(double v) {
  // 2^63 is exact in a double; every double below it in magnitude that is
  // integral converts exactly.
  return std::isfinite(v) && v == std::floor(v) && v >= -9223372036854775808.0 && v < 9223372036854775808.0;
}

std::string fixed(double value, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
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
  static const std::pair<const char*, std::uint64_t> kUnits[] = {{"", 1},
                                                                 {"B", 1},
                                                                 {"KB", 1000ull},
                                                                 {"MB", 1000ull * 1000},
                                                                 {"GB", 1000ull * 1000 * 1000},
                                                                 {"TB", 1000ull * 1000 * 1000 * 1000},
                                                                 {"KIB", 1ull << 10},
                                                                 {"MIB", 1ull << 20},
                                                                 {"GIB", 1ull << 30},
                                                                 {"TIB", 1ull << 40}};
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

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string quoted_list(const std::vector<std::string>& items, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < limit; ++i) {
    if (i) out += ", ";
    out += "'" + items[i] + "'";
  }
  if (items.size() > limit) out += ", ... and " + std::to_string(items.size() - limit) + " more";
  return out;
}

}  // namespace lorakeep::detail
