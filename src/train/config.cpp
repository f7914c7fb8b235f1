// lorakeep's sections of the run configuration (checkpoint, lora, transfer),
// declared on the same schema mechanism as an application's.
#include "lorakeep/config.h"

#include <string>

#include "lorakeep/error.h"
#include "io/read_file.h"
#include "train/config_reader.h"

namespace lorakeep {
namespace {

using detail::SchemaAccess;
using detail::SectionReader;

void declare_checkpoint(ConfigSection& s, CheckpointOptions* c, CallbackOptions* cb) {
  s.required()
      .text("output_dir", &c->output_dir)
      .choice("save_strategy", &cb->save_strategy,
              {{"no", SaveStrategy::kNo},
               {"steps", SaveStrategy::kSteps},
               {"epoch", SaveStrategy::kEpoch},
               {"best", SaveStrategy::kBest}})
      .integer("save_steps", &cb->save_steps, 1)
      .choice("eval_strategy", &cb->eval_strategy,
              {{"no", EvalStrategy::kNo}, {"steps", EvalStrategy::kSteps}, {"epoch", EvalStrategy::kEpoch}})
      .integer("eval_steps", &cb->eval_steps, 0)
      .integer("logging_steps", &cb->logging_steps, 0)
      .integer("save_total_limit", &c->save_total_limit, 0)
      .integer("keep_best", &c->keep_best, 0)
      .text("metric_for_best_model", &c->metric_for_best_model)
      .boolean("greater_is_better", &c->greater_is_better)
      .boolean("load_best_model_at_end", &cb->load_best_model_at_end)
      .boolean("fallback_to_next_best", &c->fallback_to_next_best)
      .boolean("save_optimizer", &c->save_optimizer)
      .boolean("save_rng", &c->save_rng)
      .boolean("save_async", &cb->save_async)
      .text("resume_from_checkpoint", &c->resume_from_checkpoint)
      .boolean("save_on_each_node", &c->save_on_each_node)
      .check([c](const SectionCheck& check) {
        if (c->output_dir.empty()) check.fail("needs an output_dir");
      });
}

void declare_lora(ConfigSection& s, LoraConfig* c) {
  s.required()
      .integer("r", &c->r, 1, 1 << 20)
      .real("lora_alpha", &c->lora_alpha, 0, 1e9)
      .real("lora_dropout", &c->lora_dropout, 0, 0.999);
  // A list of names or one regular expression.
  SchemaAccess::custom(s, "target_modules", [c](SectionReader& r) {
    const YAML::Node targets = r.take("target_modules");
    if (targets && targets.IsScalar()) {
      c->target_modules_regex = targets.Scalar();
    } else if (targets && targets.IsSequence()) {
      for (const YAML::Node& t : targets) {
        if (!t.IsScalar()) r.fail_key(t, "target_modules", "must be a list of names or one regular expression");
        c->target_modules.push_back(t.Scalar());
      }
    } else if (targets && !targets.IsNull()) {
      r.fail_key(targets, "target_modules", "must be a list of names or one regular expression");
    }
  });
  s.strings("exclude_modules", &c->exclude_modules)
      .strings("modules_to_save", &c->modules_to_save)
      .strings("layers_pattern", &c->layers_pattern);
  SchemaAccess::custom(s, "layers_to_transform", [c](SectionReader& r) {
    const YAML::Node layers = r.take("layers_to_transform");
    if (!layers || layers.IsNull()) return;
    if (!layers.IsSequence()) r.fail_key(layers, "layers_to_transform", "must be a list of layer indices");
    for (const YAML::Node& l : layers) {
      try {
        c->layers_to_transform.push_back(l.as<int>());
      } catch (const YAML::Exception&) {
        r.fail_key(l, "layers_to_transform", "must be a list of layer indices");
      }
    }
  });
  // Module pattern -> number, in the file's order (the first match wins).
  for (const std::string key : {"rank_pattern", "alpha_pattern"}) {
    SchemaAccess::custom(s, key, [c, key](SectionReader& r) {
      const YAML::Node p = r.take(key);
      if (!p || p.IsNull()) return;
      if (!p.IsMap()) r.fail_key(p, key, "must be a mapping of module patterns to numbers");
      for (const auto& kv : p) {
        try {
          if (key == "rank_pattern") {
            const int rank = kv.second.as<int>();
            if (rank < 1) throw YAML::Exception(kv.second.Mark(), "");
            c->rank_pattern.emplace_back(kv.first.Scalar(), rank);
          } else {
            c->alpha_pattern.emplace_back(kv.first.Scalar(), kv.second.as<double>());
          }
        } catch (const YAML::Exception&) {
          r.fail_key(kv.second, key + "." + kv.first.Scalar(),
                     std::string("must be a ") + (key == "rank_pattern" ? "positive integer" : "number"));
        }
      }
    });
  }
  s.boolean("use_rslora", &c->use_rslora)
      .boolean("use_dora", &c->use_dora)
      .boolean("lora_bias", &c->lora_bias)
      .boolean("fan_in_fan_out", &c->fan_in_fan_out)
      .choice("init_lora_weights", &c->init_lora_weights, {"true", "false", "gaussian"})
      .text("task_type", &c->task_type)
      .text("base_model_name_or_path", &c->base_model_name_or_path)
      .check([c](const SectionCheck& check) {
        if (c->target_modules.empty() && c->target_modules_regex.empty()) check.fail("needs target_modules");
      });
}

// How reloads move data: read by load_best_into and resume.
void declare_transfer(ConfigSection& s, CheckpointOptions* c) {
  s.bytes("chunk_bytes", &c->chunk_bytes, 64).boolean("verify_checksums", &c->verify_checksums);
}

}  // namespace

RunConfig parse_run_config(const std::string& text, const std::string& name, const ConfigSchema& app) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument, detail::where(name, e.mark) + "not valid YAML: " + e.msg);
  }
  RunConfig run;
  run.path = name;
  try {
    ConfigSchema own;
    declare_checkpoint(own.section("checkpoint"), &run.checkpoint, &run.callbacks);
    declare_lora(own.section("lora"), &run.lora);
    declare_transfer(own.section("transfer"), &run.checkpoint);
    detail::read_sections(root, name, own, app);
    validate(run.checkpoint);
    validate(run.callbacks, run.checkpoint);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kInvalidArgument && std::string(e.what()).rfind(name, 0) != 0) {
      throw Error(ErrorCode::kInvalidArgument, name + ": " + e.what());
    }
    throw;
  } catch (const YAML::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument, detail::where(name, e.mark) + e.msg);
  }
  return run;
}

RunConfig load_run_config(const std::string& path, const ConfigSchema& app) {
  return parse_run_config(detail::read_small_file(path, 16ull << 20), path, app);
}

}  // namespace lorakeep
