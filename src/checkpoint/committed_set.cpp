#include "checkpoint/committed_set.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <boost/filesystem.hpp>

#include "base/file_names.h"
#include "base/logging.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/policy.h"
#include "io/atomic_file.h"

namespace lorakeep::detail {

CommittedSet::CommittedSet(std::string output_dir, std::string key, bool greater)
    : output_dir_(std::move(output_dir)), key_(std::move(key)), greater_(greater) {}

std::string CommittedSet::path_of(std::int64_t step) const {
  return (boost::filesystem::path(output_dir_) / checkpoint_dir_name(step)).string();
}

CheckpointInfo CommittedSet::info_of(const Manifest& manifest, const std::string& path) const {
  CheckpointInfo info;
  info.step = manifest.step;
  info.path = path;
  info.epoch = manifest.epoch;
  info.metrics = manifest.metrics;
  if (auto it = manifest.metrics.find(key_); it != manifest.metrics.end()) info.metric = it->second;
  return info;
}

void CommittedSet::add_scanned(const RunDirScan& scan) {
  for (const ScannedCheckpoint& c : scan.checkpoints) {
    if (!c.manifest) {
      log_warn("ignoring '{}': {}", c.path, c.problem);
      continue;
    }
    committed_[c.step] = info_of(*c.manifest, c.path);
  }
  if (committed_.empty()) return;
  const auto order = ranked();
  log_info("run directory '{}': {} checkpoints, newest {}, best {}", output_dir_, committed_.size(),
           committed_.rbegin()->first, order.empty() ? std::string("none") : std::to_string(order.front()));
}

void CommittedSet::adopt(const std::vector<std::int64_t>& steps) {
  for (const std::int64_t step : steps) {
    const std::string path = path_of(step);
    committed_[step] = info_of(read_manifest(path), path);
  }
}

void CommittedSet::put(const CheckpointInfo& info, const std::vector<std::int64_t>* kept) {
  committed_[info.step] = info;
  if (kept != nullptr) keep_only(*kept);
}

void CommittedSet::keep_only(const std::vector<std::int64_t>& steps) {
  const std::set<std::int64_t> keep(steps.begin(), steps.end());
  for (auto it = committed_.begin(); it != committed_.end();) {
    it = keep.count(it->first) ? std::next(it) : committed_.erase(it);
  }
}

std::vector<std::int64_t> CommittedSet::steps() const {
  std::vector<std::int64_t> out;
  for (const auto& [step, info] : committed_) out.push_back(step);
  return out;
}

std::vector<std::int64_t> CommittedSet::newest_first() const {
  std::vector<std::int64_t> out = steps();
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<CheckpointRecord> CommittedSet::records(const CheckpointInfo* candidate) const {
  std::vector<CheckpointRecord> out;
  for (const auto& [step, info] : committed_) {
    if (candidate == nullptr || step != candidate->step) out.push_back({step, info.metric});
  }
  if (candidate != nullptr) out.push_back({candidate->step, candidate->metric});
  return out;
}

std::vector<std::int64_t> CommittedSet::ranked() const { return rank_by_metric(records(), greater_); }

std::optional<CheckpointInfo> CommittedSet::best() const {
  const auto order = ranked();
  if (order.empty()) return std::nullopt;
  return committed_.at(order.front());
}

std::optional<CheckpointInfo> CommittedSet::latest() const {
  if (committed_.empty()) return std::nullopt;
  return committed_.rbegin()->second;
}

void CommittedSet::set_best(TrainingState& state, const CheckpointInfo* candidate) const {
  const auto order = rank_by_metric(records(candidate), greater_);
  if (order.empty()) {
    state.best_metric.reset();
    state.best_global_step.reset();
    state.best_model_checkpoint.clear();
    return;
  }
  const std::int64_t step = order.front();
  const CheckpointInfo& best = candidate != nullptr && candidate->step == step ? *candidate : committed_.at(step);
  state.best_metric = best.metric;
  state.best_global_step = best.step;
  state.best_model_checkpoint = path_of(best.step);
}

void CommittedSet::rotate(int save_total_limit, int keep_best) {
  for (const std::int64_t step : steps_to_delete(records(), save_total_limit, keep_best, greater_)) {
    remove(step, "rotation");
  }
}

std::vector<std::int64_t> CommittedSet::kept_by_rotation(int save_total_limit, int keep_best) const {
  const std::vector<std::int64_t> doomed = steps_to_delete(records(), save_total_limit, keep_best, greater_);
  std::vector<std::int64_t> out;
  for (const std::int64_t step : steps()) {
    if (std::find(doomed.begin(), doomed.end(), step) == doomed.end()) out.push_back(step);
  }
  return out;
}

void CommittedSet::withdraw(std::int64_t step) {
  if (committed_.count(step)) remove(step, "withdrawal");
}

void CommittedSet::remove(std::int64_t step, const char* why) {
  const std::string path = committed_.at(step).path;
  // Out of sight first (one rename), then deleted: a crash halfway leaves
  // a temp directory that the next start removes, never half a checkpoint.
  const std::string doomed =
      (boost::filesystem::path(output_dir_) / (temp_checkpoint_dir_name(step, ::getpid()) + "-old")).string();
  if (::rename(path.c_str(), doomed.c_str()) != 0) {
    log_error("{}: cannot retire '{}': {}", why, path, std::strerror(errno));
    return;
  }
  committed_.erase(step);
  if (remove_all_logged(doomed)) log_info("{}: deleted '{}'", why, path);
}

}  // namespace lorakeep::detail
