#include "lorakeep/checkpoint_manager.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <exception>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <type_traits>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <boost/filesystem.hpp>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "lorakeep/adapter.h"
#include "lorakeep/distributed.h"
#include "lorakeep/error.h"
#include "lorakeep/version.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "checkpoint/coordination.h"
#include "checkpoint/manifest.h"
#include "checkpoint/policy.h"
#include "checkpoint/run_dir.h"
#include "checkpoint/trainer_state.h"
#include "checkpoint/wire.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/dir_lock.h"
#include "io/read_file.h"
#include "lora/adapter_load.h"
#include "lora/adapter_writer.h"
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

// The optimizer's state through LibTorch's archive, streamed into the file.
// A failed write is kept and rethrown after save_to returns: the archive's
// writer retries from its destructor, and a second throw there would
// terminate the process.
detail::FileDigest write_optimizer(const std::string& path, torch::optim::Optimizer& optimizer) {
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
  return detail::FileDigest{size, hash.digest()};
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

// What a checkpoint holds besides its trainer state: the adapter's tensors
// (views of the live parameters, streamed through host memory as they are
// written, or host copies taken earlier), the optimizer (streamed from the
// live one, or its serialized bytes), the RNG states by rank.
struct Contents {
  NamedTensors adapter;
  torch::optim::Optimizer* optimizer = nullptr;
  std::optional<std::string> optimizer_bytes;
  std::vector<NamedTensors> rng;  // empty: not saved

  // Host bytes a snapshot holds.
  std::uint64_t host_bytes() const {
    std::uint64_t n = optimizer_bytes ? optimizer_bytes->size() : 0;
    for (const auto& [name, t] : adapter) n += t.nbytes();
    for (const NamedTensors& states : rng) {
      for (const auto& [name, t] : states) n += t.nbytes();
    }
    return n;
  }
};

// The checkpoint's contents from the live objects: nothing copied yet.
Contents live_contents(torch::nn::Module& module, const LoraConfig& lora, torch::optim::Optimizer* optimizer,
                       const CheckpointOptions& options, std::vector<NamedTensors> rng) {
  Contents c;
  c.adapter = adapter_tensors(module, lora);
  if (options.save_optimizer) c.optimizer = optimizer;
  if (options.save_rng) c.rng = std::move(rng);
  return c;
}

// The same contents copied into host memory: what a save off the training
// thread writes while training changes the live ones.
// `optimizer_hint`: the size of the last serialized state, reserved up front
// (growing the string would copy it again and again).
Contents snapshot(Contents live, std::size_t optimizer_hint) {
  Contents c;
  for (auto& [name, t] : live.adapter) {
    at::Tensor host = at::empty(t.sizes(), t.options().device(at::kCPU));
    host.copy_(t.detach());
    c.adapter.emplace_back(name, std::move(host));
  }
  if (live.optimizer != nullptr) {
    torch::serialize::OutputArchive archive;
    live.optimizer->save(archive);
    std::string bytes;
    bytes.reserve(optimizer_hint);
    archive.save_to([&](const void* data, std::size_t size) -> std::size_t {
      bytes.append(static_cast<const char*>(data), size);
      return size;
    });
    c.optimizer_bytes = std::move(bytes);
  }
  c.rng = std::move(live.rng);
  return c;
}

// Writes every file of a checkpoint into `tmp`, each synced, the manifest
// last (with the sizes and checksums of the others).
void write_checkpoint_files(const std::string& tmp, const CheckpointOptions& options, detail::Manifest& manifest,
                            const Contents& contents, const LoraConfig& lora, const TrainingState& state) {
  const detail::WrittenAdapter adapter = detail::write_adapter(tmp, contents.adapter, lora, /*direct=*/true);
  manifest.files[detail::kAdapterWeightsFile] = {adapter.weights.file_size, adapter.weights.file_checksum};
  for (std::size_t i = 0; i < adapter.weights.tensors.size(); ++i) {
    manifest.tensors[adapter.weights.tensors[i].name] = adapter.weights.tensor_checksums[i];
  }
  manifest.files[detail::kAdapterConfigFile] = adapter.config;
  if (contents.optimizer != nullptr) {
    manifest.files[detail::kOptimizerFile] = write_optimizer(join(tmp, detail::kOptimizerFile), *contents.optimizer);
  } else if (contents.optimizer_bytes) {
    manifest.files[detail::kOptimizerFile] = detail::write_synced_file(join(tmp, detail::kOptimizerFile),
                                                                       *contents.optimizer_bytes);
  }
  const int world = static_cast<int>(contents.rng.size());
  for (int rank = 0; rank < world; ++rank) {
    const std::string name = detail::rng_file_name(rank, world);
    const SaveReport r = detail::write_safetensors(join(tmp, name), contents.rng[static_cast<std::size_t>(rank)], {},
                                                   detail::SafetensorsWriter::Mode::kDirect, 1 << 20);
    manifest.files[name] = {r.file_size, r.file_checksum};
  }
  manifest.files[detail::kTrainerStateFile] = detail::write_synced_file(join(tmp, detail::kTrainerStateFile),
                                                                        detail::format_trainer_state(state));
  detail::write_synced_file(join(tmp, detail::kManifestFile), detail::format_manifest(manifest));
}

// What one rank reports in a collective step: its local work's result, or
// the Error it threw.
struct RankResult {
  int rank = 0;
  bool ok = true;
  ErrorCode code = ErrorCode::kIOError;
  std::string message;
  std::string payload;
};

// This rank's result of `local` (which returns its payload) as a message:
// the payload, or the Error it threw.
template <class F>
std::string outcome_of(F&& local) {
  detail::WireWriter w;
  try {
    const std::string payload = local();
    w.i64(1).str(payload);
  } catch (const Error& e) {
    w = detail::WireWriter();
    w.i64(0).i64(static_cast<std::int64_t>(e.code())).str(e.what());
  } catch (const std::exception& e) {
    w = detail::WireWriter();
    w.i64(0).i64(static_cast<std::int64_t>(ErrorCode::kIOError)).str(e.what());
  }
  return w.bytes();
}

RankResult read_outcome(const std::string& bytes, int rank, const std::string& what) {
  detail::WireReader in(bytes, what);
  RankResult result;
  result.rank = rank;
  result.ok = in.i64() == 1;
  if (result.ok) {
    result.payload = in.str();
  } else {
    result.code = static_cast<ErrorCode>(in.i64());
    result.message = in.str();
  }
  return result;
}

// Runs `local` and gathers every rank's result: a rank that failed still
// takes part, so no rank waits for it.
template <class F>
std::vector<RankResult> gather_results(Coordinator& coordinator, const std::string& what, F&& local) {
  const std::vector<std::string> parts = coordinator.all_gather(what, outcome_of(std::forward<F>(local)));
  std::vector<RankResult> out;
  for (std::size_t r = 0; r < parts.size(); ++r) out.push_back(read_outcome(parts[r], static_cast<int>(r), what));
  return out;
}

std::vector<const RankResult*> failures(const std::vector<RankResult>& results) {
  std::vector<const RankResult*> out;
  for (const RankResult& r : results) {
    if (!r.ok) out.push_back(&r);
  }
  return out;
}

// The same Error on every rank: the first failure, naming its rank (with one
// process, the error as it was).
[[noreturn]] void raise(const RankResult& failure, int world) {
  if (world == 1) throw Error(failure.code, failure.message);
  throw Error(failure.code, "rank " + std::to_string(failure.rank) + ": " + failure.message);
}

void write_tensors(detail::WireWriter& w, const NamedTensors& tensors) {
  w.i64(static_cast<std::int64_t>(tensors.size()));
  for (const auto& [name, t] : tensors) {
    const at::Tensor c = t.contiguous();
    w.str(name).str(std::string(static_cast<const char*>(c.data_ptr()), c.nbytes()));
  }
}

NamedTensors read_tensors(detail::WireReader& r) {
  NamedTensors out;
  for (std::int64_t n = r.i64(); n > 0; --n) {
    std::string name = r.str();
    const std::string bytes = r.str();
    at::Tensor t = at::empty({static_cast<std::int64_t>(bytes.size())}, at::kByte);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    out.emplace_back(std::move(name), std::move(t));
  }
  return out;
}

bool same_value(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

bool same_metrics(const Metrics& a, const Metrics& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end() || !same_value(it->second, v)) return false;
  }
  return true;
}

}  // namespace

