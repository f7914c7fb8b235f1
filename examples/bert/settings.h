// The BERT example's own sections of the run configuration (model, data,
// training), declared on lorakeep's ConfigSchema so that they live in the
// same YAML file as lorakeep's and are checked as strictly. No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lorakeep/config.h"

namespace bert {

struct ModelSettings {
  std::string dir;      // a Hugging Face BERT directory: config.json, model.safetensors, tokenizer.json
  int max_length = 64;  // tokens per text, [CLS] and [SEP] included (the tokenizer truncates)
};

// Texts and labels: one class per file of Debian's fortunes (texts between
// lines holding only "%"), the same number of texts from each.
struct DataSettings {
  std::vector<std::string> classes;  // files; the label is the file's name
  int eval_per_class = 50;           // held out for evaluation, drawn first
  int train_per_class = 0;           // 0: as many as the smallest class has left
  std::uint64_t seed = 1234;         // the draw (its own generator: changing training.seed keeps the split)
};

struct TrainingSettings {
  std::uint64_t seed = 1234;
  int batch_size = 16;
  int eval_batch_size = 32;
  int max_steps = 60;
  double learning_rate = 1e-3;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0: no clipping
  int head_steps = 300;        // the classifier trained alone first (full batch on frozen features)
  double head_learning_rate = 1e-2;
  int early_stopping_patience = 0;
  double early_stopping_threshold = 0.0;
};

struct Settings {
  ModelSettings model;
  DataSettings data;
  TrainingSettings training;
};

// Declares the sections model, data and training on `schema`, bound to
// `*settings`, which must outlive the parse.
void declare_settings(lorakeep::ConfigSchema& schema, Settings* settings);

struct Config {
  lorakeep::RunConfig run;
  Settings settings;
};
Config load_config(const std::string& path);

}  // namespace bert
