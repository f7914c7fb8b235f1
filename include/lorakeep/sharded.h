// lorakeep/sharded.h: writing a sharded safetensors set (reading one is
// open_tensor_source on its index).
//
//   lorakeep::save_sharded("out/merged", tensors, {{"format", "pt"}}, {.max_shard_size = 2'000'000'000});
//   // out/merged/model-00001-of-00003.safetensors ... + model.safetensors.index.json
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "lorakeep/safetensors.h"

namespace lorakeep {

struct ShardOptions {
  // behaviour
  std::uint64_t max_shard_size = 5'000'000'000;  // bytes of tensor data per shard (HF's "5GB")
  std::string base_name = "model";               // model-00001-of-0000N.safetensors, model.safetensors.index.json
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // host staging per piece
};

struct ShardedSaveReport {
  std::string dir;
  std::vector<SaveReport> shards;  // in shard order
  std::string index_path;          // "" when everything fit in one file (then named <base>.safetensors)
  double seconds = 0;
};

// Writes `tensors` into directory `dir` as Hugging Face does: tensors go to
// shards in the given order, a new shard starting when the next tensor would
// push the current one past max_shard_size (a tensor larger than that gets a
// shard of its own); one shard is named <base>.safetensors with no index.
// The directory is assembled under a temporary name beside `dir` and
// published in one rename, so `dir` never holds a partial set.
// Throws Error(kInvalidArgument) if `dir` exists and is not empty,
// Error(kIOError) naming the path on failure (nothing is left behind).
ShardedSaveReport save_sharded(const std::string& dir, const NamedTensors& tensors,
                               const std::map<std::string, std::string>& metadata = {},
                               const ShardOptions& options = {});

}  // namespace lorakeep