struct CheckpointManager::Impl {
  CheckpointOptions options;
  std::string key;
  bool greater = false;
  Coordinator coordinator;
  std::optional<detail::DirLock> lock;               // rank 0's
  std::map<std::int64_t, CheckpointInfo> committed;  // by step

  Impl(CheckpointOptions o, Coordinator c)
      : options(std::move(o)), key(lorakeep::metric_key(options)), greater(lorakeep::greater_is_better(options)),
        coordinator(std::move(c)) {}

  int rank() const { return coordinator.rank(); }
  int world() const { return coordinator.world_size(); }

  std::vector<detail::CheckpointRecord> records() const {
    std::vector<detail::CheckpointRecord> out;
    for (const auto& [step, info] : committed) out.push_back({step, info.metric});
    return out;
  }

  std::vector<std::int64_t> ranked() const { return detail::rank_by_metric(records(), greater); }

  // Rank 0 (or the one process): creates, locks and scans the run
  // directory (leftovers removed) into `committed`.
  void open_for_writing();
  // Another rank: the checkpoints `steps` as this rank sees them.
  void adopt(const std::vector<std::int64_t>& steps);
  void open_coordinated();

  // The adapter load of checkpoint `dir`, planned against `module`, after
  // every file of the checkpoint was verified (options.verify_checksums);
  // nothing changed.
  detail::AdapterLoad prepare_adapter(const std::string& dir, const detail::Manifest& manifest,
                                      torch::nn::Module& module) const;

