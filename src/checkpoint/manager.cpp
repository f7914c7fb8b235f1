#include "lorakeep/checkpoint.h"

#include <unistd.h>

#include <ctime>
#include <exception>
#include <map>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <boost/filesystem.hpp>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "lorakeep/error.h"
#include "lorakeep/lora.h"
#include "lorakeep/version.h"
#include "checkpoint/layout.h"
#include "checkpoint/manifest.h"
#include "checkpoint/policy.h"
#include "checkpoint/run_dir.h"
#include "checkpoint/trainer_state.h"
#include "format/json_util.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/dir_lock.h"
#include "logging.h"
#include "lora/adapter_internal.h"
#include "safetensors_writer.h"
#include "torch_error.h"

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

NamedTensors rng_states() {
  NamedTensors out;
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(cpu.mutex());
  out.emplace_back("cpu", cpu.get_state());
  return out;
}

void restore_rng(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  if (!file.contains("cpu")) return;
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(cpu.mutex());
  cpu.set_state(file.tensor("cpu").clone());
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
    const SaveReport r = detail::write_safetensors(join(tmp, detail::kRngFile), rng_states(), {},
                                                   detail::SafetensorsWriter::Mode::kDirect, 1 << 20);
    manifest.files[detail::kRngFile] = {r.file_size, r.file_checksum};
  }
  manifest.files[detail::kTrainerStateFile] =
      write_synced(join(tmp, detail::kTrainerStateFile), detail::format_trainer_state(state, options));
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
        detail::logger()->error("rotation: cannot retire '{}': {}", path, std::strerror(errno));
        continue;
      }
      committed.erase(step);
      if (detail::remove_all_logged(doomed)) detail::logger()->info("rotation: deleted '{}'", path);
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
    detail::logger()->warn("removing '{}', left over by an interrupted save", tmp);
    detail::remove_all_logged(tmp);
  }
  for (const detail::ScannedCheckpoint& c : scan.checkpoints) {
    if (!c.manifest) {
      detail::logger()->warn("ignoring '{}': {}", c.path, c.problem);
      continue;
    }
    impl_->committed[c.step] = info_of(*c.manifest, c.path, impl_->key);
  }
  if (!impl_->committed.empty()) {
    const auto order = impl_->ranked();
    detail::logger()->info("run directory '{}': {} checkpoints, newest {}, best {}", impl_->options.output_dir,
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

  boost::system::error_code ec;
  if (!fs::create_directory(tmp, ec)) {
    undo();
    throw Error(ErrorCode::kIOError, "cannot create '" + tmp + "': " + (ec ? ec.message() : "it exists"));
  }
  try {
    detail::with_torch_errors(ErrorCode::kInvalidArgument, "cannot save '" + final_dir + "'", [&] {
      write_checkpoint_files(tmp, m.options, manifest, module, lora, state, optimizer);
      detail::publish(tmp, final_dir, /*replace=*/true);
    });
  } catch (...) {
    detail::remove_all_logged(tmp);
    undo();
    throw;
  }
  detail::logger()->info("saved '{}'{}", final_dir,
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

TransferReport CheckpointManager::load_best_into(torch::nn::Module& module, LoadOptions options) {
  const auto order = impl_->ranked();
  if (order.empty()) {
    throw Error(ErrorCode::kNotFound, "no checkpoint in '" + impl_->options.output_dir + "' has a '" + impl_->key +
                                          "' (hint: was it evaluated at a saved step?)");
  }
  options.chunk_bytes = impl_->options.chunk_bytes;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const CheckpointInfo& candidate = impl_->committed.at(order[i]);
    try {
      // Every byte checked against the manifest before anything is loaded;
      // the adapter's tensors are then not hashed a second time.
      const detail::Manifest manifest = detail::read_manifest(candidate.path);
      detail::check_checkpoint_files(candidate.path, manifest, /*full=*/true);
      LoadOptions verified = options;
      verified.verify_checksums = false;
      TransferReport report = load_adapter(candidate.path, module, verified);
      detail::logger()->info("loaded the best checkpoint '{}' ({} {}): {}", candidate.path, impl_->key,
                             candidate.metric ? *candidate.metric : 0.0, report.summary());
      return report;
    } catch (const Error& e) {
      const bool damaged = e.code() == ErrorCode::kCorruption || e.code() == ErrorCode::kNotFound;
      if (!impl_->options.fallback_to_next_best || !damaged || i + 1 == order.size()) throw;
      detail::logger()->error("THE BEST CHECKPOINT '{}' IS DAMAGED ({}); falling back to the next best, '{}'",
                              candidate.path, e.what(), impl_->committed.at(order[i + 1]).path);
    }
  }
  throw Error(ErrorCode::kNotFound, "no loadable checkpoint");  // unreachable
}

std::optional<CheckpointInfo> CheckpointManager::resume(torch::nn::Module& module, torch::optim::Optimizer* optimizer,
                                                        TrainingState* state) {
  for (auto it = impl_->committed.rbegin(); it != impl_->committed.rend(); ++it) {
    const CheckpointInfo& c = it->second;
    try {
      const detail::Manifest manifest = detail::read_manifest(c.path);
      detail::check_checkpoint_files(c.path, manifest, /*full=*/true);
      TrainingState restored;
      restored.max_steps = state->max_steps;
      restored.num_train_epochs = state->num_train_epochs;
      restored.train_batch_size = state->train_batch_size;
      const std::string trainer_state = join(c.path, detail::kTrainerStateFile);
      detail::parse_trainer_state(detail::read_small_file(trainer_state, 256ull << 20), trainer_state, &restored);
      LoadOptions options;
      options.verify_checksums = false;  // checked above
      options.chunk_bytes = impl_->options.chunk_bytes;
      load_adapter(c.path, module, options);
      if (optimizer != nullptr && manifest.files.count(detail::kOptimizerFile)) {
        torch::serialize::InputArchive archive;
        const auto params = optimizer->param_groups().empty() || optimizer->param_groups()[0].params().empty()
                                ? c10::Device(c10::kCPU)
                                : optimizer->param_groups()[0].params()[0].device();
        archive.load_from(join(c.path, detail::kOptimizerFile), params);
        optimizer->load(archive);
      }
      if (manifest.files.count(detail::kRngFile)) restore_rng(join(c.path, detail::kRngFile));
      restored.global_step = manifest.step;
      restored.last_metrics = manifest.metrics;
      restored.last_metrics_step = manifest.metrics.empty() ? -1 : manifest.step;
      impl_->set_best(restored);
      *state = restored;
      detail::logger()->info("resumed from '{}' at step {}", c.path, c.step);
      return c;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kCorruption && e.code() != ErrorCode::kNotFound) throw;
      detail::logger()->error("cannot resume from '{}' ({}); trying an older checkpoint", c.path, e.what());
    } catch (const c10::Error& e) {
      throw Error(ErrorCode::kCorruption, "cannot restore the optimizer from '" + c.path + "': " +
                                              std::string(e.what_without_backtrace()).substr(0, 300));
    }
  }
  return std::nullopt;
}

}  // namespace lorakeep
