// Base + delta on the model of char_lm, the StableVicuna / FastChat recipe
// made bounded and exact:
//   1. the fine-tuned full weights: merge-lora of the run's adapter into its base
//   2. the delta: tuned - base, file to file (lossless by default)
//   3. a live base model gets the delta added in place, CPU-first
//   4. the result must equal the fine-tuned weights, bit for bit
//
//   apply_delta --config configs/char_lm_lora.yaml [--run-dir runs/char_lm]
#include <cstdio>

#include <boost/filesystem.hpp>
#include <CLI/CLI.hpp>

#include "lorakeep/lorakeep.h"
#include "model.h"

namespace fs = boost::filesystem;

int main(int argc, char** argv) {
  CLI::App app{"apply_delta: base + delta, CPU-first, on the char_lm model"};
  std::string config_path = "configs/char_lm_lora.yaml", run_dir;
  app.add_option("--config", config_path, "the run configuration char_lm used");
  app.add_option("--run-dir", run_dir, "the run's output directory (default: the config's)");
  CLI11_PARSE(app, argc, argv);
  try {
    lorakeep::set_log_level(lorakeep::LogLevel::kWarn);
    const char_lm::Config config = char_lm::load_config(config_path);
    const lorakeep::RunConfig& run = config.run;
    if (run_dir.empty()) run_dir = run.checkpoint.output_dir;
    const std::string base = run_dir + "/base_model.safetensors";
    const std::string adapter = run_dir + "/final_adapter";
    const std::string tuned = run_dir + "/tuned_model";
    const std::string delta = run_dir + "/delta";
    for (const std::string& dir : {tuned, delta}) {
      if (fs::exists(dir)) fs::remove_all(dir);
    }

    const lorakeep::MergeReport merged = lorakeep::merge_lora_files(base, adapter, tuned);
    std::printf("1. fine-tuned weights: %s (%zu tensors, the adapter folded into the base)\n", tuned.c_str(),
                merged.tensors);
    const lorakeep::MergeReport made = lorakeep::make_delta_files(base, tuned, delta);
    std::printf("2. delta = tuned - base: %s (%zu tensors, %.2f MiB); %llu of %llu elements will not come back "
                "exactly\n",
                delta.c_str(), made.tensors, static_cast<double>(made.bytes_written) / (1 << 20),
                static_cast<unsigned long long>(made.inexact_elements), static_cast<unsigned long long>(made.elements));

    char_lm::CharLM model(config.settings.model);
    lorakeep::load_into(*model, *lorakeep::open_tensor_source(base));
    lorakeep::LoadOptions add;
    add.chunk_bytes = run.checkpoint.chunk_bytes;
    const lorakeep::TransferReport report = lorakeep::apply_delta(*model, *lorakeep::open_tensor_source(delta), 1.0,
                                                                  add);
    std::printf("3. applied in place to a live base model: %s\n", report.summary().c_str());

    const auto want = lorakeep::open_tensor_source(tuned);
    std::size_t equal = 0, total = 0;
    for (const auto& p : model->named_parameters()) {
      ++total;
      if (want->contains(p.key()) && torch::equal(p.value(), want->tensor(p.key()))) ++equal;
    }
    std::printf("4. %zu of %zu live parameters equal the fine-tuned weights bit for bit\n", equal, total);
    return equal == total ? 0 : 1;
  } catch (const lorakeep::Error& e) {
    std::fprintf(stderr, "apply_delta: error: %s\n", e.what());
    return 1;
  }
}