  // Writes and commits checkpoint-<state.global_step> (the one writer), then
  // rotates; on failure `state` and the committed set are as they were.
  CheckpointInfo commit(const LoraConfig& lora, TrainingState& state, const Contents& contents);
  std::vector<NamedTensors> agree_on_save(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                          const std::string& what);
  CheckpointInfo mirror(std::int64_t step, double epoch, const Metrics& metrics, const std::string& payload);
  CheckpointInfo coordinated_save(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                  torch::optim::Optimizer* optimizer);

  // The save off the training thread, if one was started: at most one.
  std::thread worker;
  std::exception_ptr worker_error;    // its failure, for the next call
  std::optional<std::string> posted;  // rank 0: its outcome key, erased after the next gather
  std::size_t optimizer_hint = 0;     // the last snapshot's optimizer bytes
  std::int64_t async_saves = 0;       // save_async calls, the same count on every rank

  // Waits for the save in flight (never abandons it).
  void wait_worker() {
    if (worker.joinable()) worker.join();
  }
  // Waits, then raises its failure once (`state`'s best set from what was
  // committed first).
  void finish(TrainingState* state = nullptr) {
    wait_worker();
    if (!worker_error) return;
    if (state != nullptr) set_best(*state);
    std::rethrow_exception(std::exchange(worker_error, nullptr));
  }
  void finish(TrainingState& state) { finish(&state); }
  ~Impl() {
    wait_worker();
    if (worker_error) {
      try {
        std::rethrow_exception(worker_error);
      } catch (const std::exception& e) {
        detail::log_error("a save off the training thread failed and nobody asked: {}", e.what());
      }
    }
  }

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

  std::string committed_steps() const {
    detail::WireWriter w;
    w.i64(static_cast<std::int64_t>(committed.size()));
    for (const auto& [step, info] : committed) w.i64(step);
    return w.bytes();
  }
};

void CheckpointManager::Impl::open_for_writing() {
  boost::system::error_code ec;
  fs::create_directories(options.output_dir, ec);
  if (ec) {
    throw Error(ErrorCode::kIOError, "cannot create run directory '" + options.output_dir + "': " + ec.message());
  }
  lock.emplace(detail::DirLock::acquire(options.output_dir));
  const detail::RunDirScan scan = detail::scan_run_dir(options.output_dir);
  for (const std::string& tmp : scan.temp_dirs) {
    detail::log_warn("removing '{}', left over by an interrupted save", tmp);
    detail::remove_all_logged(tmp);
  }
  for (const detail::ScannedCheckpoint& c : scan.checkpoints) {
    if (!c.manifest) {
      detail::log_warn("ignoring '{}': {}", c.path, c.problem);
      continue;
    }
    committed[c.step] = info_of(*c.manifest, c.path, key);
  }
  if (!committed.empty()) {
    const auto order = ranked();
    detail::log_info("run directory '{}': {} checkpoints, newest {}, best {}", options.output_dir, committed.size(),
                     committed.rbegin()->first, order.empty() ? std::string("none") : std::to_string(order.front()));
  }
}

void CheckpointManager::Impl::adopt(const std::vector<std::int64_t>& steps) {
  for (const std::int64_t step : steps) {
    const std::string path = join(options.output_dir, detail::checkpoint_dir_name(step));
    committed[step] = info_of(detail::read_manifest(path), path, key);
  }
}

