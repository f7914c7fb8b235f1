#include "checkpoint/checkpoint_writer.h"

#include <unistd.h>

#include <ctime>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "lorakeep/version.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "checkpoint/manifest.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/trainer_state.h"
#include "io/atomic_file.h"
#include "lora/adapter_writer.h"
#include "lora/injection.h"
#include "tensors/safetensors_writer.h"
#include "tensors/torch_error.h"

namespace lorakeep::detail {
namespace {

std::string join(const std::string& dir, const std::string& name) {
  return (boost::filesystem::path(dir) / name).string();
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// One adapter's files in `dir`/`folder` ("" for the default adapter's, in
// `dir` itself), listed in the manifest under "<folder>/<file>" with their
// tensors under "<folder>/<key>".
void write_adapter_files(const std::string& dir, const std::string& folder, const NamedTensors& tensors,
                         const LoraConfig& config, Manifest& manifest) {
  const std::string prefix = folder.empty() ? std::string() : folder + "/";
  const std::string into = folder.empty() ? dir : join(dir, folder);
  if (!folder.empty()) {
    boost::system::error_code ec;
    boost::filesystem::create_directory(into, ec);
    if (ec) throw Error(ErrorCode::kIOError, "cannot create directory '" + into + "': " + ec.message());
  }
  const WrittenAdapter adapter = write_adapter(into, tensors, config, /*direct=*/true);
  if (!folder.empty()) sync_directory(into);
  manifest.files[prefix + kAdapterWeightsFile] = {adapter.weights.file_size, adapter.weights.file_checksum};
  for (std::size_t i = 0; i < adapter.weights.tensors.size(); ++i) {
    manifest.tensors[prefix + adapter.weights.tensors[i].name] = adapter.weights.tensor_checksums[i];
  }
  manifest.files[prefix + kAdapterConfigFile] = adapter.config;
}

// Writes every file of a checkpoint into `dir`, each synced, the manifest
// last (with the sizes and checksums of the others).
void write_files(const std::string& dir, Manifest& manifest, const CheckpointContents& contents,
                 const TrainingState& state) {
  if (!contents.adapter.empty()) write_adapter_files(dir, "", contents.adapter, contents.config, manifest);
  for (const CheckpointContents::Named& named : contents.named) {
    write_adapter_files(dir, named.name, named.tensors, named.config, manifest);
  }
  if (!contents.named.empty()) manifest.active_adapter = contents.active_adapter;
  if (contents.optimizer != nullptr) {
    manifest.files[kOptimizerFile] = write_optimizer_state(join(dir, kOptimizerFile), *contents.optimizer);
  } else if (contents.optimizer_bytes) {
    manifest.files[kOptimizerFile] = write_synced_file(join(dir, kOptimizerFile), *contents.optimizer_bytes);
  }
  const int world = static_cast<int>(contents.rng.size());
  for (int rank = 0; rank < world; ++rank) {
    const std::string name = rng_file_name(rank, world);
    const SaveReport r = write_safetensors(join(dir, name), contents.rng[static_cast<std::size_t>(rank)], {},
                                           SafetensorsWriter::Mode::kDirect, 1 << 20);
    manifest.files[name] = {r.file_size, r.file_checksum};
  }
  manifest.files[kTrainerStateFile] = write_synced_file(join(dir, kTrainerStateFile), format_trainer_state(state));
  write_synced_file(join(dir, kManifestFile), format_manifest(manifest));
}

NamedTensors host_copies(const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors) {
    at::Tensor host = at::empty(t.sizes(), t.options().device(at::kCPU));
    host.copy_(t.detach());
    out.emplace_back(name, std::move(host));
  }
  return out;
}

}  // namespace

CheckpointContents CheckpointContents::live(torch::nn::Module& module, const LoraConfig& lora,
                                            torch::optim::Optimizer* optimizer, const CheckpointOptions& options,
                                            std::vector<NamedTensors> rng) {
  CheckpointContents c;
  const std::vector<std::string> names = adapter_names(module);
  if (names.empty() || names.front() == kDefaultAdapter) {  // else named adapters only, as PEFT allows
    c.config = resolve_target_modules(module, lora);
    c.adapter = adapter_tensors(module, c.config);
  }
  for (const std::string& name : names) {
    if (name == kDefaultAdapter) continue;
    LoraConfig config = resolve_target_modules(module, armed_config(module, name));
    NamedTensors tensors = adapter_tensors(module, config, name);
    c.named.push_back({name, std::move(config), std::move(tensors)});
  }
  if (!c.named.empty()) c.active_adapter = lora_layers(module).front().second->active_adapter();
  if (options.save_optimizer) c.optimizer = optimizer;
  if (options.save_rng) c.rng = std::move(rng);
  return c;
}

CheckpointContents CheckpointContents::snapshot(std::size_t optimizer_reserve) const {
  CheckpointContents c;
  c.config = config;
  c.adapter = host_copies(adapter);
  for (const Named& n : named) c.named.push_back({n.name, n.config, host_copies(n.tensors)});
  c.active_adapter = active_adapter;
  if (optimizer != nullptr) c.optimizer_bytes = serialize_optimizer_state(*optimizer, optimizer_reserve);
  c.rng = rng;
  return c;
}

std::uint64_t CheckpointContents::host_bytes() const {
  std::uint64_t n = optimizer_bytes ? optimizer_bytes->size() : 0;
  for (const auto& [name, t] : adapter) n += t.nbytes();
  for (const Named& adapter_named : named) {
    for (const auto& [name, t] : adapter_named.tensors) n += t.nbytes();
  }
  for (const NamedTensors& states : rng) {
    for (const auto& [name, t] : states) n += t.nbytes();
  }
  return n;
}

namespace {

Manifest manifest_of(const CommittedSet& committed, const TrainingState& state) {
  Manifest manifest;
  manifest.library_version = LORAKEEP_VERSION;
  manifest.step = state.global_step;
  manifest.epoch = state.epoch;
  if (state.last_metrics_step == state.global_step) manifest.metrics = state.last_metrics;
  manifest.metric_for_best_model = committed.key();
  manifest.greater_is_better = committed.greater();
  manifest.early_stopping = state.early_stopping;
  manifest.created = utc_now();
  return manifest;
}

}  // namespace

StagedCheckpoint::StagedCheckpoint(const CommittedSet& committed, const CheckpointOptions& options,
                                   const TrainingState& state, const CheckpointContents& contents)
    : staged_(committed.path_of(state.global_step),
              join(options.output_dir, temp_checkpoint_dir_name(state.global_step, ::getpid()))) {
  Manifest manifest = manifest_of(committed, state);
  info_ = committed.info_of(manifest, committed.path_of(state.global_step));
  TrainingState recorded = state;
  committed.set_best(recorded, &info_);
  with_torch_errors(ErrorCode::kInvalidArgument, "cannot save '" + info_.path + "'",
                    [&] { write_files(staged_.path(), manifest, contents, recorded); });
}

void StagedCheckpoint::publish(CommittedSet& committed) {
  staged_.publish(/*replace=*/true);
  committed.put(info_);
  log_info("saved '{}'{}", info_.path,
           info_.metric ? " (" + committed.key() + " " + std::to_string(*info_.metric) + ")" : std::string());
}

CheckpointInfo commit_checkpoint(CommittedSet& committed, const CheckpointOptions& options, TrainingState& state,
                                 const CheckpointContents& contents) {
  StagedCheckpoint staged(committed, options, state, contents);
  staged.publish(committed);
  committed.rotate(options.save_total_limit, options.keep_best);
  committed.set_best(state);
  return staged.info();
}

}  // namespace lorakeep::detail
