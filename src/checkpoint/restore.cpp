#include "checkpoint/restore.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/collective.h"
#include "checkpoint/optimizer_state.h"
#include "lora/adapter_load.h"
#include "tensors/rng.h"

namespace lorakeep::detail {
namespace {

// `r` added into `total`: the counts summed, the peaks the larger.
void add(TransferReport& total, const TransferReport& r) {
  if (total.source.empty()) {
    total = r;
    return;
  }
  total.tensors += r.tensors;
  total.bytes += r.bytes;
  total.seconds += r.seconds;
  total.verify_seconds += r.verify_seconds;
  total.gb_per_s = total.seconds > 0 ? static_cast<double>(total.bytes) / total.seconds / 1e9 : 0;
  if (total.device != r.device) total.device = "mixed";
  total.peak_device_bytes = std::max(total.peak_device_bytes, r.peak_device_bytes);
  if (total.device_bytes_unmeasured.empty()) total.device_bytes_unmeasured = r.device_bytes_unmeasured;
  total.peak_rss_bytes = std::max(total.peak_rss_bytes, r.peak_rss_bytes);
  total.naive_device_bytes += r.naive_device_bytes;
}

// The adapters of a checkpoint, planned against a module, nothing changed
// yet: the default adapter's load, then each named adapter's (from its
// folder), and the adapter the checkpoint's model computed.
class CheckpointAdapters {
 public:
  // Each byte is checked once, before anything is written: the adapters'
  // tensors against their own checksums in the transfer plans, as they are
  // read for them (whole files, for an older manifest without them); the
  // adapter configs as they are read to be parsed; the files in
  // `read_later` for their size only (the caller reads them verified); every
  // other file against its checksum, streamed.
  CheckpointAdapters(const CheckpointReader& checkpoint, const CheckpointOptions& options, torch::nn::Module& module,
                     const std::set<std::string>& read_later = {})
      : module_(&module), dir_(checkpoint.dir()), active_(checkpoint.manifest().active_adapter) {
    const Manifest& manifest = checkpoint.manifest();
    const bool verify = options.verify_checksums;
    const bool by_tensor = verify && !manifest.tensors.empty();
    const std::vector<std::string> named = manifest.named_adapters();
    if (!active_.empty() && active_ != kDefaultAdapter &&
        std::find(named.begin(), named.end(), active_) == named.end()) {
      throw Error(ErrorCode::kCorruption, "checkpoint '" + checkpoint.dir() + "': its manifest makes '" + active_ +
                                              "' the active adapter, which it does not hold (hint: damaged, or "
                                              "edited by hand)");
    }
    std::set<std::string> read_by_loads = {kAdapterConfigFile};
    if (by_tensor) read_by_loads.insert(kAdapterWeightsFile);
    for (const std::string& folder : named) {
      read_by_loads.insert(folder + "/" + kAdapterConfigFile);
      if (by_tensor) read_by_loads.insert(folder + "/" + kAdapterWeightsFile);
    }
    for (const auto& [name, entry] : manifest.files) {
      checkpoint.check(name, verify && read_by_loads.count(name) == 0 && read_later.count(name) == 0);
    }
    if (checkpoint.lists(kAdapterConfigFile) || named.empty()) {  // else named adapters only, as PEFT saves them
      loads_.push_back(load(checkpoint, options, "", by_tensor));
    }
    for (const std::string& folder : named) loads_.push_back(load(checkpoint, options, folder, by_tensor));
  }

  // Writes every adapter in turn, then makes the checkpoint's active adapter
  // the model's (set_adapter). Throws as AdapterLoad::apply.
  TransferReport apply() {
    TransferReport total;
    for (AdapterLoad& load : loads_) add(total, load.apply());
    if (loads_.size() > 1) total.source = dir_;
    if (!active_.empty()) set_adapter(*module_, active_);
    return total;
  }

 private:
  AdapterLoad load(const CheckpointReader& checkpoint, const CheckpointOptions& options, const std::string& folder,
                   bool by_tensor) const {
    const std::string dir = folder.empty() ? checkpoint.dir() : checkpoint.path(folder);
    const std::string prefix = folder.empty() ? std::string() : folder + "/";
    LoadOptions transfer;
    transfer.chunk_bytes = options.chunk_bytes;
    transfer.verify_checksums = by_tensor;
    for (const auto& [key, checksum] : checkpoint.manifest().tensors) {
      const bool in_folder = key.compare(0, prefix.size(), prefix) == 0 &&
                             key.find('/', prefix.size()) == std::string::npos;
      if (by_tensor && in_folder) transfer.checksums.emplace(key.substr(prefix.size()), checksum);
    }
    return AdapterLoad(dir, checkpoint.adapter_config(options.verify_checksums, folder),
                       open_tensor_source(adapter_weights_path(dir)), *module_, transfer,
                       folder.empty() ? std::string(kDefaultAdapter) : folder);
  }

