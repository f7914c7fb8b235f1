// The committed set: which checkpoint is best (by metric, then step, NaN
// worst), which rotation deletes, and what a restart finds again.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

#include "lorakeep/checkpoint_manager.h"
#include "checkpoint/policy.h"
#include "tensor_util.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Net = test::TestNet;
using test::adapter_snapshot;
using test::lora_config;
using test::lora_net;
using test::options_for;
using test::perturb;

}  // namespace

TEST_CASE("the best is chosen by metric then step and NaN is worst", "[checkpoint]") {
  using detail::CheckpointRecord;
  const std::vector<CheckpointRecord> records = {{1000, 1.5},         {200, 1.5}, {300, std::nan("")},
                                                 {400, std::nullopt}, {500, 2.0}, {600, 1.2}};
  CHECK(detail::rank_by_metric(records, false) == std::vector<std::int64_t>{600, 200, 1000, 500, 300});
  CHECK(detail::rank_by_metric(records, true) == std::vector<std::int64_t>{500, 200, 1000, 600, 300});
  // Rotation: newest 2 and the best 1.
  CHECK(detail::steps_to_delete(records, 2, 1, false) == std::vector<std::int64_t>{200, 300, 400, 500});
  CHECK(detail::steps_to_delete(records, 2, 2, false) == std::vector<std::int64_t>{300, 400, 500});
  CHECK(detail::steps_to_delete(records, 0, 1, false).empty());
  CHECK(detail::steps_to_delete({{1, std::nan("")}, {2, std::nan("")}, {3, std::nan("")}}, 1, 1, false) ==
        std::vector<std::int64_t>{2});  // all NaN: the earliest counts as best
}

TEST_CASE("a simulated run keeps exactly the newest 2 and the best and a restart keeps its best", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  TrainingState state;
  // Noisy losses: the best (0.61) comes early and must survive all rotations.
  const std::vector<double> losses = {1.9, 1.4, 0.61, 1.2, 0.9, 1.1, std::nan(""), 0.8, 0.95, 0.7, 0.75, 0.66};
  std::vector<detail::CheckpointRecord> expected;
  auto run_steps = [&](CheckpointManager& ckpt, std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; ++i) {
      perturb(net, 0.01);
      state.global_step = static_cast<std::int64_t>(10 * (i + 1));
      state.epoch = 0.1 * static_cast<double>(i + 1);
      state.log({{"loss", 2.0}});
      state.record_evaluation({{"eval_loss", losses[i]}});
      ckpt.save(*net, lora_config(), state);
      expected.push_back({state.global_step, losses[i]});
      // Independently: the newest two and the best one.
      std::set<std::int64_t> want;
      for (std::size_t k = expected.size() >= 2 ? expected.size() - 2 : 0; k < expected.size(); ++k) {
        want.insert(expected[k].step);
      }
      std::int64_t best = -1;
      double best_value = 0;
      for (const auto& r : expected) {
        if (!std::isnan(*r.metric) && (best < 0 || *r.metric < best_value)) best = r.step, best_value = *r.metric;
      }
      want.insert(best);
      INFO("after saving step " << state.global_step);
      CHECK(test::checkpoint_steps(dir.path()) == want);
      REQUIRE(ckpt.best().has_value());
      CHECK(ckpt.best()->step == best);
      CHECK(state.best_global_step == best);
    }
  };
  {
    CheckpointManager ckpt(options_for(dir.path()));
    run_steps(ckpt, 0, 6);
  }
  // A restart: the best comes back from the manifests.
  CheckpointManager again(options_for(dir.path()));
  REQUIRE(again.best().has_value());
  CHECK(again.best()->step == 30);
  CHECK(*again.best()->metric == 0.61);
  TrainingState resumed;
  Net fresh = lora_net(99);
  const auto from = again.resume(*fresh, resumed);
  REQUIRE(from.has_value());
  CHECK(from->step == 60);
  CHECK(resumed.global_step == 60);
  CHECK(resumed.best_global_step == 30);
  CHECK(test::bitwise_equal(adapter_snapshot(fresh), adapter_snapshot(net)));
  state = resumed;
  run_steps(again, 6, losses.size());
  CHECK(again.best()->step == 30);
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{30, 110, 120});
}

}  // namespace lorakeep
