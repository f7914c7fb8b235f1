#include "checkpoint/node_copies.h"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "base/file_names.h"
#include "base/logging.h"
#include "checkpoint/coordinated_save.h"
#include "checkpoint/wire.h"

namespace lorakeep::detail {
namespace {

// What each rank says when the copies open.
struct NodeOpening {
  std::int64_t node = 0;
  bool writes = false;
  std::string token;                // the writer's shared-check file
  std::vector<std::int64_t> steps;  // the writer's committed steps

  std::string encode() const { return WireWriter().i64(node).i64(writes ? 1 : 0).str(token).steps(steps).bytes(); }
  static NodeOpening decode(const std::string& bytes, const std::string& what) {
    WireReader r(bytes, what);
    NodeOpening m;
    m.node = r.i64();
    m.writes = r.i64() == 1;
    m.token = r.str();
    m.steps = r.steps();
    r.end();
    return m;
  }
};

// The writers by node, checked: one per node that has ranks.
NodeWriters writers_of(const std::vector<NodeOpening>& ranks, int rank, const std::string& output_dir) {
  std::map<std::int64_t, int> by_node;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    if (!ranks[r].writes) continue;
    const auto [it, fresh] = by_node.emplace(ranks[r].node, static_cast<int>(r));
    if (!fresh) {
      throw Error(ErrorCode::kInvalidArgument,
                  "save_on_each_node: ranks " + std::to_string(it->second) + " and " + std::to_string(r) +
                      " are both local rank 0 of node " + std::to_string(ranks[r].node) +
                      " (hint: torchrun sets LOCAL_RANK and GROUP_RANK; a Coordinator made by hand takes them in "
                      "CoordinatorOptions::local_rank and node_rank)");
    }
  }
  NodeWriters out;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const auto it = by_node.find(ranks[r].node);
    if (it == by_node.end()) {
      throw Error(ErrorCode::kInvalidArgument, "save_on_each_node: node " + std::to_string(ranks[r].node) +
                                                   " of rank " + std::to_string(r) +
                                                   " has no local rank 0 to write its copy of '" + output_dir +
                                                   "' (hint: every node's ranks count LOCAL_RANK from 0)");
    }
    if (static_cast<int>(r) == rank) out.mine = it->second;
  }
  for (const auto& [node, writer] : by_node) out.writers.push_back(writer);
  out.writes = out.mine == rank;
  return out;
}

// The steps every writer's copy has.
std::vector<std::int64_t> common_steps(const std::vector<NodeOpening>& ranks) {
  std::optional<std::vector<std::int64_t>> common;
  for (const NodeOpening& m : ranks) {
    if (!m.writes) continue;
    if (!common) {
      common = m.steps;
      continue;
    }
    std::vector<std::int64_t> both;
    std::set_intersection(common->begin(), common->end(), m.steps.begin(), m.steps.end(), std::back_inserter(both));
    common = std::move(both);
  }
  return common.value_or(std::vector<std::int64_t>{});
}

}  // namespace

