// The training program of the exact-resume tests, run in the test process by
// exact_resume_test.cpp and as a process of its own (resume_child) by the
// chained-kill tests: it resumes from its run directory, trains with
// everything that changes the training restored or derived from global_step,
// and saves every few steps with an evaluation, so that a run interrupted
// anywhere and resumed ends with the uninterrupted run's bytes.
//
// Each epoch visits kResumeBatches batches in an order drawn from a generator
// seeded with the epoch (as Trainer's sampler is); each batch gets noise from
// the global generator (restored by resume); AdamW; Trainer's warmup + linear
// decay (LinearWarmupSchedule, derived from the step); the data position as
// Trainer derives it (TrainingState::data_position). Several ranks train the
// same batches (replicas stay equal without gradient averaging) and reduce
// their evaluation through the coordinator.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/distributed.h"
#include "lorakeep/lr_schedule.h"
#include "test_model.h"

namespace lorakeep::test {

constexpr std::int64_t kResumeBatches = 7;  // per epoch, one optimizer step each
constexpr std::int64_t kResumeBatchSize = 4;

// What a test may break on purpose, to show that the comparison catches it.
struct ResumePlant {
  bool data_from_epoch_start = false;  // the resumed epoch restarts at batch 0
  bool schedule_from_zero = false;     // the schedule restarts at step 0
  // The noise comes from the application's own generator, seeded when the
  // program starts and saved nowhere: randomness lorakeep cannot see.
  bool unsaved_generator = false;
};

struct ResumeRun {
  std::string dir;
  std::int64_t max_steps = 30;  // planned
  std::int64_t stop_at = 30;    // the run stops when global_step reaches it
  std::int64_t save_every = 6;
  bool async = false;      // save_async: training goes on while the checkpoint is written
  bool each_node = false;  // save_on_each_node: each node's first local rank writes the node's copy
  ResumePlant plant;
  Coordinator* coordinator = nullptr;  // several ranks; null: one process
  // Told, as they happen: "ready" (resumed at `step`), "step" (optimizer step
  // `step` done), "begin" (before the save of `step`, with the adapter it
  // saves), "queued" (save_async returned), "saved" (save returned, or the
  // save_async of `step` is known to be committed).
  std::function<void(const char* event, std::int64_t step, torch::nn::Module& module)> on_event;
};

// What a run ends with. The optimizer refers to the net's parameters.
struct ResumeOutcome {
  TestNet net{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

inline ResumeOutcome run_resume_program(const ResumeRun& run) {
  const LoraConfig config = test_lora();
  ResumeOutcome out;
  out.net = armed_net(0, config);
  TestNet& net = out.net;
  std::vector<torch::Tensor> trainable;
  for (auto& p : net->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  out.optimizer = std::make_unique<torch::optim::AdamW>(trainable, torch::optim::AdamWOptions(1e-2));
  torch::optim::AdamW& adamw = *out.optimizer;
  const LinearWarmupSchedule schedule(learning_rates(adamw), 5, run.max_steps);
  CheckpointOptions options = options_for(run.dir);
  options.save_on_each_node = run.each_node;
  CheckpointManager ckpt = run.coordinator != nullptr ? CheckpointManager(options, *run.coordinator)
                                                      : CheckpointManager(options);
  TrainingState state;
  state.max_steps = run.max_steps;
  const auto tell = [&](const char* event, std::int64_t step) {
    if (run.on_event) run.on_event(event, step, *net);
  };
  ckpt.resume(*net, state, &adamw);
  tell("ready", state.global_step);
  const at::Tensor data =
      at::arange(kResumeBatches * kResumeBatchSize * 16, at::kFloat).reshape({kResumeBatches * kResumeBatchSize, 16}) /
      500;
  const at::Tensor eval_x = at::linspace(-1, 1, 8 * 16).reshape({8, 16});
  const DataPosition start = state.data_position(kResumeBatches);
  const std::int64_t schedule_offset = run.plant.schedule_from_zero ? state.global_step : 0;
  std::int64_t in_flight = -1;  // the save_async not yet known to be committed
  const at::Generator own = at::detail::createCPUGenerator(7);
  for (std::int64_t epoch = start.epoch; state.global_step < run.stop_at; ++epoch) {
    const at::Tensor order = at::randperm(kResumeBatches, at::detail::createCPUGenerator(1000 + epoch));
    const std::int64_t first = epoch == start.epoch && !run.plant.data_from_epoch_start ? start.batches_to_skip : 0;
    for (std::int64_t b = first; b < kResumeBatches && state.global_step < run.stop_at; ++b) {
      const at::Tensor x = data.narrow(0, order[b].item<std::int64_t>() * kResumeBatchSize, kResumeBatchSize) +
                           (run.plant.unsaved_generator ? at::randn({kResumeBatchSize, 16}, own)
                                                        : torch::randn({kResumeBatchSize, 16})) *
                               0.01;
      schedule.apply(adamw, state.global_step - schedule_offset);
      adamw.zero_grad();
      net->forward(x).pow(2).mean().backward();
      adamw.step();
      ++state.global_step;
      state.epoch = static_cast<double>(state.global_step) / kResumeBatches;
      tell("step", state.global_step);
      if (state.global_step % run.save_every != 0) continue;
      double eval_loss = 0;
      {
        torch::NoGradGuard no_grad;
        eval_loss = net->forward(eval_x).pow(2).mean().item<double>();
      }
      const Metrics metrics{{"eval_loss", eval_loss}};
      state.record_evaluation(run.coordinator != nullptr ? run.coordinator->reduce_metrics(metrics, 1) : metrics);
      tell("begin", state.global_step);
      if (run.async) {
        ckpt.save_async(*net, config, state, &adamw);  // waits for the previous one
        if (in_flight >= 0) tell("saved", in_flight);
        in_flight = state.global_step;
        tell("queued", state.global_step);
      } else {
        ckpt.save(*net, config, state, &adamw);
        tell("saved", state.global_step);
      }
    }
  }
  if (in_flight >= 0) {
    ckpt.wait(state);
    tell("saved", in_flight);
  }
  return out;
}

}  // namespace lorakeep::test