// Rank 0 opens the directory for writing and leaves a file with a random
// token in it; every other rank must read that token there: a directory
// that is not shared (a node-local path) fails on every rank.
void CheckpointManager::Impl::open_coordinated() {
  std::string token;
  const std::vector<RankResult> opened = gather_results(coordinator, "opening of '" + options.output_dir + "'", [&] {
    if (rank() != 0) return std::string();
    open_for_writing();
    token = std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()) + "-" +
            std::to_string(std::time(nullptr));
    detail::write_synced_file(join(options.output_dir, detail::shared_check_file_name(token)), token);
    detail::WireWriter w;
    w.str(token).str(committed_steps());
    return w.bytes();
  });
  if (auto failed = failures(opened); !failed.empty()) raise(*failed.front(), world());
  detail::WireReader from0(opened.front().payload, "opening");
  token = from0.str();
  const std::string steps_bytes = from0.str();
  const std::string check = join(options.output_dir, detail::shared_check_file_name(token));
  const std::vector<RankResult> seen = gather_results(
      coordinator, "check that '" + options.output_dir + "' is shared", [&] {
        if (rank() == 0) return std::string();
        std::string content;
        try {
          content = detail::read_small_file(check, 1 << 10);
        } catch (const Error&) {
        }
        if (content != token) {
          throw Error(ErrorCode::kInvalidArgument, "run directory '" + options.output_dir +
                                                       "' is not shared between the ranks: this rank cannot see "
                                                       "rank 0's file '" +
                                                       check +
                                                       "' (hint: put output_dir on a file "
                                                       "system every node mounts, e.g. NFS or Lustre)");
        }
        detail::WireReader r(steps_bytes, "committed steps");
        std::vector<std::int64_t> steps;
        for (std::int64_t n = r.i64(); n > 0; --n) steps.push_back(r.i64());
        adopt(steps);
        return std::string();
      });
  if (rank() == 0) ::unlink(check.c_str());
  if (auto failed = failures(seen); !failed.empty()) raise(*failed.front(), world());
}

CheckpointManager::CheckpointManager(CheckpointOptions options)
    : CheckpointManager(std::move(options), Coordinator()) {}

CheckpointManager::CheckpointManager(CheckpointOptions options, const Coordinator& coordinator) {
  validate(options);
  impl_ = std::make_unique<Impl>(std::move(options), coordinator);
  if (impl_->world() == 1) {
    impl_->open_for_writing();
  } else {
    impl_->open_coordinated();
  }
}

CheckpointManager::~CheckpointManager() = default;
CheckpointManager::CheckpointManager(CheckpointManager&&) noexcept = default;
CheckpointManager& CheckpointManager::operator=(CheckpointManager&&) noexcept = default;

const CheckpointOptions& CheckpointManager::options() const { return impl_->options; }
const std::string& CheckpointManager::metric_key() const { return impl_->key; }
bool CheckpointManager::greater_is_better() const { return impl_->greater; }
const Coordinator& CheckpointManager::coordinator() const { return impl_->coordinator; }

CheckpointInfo CheckpointManager::Impl::commit(const LoraConfig& lora, TrainingState& state, const Contents& contents) {
  const std::int64_t step = state.global_step;
  const std::string final_dir = join(options.output_dir, detail::checkpoint_dir_name(step));
  const std::string tmp = join(options.output_dir, detail::temp_checkpoint_dir_name(step, ::getpid()));

  detail::Manifest manifest;
  manifest.library_version = LORAKEEP_VERSION;
  manifest.step = step;
  manifest.epoch = state.epoch;
  if (state.last_metrics_step == step) manifest.metrics = state.last_metrics;
  manifest.metric_for_best_model = key;
  manifest.greater_is_better = greater;
  manifest.created = utc_now();
  CheckpointInfo info = info_of(manifest, final_dir, key);

  // The best as it will be once this checkpoint is in: trainer_state.json
  // records it, as Trainer's does.
  const TrainingState before = state;
  auto previous = committed.find(step);
  std::optional<CheckpointInfo> replaced;
  if (previous != committed.end()) replaced = previous->second;
  committed[step] = info;
  set_best(state);
  auto undo = [&] {
    if (replaced) committed[step] = *replaced;
    else committed.erase(step);
    state = before;
  };

  try {
    detail::StagedDirectory staged(final_dir, tmp);
    detail::with_torch_errors(ErrorCode::kInvalidArgument, "cannot save '" + final_dir + "'", [&] {
      write_checkpoint_files(staged.path(), options, manifest, contents, lora, state);
      staged.publish(/*replace=*/true);
    });
  } catch (...) {
    undo();
    throw;
  }
  detail::log_info("saved '{}'{}", final_dir,
                   info.metric ? " (" + key + " " + std::to_string(*info.metric) + ")" : std::string());
  rotate();
  set_best(state);
  return info;
}

