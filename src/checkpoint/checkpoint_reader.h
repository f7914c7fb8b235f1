// The one reader of a checkpoint directory (checkpoint_writer.h is its one
// writer): the manifest first, then each file it lists, checked against its
// size and XXH3-64. Small files (trainer state, adapter config, RNG states)
// are read once and parsed from exactly the bytes that were verified; large
// ones are checked as they stream (checksum_file, copy_verified, or per tensor
// by the transfer plan). Read-only and lock-free (commits are atomic
// renames), so the CLI can look while a run writes. No LibTorch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lorakeep/lora_config.h"
#include "lorakeep/training_state.h"
#include "checkpoint/manifest.h"

namespace lorakeep::detail {

class CheckpointReader {
 public:
  // Reads <dir>/lorakeep_manifest.json (read_manifest); nothing else yet.
  explicit CheckpointReader(std::string dir);

  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  std::string path(const std::string& name) const;
  bool lists(const std::string& name) const { return manifest_.files.count(name) != 0; }

  // A file the manifest lists: present (else Error(kNotFound) naming it)
  // with its size (else Error(kCorruption)) and, with full = true, its
  // checksum, streamed (else Error(kCorruption) naming the file). A file
  // the manifest does not list: Error(kCorruption).
  void check(const std::string& name, bool full) const;
  void check_all(bool full) const;

  // The bytes of a small listed file, read once and checked against the
  // manifest (size always, checksum with verify): parse these, never the
  // file again. Throws as check.
  std::string read_verified(const std::string& name, bool verify) const;

  // Copies a listed file to `to` (created, synced), checking each byte
  // against the manifest as it is copied: the copy holds exactly the
  // verified bytes. Throws as check, Error(kIOError) naming `to`.
  void copy_verified(const std::string& name, const std::string& to) const;

  // trainer_state.json, parsed from its verified bytes. Throws as check and
  // parse_trainer_state.
  TrainingState trainer_state(bool verify) const;

  // adapter_config.json (of the named adapter in `folder`, if given), parsed
  // from its verified bytes. Throws as check and parse_adapter_config.
  LoraConfig adapter_config(bool verify, const std::string& folder = {}) const;

 private:
  const FileDigest& entry(const std::string& name) const;

  std::string dir_;
  Manifest manifest_;
};

// Reads <checkpoint_dir>/lorakeep_manifest.json. Throws Error(kNotFound)
// naming it if absent, Error(kCorruption) if invalid or if it names another
// step than the directory.
Manifest read_manifest(const std::string& checkpoint_dir);

// CheckpointReader::check_all for a manifest read earlier.
void check_checkpoint_files(const std::string& checkpoint_dir, const Manifest& manifest, bool full);

// check_all(full) for a checkpoint directory, or for every committed
// checkpoint of a run directory; for a run directory, also any
// checkpoint-<step>/ that does not count is a failure. Returns a line per
// checkpoint for the CLI. Throws the first problem found.
std::vector<std::string> verify_checkpoints(const std::string& path);

}  // namespace lorakeep::detail
