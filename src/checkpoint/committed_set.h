// The committed checkpoints of a run directory, as this process knows them:
// which is the best (policy.h's rank_by_metric, the one ranking), which is the
// newest, and which rotation deletes. Rank 0 builds it from its scan of the
// directory and changes it as it commits; the other ranks mirror rank 0's.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "lorakeep/checkpoint_manager.h"
#include "checkpoint/manifest.h"
#include "checkpoint/policy.h"
#include "checkpoint/run_dir.h"

namespace lorakeep::detail {

class CommittedSet {
 public:
  // `key` and `greater`: the metric that ranks checkpoints.
  CommittedSet(std::string output_dir, std::string key, bool greater);

  const std::string& key() const { return key_; }
  bool greater() const { return greater_; }

  // <output_dir>/checkpoint-<step>
  std::string path_of(std::int64_t step) const;
  // What the checkpoint of `manifest` is, at `path`.
  CheckpointInfo info_of(const Manifest& manifest, const std::string& path) const;

  // The checkpoints that count in `scan` (the others logged).
  void add_scanned(const RunDirScan& scan);
  // Reads the manifests of `steps` (the set rank 0 has; another rank).
  void adopt(const std::vector<std::int64_t>& steps);
  // Adds `info` (replacing a checkpoint of its step), then keeps only
  // `kept` when given (rank 0's set after its rotation; another rank).
  void put(const CheckpointInfo& info, const std::vector<std::int64_t>* kept = nullptr);
  // Forgets every checkpoint but those of `steps` (nothing deleted).
  void keep_only(const std::vector<std::int64_t>& steps);

  const std::map<std::int64_t, CheckpointInfo>& by_step() const { return committed_; }
  std::vector<std::int64_t> steps() const;
  std::vector<std::int64_t> newest_first() const;
  // The evaluated steps, best first.
  std::vector<std::int64_t> ranked() const;
  std::optional<CheckpointInfo> best() const;
  std::optional<CheckpointInfo> latest() const;

  // Sets state's best fields from the committed set, or from the set as it
  // will be once `candidate` is in (nothing changed here).
  void set_best(TrainingState& state, const CheckpointInfo* candidate = nullptr) const;

  // Deletes what the policy no longer keeps (policy.h's steps_to_delete):
  // each checkpoint renamed out of sight, then removed. Failures are logged,
  // never thrown.
  void rotate(int save_total_limit, int keep_best);
  // The steps rotate would keep, nothing changed.
  std::vector<std::int64_t> kept_by_rotation(int save_total_limit, int keep_best) const;
  // Deletes the checkpoint of `step` as rotation does (a save that another
  // node could not commit). Failures are logged, never thrown.
  void withdraw(std::int64_t step);

 private:
  std::vector<CheckpointRecord> records(const CheckpointInfo* candidate = nullptr) const;
  // Renames the checkpoint of `step` out of sight, forgets it, removes it.
  void remove(std::int64_t step, const char* why);

  std::string output_dir_;
  std::string key_;
  bool greater_;
  std::map<std::int64_t, CheckpointInfo> committed_;  // by step
};

}  // namespace lorakeep::detail