CheckpointInfo CheckpointManager::save(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                       torch::optim::Optimizer* optimizer) {
  Impl& m = *impl_;
  m.finish(state);
  if (m.world() > 1) return m.coordinated_save(module, lora, state, optimizer);
  return m.commit(lora, state, live_contents(module, lora, optimizer, m.options, {detail::capture_rng_states()}));
}

AsyncSave CheckpointManager::save_async(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                        torch::optim::Optimizer* optimizer) {
  Impl& m = *impl_;
  m.finish(state);
  const auto start = std::chrono::steady_clock::now();
  const std::int64_t step = state.global_step;
  const std::string what = "save of step " + std::to_string(step);
  const TrainingState before = state;
  std::vector<NamedTensors> rng;
  if (m.world() == 1) {
    rng.push_back(detail::capture_rng_states());
  } else {
    rng = m.agree_on_save(module, lora, state, what);
    if (m.posted) {  // every rank is past reading it: they all gathered since
      m.coordinator.erase(*m.posted);
      m.posted.reset();
    }
  }
  // Numbered like the saves, so that a step saved twice has two keys.
  const std::string key = "outcome/" + std::to_string(++m.async_saves) + "/" + std::to_string(step);
  // The one copy: what the background thread writes, whatever training does next.
  auto contents = std::make_shared<Contents>();
  if (m.rank() == 0) {
    try {
      *contents = snapshot(live_contents(module, lora, optimizer, m.options, std::move(rng)), m.optimizer_hint);
      if (contents->optimizer_bytes) m.optimizer_hint = contents->optimizer_bytes->size() + (1 << 20);
    } catch (...) {
      state = before;
      if (m.world() > 1) {  // the others' background threads learn it from the outcome
        m.coordinator.post(key, outcome_of([]() -> std::string { throw; }));
        m.posted = key;
      }
      throw;
    }
  }
  AsyncSave ticket;
  ticket.snapshot_bytes = contents->host_bytes();
  // The best as it will be once this checkpoint is in (the next call sets it
  // from what was committed, should the background write fail).
  auto shadow = std::make_shared<TrainingState>(state);
  const std::map<std::int64_t, CheckpointInfo> saved = m.committed;
  detail::Manifest preview;
  preview.step = step;
  preview.epoch = state.epoch;
  if (state.last_metrics_step == step) preview.metrics = state.last_metrics;
  ticket.checkpoint = info_of(preview, join(m.options.output_dir, detail::checkpoint_dir_name(step)), m.key);
  m.committed[step] = ticket.checkpoint;
  m.set_best(state);
  m.committed = saved;
  Impl* impl = &m;
  auto lora_copy = std::make_shared<LoraConfig>(lora);
  m.worker = std::thread([impl, contents, shadow, lora_copy, key, what, step] {
    try {
      if (impl->rank() == 0) {
        const std::string outcome = outcome_of([&] {
          impl->commit(*lora_copy, *shadow, *contents);
          return impl->committed_steps();
        });
        impl->coordinator.post(key, outcome);
        const RankResult result = read_outcome(outcome, 0, what);
        if (!result.ok) raise(result, impl->world());
      } else {
        const RankResult result = read_outcome(
            impl->coordinator.await(key, 0, "outcome of the " + what + " (rank 0 writes it)"), 0, what);
        if (!result.ok) raise(result, impl->world());
        impl->mirror(step, shadow->epoch, shadow->last_metrics_step == step ? shadow->last_metrics : Metrics{},
                     result.payload);
      }
    } catch (...) {
      impl->worker_error = std::current_exception();
    }
  });
  if (m.rank() == 0 && m.world() > 1) m.posted = key;
  ticket.blocking_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return ticket;
}

std::optional<CheckpointInfo> CheckpointManager::wait() {
  impl_->finish();
  return latest();
}

std::optional<CheckpointInfo> CheckpointManager::wait(TrainingState& state) {
  impl_->finish(state);
  return latest();
}

