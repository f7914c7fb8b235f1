// lorakeep/merge.h: offline, file-to-file weight arithmetic, one tensor at a
// time: base + delta (the StableVicuna / FastChat recipe, bounded and
// validated) and tuned - base.
//
//   lorakeep::merge_delta_files("llama-7b/", "vicuna-7b-delta/", "vicuna-7b/");
//
// Inputs are anything open_tensor_source() opens (a file, a sharded set, a
// directory). Output is a directory of safetensors shards plus an index,
// assembled under a temporary name and published in one rename. Memory: the
// inputs are read (never mapped) and the outputs computed and written in
// pieces of a few MiB through reused buffers, so host memory stays near a few
// pieces whatever the model size.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "lorakeep/dtype.h"
#include "lorakeep/sharded.h"

namespace lorakeep {

// Called on the calling thread after each output tensor is written: (tensors
// done, tensors in all, bytes read so far). A merge reads and computes on a
// thread of its own meanwhile; an exception thrown here stops it, and the
// merge throws it with nothing published.
using MergeProgress = std::function<void(std::size_t, std::size_t, std::uint64_t)>;

struct MergeDeltaOptions {
  // behaviour
  double scale = 1.0;          // output = base + scale * delta
  std::optional<Dtype> dtype;  // output dtype; default: each base tensor's
  bool allow_missing = false;  // base tensors the delta lacks are copied unchanged
  bool allow_new = false;      // delta tensors the base lacks are written as scale * delta
  bool allow_grow = false;     // a delta larger in dim 0 (added vocabulary): base adds into its leading rows
  std::map<std::string, std::string> metadata = {{"format", "pt"}};  // of every output shard
  // performance
  ShardOptions shards;     // output shard size and names
  MergeProgress progress;  // optional
};

struct MakeDeltaOptions {
  // behaviour
  // Delta dtype. Default: lossless for the round trip: F64 for F32 / F64
  // inputs, F32 for F16 / BF16 ones (exact unless a tuned value is thousands
  // of times smaller than the base value it replaced; make_delta_files counts
  // any element that would not come back exactly).
  std::optional<Dtype> dtype;
  bool allow_missing = false;  // base tensors the tuned model lacks are left out
  bool allow_new = false;      // tuned tensors the base lacks are stored whole
  bool allow_grow = false;     // a tuned tensor larger in dim 0 than the base's
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // performance
  ShardOptions shards;
  MergeProgress progress;
};

struct MergeReport {
  ShardedSaveReport output;
  std::size_t tensors = 0;
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  double seconds = 0;
  std::uint64_t inexact_elements = 0;  // make_delta_files: elements whose base + delta would not give tuned back
  std::uint64_t elements = 0;
};

// out_dir = base + scale * delta, tensor by tensor.
// Validates everything before writing anything: the delta's names must equal
// the base's (unless allow_missing / allow_new), shapes equal (unless
// allow_grow), dtypes numeric; integer tensors need scale 1; bool tensors are
// refused. All problems are reported at once: Error(kIncompatible) naming the
// tensors, with a hint at the option that would accept them.
// Throws Error(kInvalidArgument) if out_dir exists and is not empty,
// Error(kIOError) on write failure (nothing is left at out_dir).
MergeReport merge_delta_files(const std::string& base, const std::string& delta, const std::string& out_dir,
                              const MergeDeltaOptions& options = {});

// out_dir = tuned - base, tensor by tensor; same validation as
// merge_delta_files. merge_delta_files(base, out_dir) gives tuned back.
MergeReport make_delta_files(const std::string& base, const std::string& tuned, const std::string& out_dir,
                             const MakeDeltaOptions& options = {});

}  // namespace lorakeep
