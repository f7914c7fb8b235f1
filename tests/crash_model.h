// The training process of the reliability tests (crash_child), shared with
// the tests that check what it leaves behind: the shared test model at width
// 64 with LoRA of rank 8, saved with the newest 2 and the best 1 kept.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <torch/optim/adam.h>

#include "lorakeep/checkpoint_options.h"
#include "test_model.h"

namespace lorakeep::test {

inline LoraConfig crash_lora() { return test_lora(/*r=*/8, /*alpha=*/8); }

// The children's model, armed: the same on every run and every rank.
inline TestNet crash_net() { return armed_net(/*seed=*/0, crash_lora(), /*width=*/64); }

inline CheckpointOptions crash_options(const std::string& dir) {
  CheckpointOptions o;
  o.output_dir = dir;
  o.save_total_limit = 2;
  o.keep_best = 1;
  o.metric_for_best_model = "loss";
  return o;
}

// One Adam step of the children's training loop, on a batch fixed by `step`.
inline void crash_train_step(TestNet& net, torch::optim::Adam& adam, std::int64_t step) {
  adam.zero_grad();
  const at::Tensor x = at::full({4, 64}, static_cast<double>(step % 7) / 7.0);
  net->v_proj(at::relu(net->q_proj(x))).pow(2).sum().backward();
  adam.step();
}

// The eval loss at `step`: noisy, sometimes NaN, so that the best moves
// around and rotation has work to do.
inline double crash_metric(std::int64_t step) {
  if (step % 13 == 0) return std::nan("");
  return 1.0 + 0.5 * std::sin(static_cast<double>(step) * 1.7) + 0.1 * std::cos(static_cast<double>(step) * 5.3);
}

}  // namespace lorakeep::test
