// lorakeep_manifest.json: the last file of a checkpoint, listing every other
// file with its size and XXH3-64, the adapter's per-tensor checksums, and
// what the checkpoint was (step, epoch, metrics). A checkpoint without a
// valid manifest does not exist as far as lorakeep is concerned.
//
//   {"format": "lorakeep-checkpoint", "format_version": 1, "library_version": "0.1.0",
//    "step": 400, "epoch": 1.25, "metrics": {"eval_loss": 1.93},
//    "metric_for_best_model": "eval_loss", "greater_is_better": false,
//    "files": {"adapter_model.safetensors": {"size": 1234, "xxh3": "00ab..."}, ...},
//    "tensors": {"<an adapter key>": "91c2...", ...},
//    "active_adapter": "task_b",        (only with named adapters)
//    "early_stopping": {"patience": 3, "threshold": 0.0, "counter": 1},   (only with early stopping)
//    "created": "2026-11-22T08:00:00Z", "manifest_xxh3": "5d1e..."}
//
// A named adapter's files are in its folder, as PEFT's save_pretrained
// writes them: "task_b/adapter_model.safetensors" in "files", its tensors
// as "task_b/<key>" in "tensors".
//
// The training state that Trainer's trainer_state.json has no key for in
// every transformers version lorakeep's file must load in (early stopping's
// counter: transformers 4.x has no "stateful_callbacks") lives here.
//
// "manifest_xxh3" is the XXH3-64 of the file's own text with that value
// written as 16 zeros: a changed byte anywhere in the manifest is caught too.
// Metrics that are not finite are stored as the strings "NaN", "Infinity"
// and "-Infinity" (JSON has no such numbers). No LibTorch here.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lorakeep/training_state.h"
#include "io/checksum.h"

namespace lorakeep::detail {

struct Manifest {
  int format_version = 1;
  std::string library_version;
  std::int64_t step = 0;
  double epoch = 0;
  Metrics metrics;                    // the evaluation at this step, if any
  std::string metric_for_best_model;  // e.g. "eval_loss"; empty: no metric tracked
  bool greater_is_better = false;
  std::map<std::string, FileDigest> files;       // every other file of the checkpoint ("<folder>/<file>" in one)
  std::map<std::string, std::uint64_t> tensors;  // adapter tensor -> XXH3-64 of its bytes
  std::string active_adapter;                    // with named adapters: the one computed; else empty
  std::string created;                           // ISO 8601, UTC
  std::optional<TrainingState::EarlyStoppingState> early_stopping;

  // The tracked metric at this step, if it was evaluated.
  std::optional<double> metric() const;
  // The named adapters, by their folders (those holding an adapter config).
  std::vector<std::string> named_adapters() const;
};

std::string format_manifest(const Manifest& manifest);

// `text` with its "manifest_xxh3" value replaced by the checksum it should
// have (unchanged if it has none): for tools and fuzzers that edit a
// manifest on purpose.
std::string seal_manifest(std::string text);

// Throws Error(kCorruption) naming `path` and the field for anything that is
// not a manifest lorakeep wrote.
Manifest parse_manifest(std::string_view text, const std::string& path);

}  // namespace lorakeep::detail
