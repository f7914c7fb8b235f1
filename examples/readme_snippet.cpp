// The "use it in your training loop" snippet of README.md, compiled as part of
// the build; tests/readme_test checks that README.md shows it verbatim.
#include <torch/torch.h>

#include <lorakeep/lorakeep.h>

// [snippet]
#include <lorakeep/lorakeep.h>

// Model: any torch::nn::Module whose adaptable layers are lorakeep::LoraLinear.
template <class Model, class TrainStep, class Evaluate>
void fine_tune(Model& model, const std::string& yaml, TrainStep train_step, Evaluate evaluate) {
  std::int64_t max_steps = 1000;
  lorakeep::ConfigSchema app;  // the application's own sections of the file, every key checked as lorakeep's
  app.section("training").integer("max_steps", &max_steps, 1);
  const lorakeep::RunConfig run = lorakeep::load_run_config(yaml, app);
  lorakeep::inject_lora(*model, run.lora);  // arms q_proj, v_proj, ...; freezes the rest
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-3));

  lorakeep::CheckpointManager ckpt(run.checkpoint);  // atomic, checksummed checkpoint-<step>/
  lorakeep::CallbackList callbacks;
  callbacks.add(std::make_shared<lorakeep::CheckpointCallback>(ckpt, *model, run.lora, run.callbacks, &optimizer));
  callbacks.add(std::make_shared<lorakeep::EarlyStopping>(ckpt, /*patience=*/3));
  callbacks.add(std::make_shared<lorakeep::LoadBestAtEnd>(ckpt, *model, run.callbacks));
  lorakeep::TrainingState state;
  state.max_steps = max_steps;
  callbacks.on_train_begin(state);
  while (state.global_step < state.max_steps) {
    const double loss = train_step(model, optimizer);  // forward, backward, optimizer.step()
    ++state.global_step;
    state.log({{"loss", loss}});
    if (!callbacks.end_step(state, [&] { return lorakeep::Metrics{{"eval_loss", evaluate(model)}}; })) break;
  }
  callbacks.on_train_end(state);  // the best adapter is back in the live model, loaded CPU-first
}
// [/snippet]

namespace {

struct TinyImpl : torch::nn::Module {
  lorakeep::LoraLinear q_proj{nullptr};
  TinyImpl() { q_proj = register_module("q_proj", lorakeep::LoraLinear(4, 4)); }
};
TORCH_MODULE(Tiny);

}  // namespace

// Instantiated so that the snippet really compiles.
template void fine_tune(Tiny&, const std::string&, double (*)(Tiny&, torch::optim::AdamW&), double (*)(Tiny&));

int main() { return 0; }
