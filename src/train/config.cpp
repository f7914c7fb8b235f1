#include "lorakeep/config.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include <yaml-cpp/yaml.h>

#include "lorakeep/error.h"
#include "base/text.h"
#include "io/read_file.h"

namespace lorakeep {
namespace {

std::string where(const std::string& file, const YAML::Mark& mark) {
  if (mark.is_null()) return file + ": ";
  return file + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": ";
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// One mapping of the file: values are read by key, each key once, and
// whatever is left at the end is an unknown key.
class Section {
 public:
  Section(const YAML::Node& node, std::string name, const std::string& file)
      : node_(node), name_(std::move(name)), file_(file) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(node_, "must be a mapping of keys to values");
  }

  [[noreturn]] void fail(const YAML::Node& at, const std::string& why) const {
    throw Error(ErrorCode::kInvalidArgument, where(file_, at.Mark()) + "'" + name_ + "' " + why);
  }
  [[noreturn]] void fail_key(const YAML::Node& at, const std::string& key, const std::string& why) const {
    throw Error(ErrorCode::kInvalidArgument, where(file_, at.Mark()) + "'" + path(key) + "' " + why);
  }

  std::string path(const std::string& key) const { return name_.empty() ? key : name_ + "." + key; }

  // The value at `key`, or an undefined node if absent. Marks it read.
  YAML::Node take(const std::string& key) {
    known_.insert(key);
    if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    return at(key);
  }

  // The value at `key` without inserting it (non-const operator[] would).
  YAML::Node at(const std::string& key) const {
    const YAML::Node& map = node_;
    return map[key];
  }

  template <class T>
  bool scalar(const std::string& key, T* out, const char* what) {
    const YAML::Node v = take(key);
    if (!v || v.IsNull()) return false;
    if (!v.IsScalar()) fail_key(v, key, std::string("must be ") + what);
    try {
      *out = v.as<T>();
    } catch (const YAML::Exception&) {
      fail_key(v, key, std::string("must be ") + what + ", not '" + v.Scalar() + "'");
    }
    return true;
  }

  void integer(const std::string& key, int* out, long long lo, long long hi = std::numeric_limits<int>::max()) {
    long long v = *out;
    if (scalar(key, &v, "an integer") && (v < lo || v > hi)) {
      fail_key(at(key), key,
               "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], not " + std::to_string(v));
    }
    *out = static_cast<int>(v);
  }
  void integer64(const std::string& key, std::int64_t* out, long long lo) {
    long long v = *out;
    if (scalar(key, &v, "an integer") && v < lo) {
      fail_key(at(key), key, "must be at least " + std::to_string(lo) + ", not " + std::to_string(v));
    }
    *out = v;
  }
  void unsigned64(const std::string& key, std::uint64_t* out) {
    unsigned long long v = *out;
    if (scalar(key, &v, "a non-negative integer")) *out = v;
  }
  void real(const std::string& key, double* out, double lo, double hi) {
    double v = *out;
    if (scalar(key, &v, "a number") && (!std::isfinite(v) || v < lo || v > hi)) {
      fail_key(at(key), key, "must be in [" + format(lo) + ", " + format(hi) + "], not " + at(key).Scalar());
    }
    *out = v;
  }
  void boolean(const std::string& key, bool* out) { scalar(key, out, "true or false"); }
  void text(const std::string& key, std::string* out) { scalar(key, out, "a string"); }
  void strings(const std::string& key, std::vector<std::string>* out) {
    const YAML::Node v = take(key);
    if (!v || v.IsNull()) return;
    if (!v.IsSequence()) fail_key(v, key, "must be a list of strings");
    out->clear();
    for (const YAML::Node& item : v) {
      if (!item.IsScalar()) fail_key(item, key, "must be a list of strings");
      out->push_back(item.Scalar());
    }
  }
  void bytes(const std::string& key, std::uint64_t* out) {
    const YAML::Node v = take(key);
    if (!v || v.IsNull()) return;
    if (!v.IsScalar() || !detail::parse_byte_size(v.Scalar(), out)) {
      fail_key(v, key,
               "must be a byte size such as 67108864, 64MiB or 1GB, not '" + (v.IsScalar() ? v.Scalar() : "") + "'");
    }
  }
  template <class E>
  void choice(const std::string& key, E* out, const std::map<std::string, E>& values) {
    std::string s;
    if (!scalar(key, &s, "a string")) return;
    auto it = values.find(s);
    if (it == values.end()) {
      std::string options;
      for (const auto& [name, value] : values) options += (options.empty() ? "" : ", ") + name;
      fail_key(at(key), key, "must be one of " + options + ", not '" + s + "'");
    }
    *out = it->second;
  }

  const YAML::Node& node() const { return node_; }

  // Every key not read is a mistake; suggest the nearest known one.
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string key = kv.first.Scalar();
      if (known_.count(key)) continue;
      std::string hint;
      std::size_t best = 3;
      for (const std::string& k : known_) {
        const std::size_t d = edit_distance(key, k);
        if (d < best) best = d, hint = k;
      }
      throw Error(ErrorCode::kInvalidArgument, where(file_, kv.first.Mark()) + "unknown key '" + path(key) + "'" +
                                                   (hint.empty() ? "" : " (hint: did you mean '" + path(hint) + "'?)"));
    }
  }