// Every rank: its step, adapter digest, metrics and RNG state, gathered; the
// checks computed alike on every rank. Returns the RNG states by rank.
std::vector<NamedTensors> CheckpointManager::Impl::agree_on_save(torch::nn::Module& module, const LoraConfig& lora,
                                                                 TrainingState& state, const std::string& what) {
  const std::int64_t step = state.global_step;
  const bool evaluated = state.last_metrics_step == step;
  const std::vector<RankResult> parts = gather_results(coordinator, what, [&] {
    detail::WireWriter w;
    w.i64(step).i64(static_cast<std::int64_t>(adapter_digest(module, lora)));
    w.i64(evaluated ? 1 : 0);
    const Metrics metrics = evaluated ? state.last_metrics : Metrics{};
    w.i64(static_cast<std::int64_t>(metrics.size()));
    for (const auto& [k, v] : metrics) w.str(k).f64(v);
    write_tensors(w, options.save_rng ? detail::capture_rng_states() : NamedTensors{});
    return w.bytes();
  });
  if (auto failed = failures(parts); !failed.empty()) raise(*failed.front(), world());

  struct Part {
    std::int64_t step;
    std::uint64_t digest;
    bool evaluated;
    Metrics metrics;
    NamedTensors rng;
  };
  std::vector<Part> ranks;
  for (const RankResult& p : parts) {
    detail::WireReader r(p.payload, what);
    Part part;
    part.step = r.i64();
    part.digest = static_cast<std::uint64_t>(r.i64());
    part.evaluated = r.i64() == 1;
    for (std::int64_t n = r.i64(); n > 0; --n) {
      std::string k = r.str();
      part.metrics[k] = r.f64();
    }
    part.rng = read_tensors(r);
    ranks.push_back(std::move(part));
  }
  // The same checks, from the same messages, on every rank: the same outcome.
  const Part& zero = ranks.front();
  std::vector<int> other_step, other_adapter;
  for (std::size_t r = 1; r < ranks.size(); ++r) {
    if (ranks[r].step != zero.step || ranks[r].evaluated != zero.evaluated) other_step.push_back(static_cast<int>(r));
    if (ranks[r].digest != zero.digest) other_adapter.push_back(static_cast<int>(r));
  }
  auto names = [](const std::vector<int>& rs) {
    std::string out;
    for (int r : rs) out += (out.empty() ? "" : ", ") + std::to_string(r);
    return out;
  };
  if (!other_step.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "the ranks disagree on the " + what + ": rank " + names(other_step) +
                                                 " saves another step or evaluation than rank 0 (hint: every rank "
                                                 "calls save at the same step, after the same evaluation)");
  }
  if (!other_adapter.empty()) {
    throw Error(ErrorCode::kIncompatible,
                "the replicas differ at the " + what + ": the adapter of rank " + names(other_adapter) +
                    " is not rank 0's "
                    "(xxh3 " +
                    detail::format_checksum(ranks[static_cast<std::size_t>(other_adapter.front())].digest) +
                    " against " + detail::format_checksum(zero.digest) +
                    ") (hint: are the gradients averaged across ranks, and was every rank's adapter initialised "
                    "alike?)");
  }
  for (std::size_t r = 1; r < ranks.size(); ++r) {
    if (!same_metrics(ranks[r].metrics, zero.metrics)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "at the " + what + " rank " + std::to_string(r) +
                      "'s evaluation differs from rank 0's (hint: reduce each rank's evaluation of its share with "
                      "Coordinator::reduce_metrics before recording it, so that every rank records the job's)");
    }
  }
  std::vector<NamedTensors> rng;
  if (options.save_rng) {
    for (Part& p : ranks) rng.push_back(std::move(p.rng));
  }
  return rng;
}

// Another rank, after rank 0 committed `step`: the committed set as rank 0
// left it (after its rotation), from its outcome's payload.
CheckpointInfo CheckpointManager::Impl::mirror(std::int64_t step, double epoch, const Metrics& metrics,
                                               const std::string& payload) {
  detail::WireReader steps(payload, "committed steps");
  std::set<std::int64_t> kept;
  for (std::int64_t n = steps.i64(); n > 0; --n) kept.insert(steps.i64());
  detail::Manifest m;
  m.step = step;
  m.epoch = epoch;
  m.metrics = metrics;
  const CheckpointInfo info = info_of(m, join(options.output_dir, detail::checkpoint_dir_name(step)), key);
  committed[step] = info;
  for (auto it = committed.begin(); it != committed.end();) {
    it = kept.count(it->first) ? std::next(it) : committed.erase(it);
  }
  return info;
}

