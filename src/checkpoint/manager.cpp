#include "lorakeep/checkpoint.h"

#include <unistd.h>

#include <ctime>
#include <exception>
#include <map>
#include <sstream>
#include <type_traits>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <boost/filesystem.hpp>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "lorakeep/error.h"
#include "lorakeep/lora.h"
#include "lorakeep/version.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "checkpoint/manifest.h"
#include "checkpoint/policy.h"
#include "checkpoint/run_dir.h"
#include "checkpoint/trainer_state.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/dir_lock.h"
#include "io/read_file.h"
#include "lora/adapter.h"
#include "tensors/rng.h"
#include "tensors/safetensors_writer.h"
#include "tensors/torch_compat.h"
#include "tensors/torch_error.h"

namespace lorakeep {
namespace {

namespace fs = boost::filesystem;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Writes one small file of a checkpoint being assembled, synced, and returns
// its manifest entry.
detail::FileEntry write_synced(const std::string& path, const std::string& bytes) {
  detail::WritableFile f = detail::WritableFile::create(path);
  f.append(bytes.data(), bytes.size());
  f.sync();
  f.close();
  return detail::FileEntry{bytes.size(), detail::xxh3_64(bytes.data(), bytes.size())};
}

// The optimizer's state through LibTorch's archive, streamed into the file.
// A failed write is kept and rethrown after save_to returns: the archive's
// writer retries from its destructor, and a second throw there would
// terminate the process.
detail::FileEntry write_optimizer(const std::string& path, torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  detail::WritableFile f = detail::WritableFile::create(path);
  detail::Xxh3Stream hash;
  std::exception_ptr failed;
  archive.save_to([&](const void* data, std::size_t size) -> std::size_t {
    if (failed) return size;
    try {
      f.append(data, size);
      hash.update(data, size);
    } catch (...) {
      failed = std::current_exception();
    }
    return size;
  });
  if (failed) std::rethrow_exception(failed);
  f.sync();
  const std::uint64_t size = f.size();
  f.close();
  return detail::FileEntry{size, hash.digest()};
}

// The saved RNG states of a checkpoint, read and checked; nothing set.
NamedTensors read_rng_states(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  NamedTensors states;
  for (const std::string& name : file.names()) states.emplace_back(name, file.tensor(name).clone());
  detail::check_rng_states(states, path);
  return states;
}

CheckpointInfo info_of(const detail::Manifest& m, const std::string& path, const std::string& key) {
  CheckpointInfo info;
  info.step = m.step;
  info.path = path;
  info.epoch = m.epoch;
  info.metrics = m.metrics;
  if (auto it = m.metrics.find(key); it != m.metrics.end()) info.metric = it->second;
  return info;
}

// Writes every file of a checkpoint into `tmp`, each synced, the manifest
// last (with the sizes and checksums of the others).
void write_checkpoint_files(const std::string& tmp, const CheckpointOptions& options, detail::Manifest& manifest,
                            torch::nn::Module& module, const LoraConfig& lora, const TrainingState& state,
                            torch::optim::Optimizer* optimizer) {
  const AdapterSaveReport adapter = detail::write_adapter(tmp, module, lora, /*direct=*/true);
  manifest.files[detail::kAdapterWeightsFile] = {adapter.weights.file_size, adapter.weights.file_checksum};
  for (std::size_t i = 0; i < adapter.weights.tensors.size(); ++i) {
    manifest.tensors[adapter.weights.tensors[i].name] = adapter.weights.tensor_checksums[i];
  }
  manifest.files[detail::kAdapterConfigFile] = [&] {
    std::uint64_t size = 0;
    const std::uint64_t sum = detail::checksum_file(adapter.config_path, &size);
    return detail::FileEntry{size, sum};
  }();
  if (options.save_optimizer && optimizer != nullptr) {
    manifest.files[detail::kOptimizerFile] = write_optimizer(join(tmp, detail::kOptimizerFile), *optimizer);
  }
  if (options.save_rng) {
    const SaveReport r = detail::write_safetensors(join(tmp, detail::kRngFile), detail::capture_rng_states(), {},
                                                   detail::SafetensorsWriter::Mode::kDirect, 1 << 20);
    manifest.files[detail::kRngFile] = {r.file_size, r.file_checksum};
  }
  manifest.files[detail::kTrainerStateFile] = write_synced(join(tmp, detail::kTrainerStateFile),
                                                           detail::format_trainer_state(state, options));
  write_synced(join(tmp, detail::kManifestFile), detail::format_manifest(manifest));
}

}  // namespace

struct CheckpointManager::Impl {
  CheckpointOptions options;
  std::string key;
  bool greater = false;
  detail::DirLock lock;
  std::map<std::int64_t, CheckpointInfo> committed;  // by step

