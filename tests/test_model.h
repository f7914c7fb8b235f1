// The small LoRA model every test shares (and the child processes the
// reliability and multi-rank tests run): two LoRA-capable layers, q_proj and
// v_proj, a head that a config may train whole (modules_to_save) and a buffer;
// the checkpoint tests' setup around it; and the module trees of the PEFT
// fixtures (PEFT's regression-test MLP, GPT-2's attention blocks).
// Header-only: the child programs use it without the test library.
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>

#include "lorakeep/adapter.h"
#include "lorakeep/checkpoint_options.h"
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

// The checkpoint tests' model and config: test_lora() on a TestNet drawn
// from `seed`; perturb() of the whole net.
inline LoraConfig lora_config() { return test_lora(); }

inline TestNet lora_net(std::uint64_t seed = 0) { return armed_net(seed); }

inline void perturb(TestNet& net, double amount) { perturb(*net, amount); }

// Checkpoints in `dir` by "loss": the newest 2 and the best 1 kept.
inline CheckpointOptions options_for(const std::string& dir) {
  CheckpointOptions o;
  o.output_dir = dir;
  o.save_total_limit = 2;
  o.keep_best = 1;
  o.metric_for_best_model = "loss";
  return o;
}

// PEFT's regression-test MLP: lin0 Linear(10, 20), relu, lin1 Linear(20, 2),
// log_softmax; lin0 declared LoRA-capable.
struct MlpImpl : torch::nn::Module {
  LoraLinear lin0{nullptr};
  torch::nn::Linear lin1{nullptr};
  MlpImpl() {
    lin0 = register_module("lin0", LoraLinear(10, 20));
    lin1 = register_module("lin1", torch::nn::Linear(20, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::log_softmax(lin1(torch::relu(lin0(x))), -1); }
};
TORCH_MODULE(Mlp);

inline Mlp seeded_mlp() {
  torch::manual_seed(0);
  return Mlp();
}

// The input of PEFT's regression outputs: 0..89 as 9 rows of 10.
inline torch::Tensor fixed_input() { return torch::arange(90, torch::kFloat).reshape({9, 10}); }

// GPT-2's module tree, as far as the PEFT fixture needs it: 12 blocks whose
// attention has c_attn stored [768, 2304] (Conv1D), and a classifier "score".
struct Gpt2AttnImpl : torch::nn::Module {
  LoraLinear c_attn{nullptr};
  Gpt2AttnImpl() { c_attn = register_module("c_attn", LoraLinear(LoraLinearOptions(768, 2304).fan_in_fan_out(true))); }
};
TORCH_MODULE(Gpt2Attn);
struct Gpt2BlockImpl : torch::nn::Module {
  Gpt2Attn attn{nullptr};
  Gpt2BlockImpl() { attn = register_module("attn", Gpt2Attn()); }
};
TORCH_MODULE(Gpt2Block);
struct Gpt2TransformerImpl : torch::nn::Module {
  torch::nn::ModuleList h{nullptr};
  Gpt2TransformerImpl() {
    h = register_module("h", torch::nn::ModuleList());
    for (int i = 0; i < 12; ++i) h->push_back(Gpt2Block());
  }
};
TORCH_MODULE(Gpt2Transformer);
struct Gpt2SeqClsImpl : torch::nn::Module {
  Gpt2Transformer transformer{nullptr};
  torch::nn::Linear score{nullptr};
  Gpt2SeqClsImpl() {
    transformer = register_module("transformer", Gpt2Transformer());
    score = register_module("score", torch::nn::Linear(torch::nn::LinearOptions(768, 6).bias(false)));
  }
};
TORCH_MODULE(Gpt2SeqCls);

}  // namespace lorakeep::test
