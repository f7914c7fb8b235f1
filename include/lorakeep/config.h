// lorakeep/config.h: a training run configured in YAML. Sections map onto
// the option structs of the library (checkpoint, lora, transfer) and onto the
// example trainer's settings (training, model, data). Does not include
// LibTorch.
//
//   lorakeep::RunConfig run = lorakeep::load_run_config("configs/char_lm_lora.yaml");
//   lorakeep::CheckpointManager ckpt(run.checkpoint);
//
// Every key is checked: an unknown key, a value of the wrong type or out of
// range is an Error(kInvalidArgument) whose message starts with
// "<file>:<line>:<column>:" and names the key ("lora.r"), with a
// did-you-mean hint for misspelled keys.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lorakeep/checkpoint_options.h"
#include "lorakeep/lora_config.h"

namespace lorakeep {

// How reloads move data; copied into RunConfig::checkpoint (chunk_bytes,
// verify_checksums), which load_best_into and resume honour.
struct TransferSettings {
  std::uint64_t chunk_bytes = 64ull << 20;  // host staging per piece ("64MiB" in YAML)
  bool verify_checksums = true;             // reloads check every byte they read against the manifest first
};

// The model of examples/char_lm: a small character-level transformer.
struct ModelSettings {
  int n_layer = 2;       // transformer blocks
  int n_head = 4;        // attention heads
  int n_embd = 128;      // embedding width (a multiple of n_head)
  int block_size = 64;   // context length in characters
  double dropout = 0.1;  // in attention and MLP outputs
};

// The texts of examples/char_lm: real text from files installed by Debian
// packages (scripts/install-deps.sh), nothing generated or downloaded.
struct DataSettings {
  std::vector<std::string> base_texts;      // the base model learns these
  std::vector<std::string> finetune_texts;  // LoRA adapts the model to these
  double validation_fraction = 0.1;         // the tail of each text kept for evaluation
};

// How examples/char_lm trains.
struct TrainingSettings {
  std::uint64_t seed = 1234;
  int batch_size = 32;
  int base_steps = 300;  // training the base model from scratch
  double base_learning_rate = 3e-3;
  int max_steps = 400;  // LoRA fine-tuning steps
  double learning_rate = 2e-3;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;       // 0: no clipping
  int eval_batches = 8;             // batches per evaluation
  int early_stopping_patience = 0;  // 0: no early stopping
  double early_stopping_threshold = 0.0;
  int sample_chars = 240;  // characters generated at the end
  double sample_temperature = 0.8;
};

struct RunConfig {
  std::string path;  // the file it came from
  CheckpointOptions checkpoint;
  LoraConfig lora;
  TransferSettings transfer;
  TrainingSettings training;
  ModelSettings model;
  DataSettings data;
};

// Reads and checks a YAML run configuration. Relative paths in it
// (checkpoint.output_dir, data texts) are kept as written. Throws
// Error(kNotFound) if the file is missing, Error(kInvalidArgument) as above.
RunConfig load_run_config(const std::string& path);

// The same from text; `name` stands in for the file in messages.
RunConfig parse_run_config(const std::string& text, const std::string& name);

}  // namespace lorakeep