CheckpointInfo CheckpointManager::Impl::coordinated_save(torch::nn::Module& module, const LoraConfig& lora,
                                                         TrainingState& state, torch::optim::Optimizer* optimizer) {
  const std::string what = "save of step " + std::to_string(state.global_step);
  const TrainingState before = state;
  std::vector<NamedTensors> rng = agree_on_save(module, lora, state, what);
  std::optional<CheckpointInfo> info;
  std::string outcome;
  if (rank() == 0) {
    outcome = outcome_of([&] {
      info = commit(lora, state, live_contents(module, lora, optimizer, options, std::move(rng)));
      return committed_steps();
    });
  }
  RankResult result;
  try {
    result = read_outcome(coordinator.broadcast("outcome of the " + what + " (rank 0 writes it)", outcome), 0, what);
  } catch (...) {
    state = before;
    throw;
  }
  if (!result.ok) {
    state = before;
    raise(result, world());
  }
  if (rank() == 0) return *info;
  const CheckpointInfo mine = mirror(state.global_step, state.epoch,
                                     state.last_metrics_step == state.global_step ? state.last_metrics : Metrics{},
                                     result.payload);
  set_best(state);
  return mine;
}

std::vector<CheckpointInfo> CheckpointManager::checkpoints() const {
  impl_->wait_worker();
  std::vector<CheckpointInfo> out;
  for (const auto& [step, info] : impl_->committed) out.push_back(info);
  return out;
}

std::optional<CheckpointInfo> CheckpointManager::best() const {
  impl_->wait_worker();
  const auto order = impl_->ranked();
  if (order.empty()) return std::nullopt;
  return impl_->committed.at(order.front());
}

std::optional<CheckpointInfo> CheckpointManager::latest() const {
  impl_->wait_worker();
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
  return detail::AdapterLoad(dir, read_adapter_config(dir), open_tensor_source(detail::adapter_weights_path(dir)),
                             module, transfer);
}

namespace {

// Rank 0's list of steps, on every rank.
std::vector<std::int64_t> agreed_steps(Coordinator& coordinator, const std::string& what,
                                       const std::vector<std::int64_t>& mine) {
  if (coordinator.world_size() == 1) return mine;
  detail::WireWriter w;
  w.i64(static_cast<std::int64_t>(mine.size()));
  for (const std::int64_t s : mine) w.i64(s);
  detail::WireReader r(coordinator.broadcast(what, w.bytes()), what);
  std::vector<std::int64_t> out;
  for (std::int64_t n = r.i64(); n > 0; --n) out.push_back(r.i64());
  return out;
}

bool all_damaged(const std::vector<const RankResult*>& failed) {
  for (const RankResult* f : failed) {
    if (f->code != ErrorCode::kCorruption && f->code != ErrorCode::kNotFound) return false;
  }
  return true;
}

// Applies what every rank validated: with several ranks each applies, and a
// failure on any (a read error after writing began) is raised on all.
template <class F>
void apply_everywhere(Coordinator& coordinator, const std::string& what, F&& apply) {
  if (coordinator.world_size() == 1) {
    apply();
    return;
  }
  const std::vector<RankResult> applied = gather_results(coordinator, what, [&] {
    apply();
    return std::string();
  });
  if (auto failed = failures(applied); !failed.empty()) raise(*failed.front(), coordinator.world_size());
}

}  // namespace

