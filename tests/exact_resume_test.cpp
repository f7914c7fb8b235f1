// Exact resume: a run interrupted and resumed ends with the same bytes as the
// run that was never interrupted, when everything that changes the training
// is restored (adapter, optimizer state, random generators) or derived from
// global_step (the data position as Trainer derives it, Trainer's
// learning-rate schedule).
#include <torch/optim/adamw.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lr_schedule.h"
#include "resume_program.h"
#include "tensor_util.h"
#include "test_util.h"

namespace lorakeep {
namespace {

// What a run ends with: its adapter and its optimizer's state.
struct Outcome {
  NamedTensors adapter;
  std::vector<std::string> optimizer;
};

// The program of resume_program.h, saving every 6 of 30 steps, stopped at
// `stop_at`.
Outcome run(const std::string& dir, std::int64_t stop_at, const test::ResumePlant& plant = {}) {
  test::ResumeRun r;
  r.dir = dir;
  r.stop_at = stop_at;
  r.plant = plant;
  test::ResumeOutcome out = test::run_resume_program(r);
  return {test::clone_all(adapter_tensors(*out.net, test::test_lora())), test::optimizer_state_bytes(*out.optimizer)};
}

}  // namespace

TEST_CASE("the data position is derived from global_step as Trainer derives it", "[checkpoint][resume]") {
  TrainingState state;
  state.global_step = 17;
  CHECK(state.data_position(7).epoch == 2);
  CHECK(state.data_position(7).batches_to_skip == 3);
  CHECK(state.data_position(7, 4).batches_to_skip == 12);  // batches, not optimizer steps
  CHECK(state.data_position(17).epoch == 1);
  CHECK(state.data_position(17).batches_to_skip == 0);
  const Error e = test::capture_error([&] { state.data_position(0); });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("Trainer's linear schedule with warmup, derived from the step", "[resume]") {
  const LinearWarmupSchedule schedule({1e-2, 2e-3}, 10, 100);
  CHECK(schedule.factor(0) == 0.0);
  CHECK(schedule.factor(5) == 0.5);
  CHECK(schedule.factor(10) == 1.0);
  CHECK(schedule.factor(55) == 0.5);
  CHECK(schedule.factor(100) == 0.0);
  CHECK(schedule.factor(120) == 0.0);
  at::Tensor a = at::zeros({2}, at::requires_grad()), b = at::zeros({2}, at::requires_grad());
  torch::optim::AdamW adamw(
      {torch::optim::OptimizerParamGroup({a}, std::make_unique<torch::optim::AdamWOptions>(1e-2)),
       torch::optim::OptimizerParamGroup({b}, std::make_unique<torch::optim::AdamWOptions>(2e-3))});
  CHECK(learning_rates(adamw) == std::vector<double>{1e-2, 2e-3});
  schedule.apply(adamw, 55);
  CHECK(learning_rates(adamw) == std::vector<double>{1e-2 * 0.5, 2e-3 * 0.5});
  const LinearWarmupSchedule one({1e-2}, 0, 10);
  CHECK(test::capture_error([&] { one.apply(adamw, 1); }).code() == ErrorCode::kInvalidArgument);
  CHECK(test::capture_error([] { LinearWarmupSchedule({1.0}, 20, 10); }).code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("a run stopped mid-epoch and resumed ends with the uninterrupted run's bytes", "[checkpoint][resume]") {
  test::TempDir dir;
  const Outcome reference = run(dir / "reference", 30);
  // Stopped at step 16, between the saves of 12 and 18 and in the middle of
  // the third epoch: the resume goes back to 12 and trains 13 to 16 again.
  run(dir / "run", 16);
  SECTION("resumed exactly") {
    const Outcome resumed = run(dir / "run", 30);
    CHECK(test::bitwise_equal(resumed.adapter, reference.adapter));
    CHECK(resumed.optimizer == reference.optimizer);
    // The kept checkpoints (the newest two and the best): adapter, RNG and
    // trainer_state.json with its log history and best, byte for byte.
    CHECK(test::checkpoint_difference(dir / "run", dir / "reference") == "");
  }
  SECTION("a resumed epoch that restarts at batch 0 differs") {
    test::ResumePlant plant;
    plant.data_from_epoch_start = true;
    CHECK_FALSE(test::bitwise_equal(run(dir / "run", 30, plant).adapter, reference.adapter));
  }
  SECTION("randomness the application does not save: exact up to the checkpoint, then it differs") {
    // README "Resuming": lorakeep restores the global generators; a
    // generator of the application's own must be saved by it or derived
    // from global_step. Without that, the resume itself is still exact (the
    // state at the checkpoint), and the steps after it differ.
    test::ResumePlant plant;
    plant.unsaved_generator = true;
    const Outcome at_12 = run(dir / "own-reference", 12, plant);
    run(dir / "own-run", 16, plant);
    CHECK(test::bitwise_equal(run(dir / "own-run", 12, plant).adapter, at_12.adapter));  // resumed at 12
    const Outcome own_reference = run(dir / "own-uninterrupted", 30, plant);
    CHECK_FALSE(test::bitwise_equal(run(dir / "own-run", 30, plant).adapter, own_reference.adapter));
  }
  SECTION("a schedule that restarts at step 0 differs") {
    test::ResumePlant plant;
    plant.schedule_from_zero = true;
    CHECK_FALSE(test::bitwise_equal(run(dir / "run", 30, plant).adapter, reference.adapter));
  }
}

}  // namespace lorakeep
