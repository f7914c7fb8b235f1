#include "settings.h"

namespace bert {

void declare_settings(lorakeep::ConfigSchema& schema, Settings* settings) {
  ModelSettings* m = &settings->model;
  schema.section("model").text("dir", &m->dir).integer("max_length", &m->max_length, 3, 1 << 16);

  DataSettings* d = &settings->data;
  schema.section("data")
      .strings("classes", &d->classes)
      .integer("eval_per_class", &d->eval_per_class, 1)
      .integer("train_per_class", &d->train_per_class, 0)
      .integer("seed", &d->seed)
      .check([d](const lorakeep::SectionCheck& check) {
        if (d->classes.size() < 2) check.fail("classes", "needs at least two files (one per class)");
      });

  TrainingSettings* t = &settings->training;
  schema.section("training")
      .integer("seed", &t->seed)
      .integer("batch_size", &t->batch_size, 1, 1 << 16)
      .integer("eval_batch_size", &t->eval_batch_size, 1, 1 << 16)
      .integer("max_steps", &t->max_steps, 1)
      .real("learning_rate", &t->learning_rate, 0, 10)
      .real("weight_decay", &t->weight_decay, 0, 10)
      .real("max_grad_norm", &t->max_grad_norm, 0, 1e6)
      .integer("head_steps", &t->head_steps, 0)
      .real("head_learning_rate", &t->head_learning_rate, 0, 10)
      .integer("early_stopping_patience", &t->early_stopping_patience, 0)
      .real("early_stopping_threshold", &t->early_stopping_threshold, 0, 1);
}

Config load_config(const std::string& path) {
  Config config;
  lorakeep::ConfigSchema schema;
  declare_settings(schema, &config.settings);
  config.run = lorakeep::load_run_config(path, schema);
  return config;
}

}  // namespace bert
