// lorakeep/lora_config.h: PEFT's LoraConfig, as adapter_config.json spells
// it. Does not include LibTorch.
//
//   lorakeep::LoraConfig c;
//   c.r = 16; c.lora_alpha = 32; c.target_modules = {"q_proj", "v_proj"};
//   std::string json = lorakeep::format_adapter_config(c);  // what PEFT writes
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lorakeep {

struct LoraConfig {
  // behaviour: PEFT's field names and defaults
  int r = 8;                                 // rank
  double lora_alpha = 8;                     // scaling = lora_alpha / r (or / sqrt(r) with use_rslora)
  double lora_dropout = 0.0;                 // dropout on the LoRA path's input, in training mode
  std::vector<std::string> target_modules;   // module paths, matched exactly or by their last components...
  std::string target_modules_regex;          // ...or one regular expression matched against the full path, or
                                             // PEFT's "all-linear" (resolve_target_modules in adapter.h)
  std::vector<std::string> exclude_modules;  // the same two forms, for modules never to adapt
  std::string exclude_modules_regex;
  bool fan_in_fan_out = false;                            // base weights stored [in, out] (GPT-2's Conv1D)
  bool use_rslora = false;                                // scaling = lora_alpha / sqrt(r)
  std::vector<std::string> modules_to_save;               // modules trained and saved whole (e.g. a classifier head)
  std::vector<int> layers_to_transform;                   // only these layer indices (empty: all)
  std::vector<std::string> layers_pattern;                // the name of the layer list, e.g. "layers" (empty: any)
  std::vector<std::pair<std::string, int>> rank_pattern;  // path pattern -> r, first match wins
  std::vector<std::pair<std::string, double>> alpha_pattern;  // path pattern -> lora_alpha
  std::string init_lora_weights = "true";                     // "true" (A Kaiming-uniform, B zero), "false", "gaussian"
  std::string bias = "none";                                  // only "none" is supported
  bool use_dora = false;                 // DoRA: a magnitude per output row (lora_magnitude_vector)
  bool lora_bias = false;                // lora_B has a bias (lora_B.bias), scaled with the rest; not with DoRA
  std::optional<std::string> task_type;  // "CAUSAL_LM", "SEQ_CLS", ... (informational)
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> revision;
  bool inference_mode = false;  // saved adapters say true, as PEFT's do
};

// Reads adapter_config.json text. Every field of PEFT 0.21's LoraConfig is
// understood or refused by name; another key is tolerated with a warning (a
// newer PEFT's). Throws Error(kCorruption) naming `path` for malformed JSON or
// a field of the wrong type; Error(kNotSupported) naming the field for
// adapters lorakeep cannot apply faithfully: a peft_type other than LORA
// (named in the message), bias other than "none", lora_bias with DoRA or with
// init_lora_weights "gaussian" (PEFT refuses both),
// layer_replication, target_parameters, trainable tokens, QALoRA, aLoRA,
// VeLoRA, MonteCLoRA, BD-LoRA, Arrow, KaSA, ensure_weight_tying, or an
// initialisation lorakeep does not implement (pissa, olora, loftq, corda and
// lora_ga rewrite the base weights; eva, orthogonal and mica do not).
LoraConfig parse_adapter_config(const std::string& text, const std::string& path);

// adapter_config.json as PEFT writes it (sorted keys, two-space indent), with
// the field set of PEFT 0.10 so that PEFT from 0.10 on loads it;
// exclude_modules is written only when set (PEFT >= 0.14 knows it). A field
// PEFT 0.10 does not know is written only when its feature is used.
std::string format_adapter_config(const LoraConfig& config);

// The rank and alpha for the module at `path`: rank_pattern / alpha_pattern
// as PEFT resolves them (the first pattern p, in order, with `path` matching
// (.*\.)?(p)$), else r / lora_alpha.
int rank_for(const LoraConfig& config, const std::string& path);
double alpha_for(const LoraConfig& config, const std::string& path);

// Whether PEFT would adapt the module at `path` (module paths as
// named_modules() gives them): exclude_modules and modules_to_save first,
// then target_modules (regex: full match; list: equal, or ending in
// "." + entry), then layers_to_transform / layers_pattern, which, as in
// PEFT, need the layer list to sit below the root ("model.layers.3.q_proj").
bool is_lora_target(const LoraConfig& config, const std::string& path);

// Whether the module at `path` is one of modules_to_save (equal, or ending in
// "." + entry).
bool is_module_to_save(const LoraConfig& config, const std::string& path);

}  // namespace lorakeep
