#include "checkpoint/coordinated_save.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <ctime>
#include <optional>
#include <random>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/adapter.h"
#include "base/file_names.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/collective.h"
#include "checkpoint/wire.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/read_file.h"
#include "lora/injection.h"
#include "tensors/rng.h"

namespace lorakeep::detail {
namespace {

// Rank 0's answer when it opened the run directory.
struct OpenedRunDir {
  std::string token;  // the content of the shared-check file
  std::vector<std::int64_t> steps;

  std::string encode() const { return WireWriter().str(token).steps(steps).bytes(); }
  static OpenedRunDir decode(const std::string& bytes) {
    WireReader r(bytes, "opening of the run directory");
    OpenedRunDir m;
    m.token = r.str();
    m.steps = r.steps();
    r.end();
    return m;
  }
};

// What each rank proposes to save.
struct SaveProposal {
  std::int64_t step = 0;
  std::uint64_t digest = 0;  // of the adapter
  bool evaluated = false;    // at this step
  Metrics metrics;           // the evaluation, if evaluated
  NamedTensors rng;          // the RNG states, as bytes; empty unless saved

  std::string encode() const {
    WireWriter w;
    w.i64(step).i64(static_cast<std::int64_t>(digest)).i64(evaluated ? 1 : 0).metrics(metrics);
    w.i64(static_cast<std::int64_t>(rng.size()));
    for (const auto& [name, t] : rng) {
      const at::Tensor c = t.contiguous();
      w.str(name).str(std::string(static_cast<const char*>(c.data_ptr()), c.nbytes()));
    }
    return w.bytes();
  }
  static SaveProposal decode(const std::string& bytes, const std::string& what) {
    WireReader r(bytes, what);
    SaveProposal m;
    m.step = r.i64();
    m.digest = static_cast<std::uint64_t>(r.i64());
    m.evaluated = r.i64() == 1;
    m.metrics = r.metrics();
    for (std::int64_t n = r.i64(); n > 0; --n) {
      std::string name = r.str();
      const std::string data = r.str();
      at::Tensor t = at::empty({static_cast<std::int64_t>(data.size())}, at::kByte);
      std::memcpy(t.data_ptr(), data.data(), data.size());
      m.rng.emplace_back(std::move(name), std::move(t));
    }
    r.end();
    return m;
  }
};

bool same_value(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

bool same_metrics(const Metrics& a, const Metrics& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end() || !same_value(it->second, v)) return false;
  }
  return true;
}

std::string list(const std::vector<int>& ranks) {
  std::string out;
  for (const int r : ranks) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return out;
}

}  // namespace

std::string leave_shared_check(const std::string& output_dir) {
  const std::string token = std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()) + "-" +
                            std::to_string(std::time(nullptr));
  write_synced_file((boost::filesystem::path(output_dir) / shared_check_file_name(token)).string(), token);
  return token;
}

bool sees_shared_check(const std::string& output_dir, const std::string& token) {
  try {
    return read_small_file((boost::filesystem::path(output_dir) / shared_check_file_name(token)).string(), 1 << 10) ==
           token;
  } catch (const Error&) {
    return false;
  }
}

void remove_shared_check(const std::string& output_dir, const std::string& token) {
  ::unlink((boost::filesystem::path(output_dir) / shared_check_file_name(token)).c_str());
}

void open_shared(Coordinator& coordinator, const std::string& output_dir, CommittedSet& committed,
                 const std::function<void()>& open_for_writing) {
  const int world = coordinator.world_size();
  const std::vector<RankOutcome> opened = gather_outcomes(coordinator, "opening of '" + output_dir + "'", [&] {
    if (coordinator.rank() != 0) return std::string();
    open_for_writing();
    OpenedRunDir m;
    m.token = leave_shared_check(output_dir);
    m.steps = committed.steps();
    return m.encode();
  });
  raise_any(opened, world);
  const OpenedRunDir from0 = OpenedRunDir::decode(opened.front().payload);
  const std::vector<RankOutcome> seen = gather_outcomes(coordinator, "check that '" + output_dir + "' is shared", [&] {
    if (coordinator.rank() == 0) return std::string();
    if (!sees_shared_check(output_dir, from0.token)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "run directory '" + output_dir +
                      "' is not shared between the ranks: this rank cannot see rank 0's file '" +
                      shared_check_file_name(from0.token) +
                      "' there (hint: put output_dir on a file system every node mounts, e.g. NFS or Lustre, or set "
                      "save_on_each_node so that each node keeps its own copy)");
    }
    committed.adopt(from0.steps);
    return std::string();
  });
  if (coordinator.rank() == 0) remove_shared_check(output_dir, from0.token);
  raise_any(seen, world);
}

