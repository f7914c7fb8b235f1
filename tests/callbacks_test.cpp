// The training callbacks: evaluation, saving, early stopping, the metrics
// log and the reload of the best at the end, run by one CallbackList.
#include <cstddef>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lorakeep/callbacks.h"
#include "lorakeep/checkpoint_manager.h"
#include "tensor_util.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

using Net = test::TestNet;
using test::adapter_snapshot;
using test::lora_config;
using test::lora_net;
using test::options_for;
using test::perturb;

}  // namespace

TEST_CASE("CallbackList runs evaluation saving early stopping and the reload at the end", "[checkpoint][callbacks]") {
  test::TempDir dir;
  Net net = lora_net();
  CheckpointManager ckpt(options_for(dir.path()));
  CallbackOptions o;
  o.eval_strategy = EvalStrategy::kSteps;
  o.eval_steps = 2;
  o.save_strategy = SaveStrategy::kSteps;
  o.save_steps = 2;
  o.load_best_model_at_end = true;
  CallbackList callbacks;
  callbacks.add(std::make_shared<CheckpointCallback>(ckpt, *net, lora_config(), o));
  callbacks.add(std::make_shared<EarlyStopping>(ckpt, 2));
  auto logger = std::make_shared<MetricsLogger>(dir / "metrics.jsonl");
  callbacks.add(logger);
  auto reload = std::make_shared<LoadBestAtEnd>(ckpt, *net, o);
  callbacks.add(reload);
  TrainingState state;
  state.max_steps = 100;
  const std::vector<double> eval = {1.0, 0.4, 0.6, 0.5, 0.45, 0.3};  // best 0.4 at step 4; stops after 2 misses
  std::size_t evals = 0;
  NamedTensors at_best;
  callbacks.on_train_begin(state);
  while (state.global_step < state.max_steps) {
    perturb(net, 0.01);
    ++state.global_step;
    state.log({{"loss", 1.0}});
    const bool go = callbacks.end_step(state, [&] { return Metrics{{"eval_loss", eval.at(evals++)}}; });
    if (state.global_step == 4) at_best = adapter_snapshot(net);
    if (!go) break;
  }
  callbacks.on_train_end(state);
  CHECK(state.global_step == 8);  // evaluations at 2, 4, 6, 8: no improvement at 6 and 8
  CHECK(evals == 4);
  REQUIRE(reload->loaded().has_value());
  CHECK(reload->loaded()->step == 4);
  CHECK(test::bitwise_equal(adapter_snapshot(net), at_best));
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{4, 6, 8});
  const std::string log = test::read_file(dir / "metrics.jsonl");
  CHECK_THAT(log, Contains("\"eval_loss\":0.4") && Contains("\"event\":\"save\""));
  CHECK(state.early_stopping->counter == 2);
  // Saved in the manifest (trainer_state.json has no key for it that
  // transformers 4.x reads), and restored by resume.
  const auto saved = nlohmann::json::parse(test::read_file(dir / "checkpoint-8/lorakeep_manifest.json"));
  CHECK(saved["early_stopping"]["counter"] == 2);
  CHECK_FALSE(
      nlohmann::json::parse(test::read_file(dir / "checkpoint-8/trainer_state.json")).contains("stateful_callbacks"));
  Net fresh = lora_net(1);
  TrainingState resumed;
  REQUIRE(ckpt.resume(*fresh, resumed).has_value());
  REQUIRE(resumed.early_stopping.has_value());
  CHECK(resumed.early_stopping->counter == 2);
}

}  // namespace lorakeep