TransferReport CheckpointManager::load_best_into(torch::nn::Module& module) {
  Impl& m = *impl_;
  m.finish();
  const std::vector<std::int64_t> order = agreed_steps(m.coordinator, "choice of the best checkpoint", m.ranked());
  if (order.empty()) {
    throw Error(ErrorCode::kNotFound, "no checkpoint in '" + m.options.output_dir + "' has a '" + m.key +
                                          "' (hint: was it evaluated at a saved step?)");
  }
  auto path_of = [&](std::int64_t step) { return join(m.options.output_dir, detail::checkpoint_dir_name(step)); };
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::string path = path_of(order[i]);
    // Every rank validates; only when all succeeded does any rank write.
    std::optional<detail::AdapterLoad> load;
    const std::vector<RankResult> checked = gather_results(m.coordinator, "validation of '" + path + "'", [&] {
      load.emplace(m.prepare_adapter(path, detail::read_manifest(path), module));
      return std::string();
    });
    const auto failed = failures(checked);
    if (failed.empty()) {
      TransferReport report;
      apply_everywhere(m.coordinator, "loading of '" + path + "'", [&] { report = load->apply(); });
      const auto it = m.committed.find(order[i]);
      const double metric = it != m.committed.end() && it->second.metric ? *it->second.metric : 0.0;
      detail::log_info("loaded the best checkpoint '{}' ({} {}): {}", path, m.key, metric, report.summary());
      return report;
    }
    if (!m.options.fallback_to_next_best || !all_damaged(failed) || i + 1 == order.size()) {
      raise(*failed.front(), m.world());
    }
    detail::log_error("THE BEST CHECKPOINT '{}' IS DAMAGED ({}); falling back to the next best, '{}'", path,
                      failed.front()->message, path_of(order[i + 1]));
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

std::optional<CheckpointInfo> CheckpointManager::resume(torch::nn::Module& module, TrainingState& state,
                                                        torch::optim::Optimizer* optimizer) {
  Impl& m = *impl_;
  m.finish();
  std::vector<std::int64_t> newest_first;
  for (auto it = m.committed.rbegin(); it != m.committed.rend(); ++it) newest_first.push_back(it->first);
  newest_first = agreed_steps(m.coordinator, "choice of the checkpoint to resume from", newest_first);
  const std::string rng_name = detail::rng_file_name(m.rank(), m.world());
  for (const std::int64_t step : newest_first) {
    const std::string path = join(m.options.output_dir, detail::checkpoint_dir_name(step));
    // Everything the resume will set is read and checked first, on every
    // rank: the adapter (planned and verified), the trainer state, the
    // optimizer archive (parsed into host memory), this rank's RNG states.
    // Nothing changes until all of it passed on all ranks.
    std::optional<detail::AdapterLoad> adapter;
    std::optional<torch::serialize::InputArchive> archive;
    NamedTensors rng;
    TrainingState restored;
    detail::Manifest manifest;
    const std::vector<RankResult> checked = gather_results(m.coordinator, "validation of '" + path + "'", [&] {
      manifest = detail::read_manifest(path);
      adapter.emplace(m.prepare_adapter(path, manifest, module));
      auto listed = [&](const std::string& name) {  // and verified by prepare_adapter
        if (!manifest.files.count(name)) {
          throw Error(ErrorCode::kCorruption, "the manifest of '" + path + "' does not list " + name);
        }
        return join(path, name);
      };
      const std::string trainer_state = listed(detail::kTrainerStateFile);
      detail::parse_trainer_state(detail::read_small_file(trainer_state, 256ull << 20), trainer_state, &restored);
      if (optimizer != nullptr && manifest.files.count(detail::kOptimizerFile)) {
        const std::string file = listed(detail::kOptimizerFile);
        archive.emplace();
        detail::with_torch_errors(ErrorCode::kCorruption, "cannot read the optimizer state '" + file + "'", [&] {
          archive->load_from(file, c10::Device(c10::kCPU));
          check_optimizer_groups(*archive, *optimizer, file);
        });
      }
      if (manifest.files.count(rng_name)) {
        rng = read_rng_states(listed(rng_name));
      } else if (manifest.files.count(detail::rng_file_name(0, 2)) || manifest.files.count(detail::kRngFile)) {
        detail::log_warn("'{}' has no {} (saved by another number of ranks): the random generators are not restored",
                         path, rng_name);
      }
      return std::string();
    });
    if (const auto failed = failures(checked); !failed.empty()) {
      if (!all_damaged(failed)) raise(*failed.front(), m.world());
      detail::log_error("cannot resume from '{}' ({}{}); trying an older checkpoint", path,
                        m.world() == 1 ? std::string() : "rank " + std::to_string(failed.front()->rank) + ": ",
                        failed.front()->message);
      continue;
    }
    apply_everywhere(m.coordinator, "resuming from '" + path + "'", [&] {
      // The optimizer first: its groups were checked against the archive
      // above, which is all Optimizer::load checks.
      if (archive) {
        detail::with_torch_errors(
            ErrorCode::kIncompatible,
            "cannot restore the optimizer from '" + path + "' (hint: another optimizer type, or other parameters?)",
            [&] {
              optimizer->load(*archive);
              archive.reset();
              move_state_to_parameters(*optimizer);
            });
      }
      adapter->apply();
      if (!rng.empty()) detail::restore_rng_states(rng, join(path, rng_name));
    });
    restored.global_step = manifest.step;
    restored.last_metrics = manifest.metrics;
    restored.last_metrics_step = manifest.metrics.empty() ? -1 : manifest.step;
    m.set_best(restored);
    state.resume_from(restored);
    detail::log_info("resumed from '{}' at step {}", path, step);
    return m.committed.at(step);
  }
  return std::nullopt;
}

}  // namespace lorakeep
