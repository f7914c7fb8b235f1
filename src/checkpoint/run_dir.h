// Listing a run directory: which checkpoints are committed and intact (each
// read by CheckpointReader). Read-only and lock-free (commits are atomic
// renames), so the CLI can look while a run writes. No LibTorch here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lorakeep/error.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/manifest.h"

namespace lorakeep::detail {

struct ScannedCheckpoint {
  std::int64_t step = 0;
  std::string path;
  std::optional<Manifest> manifest;  // set when the checkpoint counts
  std::string problem;               // why it does not count, otherwise
  ErrorCode problem_code = ErrorCode::kCorruption;
};

struct RunDirScan {
  std::vector<ScannedCheckpoint> checkpoints;  // every checkpoint-<step>/, by step
  std::vector<std::string> temp_dirs;          // .tmp-checkpoint-* leftovers (or in progress)

  // The steps that count, with their manifests, by step.
  std::vector<const ScannedCheckpoint*> valid() const;
};

// Lists `dir`. A checkpoint counts when its manifest parses, names the
// directory's step, and every file it lists exists with the listed size
// (checksums are for CheckpointReader::check_all(full)). Throws Error(kNotFound)
// if `dir` does not exist, Error(kIOError) if it cannot be listed.
RunDirScan scan_run_dir(const std::string& dir);

}  // namespace lorakeep::detail
