// lorakeep/config.h: a training run configured in YAML. lorakeep's sections
// (checkpoint, lora, transfer) map onto its option structs: `checkpoint`,
// Trainer's names in one section, onto the manager's CheckpointOptions and
// the callbacks' CallbackOptions; `transfer` onto the reload settings of
// CheckpointOptions (chunk_bytes, verify_checksums). An application
// declares its own sections of the same file on a ConfigSchema
// (config_schema.h). Includes neither LibTorch nor a YAML library.
//
//   lorakeep::ConfigSchema app;
//   app.section("training").integer("max_steps", &max_steps, 1);
//   lorakeep::RunConfig run = lorakeep::load_run_config("configs/char_lm_lora.yaml", app);
//   lorakeep::CheckpointManager ckpt(run.checkpoint);
//
// Every key is checked: a section or key declared by neither, a value of the
// wrong type or out of range is an Error(kInvalidArgument) whose message
// starts with "<file>:<line>:<column>:" and names the key ("lora.r"), with a
// did-you-mean hint for misspelt names.
#pragma once

#include <cstdint>
#include <string>

#include "lorakeep/callback_options.h"
#include "lorakeep/checkpoint_options.h"
#include "lorakeep/config_schema.h"
#include "lorakeep/lora_config.h"

namespace lorakeep {

// lorakeep's sections of the file; the application's land in its own fields.
struct RunConfig {
  std::string path;              // the file it came from
  CheckpointOptions checkpoint;  // checkpoint: (the manager's keys) and transfer:
  CallbackOptions callbacks;     // checkpoint: (when to evaluate, save and reload)
  LoraConfig lora;
};

// Reads and checks a YAML run configuration: lorakeep's sections into the
// result, the sections `app` declares into the application's fields.
// Relative paths in it (checkpoint.output_dir) are kept as written. Throws
// Error(kNotFound) if the file is missing, Error(kInvalidArgument) as above,
// and for an `app` that declares one of lorakeep's sections.
RunConfig load_run_config(const std::string& path, const ConfigSchema& app = ConfigSchema());

// The same from text; `name` stands in for the file in messages.
RunConfig parse_run_config(const std::string& text, const std::string& name, const ConfigSchema& app = ConfigSchema());

}  // namespace lorakeep
