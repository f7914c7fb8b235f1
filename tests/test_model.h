// The small LoRA model every test shares (and the child processes the
// reliability and multi-rank tests run): two LoRA-capable layers, q_proj and
// v_proj, a head that a config may train whole (modules_to_save) and a buffer.
// Header-only: the child programs use it without the test library.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>

#include "lorakeep/adapter.h"
#include "lorakeep/lora_config.h"
#include "lorakeep/lora_linear.h"

namespace lorakeep::test {

struct TestNetImpl : torch::nn::Module {
  LoraLinear q_proj{nullptr}, v_proj{nullptr};
  torch::nn::Linear head{nullptr};
  torch::Tensor running;
  explicit TestNetImpl(std::int64_t width = 16) {
    q_proj = register_module("q_proj", LoraLinear(width, width));
    v_proj = register_module("v_proj", LoraLinear(width, width));
    head = register_module("head", torch::nn::Linear(width, 2));
    running = register_buffer("running", torch::zeros({width}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(v_proj(torch::relu(q_proj(x)))); }
};
TORCH_MODULE(TestNet);

// LoRA of rank r on q_proj and v_proj; with train_head, the head trained and
// saved whole.
inline LoraConfig test_lora(int r = 4, double alpha = 8, bool train_head = false) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = {"q_proj", "v_proj"};
  if (train_head) c.modules_to_save = {"head"};
  return c;
}

// A TestNet drawn from `seed` and armed with `config`.
inline TestNet armed_net(std::uint64_t seed = 0, const LoraConfig& config = test_lora(), std::int64_t width = 16) {
  torch::manual_seed(seed);
  TestNet net(width);
  inject_lora(*net, config);
  return net;
}

// Moves every trainable tensor by `amount`: a stand-in for a training step.
inline void perturb(torch::nn::Module& module, double amount) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.requires_grad()) p.add_(amount);
  }
}

}  // namespace lorakeep::test