std::vector<NamedTensors> agree_on_save(Coordinator& coordinator, const CheckpointOptions& options,
                                        torch::nn::Module& module, const LoraConfig& lora, const TrainingState& state,
                                        const std::string& what) {
  const std::vector<RankOutcome> parts = gather_outcomes(coordinator, what, [&] {
    SaveProposal mine;
    mine.step = state.global_step;
    // Every adapter the checkpoint will hold (CheckpointContents::live).
    const std::vector<std::string> names = adapter_names(module);
    if (names.empty() || names.front() == kDefaultAdapter) mine.digest = adapter_digest(module, lora);
    for (const std::string& name : names) {
      if (name == kDefaultAdapter) continue;
      const std::uint64_t parts[] = {mine.digest, adapter_digest(module, armed_config(module, name), name)};
      mine.digest = xxh3_64(parts, sizeof parts);
    }
    mine.evaluated = state.last_metrics_step == state.global_step;
    if (mine.evaluated) mine.metrics = state.last_metrics;
    if (options.save_rng) mine.rng = capture_rng_states();
    return mine.encode();
  });
  raise_any(parts, coordinator.world_size());
  std::vector<SaveProposal> ranks;
  for (const RankOutcome& p : parts) ranks.push_back(SaveProposal::decode(p.payload, what));

  // The same checks, from the same messages, on every rank: the same outcome.
  const SaveProposal& zero = ranks.front();
  std::vector<int> other_step, other_adapter, other_metrics;
  for (std::size_t r = 1; r < ranks.size(); ++r) {
    if (ranks[r].step != zero.step || ranks[r].evaluated != zero.evaluated) other_step.push_back(static_cast<int>(r));
    if (ranks[r].digest != zero.digest) other_adapter.push_back(static_cast<int>(r));
    if (!same_metrics(ranks[r].metrics, zero.metrics)) other_metrics.push_back(static_cast<int>(r));
  }
  if (!other_step.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "the ranks disagree on the " + what + ": rank " + list(other_step) +
                                                 " saves another step or evaluation than rank 0 (hint: every rank "
                                                 "calls save at the same step, after the same evaluation)");
  }
  if (!other_adapter.empty()) {
    throw Error(ErrorCode::kIncompatible,
                "the replicas differ at the " + what + ": the adapter of rank " + list(other_adapter) +
                    " is not rank 0's (xxh3 " +
                    format_checksum(ranks[static_cast<std::size_t>(other_adapter.front())].digest) + " against " +
                    format_checksum(zero.digest) +
                    ") (hint: are the gradients averaged across ranks, and was every rank's adapter initialised "
                    "alike?)");
  }
  if (!other_metrics.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "at the " + what + " rank " + list(other_metrics) +
                    "'s evaluation differs from rank 0's (hint: reduce each rank's evaluation of its share with "
                    "Coordinator::reduce_metrics before recording it, so that every rank records the job's)");
  }
  std::vector<NamedTensors> rng;
  if (options.save_rng) {
    for (SaveProposal& p : ranks) rng.push_back(std::move(p.rng));
  }
  return rng;
}

std::string committed_steps_message(const CommittedSet& committed) {
  return WireWriter().steps(committed.steps()).bytes();
}

CheckpointInfo mirror_commit(CommittedSet& committed, std::int64_t step, double epoch, const Metrics& metrics,
                             const std::string& payload) {
  WireReader r(payload, "committed steps");
  const std::vector<std::int64_t> kept = r.steps();
  r.end();
  Manifest m;
  m.step = step;
  m.epoch = epoch;
  m.metrics = metrics;
  const CheckpointInfo info = committed.info_of(m, committed.path_of(step));
  committed.put(info, &kept);
  return info;
}

CheckpointInfo coordinated_save(Coordinator& coordinator, CommittedSet& committed, const CheckpointOptions& options,
                                torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                torch::optim::Optimizer* optimizer) {
  const std::string what = "save of step " + std::to_string(state.global_step);
  const TrainingState before = state;
  std::vector<NamedTensors> rng = agree_on_save(coordinator, options, module, lora, state, what);
  std::optional<CheckpointInfo> info;
  std::string outcome;
  if (coordinator.rank() == 0) {
    outcome = RankOutcome::run([&] {
      info = commit_checkpoint(committed, options, state,
                               CheckpointContents::live(module, lora, optimizer, options, std::move(rng)));
      return committed_steps_message(committed);
    });
  }
  RankOutcome result;
  try {
    result = RankOutcome::decode(coordinator.broadcast("outcome of the " + what + " (rank 0 writes it)", outcome), 0,
                                 what);
  } catch (...) {
    state = before;
    throw;
  }
  if (!result.ok) {
    state = before;
    result.raise(coordinator.world_size());
  }
  if (coordinator.rank() == 0) return *info;
  const CheckpointInfo mine = mirror_commit(
      committed, state.global_step, state.epoch,
      state.last_metrics_step == state.global_step ? state.last_metrics : Metrics{}, result.payload);
  committed.set_best(state);
  return mine;
}

}  // namespace lorakeep::detail
