// The example's own sections of the run configuration (training, model,
// data), declared on lorakeep's ConfigSchema so that they live in the same
// YAML file as lorakeep's and are checked as strictly. No LibTorch: the
// run-config fuzzer builds it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lorakeep/config.h"

namespace char_lm {

// The model: a small character-level transformer.
struct ModelSettings {
  int n_layer = 2;       // transformer blocks
  int n_head = 4;        // attention heads
  int n_embd = 128;      // embedding width (a multiple of n_head)
  int block_size = 64;   // context length in characters
  double dropout = 0.1;  // in attention and MLP outputs
};

// The texts: real text from files installed by Debian packages
// (scripts/install-deps.sh), nothing generated or downloaded.
struct DataSettings {
  std::vector<std::string> base_texts;      // the base model learns these
  std::vector<std::string> finetune_texts;  // LoRA adapts the model to these
  double validation_fraction = 0.1;         // the tail of each text kept for evaluation
};

// How the example trains.
struct TrainingSettings {
  std::uint64_t seed = 1234;
  int batch_size = 32;
  int base_steps = 300;  // training the base model from scratch
  double base_learning_rate = 3e-3;
  int max_steps = 400;  // LoRA fine-tuning steps
  double learning_rate = 2e-3;
  int warmup_steps = 0;  // then a linear decay to 0 at max_steps (Trainer's default schedule)
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;       // 0: no clipping
  int eval_batches = 8;             // batches per evaluation
  int early_stopping_patience = 0;  // 0: no early stopping
  double early_stopping_threshold = 0.0;
  int sample_chars = 240;  // characters generated at the end
  double sample_temperature = 0.8;
};

struct Settings {
  TrainingSettings training;
  ModelSettings model;
  DataSettings data;
};

// Declares the sections training, model and data on `schema`, bound to the
// fields of `*settings`, which must outlive the parse.
void declare_settings(lorakeep::ConfigSchema& schema, Settings* settings);

// lorakeep's sections and the example's, from one file.
struct Config {
  lorakeep::RunConfig run;
  Settings settings;
};
Config load_config(const std::string& path);
Config parse_config(const std::string& text, const std::string& name);  // `name` stands in for the file

}  // namespace char_lm
