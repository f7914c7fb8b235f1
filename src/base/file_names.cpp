#include "base/file_names.h"

#include <cstdio>
#include <cstring>

#include "base/text.h"

namespace lorakeep::detail {
namespace {

constexpr const char kPrefix[] = "checkpoint-";
constexpr const char kTempPrefix[] = ".tmp-checkpoint-";

}  // namespace

std::string single_shard_file_name(const std::string& base) { return base + ".safetensors"; }

std::string shard_file_name(const std::string& base, std::size_t index, std::size_t count) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu", index, count);
  return base + buf + ".safetensors";
}

std::string shard_index_file_name(const std::string& base) { return base + ".safetensors.index.json"; }

bool is_shard_index_path(const std::string& path) { return ends_with(path, ".index.json"); }

const std::vector<std::string>& tensor_directory_candidates() {
  static const std::vector<std::string> kCandidates = {kAdapterWeightsFile, kAdapterPickleFile,
                                                       shard_index_file_name(kModelBaseName),
                                                       single_shard_file_name(kModelBaseName)};
  return kCandidates;
}

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

std::string rng_file_name(int rank, int world) {
  if (world == 1) return kRngFile;
  return "lorakeep_rng_" + std::to_string(rank) + ".safetensors";
}

std::string shared_check_file_name(const std::string& token) { return ".shared-check-" + token; }

bool is_temp_checkpoint_dir_name(const std::string& name) {
  return name.compare(0, sizeof kTempPrefix - 1, kTempPrefix) == 0;
}

}  // namespace lorakeep::detail
