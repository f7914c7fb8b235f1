// CheckpointManager: a thin façade over the rooms of checkpoint/ (see
// docs/ARCHITECTURE.md): the committed set, the one writer and the one
// reader of a checkpoint, the coordinated save, the asynchronous writer and
// restore.
#include "lorakeep/checkpoint_manager.h"

#include <optional>
#include <utility>

#include <boost/filesystem.hpp>

#include "lorakeep/distributed.h"
#include "lorakeep/error.h"
#include "base/logging.h"
#include "checkpoint/async_writer.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/committed_set.h"
#include "checkpoint/coordinated_save.h"
#include "checkpoint/node_copies.h"
#include "checkpoint/restore.h"
#include "checkpoint/run_dir.h"
#include "io/atomic_file.h"
#include "io/dir_lock.h"
#include "tensors/rng.h"

namespace lorakeep {

struct CheckpointManager::Impl {
  CheckpointOptions options;
  Coordinator coordinator;
  detail::CommittedSet committed;
  std::optional<detail::DirLock> lock;       // the writer's
  std::optional<detail::NodeWriters> nodes;  // with save_on_each_node and several ranks
  detail::AsyncWriter writer;                // last: destroyed first, after the save in flight

  Impl(CheckpointOptions o, Coordinator c)
      : options(std::move(o)), coordinator(std::move(c)),
        committed(options.output_dir, lorakeep::metric_key(options), lorakeep::greater_is_better(options)),
        writer(coordinator, committed, options, nodes) {}

  // The writer (rank 0, each node's first local rank, the one process): creates, locks and scans the run directory
  // (leftovers removed) into `committed`.
  void open_for_writing() {
    boost::system::error_code ec;
    boost::filesystem::create_directories(options.output_dir, ec);
    if (ec) {
      throw Error(ErrorCode::kIOError, "cannot create run directory '" + options.output_dir + "': " + ec.message());
    }
    lock.emplace(detail::DirLock::acquire(options.output_dir));
    const detail::RunDirScan scan = detail::scan_run_dir(options.output_dir);
    for (const std::string& tmp : scan.temp_dirs) {
      detail::log_warn("removing '{}', left over by an interrupted save", tmp);
      detail::remove_all_logged(tmp);
    }
    committed.add_scanned(scan);
  }
};

CheckpointManager::CheckpointManager(CheckpointOptions options)
    : CheckpointManager(std::move(options), Coordinator()) {}

CheckpointManager::CheckpointManager(CheckpointOptions options, const Coordinator& coordinator) {
  validate(options);
  impl_ = std::make_unique<Impl>(std::move(options), coordinator);
  Impl& m = *impl_;
  if (m.coordinator.world_size() == 1) {
    m.open_for_writing();
  } else if (m.options.save_on_each_node) {
    m.nodes = detail::open_node_copies(m.coordinator, m.options.output_dir, m.committed,
                                       [&m] { m.open_for_writing(); });
  } else {
    detail::open_shared(m.coordinator, m.options.output_dir, m.committed, [&m] { m.open_for_writing(); });
  }
}

CheckpointManager::~CheckpointManager() = default;
CheckpointManager::CheckpointManager(CheckpointManager&&) noexcept = default;
CheckpointManager& CheckpointManager::operator=(CheckpointManager&&) noexcept = default;

const CheckpointOptions& CheckpointManager::options() const { return impl_->options; }
const std::string& CheckpointManager::metric_key() const { return impl_->committed.key(); }
bool CheckpointManager::greater_is_better() const { return impl_->committed.greater(); }
const Coordinator& CheckpointManager::coordinator() const { return impl_->coordinator; }

CheckpointInfo CheckpointManager::save(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                       torch::optim::Optimizer* optimizer) {
  Impl& m = *impl_;
  m.writer.finish(&state);
  if (m.nodes) {
    return detail::save_on_each_node(m.coordinator, *m.nodes, m.committed, m.options, module, lora, state, optimizer);
  }
  if (m.coordinator.world_size() > 1) {
    return detail::coordinated_save(m.coordinator, m.committed, m.options, module, lora, state, optimizer);
  }
  return detail::commit_checkpoint(
      m.committed, m.options, state,
      detail::CheckpointContents::live(module, lora, optimizer, m.options, {detail::capture_rng_states()}));
}

AsyncSave CheckpointManager::save_async(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                        torch::optim::Optimizer* optimizer) {
  impl_->writer.finish(&state);
  return impl_->writer.start(module, lora, state, optimizer);
}

std::optional<CheckpointInfo> CheckpointManager::wait() {
  impl_->writer.finish();
  return impl_->committed.latest();
}

std::optional<CheckpointInfo> CheckpointManager::wait(TrainingState& state) {
  impl_->writer.finish(&state);
  return impl_->committed.latest();
}

std::vector<CheckpointInfo> CheckpointManager::checkpoints() const {
  impl_->writer.wait();
  std::vector<CheckpointInfo> out;
  for (const auto& [step, info] : impl_->committed.by_step()) out.push_back(info);
  return out;
}

std::optional<CheckpointInfo> CheckpointManager::best() const {
  impl_->writer.wait();
  return impl_->committed.best();
}

std::optional<CheckpointInfo> CheckpointManager::latest() const {
  impl_->writer.wait();
  return impl_->committed.latest();
}

TransferReport CheckpointManager::load_best_into(torch::nn::Module& module) {
  Impl& m = *impl_;
  m.writer.finish();
  return detail::restore_best(m.coordinator, m.committed, m.options, module);
}

std::optional<CheckpointInfo> CheckpointManager::resume(torch::nn::Module& module, TrainingState& state,
                                                        torch::optim::Optimizer* optimizer) {
  Impl& m = *impl_;
  m.writer.finish();
  switch (resume_from(m.options)) {
    case ResumeFrom::kNone: return std::nullopt;
    case ResumeFrom::kPath:
      return detail::restore_checkpoint(m.coordinator, m.committed, m.options.resume_from_checkpoint, m.options, module,
                                        state, optimizer);
    case ResumeFrom::kNewest: break;
  }
  return detail::restore_latest(m.coordinator, m.committed, m.options, module, state, optimizer);
}

}  // namespace lorakeep