NodeWriters open_node_copies(Coordinator& coordinator, const std::string& output_dir, CommittedSet& committed,
                             const std::function<void()>& open_for_writing) {
  const int world = coordinator.world_size();
  const std::string what = "opening of each node's copy of '" + output_dir + "'";
  const std::vector<RankOutcome> opened = gather_outcomes(coordinator, what, [&] {
    NodeOpening m;
    m.node = coordinator.node_rank();
    m.writes = coordinator.local_rank() == 0;
    if (m.writes) {
      open_for_writing();
      m.token = leave_shared_check(output_dir);
      m.steps = committed.steps();
    }
    return m.encode();
  });
  raise_any(opened, world);
  std::vector<NodeOpening> ranks;
  for (const RankOutcome& o : opened) ranks.push_back(NodeOpening::decode(o.payload, what));
  const NodeWriters nodes = writers_of(ranks, coordinator.rank(), output_dir);
  const std::vector<std::int64_t> common = common_steps(ranks);
  const NodeOpening& mine = ranks[static_cast<std::size_t>(coordinator.rank())];

  const std::vector<RankOutcome> seen = gather_outcomes(
      coordinator, "check of each node's copy of '" + output_dir + "'", [&] {
        if (!nodes.writes) {
          const std::string& token = ranks[static_cast<std::size_t>(nodes.mine)].token;
          if (!sees_shared_check(output_dir, token)) {
            throw Error(
                ErrorCode::kInvalidArgument,
                "'" + output_dir + "' is not the directory of this rank's node writer, rank " +
                    std::to_string(nodes.mine) + ": this rank cannot see its file '" + shared_check_file_name(token) +
                    "' (hint: with save_on_each_node the ranks of a node share output_dir; is GROUP_RANK right?)");
          }
          committed.adopt(common);
          return std::string();
        }
        for (const int writer : nodes.writers) {
          const NodeOpening& other = ranks[static_cast<std::size_t>(writer)];
          if (writer != coordinator.rank() && sees_shared_check(output_dir, other.token)) {
            throw Error(ErrorCode::kInvalidArgument,
                        "save_on_each_node, but nodes " + std::to_string(mine.node) + " and " +
                            std::to_string(other.node) + " share '" + output_dir +
                            "' (hint: turn save_on_each_node off for a directory every node sees)");
          }
        }
        for (const std::int64_t step : mine.steps) {
          if (!std::binary_search(common.begin(), common.end(), step)) {
            log_warn("'{}' is not on every node's copy: ignored (not committed on every node), left on disk until a "
                     "save of step {} replaces it",
                     committed.path_of(step), step);
          }
        }
        committed.keep_only(common);
        return std::string();
      });
  if (nodes.writes) remove_shared_check(output_dir, mine.token);
  raise_any(seen, world);
  return nodes;
}

CheckpointInfo commit_on_each_node(const NodeWriters& nodes, CommittedSet& committed, const CheckpointOptions& options,
                                   TrainingState& state, const std::function<StagedCheckpoint()>& stage,
                                   const CommitRound& round, int world_size) {
  const std::int64_t step = state.global_step;
  std::optional<StagedCheckpoint> staged;
  raise_any(round("staging",
                  [&] {
                    if (nodes.writes) staged.emplace(stage());
                    return std::string();
                  }),
            world_size);
  bool published = false;
  const std::vector<RankOutcome> outcomes = round("publication", [&] {
    if (!nodes.writes) return std::string();
    staged->publish(committed);
    published = true;
    return WireWriter().steps(committed.kept_by_rotation(options.save_total_limit, options.keep_best)).bytes();
  });
  if (const auto failed = failures(outcomes); !failed.empty()) {
    if (published) committed.withdraw(step);
    failed.front()->raise(world_size);
  }
  if (nodes.writes) {
    committed.rotate(options.save_total_limit, options.keep_best);
    committed.set_best(state);
    return staged->info();
  }
  const auto from_writer = std::find_if(outcomes.begin(), outcomes.end(),
                                        [&](const RankOutcome& o) { return o.rank == nodes.mine; });
  const CheckpointInfo info = mirror_commit(committed, step, state.epoch,
                                            state.last_metrics_step == step ? state.last_metrics : Metrics{},
                                            from_writer->payload);
  committed.set_best(state);
  return info;
}

CheckpointInfo save_on_each_node(Coordinator& coordinator, const NodeWriters& nodes, CommittedSet& committed,
                                 const CheckpointOptions& options, torch::nn::Module& module, const LoraConfig& lora,
                                 TrainingState& state, torch::optim::Optimizer* optimizer) {
  const std::string what = "save of step " + std::to_string(state.global_step);
  std::vector<NamedTensors> rng = agree_on_save(coordinator, options, module, lora, state, what);
  return commit_on_each_node(
      nodes, committed, options, state,
      [&] {
        return StagedCheckpoint(committed, options, state,
                                CheckpointContents::live(module, lora, optimizer, options, std::move(rng)));
      },
      [&](const std::string& round, const std::function<std::string()>& local) {
        return gather_outcomes(coordinator, round + " of the " + what, local);
      },
      coordinator.world_size());
}

}  // namespace lorakeep::detail
