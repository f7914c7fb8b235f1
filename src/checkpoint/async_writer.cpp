#include "checkpoint/async_writer.h"

#include <chrono>
#include <memory>
#include <utility>

#include "base/logging.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/collective.h"
#include "checkpoint/coordinated_save.h"
#include "tensors/rng.h"

namespace lorakeep::detail {

namespace {

// The key under which `rank` posts its outcome of a round of save `key`.
std::string round_key(const std::string& key, const std::string& round, int rank) {
  return key + "/" + round + "/" + std::to_string(rank);
}

}  // namespace

AsyncWriter::AsyncWriter(Coordinator& coordinator, CommittedSet& committed, const CheckpointOptions& options,
                         const std::optional<NodeWriters>& nodes)
    : coordinator_(coordinator), committed_(committed), options_(options), nodes_(nodes) {}

AsyncWriter::~AsyncWriter() {
  wait();
  if (!error_) return;
  try {
    std::rethrow_exception(error_);
  } catch (const std::exception& e) {
    log_error("a save off the training thread failed and nobody asked: {}", e.what());
  }
}

void AsyncWriter::wait() {
  if (worker_.joinable()) worker_.join();
}

void AsyncWriter::finish(TrainingState* state) {
  wait();
  if (!error_) return;
  if (state != nullptr) committed_.set_best(*state);
  std::rethrow_exception(std::exchange(error_, nullptr));
}

AsyncSave AsyncWriter::start(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                             torch::optim::Optimizer* optimizer) {
  const auto begin = std::chrono::steady_clock::now();
  const int rank = coordinator_.rank();
  const int world = coordinator_.world_size();
  const std::int64_t step = state.global_step;
  const std::string what = "save of step " + std::to_string(step);
  std::vector<NamedTensors> rng;
  if (world == 1) {
    rng.push_back(capture_rng_states());
  } else {
    rng = agree_on_save(coordinator_, options_, module, lora, state, what);
    for (const std::string& k : posted_)
      coordinator_.erase(k);  // every rank is past reading them: they all gathered since
    posted_.clear();
  }
  // Numbered like the saves, so that a step saved twice has two keys.
  const std::string key = "outcome/" + std::to_string(++saves_) + "/" + std::to_string(step);
  const bool writes = nodes_ ? nodes_->writes : rank == 0;
  // The one copy: what the background thread writes, whatever training does next.
  auto contents = std::make_shared<CheckpointContents>();
  if (writes) {
    try {
      *contents =
          CheckpointContents::live(module, lora, optimizer, options_, std::move(rng)).snapshot(optimizer_reserve_);
      if (contents->optimizer_bytes) optimizer_reserve_ = contents->optimizer_bytes->size() + (1 << 20);
    } catch (...) {
      if (world > 1) {  // the others' background threads learn it from the outcome
        const std::string failed = nodes_ ? round_key(key, "staging", rank) : key;
        coordinator_.post(failed, RankOutcome::run([]() -> std::string { throw; }));
        posted_.push_back(failed);
      }
      throw;
    }
  }
  AsyncSave ticket;
  ticket.snapshot_bytes = contents->host_bytes();
  Manifest preview;
  preview.step = step;
  preview.epoch = state.epoch;
  if (state.last_metrics_step == step) preview.metrics = state.last_metrics;
  ticket.checkpoint = committed_.info_of(preview, committed_.path_of(step));
  // The best as it will be once this checkpoint is in (the next call sets it
  // from what was committed, should the background write fail).
  committed_.set_best(state, &ticket.checkpoint);
  auto shadow = std::make_shared<TrainingState>(state);
  worker_ = std::thread([this, contents, shadow, key, what, step, rank, world] {
    try {
      if (nodes_) {
        commit_on_each_node(
            *nodes_, committed_, options_, *shadow,
            [&] { return StagedCheckpoint(committed_, options_, *shadow, *contents); },
            [&](const std::string& round, const std::function<std::string()>& local) {
              if (nodes_->writes) coordinator_.post(round_key(key, round, rank), RankOutcome::run(local));
              std::vector<RankOutcome> out;
              for (const int writer : nodes_->writers) {
                const std::string bytes = coordinator_.await(
                    round_key(key, round, writer), writer,
                    round + " of the " + what + " (rank " + std::to_string(writer) + " writes its node's copy)");
                out.push_back(RankOutcome::decode(bytes, writer, what));
              }
              return out;
            },
            world);
      } else if (rank == 0) {
        const std::string outcome = RankOutcome::run([&] {
          commit_checkpoint(committed_, options_, *shadow, *contents);
          return committed_steps_message(committed_);
        });
        if (world > 1) coordinator_.post(key, outcome);
        const RankOutcome result = RankOutcome::decode(outcome, 0, what);
        if (!result.ok) result.raise(world);
      } else {
        const RankOutcome result = RankOutcome::decode(
            coordinator_.await(key, 0, "outcome of the " + what + " (rank 0 writes it)"), 0, what);
        if (!result.ok) result.raise(world);
        mirror_commit(committed_, step, shadow->epoch,
                      shadow->last_metrics_step == step ? shadow->last_metrics : Metrics{}, result.payload);
      }
    } catch (...) {
      error_ = std::current_exception();
    }
  });
  if (writes && world > 1) {
    posted_ = nodes_ ? std::vector<std::string>{round_key(key, "staging", rank), round_key(key, "publication", rank)}
                     : std::vector<std::string>{key};
  }
  ticket.blocking_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return ticket;
}

}  // namespace lorakeep::detail
