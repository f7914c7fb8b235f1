// The consumer programs' model and training loop (main.cpp on the CPU,
// device_main.cpp on the test device): a small LoRA model trained on `device`
// with AdamW, saving a checkpoint every 3 steps with an evaluation metric
// that makes step 6 the best.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include <lorakeep/lorakeep.h>

namespace consumer {

struct NetImpl : torch::nn::Module {
  lorakeep::LoraLinear q_proj{nullptr}, v_proj{nullptr};
  torch::nn::Linear head{nullptr};
  NetImpl() {
    q_proj = register_module("q_proj", lorakeep::LoraLinear(64, 64));
    v_proj = register_module("v_proj", lorakeep::LoraLinear(64, 64));
    head = register_module("head", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(v_proj(torch::relu(q_proj(x))))); }
};
TORCH_MODULE(Net);

inline lorakeep::LoraConfig lora_config() {
  lorakeep::LoraConfig lora;
  lora.r = 4;
  lora.target_modules = {"q_proj", "v_proj"};
  return lora;
}

// A model with LoRA armed, on `device`.
inline Net armed_model(const c10::Device& device) {
  torch::manual_seed(0);
  Net model;
  lorakeep::inject_lora(*model, lora_config());
  model->to(device);
  return model;
}

// 12 steps, a checkpoint (optimizer included) every 3; the best is step 6.
inline void train_and_save(Net& model, lorakeep::CheckpointManager& ckpt, const c10::Device& device) {
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));
  lorakeep::TrainingState state;
  const torch::Tensor x = torch::randn({32, 64}).to(device), y = x.sum(1, true);
  for (int step = 1; step <= 12; ++step) {
    optimizer.zero_grad();
    const torch::Tensor loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer.step();
    state.global_step = step;
    if (step % 3 == 0) {
      torch::NoGradGuard no_grad;
      // Noisy on purpose, so that the best is not simply the newest.
      const double eval = torch::mse_loss(model->forward(x), y).item<double>() * (step == 6 ? 0.01 : 1.0);
      state.last_metrics = {{"eval_loss", eval}};
      state.last_metrics_step = step;
      ckpt.save(*model, lora_config(), state, &optimizer);
    }
  }
}

}  // namespace consumer