  Impl(CheckpointOptions o, detail::DirLock l)
      : options(std::move(o)), key(lorakeep::metric_key(options)), greater(lorakeep::greater_is_better(options)),
        lock(std::move(l)) {}

  std::vector<detail::CheckpointRecord> records() const {
    std::vector<detail::CheckpointRecord> out;
    for (const auto& [step, info] : committed) out.push_back({step, info.metric});
    return out;
  }

  std::vector<std::int64_t> ranked() const { return detail::rank_by_metric(records(), greater); }

  // The adapter load of checkpoint `dir`, planned against `module`, after
  // every file of the checkpoint was verified (options.verify_checksums);
  // nothing changed.
  detail::AdapterLoad prepare_adapter(const std::string& dir, const detail::Manifest& manifest,
                                      torch::nn::Module& module) const;

  void set_best(TrainingState& state) const {
    const auto order = ranked();
    if (order.empty()) {
      state.best_metric.reset();
      state.best_global_step.reset();
      state.best_model_checkpoint.clear();
      return;
    }
    const CheckpointInfo& best = committed.at(order.front());
    state.best_metric = best.metric;
    state.best_global_step = best.step;
    state.best_model_checkpoint = join(options.output_dir, detail::checkpoint_dir_name(best.step));
  }

  void rotate() {
    for (std::int64_t step : detail::steps_to_delete(records(), options.save_total_limit, options.keep_best, greater)) {
      const std::string path = committed.at(step).path;
      // Out of sight first (one rename), then deleted: a crash halfway leaves
      // a temp directory that the next start removes, never half a checkpoint.
      const std::string doomed = join(options.output_dir, detail::temp_checkpoint_dir_name(step, ::getpid()) + "-old");
      if (::rename(path.c_str(), doomed.c_str()) != 0) {
        detail::log_error("rotation: cannot retire '{}': {}", path, std::strerror(errno));
        continue;
      }
      committed.erase(step);
      if (detail::remove_all_logged(doomed)) detail::log_info("rotation: deleted '{}'", path);
    }
  }
};

CheckpointManager::CheckpointManager(CheckpointOptions options) {
  validate(options);
  boost::system::error_code ec;
  fs::create_directories(options.output_dir, ec);
  if (ec) {
    throw Error(ErrorCode::kIOError, "cannot create run directory '" + options.output_dir + "': " + ec.message());
  }
  detail::DirLock lock = detail::DirLock::acquire(options.output_dir);
  impl_ = std::make_unique<Impl>(std::move(options), std::move(lock));
  const detail::RunDirScan scan = detail::scan_run_dir(impl_->options.output_dir);
  for (const std::string& tmp : scan.temp_dirs) {
    detail::log_warn("removing '{}', left over by an interrupted save", tmp);
    detail::remove_all_logged(tmp);
  }
  for (const detail::ScannedCheckpoint& c : scan.checkpoints) {
    if (!c.manifest) {
      detail::log_warn("ignoring '{}': {}", c.path, c.problem);
      continue;
    }
    impl_->committed[c.step] = info_of(*c.manifest, c.path, impl_->key);
  }
  if (!impl_->committed.empty()) {
    const auto order = impl_->ranked();
    detail::log_info("run directory '{}': {} checkpoints, newest {}, best {}", impl_->options.output_dir,
                     impl_->committed.size(), impl_->committed.rbegin()->first,
                     order.empty() ? std::string("none") : std::to_string(order.front()));
  }
}

CheckpointManager::~CheckpointManager() = default;
CheckpointManager::CheckpointManager(CheckpointManager&&) noexcept = default;
CheckpointManager& CheckpointManager::operator=(CheckpointManager&&) noexcept = default;

const CheckpointOptions& CheckpointManager::options() const { return impl_->options; }
const std::string& CheckpointManager::metric_key() const { return impl_->key; }
bool CheckpointManager::greater_is_better() const { return impl_->greater; }

CheckpointInfo CheckpointManager::save(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                       torch::optim::Optimizer* optimizer) {
  Impl& m = *impl_;
  const std::int64_t step = state.global_step;
  const std::string final_dir = join(m.options.output_dir, detail::checkpoint_dir_name(step));
  const std::string tmp = join(m.options.output_dir, detail::temp_checkpoint_dir_name(step, ::getpid()));

  detail::Manifest manifest;
  manifest.library_version = LORAKEEP_VERSION;
  manifest.step = step;
  manifest.epoch = state.epoch;
  if (state.last_metrics_step == step) manifest.metrics = state.last_metrics;
  manifest.metric_for_best_model = m.key;
  manifest.greater_is_better = m.greater;
  manifest.created = utc_now();
  CheckpointInfo info = info_of(manifest, final_dir, m.key);

  // The best as it will be once this checkpoint is in: trainer_state.json
  // records it, as Trainer's does.
  const TrainingState before = state;
  auto previous = m.committed.find(step);
  std::optional<CheckpointInfo> replaced;
  if (previous != m.committed.end()) replaced = previous->second;
  m.committed[step] = info;
  m.set_best(state);
  auto undo = [&] {
    if (replaced) m.committed[step] = *replaced;
    else m.committed.erase(step);
    state = before;
  };

  try {
    detail::StagedDirectory staged(final_dir, tmp);
    detail::with_torch_errors(ErrorCode::kInvalidArgument, "cannot save '" + final_dir + "'", [&] {
      write_checkpoint_files(staged.path(), m.options, manifest, module, lora, state, optimizer);
      staged.publish(/*replace=*/true);
    });
  } catch (...) {
    undo();
    throw;
  }
  detail::log_info("saved '{}'{}", final_dir,
                   info.metric ? " (" + m.key + " " + std::to_string(*info.metric) + ")" : std::string());
  m.rotate();
  m.set_best(state);
  return info;
}

std::vector<CheckpointInfo> CheckpointManager::checkpoints() const {
  std::vector<CheckpointInfo> out;
  for (const auto& [step, info] : impl_->committed) out.push_back(info);
  return out;
}

std::optional<CheckpointInfo> CheckpointManager::best() const {
  const auto order = impl_->ranked();
  if (order.empty()) return std::nullopt;
  return impl_->committed.at(order.front());
}

std::optional<CheckpointInfo> CheckpointManager::latest() const {
  if (impl_->committed.empty()) return std::nullopt;
  return impl_->committed.rbegin()->second;
}

detail::AdapterLoad CheckpointManager::Impl::prepare_adapter(const std::string& dir, const detail::Manifest& manifest,
                                                             torch::nn::Module& module) const {
  // Each byte of the checkpoint is checked once, before anything is written:
  // the adapter's tensors against their own checksums, in the transfer plan,
  // as they are read for it; every other file against its file checksum.
  const bool verify = options.verify_checksums;
  const bool by_tensor = verify && !manifest.tensors.empty();  // else the whole file (an older manifest)
  for (const auto& [name, entry] : manifest.files) {
    detail::check_checkpoint_file(dir, name, entry, verify && !(by_tensor && name == detail::kAdapterWeightsFile));
  }
  LoadOptions transfer;
  transfer.chunk_bytes = options.chunk_bytes;
  transfer.verify_checksums = by_tensor;
  if (by_tensor) transfer.checksums = manifest.tensors;
  return detail::AdapterLoad(dir, module, transfer);
}

TransferReport CheckpointManager::load_best_into(torch::nn::Module& module) {
  const auto order = impl_->ranked();
  if (order.empty()) {
    throw Error(ErrorCode::kNotFound, "no checkpoint in '" + impl_->options.output_dir + "' has a '" + impl_->key +
                                          "' (hint: was it evaluated at a saved step?)");
  }
  for (std::size_t i = 0; i < order.size(); ++i) {
    const CheckpointInfo& candidate = impl_->committed.at(order[i]);
    try {
      detail::AdapterLoad load = impl_->prepare_adapter(candidate.path, detail::read_manifest(candidate.path), module);
      TransferReport report = load.apply();
      detail::log_info("loaded the best checkpoint '{}' ({} {}): {}", candidate.path, impl_->key,
                       candidate.metric ? *candidate.metric : 0.0, report.summary());
      return report;
    } catch (const Error& e) {
      const bool damaged = e.code() == ErrorCode::kCorruption || e.code() == ErrorCode::kNotFound;
      if (!impl_->options.fallback_to_next_best || !damaged || i + 1 == order.size()) throw;
      detail::log_error("THE BEST CHECKPOINT '{}' IS DAMAGED ({}); falling back to the next best, '{}'", candidate.path,
                        e.what(), impl_->committed.at(order[i + 1]).path);
    }
  }
  throw Error(ErrorCode::kNotFound, "no loadable checkpoint");  // unreachable
}

namespace {

// Moves each parameter's optimizer state to the parameter's device, one
// parameter at a time, through the state's own serialization (the only
// generic access LibTorch's optimizers give to their state tensors): the
// device then holds at most one parameter's state beyond the final state.
void move_state_to_parameters(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups()) {
    for (const at::Tensor& param : group.params()) {
      if (param.device().is_cpu()) continue;
      auto it = optimizer.state().find(detail::optimizer_state_key(optimizer, param));
      if (it == optimizer.state().end()) continue;
      torch::serialize::OutputArchive out;
      it->second->serialize(out);
      std::ostringstream bytes;
      out.save_to(bytes);
      torch::serialize::InputArchive in;
      std::istringstream read(bytes.str());
      in.load_from(read, param.device());
      it->second->serialize(in);
    }
  }
}

// LibTorch's Optimizer::load checks the number of parameter groups, then
// each group's size just before it replaces that group's state: a saved
// state that fits the first group but not a later one would leave the
// optimizer half restored. So every count is checked here first, on the
// archive as LibTorch writes it ("param_groups/size", "param_groups/<i>" ->
// "params/size"). Throws Error(kIncompatible) naming `path`.
void check_optimizer_groups(torch::serialize::InputArchive& archive, torch::optim::Optimizer& optimizer,
                            const std::string& path) {
  torch::serialize::InputArchive groups;
  if (!archive.try_read("param_groups", groups)) return;  // another layout: Optimizer::load checks it
  auto count = [&](torch::serialize::InputArchive& a, const std::string& key) {
    at::Tensor n;
    if (!a.try_read(key, n) || n.numel() != 1) {
      throw Error(ErrorCode::kCorruption, "the optimizer state '" + path + "' has no '" + key + "'");
    }
    return n.item<std::int64_t>();
  };
  const auto& live = optimizer.param_groups();
  const std::int64_t saved = count(groups, "param_groups/size");
  if (saved != static_cast<std::int64_t>(live.size())) {
    throw Error(ErrorCode::kIncompatible, "the optimizer state '" + path + "' has " + std::to_string(saved) +
                                              " parameter groups; the optimizer has " + std::to_string(live.size()) +
                                              " (hint: another optimizer setup?)");
  }
  for (std::size_t i = 0; i < live.size(); ++i) {
    torch::serialize::InputArchive group;
    groups.read("param_groups/" + std::to_string(i), group);
    const std::int64_t params = count(group, "params/size");
    if (params != static_cast<std::int64_t>(live[i].params().size())) {
      throw Error(ErrorCode::kIncompatible, "the optimizer state '" + path + "' has " + std::to_string(params) +
                                                " parameters in group " + std::to_string(i) + "; the optimizer has " +
                                                std::to_string(live[i].params().size()) +
                                                " (hint: other trainable parameters?)");
    }
  }
}

}  // namespace

