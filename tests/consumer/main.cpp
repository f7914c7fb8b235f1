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

#include "training.h"

namespace {

int fail(const char* what) {
  std::fprintf(stderr, "consumer: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  consumer::Net model = consumer::armed_model(torch::kCPU);
  lorakeep::CheckpointOptions options;
  options.output_dir = std::string(argv[1]) + "/run";
  options.metric_for_best_model = "eval_loss";
  lorakeep::CheckpointManager ckpt(options);
  consumer::train_and_save(model, ckpt, torch::kCPU);
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
