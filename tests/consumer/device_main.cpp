// A user's program on an accelerator, built against the *installed* lorakeep
// package with lorakeep's test device (tests/device/, compiled here from its
// sources: the device's one public hook, lorakeep::register_device_memory_stats,
// must come from the installed headers and library). Trains a small LoRA
// model on the device, saving checkpoints with an evaluation metric, then
// reloads the best one with no device memory left and checks that it took 0
// extra device bytes (the allocator's count and the load's report agree) and
// that the live parameters equal the best checkpoint's adapter file.
#include <cstdint>
#include <cstdio>
#include <string>

#include <torch/torch.h>
#include <torch/version.h>

#include <lorakeep/lorakeep.h>

#include "test_device.h"
#include "training.h"

namespace {

namespace td = lorakeep::test_device;

int fail(const std::string& what) {
  std::fprintf(stderr, "consumer_device: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const c10::Device device = td::device();
  consumer::Net model = consumer::armed_model(device);
  lorakeep::CheckpointOptions options;
  options.output_dir = std::string(argv[1]) + "/run-device";
  options.metric_for_best_model = "eval_loss";
  lorakeep::CheckpointManager ckpt(options);
  consumer::train_and_save(model, ckpt, device);
  const auto best = ckpt.best();
  if (!best || best->step != 6) return fail("the best checkpoint is not step 6");

  lorakeep::TransferReport report;
  const std::int64_t before = td::live_bytes();
  {
    td::FreeBytes full(0);  // any device allocation fails as out of memory
    td::reset_peak();
    report = ckpt.load_best_into(*model);
  }
  const std::int64_t extra = td::peak_bytes() - before;
  if (extra != 0) return fail("load_best_into took " + std::to_string(extra) + " extra device bytes");
  if (report.peak_device_bytes != 0) {
    return fail("the report gives " + std::to_string(report.peak_device_bytes) + " extra device bytes");
  }
  const auto file = lorakeep::SafetensorsFile::open(best->path + "/adapter_model.safetensors");
  int compared = 0;
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (item.value().device() != device) return fail(name + " is not on the device");
    if (name.find("lora_") == std::string::npos) continue;
    if (!torch::equal(item.value().cpu(), file.tensor("base_model.model." + name))) return fail("differs: " + name);
    ++compared;
  }
  if (compared != 4) return fail("expected 4 LoRA tensors");
  std::printf("consumer_device ok: lorakeep %s, LibTorch %s, device %s: reloaded checkpoint-%ld with %ld extra "
              "device bytes (%s)\n",
              LORAKEEP_VERSION, TORCH_VERSION, device.str().c_str(), static_cast<long>(best->step),
              static_cast<long>(extra), report.summary().c_str());
  return 0;
}
