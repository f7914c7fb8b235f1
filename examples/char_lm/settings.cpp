#include "settings.h"

namespace char_lm {

void declare_settings(lorakeep::ConfigSchema& schema, Settings* settings) {
  TrainingSettings* t = &settings->training;
  schema.section("training")
      .integer("seed", &t->seed)
      .integer("batch_size", &t->batch_size, 1, 1 << 16)
      .integer("base_steps", &t->base_steps, 0)
      .real("base_learning_rate", &t->base_learning_rate, 0, 10)
      .integer("max_steps", &t->max_steps, 1)
      .real("learning_rate", &t->learning_rate, 0, 10)
      .integer("warmup_steps", &t->warmup_steps, 0)
      .real("weight_decay", &t->weight_decay, 0, 10)
      .real("max_grad_norm", &t->max_grad_norm, 0, 1e6)
      .integer("eval_batches", &t->eval_batches, 1, 1 << 16)
      .integer("early_stopping_patience", &t->early_stopping_patience, 0)
      .real("early_stopping_threshold", &t->early_stopping_threshold, 0, 1e9)
      .integer("sample_chars", &t->sample_chars, 0, 1 << 20)
      .real("sample_temperature", &t->sample_temperature, 0.01, 100);

  ModelSettings* m = &settings->model;
  schema.section("model")
      .integer("n_layer", &m->n_layer, 1, 64)
      .integer("n_head", &m->n_head, 1, 64)
      .integer("n_embd", &m->n_embd, 1, 1 << 14)
      .integer("block_size", &m->block_size, 2, 1 << 14)
      .real("dropout", &m->dropout, 0, 0.999)
      .check([m](const lorakeep::SectionCheck& check) {
        // Attention splits the embedding evenly across the heads.
        if (m->n_embd % m->n_head != 0) {
          check.fail("n_embd", "must be a multiple of n_head (" + std::to_string(m->n_head) + ")");
        }
      });

  DataSettings* d = &settings->data;
  schema.section("data")
      .strings("base_texts", &d->base_texts)
      .strings("finetune_texts", &d->finetune_texts)
      .real("validation_fraction", &d->validation_fraction, 0.01, 0.9);
}

Config parse_config(const std::string& text, const std::string& name) {
  Config config;
  lorakeep::ConfigSchema schema;
  declare_settings(schema, &config.settings);
  config.run = lorakeep::parse_run_config(text, name, schema);
  return config;
}

Config load_config(const std::string& path) {
  Config config;
  lorakeep::ConfigSchema schema;
  declare_settings(schema, &config.settings);
  config.run = lorakeep::load_run_config(path, schema);
  return config;
}

}  // namespace char_lm
