// The training process of the reliability tests (crash_child), shared with
// the tests that check what it leaves behind: two 64x64 LoRA layers of rank
// 8, saved with the newest 2 and the best 1 kept.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/optim/adam.h>

#include "lorakeep/checkpoint_options.h"
#include "lorakeep/lora.h"

namespace lorakeep::test {

struct CrashNetImpl : torch::nn::Module {
  LoraLinear q_proj{nullptr}, v_proj{nullptr};
  CrashNetImpl() {
    q_proj = register_module("q_proj", LoraLinear(64, 64));
    v_proj = register_module("v_proj", LoraLinear(64, 64));
  }
};
TORCH_MODULE(CrashNet);

inline LoraConfig crash_lora() {
  LoraConfig c;
  c.r = 8;
  c.target_modules = {"q_proj", "v_proj"};
  return c;
}

inline CheckpointOptions crash_options(const std::string& dir) {
  CheckpointOptions o;
  o.output_dir = dir;
  o.save_total_limit = 2;
  o.keep_best = 1;
  o.metric_for_best_model = "loss";
  return o;
}

// One Adam step of the children's training loop, on a batch fixed by `step`.
inline void crash_train_step(CrashNet& net, torch::optim::Adam& adam, std::int64_t step) {
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