  torch::nn::Module* module_;
  std::string dir_;
  std::string active_;
  std::vector<AdapterLoad> loads_;
};

std::string rank_prefix(const RankOutcome& failure, int world) {
  return world == 1 ? std::string() : "rank " + std::to_string(failure.rank) + ": ";
}

}  // namespace

TransferReport restore_best(Coordinator& coordinator, const CommittedSet& committed, const CheckpointOptions& options,
                            torch::nn::Module& module) {
  const int world = coordinator.world_size();
  const std::vector<std::int64_t> order = agreed_steps(coordinator, "choice of the best checkpoint",
                                                       committed.ranked());
  if (order.empty()) {
    throw Error(ErrorCode::kNotFound, "no checkpoint in '" + options.output_dir + "' has a '" + committed.key() +
                                          "' (hint: was it evaluated at a saved step?)");
  }
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::string path = committed.path_of(order[i]);
    // Every rank validates; only when all succeeded does any rank write.
    std::optional<CheckpointAdapters> load;
    const std::vector<RankOutcome> checked = gather_outcomes(coordinator, "validation of '" + path + "'", [&] {
      load.emplace(CheckpointReader(path), options, module);
      return std::string();
    });
    const auto failed = failures(checked);
    if (failed.empty()) {
      TransferReport report;
      apply_everywhere(coordinator, "loading of '" + path + "'", [&] { report = load->apply(); });
      const auto it = committed.by_step().find(order[i]);
      const double metric = it != committed.by_step().end() && it->second.metric ? *it->second.metric : 0.0;
      log_info("loaded the best checkpoint '{}' ({} {}): {}", path, committed.key(), metric, report.summary());
      return report;
    }
    if (!options.fallback_to_next_best || !all_damaged(failed) || i + 1 == order.size()) {
      failed.front()->raise(world);
    }
    log_error("THE BEST CHECKPOINT '{}' IS DAMAGED ({}{}); falling back to the next best, '{}'", path,
              rank_prefix(*failed.front(), world), failed.front()->message, committed.path_of(order[i + 1]));
  }
  throw Error(ErrorCode::kNotFound, "no loadable checkpoint");  // unreachable
}

namespace {

// One resume from the checkpoint at `path`: everything it will set is read
// and checked first, on every rank (the adapter planned and verified, the
// trainer state, the optimizer archive parsed into host memory, this rank's
// RNG states), and nothing changes until all of it passed on all ranks.
// Returns the checkpoint; nullopt when every rank that failed found it
// damaged and `may_skip` (logged); throws any other failure.
std::optional<CheckpointInfo> resume_from(Coordinator& coordinator, const CommittedSet& committed,
                                          const std::string& path, bool may_skip, const CheckpointOptions& options,
                                          torch::nn::Module& module, TrainingState& state,
                                          torch::optim::Optimizer* optimizer) {
  const int world = coordinator.world_size();
  const std::string rng_name = rng_file_name(coordinator.rank(), world);
  const bool verify = options.verify_checksums;
  std::optional<CheckpointAdapters> adapter;
  std::optional<OptimizerStateLoad> optimizer_state;
  NamedTensors rng;
  TrainingState restored;
  std::optional<CheckpointReader> checkpoint;
  const std::vector<RankOutcome> checked = gather_outcomes(coordinator, "validation of '" + path + "'", [&] {
    checkpoint.emplace(path);
    adapter.emplace(*checkpoint, options, module, std::set<std::string>{kTrainerStateFile, rng_name});
    restored = checkpoint->trainer_state(verify);
    if (optimizer != nullptr && checkpoint->lists(kOptimizerFile)) {
      optimizer_state.emplace(checkpoint->path(kOptimizerFile), *optimizer);
    }
    if (checkpoint->lists(rng_name)) {
      rng = parse_rng_states(checkpoint->read_verified(rng_name, verify), checkpoint->path(rng_name));
    } else if (checkpoint->lists(rng_file_name(0, 2)) || checkpoint->lists(kRngFile)) {
      log_warn("'{}' has no {} (saved by another number of ranks): the random generators are not restored", path,
               rng_name);
    }
    return std::string();
  });
  if (const auto failed = failures(checked); !failed.empty()) {
    if (!may_skip || !all_damaged(failed)) failed.front()->raise(world);
    log_error("cannot resume from '{}' ({}{}); trying an older checkpoint", path, rank_prefix(*failed.front(), world),
              failed.front()->message);
    return std::nullopt;
  }
  apply_everywhere(coordinator, "resuming from '" + path + "'", [&] {
    if (optimizer_state) optimizer_state->apply();  // first: it was checked as far as Optimizer::load checks
    adapter->apply();
    if (!rng.empty()) restore_rng_states(rng, checkpoint->path(rng_name));
  });
  const Manifest& manifest = checkpoint->manifest();
  restored.global_step = manifest.step;
  restored.last_metrics = manifest.metrics;
  restored.last_metrics_step = manifest.metrics.empty() ? -1 : manifest.step;
  committed.set_best(restored);
  if (restored.train_batch_size > 0 && state.train_batch_size > 0 &&
      restored.train_batch_size != state.train_batch_size) {
    log_warn("resuming '{}', saved by a run of train_batch_size {}, into one of {}: the run goes on, but not as "
             "the saved run would have (the data position counts batches of the new size)",
             path, restored.train_batch_size, state.train_batch_size);
  }
  state.resume_from(restored);
  log_info("resumed from '{}' at step {}", path, manifest.step);
  return committed.info_of(manifest, path);
}

}  // namespace

std::optional<CheckpointInfo> restore_latest(Coordinator& coordinator, const CommittedSet& committed,
                                             const CheckpointOptions& options, torch::nn::Module& module,
                                             TrainingState& state, torch::optim::Optimizer* optimizer) {
  const std::vector<std::int64_t> newest_first = agreed_steps(coordinator, "choice of the checkpoint to resume from",
                                                              committed.newest_first());
  for (const std::int64_t step : newest_first) {
    if (auto info = resume_from(coordinator, committed, committed.path_of(step), /*may_skip=*/true, options, module,
                                state, optimizer)) {
      return info;
    }
  }
  return std::nullopt;
}

CheckpointInfo restore_checkpoint(Coordinator& coordinator, const CommittedSet& committed, const std::string& path,
                                  const CheckpointOptions& options, torch::nn::Module& module, TrainingState& state,
                                  torch::optim::Optimizer* optimizer) {
  return *resume_from(coordinator, committed, path, /*may_skip=*/false, options, module, state, optimizer);
}

}  // namespace lorakeep::detail
