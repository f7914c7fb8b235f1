// Reading a run directory: which checkpoints are committed and intact.
// Read-only and lock-free (commits are atomic renames), so the CLI can look
// while a run writes. No LibTorch here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lorakeep/error.h"
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
// (checksums are for check_checkpoint_files(full)). Throws Error(kNotFound)
// if `dir` does not exist, Error(kIOError) if it cannot be listed.
RunDirScan scan_run_dir(const std::string& dir);

// Reads <checkpoint_dir>/lorakeep_manifest.json. Throws Error(kNotFound)
// naming it if absent, Error(kCorruption) if invalid or if it names another
// step than the directory.
Manifest read_manifest(const std::string& checkpoint_dir);

// One file the manifest lists, as check_checkpoint_files checks it.
void check_checkpoint_file(const std::string& checkpoint_dir, const std::string& name, const FileDigest& entry,
                           bool full);

// Every file the manifest lists: present (else Error(kNotFound) naming it)
// with its size (else Error(kCorruption)) and, with full = true, its XXH3-64
// (else Error(kCorruption) naming the file).
void check_checkpoint_files(const std::string& checkpoint_dir, const Manifest& manifest, bool full);

// check_checkpoint_files(full) for a checkpoint directory, or for every
// committed checkpoint of a run directory; for a run directory, also any
// checkpoint-<step>/ that does not count is a failure. Returns a line per
// checkpoint for the CLI. Throws the first problem found.
std::vector<std::string> verify_checkpoints(const std::string& path);

}  // namespace lorakeep::detail
