#include "checkpoint/layout.h"

#include <cstring>

namespace lorakeep::detail {
namespace {

constexpr const char kPrefix[] = "checkpoint-";
constexpr const char kTempPrefix[] = ".tmp-checkpoint-";

}  // namespace

std::string checkpoint_dir_name(std::int64_t step) { return kPrefix + std::to_string(step); }

std::optional<std::int64_t> parse_checkpoint_dir_name(const std::string& name) {
  const std::size_t n = sizeof kPrefix - 1;
  if (name.size() <= n || name.compare(0, n, kPrefix) != 0) return std::nullopt;
  const std::string digits = name.substr(n);
  if (digits.size() > 18 || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  std::int64_t step = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  return step;
}

std::string temp_checkpoint_dir_name(std::int64_t step, long pid) {
  return kTempPrefix + std::to_string(step) + "-" + std::to_string(pid);
}

bool is_temp_checkpoint_dir_name(const std::string& name) {
  return name.compare(0, sizeof kTempPrefix - 1, kTempPrefix) == 0;
}

}  // namespace lorakeep::detail