 private:
  static std::string format(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
  }

  YAML::Node node_;
  std::string name_;
  const std::string& file_;
  std::set<std::string> known_;
};

void read_checkpoint(Section s, CheckpointOptions* c) {
  s.text("output_dir", &c->output_dir);
  s.choice("save_strategy", &c->save_strategy,
           std::map<std::string, SaveStrategy>{{"no", SaveStrategy::kNo},
                                               {"steps", SaveStrategy::kSteps},
                                               {"epoch", SaveStrategy::kEpoch},
                                               {"best", SaveStrategy::kBest}});
  s.integer64("save_steps", &c->save_steps, 1);
  s.choice("eval_strategy", &c->eval_strategy,
           std::map<std::string, EvalStrategy>{
               {"no", EvalStrategy::kNo}, {"steps", EvalStrategy::kSteps}, {"epoch", EvalStrategy::kEpoch}});
  s.integer64("eval_steps", &c->eval_steps, 0);
  s.integer64("logging_steps", &c->logging_steps, 0);
  s.integer("save_total_limit", &c->save_total_limit, 0);
  s.integer("keep_best", &c->keep_best, 0);
  s.text("metric_for_best_model", &c->metric_for_best_model);
  bool greater = false;
  if (s.scalar("greater_is_better", &greater, "true or false")) c->greater_is_better = greater;
  s.boolean("load_best_model_at_end", &c->load_best_model_at_end);
  s.boolean("fallback_to_next_best", &c->fallback_to_next_best);
  s.boolean("save_optimizer", &c->save_optimizer);
  s.boolean("save_rng", &c->save_rng);
  s.bytes("chunk_bytes", &c->chunk_bytes);
  s.finish();
  if (c->output_dir.empty()) s.fail(s.node(), "needs an output_dir");
}