std::optional<CheckpointInfo> CheckpointManager::resume(torch::nn::Module& module, torch::optim::Optimizer* optimizer,
                                                        TrainingState* state) {
  for (auto it = impl_->committed.rbegin(); it != impl_->committed.rend(); ++it) {
    const CheckpointInfo& c = it->second;
    // Everything the resume will set is read and checked first: the adapter
    // (planned and verified), the trainer state, the optimizer archive (parsed
    // into host memory), the RNG states. Nothing changes until all of it passed.
    std::optional<detail::AdapterLoad> adapter;
    std::optional<torch::serialize::InputArchive> archive;
    NamedTensors rng;
    TrainingState restored;
    detail::Manifest manifest;
    try {
      manifest = detail::read_manifest(c.path);
      adapter.emplace(impl_->prepare_adapter(c.path, manifest, module));
      auto listed = [&](const char* name) {  // and verified by prepare_adapter
        if (!manifest.files.count(name)) {
          throw Error(ErrorCode::kCorruption, "the manifest of '" + c.path + "' does not list " + name);
        }
        return join(c.path, name);
      };
      restored.max_steps = state->max_steps;
      restored.num_train_epochs = state->num_train_epochs;
      restored.train_batch_size = state->train_batch_size;
      const std::string trainer_state = listed(detail::kTrainerStateFile);
      detail::parse_trainer_state(detail::read_small_file(trainer_state, 256ull << 20), trainer_state, &restored);
      if (optimizer != nullptr && manifest.files.count(detail::kOptimizerFile)) {
        const std::string path = listed(detail::kOptimizerFile);
        archive.emplace();
        detail::with_torch_errors(ErrorCode::kCorruption, "cannot read the optimizer state '" + path + "'", [&] {
          archive->load_from(path, c10::Device(c10::kCPU));
          check_optimizer_groups(*archive, *optimizer, path);
        });
      }
      if (manifest.files.count(detail::kRngFile)) rng = read_rng_states(listed(detail::kRngFile));
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kCorruption && e.code() != ErrorCode::kNotFound) throw;
      detail::log_error("cannot resume from '{}' ({}); trying an older checkpoint", c.path, e.what());
      continue;
    }
    // The optimizer first: its groups were checked against the archive above,
    // which is all Optimizer::load checks.
    if (archive) {
      detail::with_torch_errors(ErrorCode::kIncompatible,
                                "cannot restore the optimizer from '" + c.path +
                                    "' (hint: another optimizer type, "
                                    "or other parameters?)",
                                [&] {
                                  optimizer->load(*archive);
                                  archive.reset();
                                  move_state_to_parameters(*optimizer);
                                });
    }
    adapter->apply();
    if (!rng.empty()) detail::restore_rng_states(rng, join(c.path, detail::kRngFile));
    restored.global_step = manifest.step;
    restored.last_metrics = manifest.metrics;
    restored.last_metrics_step = manifest.metrics.empty() ? -1 : manifest.step;
    impl_->set_best(restored);
    *state = restored;
    detail::log_info("resumed from '{}' at step {}", c.path, c.step);
    return c;
  }
  return std::nullopt;
}

}  // namespace lorakeep
