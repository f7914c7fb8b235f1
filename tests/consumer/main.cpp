// A user's program built against the *installed* lorakeep package (in the
// language standard its LibTorch asks for: C++17 for 1.13, C++20 for 2.x):
// trains a small LoRA model, saving checkpoints with an evaluation metric,
// then reloads the best one while any CPU allocation beyond 1 MiB fails, and
// checks the live parameters against the best checkpoint's adapter file.
#include <cstdio>
#include <string>

#include <torch/torch.h>
#include <torch/version.h>

#include <lorakeep/lorakeep.h>

namespace {

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

int fail(const char* what) {
  std::fprintf(stderr, "consumer: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  torch::manual_seed(0);
  Net model;
  lorakeep::LoraConfig lora;
  lora.r = 4;
  lora.target_modules = {"q_proj", "v_proj"};
  lorakeep::inject_lora(*model, lora);
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));

  lorakeep::CheckpointOptions options;
  options.output_dir = std::string(argv[1]) + "/run";
  options.metric_for_best_model = "eval_loss";
  lorakeep::CheckpointManager ckpt(options);
  lorakeep::TrainingState state;
  const torch::Tensor x = torch::randn({32, 64}), y = x.sum(1, true);
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
      ckpt.save(*model, lora, state, &optimizer);
    }
  }
  const auto best = ckpt.best();
  if (!best || best->step != 6) return fail("the best checkpoint is not step 6");

  lorakeep::TransferReport report;
  {
    lorakeep::CpuAllocationLimit cap(1 << 20);
    report = ckpt.load_best_into(*model);
  }
  const auto file = lorakeep::SafetensorsFile::open(best->path + "/adapter_model.safetensors");
  int compared = 0;
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (name.find("lora_") == std::string::npos) continue;
    if (!torch::equal(item.value(), file.tensor("base_model.model." + name))) {
      return fail(("differs: " + name).c_str());
    }
    ++compared;
  }
  if (compared != 4) return fail("expected 4 LoRA tensors");
  std::printf("consumer ok: lorakeep %s, LibTorch %s, C++ %ld: reloaded checkpoint-%ld (%s)\n", LORAKEEP_VERSION,
              TORCH_VERSION, static_cast<long>(__cplusplus), static_cast<long>(best->step), report.summary().c_str());
  return 0;
}
