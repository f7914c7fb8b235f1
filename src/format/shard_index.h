// The sharded-checkpoint index, "model.safetensors.index.json":
//   {"metadata": {"total_size": 4305}, "weight_map": {"w": "model-00001-of-00002.safetensors", ...}}
// No LibTorch here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lorakeep::detail {

struct ShardIndex {
  std::optional<std::uint64_t> total_size;                      // metadata.total_size
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard file, in index order
  std::vector<std::string> shard_files;                         // distinct, sorted
};

// Parses and checks the index: an object with a "weight_map" object of
// string -> plain file name (no directory part, no "..": an index cannot point
// outside its directory); "metadata" optional, "total_size" a non-negative
// integer if present. Throws Error(kCorruption) naming `path` and the key.
ShardIndex parse_shard_index(std::string_view text, const std::string& path);

// The index as Hugging Face writes it: keys sorted, two-space indent,
// trailing newline.
std::string render_shard_index(std::uint64_t total_size,
                               const std::vector<std::pair<std::string, std::string>>& weight_map);

}  // namespace lorakeep::detail