void read_lora(Section s, LoraConfig* c) {
  s.integer("r", &c->r, 1, 1 << 20);
  s.real("lora_alpha", &c->lora_alpha, 0, 1e9);
  s.real("lora_dropout", &c->lora_dropout, 0, 0.999);
  const YAML::Node targets = s.take("target_modules");
  if (targets && targets.IsScalar()) {
    c->target_modules_regex = targets.Scalar();
  } else if (targets && targets.IsSequence()) {
    for (const YAML::Node& t : targets) {
      if (!t.IsScalar()) s.fail_key(t, "target_modules", "must be a list of names or one regular expression");
      c->target_modules.push_back(t.Scalar());
    }
  } else if (targets && !targets.IsNull()) {
    s.fail_key(targets, "target_modules", "must be a list of names or one regular expression");
  }
  s.strings("exclude_modules", &c->exclude_modules);
  s.strings("modules_to_save", &c->modules_to_save);
  s.strings("layers_pattern", &c->layers_pattern);
  const YAML::Node layers = s.take("layers_to_transform");
  if (layers && !layers.IsNull()) {
    if (!layers.IsSequence()) s.fail_key(layers, "layers_to_transform", "must be a list of layer indices");
    for (const YAML::Node& l : layers) {
      try {
        c->layers_to_transform.push_back(l.as<int>());
      } catch (const YAML::Exception&) {
        s.fail_key(l, "layers_to_transform", "must be a list of layer indices");
      }
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    const YAML::Node p = s.take(key);
    if (!p || p.IsNull()) continue;
    if (!p.IsMap()) s.fail_key(p, key, "must be a mapping of module patterns to numbers");
    for (const auto& kv : p) {
      try {
        if (std::string(key) == "rank_pattern") {
          const int r = kv.second.as<int>();
          if (r < 1) throw YAML::Exception(kv.second.Mark(), "");
          c->rank_pattern.emplace_back(kv.first.Scalar(), r);
        } else {
          c->alpha_pattern.emplace_back(kv.first.Scalar(), kv.second.as<double>());
        }
      } catch (const YAML::Exception&) {
        s.fail_key(kv.second, std::string(key) + "." + kv.first.Scalar(),
                   std::string("must be a ") + (std::string(key) == "rank_pattern" ? "positive integer" : "number"));
      }
    }
  }
  s.boolean("use_rslora", &c->use_rslora);
  s.boolean("fan_in_fan_out", &c->fan_in_fan_out);
  std::string init;
  if (s.scalar("init_lora_weights", &init, "true, false or gaussian")) {
    if (init == "true" || init == "false" || init == "gaussian") c->init_lora_weights = init;
    else
      s.fail_key(s.at("init_lora_weights"), "init_lora_weights", "must be true, false or gaussian, not '" + init + "'");
  }
  std::string task;
  if (s.scalar("task_type", &task, "a string")) c->task_type = task;
  std::string base;
  if (s.scalar("base_model_name_or_path", &base, "a string")) c->base_model_name_or_path = base;
  s.finish();
  if (c->target_modules.empty() && c->target_modules_regex.empty()) s.fail(s.node(), "needs target_modules");
}

void read_transfer(Section s, TransferSettings* t) {
  s.bytes("chunk_bytes", &t->chunk_bytes);
  s.boolean("verify_checksums", &t->verify_checksums);
  s.finish();
  if (t->chunk_bytes < 64) s.fail(s.node(), "chunk_bytes must be at least 64 bytes");
}

void read_training(Section s, TrainingSettings* t) {
  s.unsigned64("seed", &t->seed);
  s.integer("batch_size", &t->batch_size, 1, 1 << 16);
  s.integer("base_steps", &t->base_steps, 0);
  s.real("base_learning_rate", &t->base_learning_rate, 0, 10);
  s.integer("max_steps", &t->max_steps, 1);
  s.real("learning_rate", &t->learning_rate, 0, 10);
  s.real("weight_decay", &t->weight_decay, 0, 10);
  s.real("max_grad_norm", &t->max_grad_norm, 0, 1e6);
  s.integer("eval_batches", &t->eval_batches, 1, 1 << 16);
  s.integer("early_stopping_patience", &t->early_stopping_patience, 0);
  s.real("early_stopping_threshold", &t->early_stopping_threshold, 0, 1e9);
  s.integer("sample_chars", &t->sample_chars, 0, 1 << 20);
  s.real("sample_temperature", &t->sample_temperature, 0.01, 100);
  s.finish();
}

void read_model(Section s, ModelSettings* m) {
  s.integer("n_layer", &m->n_layer, 1, 64);
  s.integer("n_head", &m->n_head, 1, 64);
  s.integer("n_embd", &m->n_embd, 1, 1 << 14);
  s.integer("block_size", &m->block_size, 2, 1 << 14);
  s.real("dropout", &m->dropout, 0, 0.999);
  s.finish();
  if (m->n_embd % m->n_head != 0) {
    s.fail_key(s.at("n_embd"), "n_embd", "must be a multiple of n_head (" + std::to_string(m->n_head) + ")");
  }
}

void read_data(Section s, DataSettings* d) {
  s.strings("base_texts", &d->base_texts);
  s.strings("finetune_texts", &d->finetune_texts);
  s.real("validation_fraction", &d->validation_fraction, 0.01, 0.9);
  s.finish();
}

}  // namespace

RunConfig parse_run_config(const std::string& text, const std::string& name) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument, where(name, e.mark) + "not valid YAML: " + e.msg);
  }
  RunConfig run;
  run.path = name;
  try {
    Section top(root, "", name);
    if (!root.IsMap())
      top.fail(root, "must be a mapping with sections checkpoint, lora, transfer, training, model, data");
    using Reader = std::function<void(Section)>;
    const std::vector<std::pair<std::string, Reader>> sections = {
        {"checkpoint", [&](Section s) { read_checkpoint(std::move(s), &run.checkpoint); }},
        {"lora", [&](Section s) { read_lora(std::move(s), &run.lora); }},
        {"transfer", [&](Section s) { read_transfer(std::move(s), &run.transfer); }},
        {"training", [&](Section s) { read_training(std::move(s), &run.training); }},
        {"model", [&](Section s) { read_model(std::move(s), &run.model); }},
        {"data", [&](Section s) { read_data(std::move(s), &run.data); }},
    };
    for (const auto& [key, read] : sections) {
      const YAML::Node node = top.take(key);
      if (!node || node.IsNull()) {
        if (key == "checkpoint" || key == "lora") top.fail(root, "needs a '" + key + "' section");
        continue;
      }
      read(Section(node, key, name));
    }
    top.finish();
    run.checkpoint.chunk_bytes = run.transfer.chunk_bytes;
    run.checkpoint.verify_checksums = run.transfer.verify_checksums;
    validate(run.checkpoint);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kInvalidArgument && std::string(e.what()).rfind(name, 0) != 0) {
      throw Error(ErrorCode::kInvalidArgument, name + ": " + e.what());
    }
    throw;
  } catch (const YAML::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument, where(name, e.mark) + e.msg);
  }
  return run;
}

RunConfig load_run_config(const std::string& path) {
  return parse_run_config(detail::read_small_file(path, 16ull << 20), path);
}

}  // namespace lorakeep
