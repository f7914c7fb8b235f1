// Exact resume: a run interrupted and resumed ends with the same bytes as the
// run that was never interrupted, when everything that changes the training
// is restored (adapter, optimizer state, random generators) or derived from
// global_step (the data position as Trainer derives it, Trainer's
// learning-rate schedule).
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lr_schedule.h"
#include "tensor_util.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

constexpr std::int64_t kBatches = 7;  // per epoch, one optimizer step each
constexpr std::int64_t kBatchSize = 4;
constexpr std::int64_t kMaxSteps = 30;
constexpr std::int64_t kSaveEvery = 6;

// What a test may break on purpose, to show that the comparison catches it.
struct Plant {
  bool data_from_epoch_start = false;  // the resumed epoch restarts at batch 0
  bool schedule_from_zero = false;     // the schedule restarts at step 0
};

// What a run ends with: its adapter and its optimizer's state.
struct Outcome {
  NamedTensors adapter;
  std::vector<std::string> optimizer;
};

// A training program: resumes from `dir`, trains until global_step reaches
// `stop_at` (of kMaxSteps planned), saving every kSaveEvery steps. Each epoch visits the kBatches batches in an order
// drawn from a generator seeded with the epoch (as Trainer's sampler is);
// each batch gets noise from the global generator; AdamW; Trainer's warmup +
// linear decay.
Outcome run(const std::string& dir, std::int64_t stop_at, const Plant& plant = {}) {
  const LoraConfig config = test::test_lora();
  test::TestNet net = test::armed_net(0, config);
  std::vector<torch::Tensor> trainable;
  for (auto& p : net->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW adamw(trainable, torch::optim::AdamWOptions(1e-2));
  const LinearWarmupSchedule schedule(learning_rates(adamw), 5, kMaxSteps);
  CheckpointOptions options;
  options.output_dir = dir;
  CheckpointManager ckpt(options);
  TrainingState state;
  state.max_steps = kMaxSteps;
  ckpt.resume(*net, state, &adamw);
  const at::Tensor data = at::arange(kBatches * kBatchSize * 16, at::kFloat).reshape({kBatches * kBatchSize, 16}) / 500;
  const DataPosition start = state.data_position(kBatches);
  const std::int64_t schedule_offset = plant.schedule_from_zero ? state.global_step : 0;
  for (std::int64_t epoch = start.epoch; state.global_step < stop_at; ++epoch) {
    const at::Tensor order = at::randperm(kBatches, at::detail::createCPUGenerator(1000 + epoch));
    const std::int64_t first = epoch == start.epoch && !plant.data_from_epoch_start ? start.batches_to_skip : 0;
    for (std::int64_t b = first; b < kBatches && state.global_step < stop_at; ++b) {
      const at::Tensor x = data.narrow(0, order[b].item<std::int64_t>() * kBatchSize, kBatchSize) +
                           torch::randn({kBatchSize, 16}) * 0.01;
      schedule.apply(adamw, state.global_step - schedule_offset);
      adamw.zero_grad();
      net->forward(x).pow(2).mean().backward();
      adamw.step();
      ++state.global_step;
      state.epoch = static_cast<double>(state.global_step) / kBatches;
      if (state.global_step % kSaveEvery == 0) ckpt.save(*net, config, state, &adamw);
    }
  }
  return {test::clone_all(adapter_tensors(*net, config)), test::optimizer_state_bytes(adamw)};
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
  const Outcome reference = run(dir / "reference", kMaxSteps);
  // Stopped at step 16, between the saves of 12 and 18 and in the middle of
  // the third epoch: the resume goes back to 12 and trains 13 to 16 again.
  run(dir / "run", 16);
  SECTION("resumed exactly") {
    const Outcome resumed = run(dir / "run", kMaxSteps);
    CHECK(test::bitwise_equal(resumed.adapter, reference.adapter));
    CHECK(resumed.optimizer == reference.optimizer);
    for (const int step : {18, 24, 30}) {
      INFO("step " << step);
      const std::string name = "checkpoint-" + std::to_string(step) + "/adapter_model.safetensors";
      CHECK(test::read_file(dir / ("run/" + name)) == test::read_file(dir / ("reference/" + name)));
    }
  }
  SECTION("a resumed epoch that restarts at batch 0 differs") {
    Plant plant;
    plant.data_from_epoch_start = true;
    CHECK_FALSE(test::bitwise_equal(run(dir / "run", kMaxSteps, plant).adapter, reference.adapter));
  }
  SECTION("a schedule that restarts at step 0 differs") {
    Plant plant;
    plant.schedule_from_zero = true;
    CHECK_FALSE(test::bitwise_equal(run(dir / "run", kMaxSteps, plant).adapter, reference.adapter));
  }
}

}  // namespace lorakeep
