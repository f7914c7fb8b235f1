// lorakeep/adapter.h: a LoRA adapter on a LibTorch model, as PEFT does it:
// arm the layers a LoraConfig selects, save PEFT's adapter directory, load
// one (CPU-first, validated before anything changes), merge it into the base
// weights in memory. Saves and loads check that the config and the armed
// layers agree: an adapter file never says what the model did not compute.
//
//   lorakeep::LoraConfig config;
//   config.target_modules = {"q_proj", "v_proj"};
//   lorakeep::inject_lora(*model, config);                     // train...
//   lorakeep::save_adapter("out/adapter", *model, config);     // PEFT loads this directory
//   lorakeep::load_adapter("out/adapter", *other_model);       // and so does lorakeep
//
// Several adapters in one model, as PEFT's adapter_name: each call takes an
// adapter name ("default" when not given). The layers compute the active
// adapter (set_adapter); a named adapter is saved in PEFT's layout,
// "<dir>/<name>/", and loaded from it.
//
//   lorakeep::inject_lora(*model, other_config, "task_b");     // armed, inactive
//   lorakeep::set_adapter(*model, "task_b");                   // computed and trained now
//   lorakeep::save_adapter("out/adapter", *model, other_config, "task_b");  // out/adapter/task_b/
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "lorakeep/lora_config.h"
#include "lorakeep/lora_linear.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/transfer.h"

namespace lorakeep {

// Arms, anywhere in `module`'s tree, every LoRA layer (LoraLinear,
// LoraEmbedding, LoraConv2d) that PEFT's rules select (is_lora_target, after
// resolve_target_modules), with rank and alpha from rank_pattern / alpha_pattern;
// freezes every other parameter; makes the parameters of modules_to_save
// trainable. Returns the names of the trainable parameters: the adapter
// factors and the modules_to_save parameters, as named_parameters() spells
// them. Borrows `module` for the call only.
// Throws Error(kInvalidArgument) when the targets select nothing (the message
// lists the module paths there are), when a selected module is a plain
// torch::nn::Linear or Embedding (with a hint to declare it as lorakeep's
// drop-in) or cannot carry an adapter, when a selected layer already has an
// adapter or refuses the config (LoraLayer::refusal), or when a
// selected layer's weight layout contradicts config.fan_in_fan_out (PEFT
// would correct the flag; an adapter saved with the wrong one would be merged
// untransposed). Nothing is armed then.
// With `adapter_name` (PEFT's), the layers get an adapter of that name
// beside those they carry (LoraLayer::add_named_adapter). The model's first
// adapter becomes its active one; a later one is armed frozen and inactive,
// as PEFT's add_adapter, until set_adapter (the names returned are then
// those it will train), and the other parameters keep their requires_grad.
// Also throws Error(kInvalidArgument) for an invalid name, when a selected
// layer has that adapter already or holds a merged one, and for
// modules_to_save with a named adapter (PEFT keeps a copy of those modules
// per adapter; lorakeep does not).
std::vector<std::string> inject_lora(torch::nn::Module& module, const LoraConfig& config,
                                     const std::string& adapter_name = kDefaultAdapter);

// Makes `adapter_name` the adapter every LoRA layer computes (a layer
// without it computes its base), and, as PEFT's set_adapter, the only one
// that trains: its tensors require grad, the other adapters' do not.
// Throws Error(kInvalidArgument) when no layer carries it (the message lists
// those that do) or a layer holds a merged adapter (unmerge first); nothing
// changes then.
void set_adapter(torch::nn::Module& module, const std::string& adapter_name);

// The adapters the model carries: "default" first when armed, then the
// others in the order their layers come.
std::vector<std::string> adapter_names(torch::nn::Module& module);

// `config` with PEFT's target_modules shorthand "all-linear" (any case)
// resolved against `module` as PEFT resolves it, and as the saves write it:
// the paths of every linear layer (LoraLinear; a torch::nn::Linear is listed
// too, and inject_lora refuses it with its hint) but those inside a LoRA
// layer, those of modules_to_save and exclude_modules, and the output layer
// PEFT leaves out: a top-level "lm_head" for task_type CAUSAL_LM or
// SEQ_2_SEQ_LM, a top-level "classifier" or "score" for SEQ_CLS. Any other
// config comes back unchanged. Throws Error(kInvalidArgument) when the
// shorthand selects nothing.
LoraConfig resolve_target_modules(torch::nn::Module& module, const LoraConfig& config);

// The tensors an adapter file of `config` holds, under PEFT's keys (the two
// factors of every armed layer, the parameters of modules_to_save). Views of
// the live tensors, not copies. First checks that `config` describes the
// armed layers, since it is what the file will say they compute: the armed
// set is the set its targets select; each layer's rank (r, rank_pattern),
// alpha (lora_alpha, alpha_pattern), use_rslora, lora_dropout and
// fan_in_fan_out are the config's; every modules_to_save entry names a
// module. Throws Error(kInvalidArgument) listing every disagreement (layer,
// field, both values), or when nothing is armed. A named adapter's tensors
// have the same keys (PEFT writes them without the name).
NamedTensors adapter_tensors(torch::nn::Module& module, const LoraConfig& config,
                             const std::string& adapter_name = kDefaultAdapter);

// The identity of an adapter's values: an XXH3-64 over the name, dtype, shape
// and bytes of every tensor adapter_tensors gives, in that order. Equal on
// replicas that hold the same adapter; what a coordinated save compares
// across ranks. Tensors on a device are copied to the host one at a time.
std::uint64_t adapter_digest(torch::nn::Module& module, const LoraConfig& config,
                             const std::string& adapter_name = kDefaultAdapter);

struct AdapterSaveReport {
  SaveReport weights;       // adapter_model.safetensors
  std::string config_path;  // adapter_config.json
};

// Writes PEFT's adapter directory: adapter_model.safetensors (metadata
// {"format": "pt"}) and adapter_config.json (inference_mode true). A new
// directory is assembled under a temporary name and renamed into place; in an
// existing one each file is replaced atomically, weights first. A named
// adapter goes to "<dir>/<name>/", as PEFT's save_pretrained writes every
// adapter but "default".
// Throws as adapter_tensors (nothing written), Error(kIOError).
AdapterSaveReport save_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config,
                               const std::string& adapter_name = kDefaultAdapter);

struct AdapterLoadOptions {
  // The adapter the file fills (PEFT's adapter_name). A named one is read
  // from "<dir>/<name>/" when that holds an adapter_config.json (where
  // save_adapter writes it, as PEFT's save_pretrained), else from the
  // directory given.
  std::string adapter_name = kDefaultAdapter;
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // host staging per piece; bounds the extra memory (see transfer.h)
};

// Loads a PEFT adapter directory (adapter_config.json plus
// adapter_model.safetensors or adapter_model.bin) into `module` through the
// transfer engine: CPU-first, and validated in full before anything changes.
// If no layer of `module` carries the adapter (options.adapter_name) yet,
// the config's targets are armed with it, as PEFT's from_pretrained and
// load_adapter do (inject_lora's rules: the model's first adapter active,
// every other parameter frozen; a later one inactive); what arming
// would create is worked out first and the adapter checked against it, and
// arming leaves the global random generators where they were. Validation, in
// order: the config is a LoRA config lorakeep supports; every key is a PEFT
// adapter key; A / B come in pairs; every adapted layer exists and is (or
// would be) armed, none of them merged (Error(kInvalidArgument): unmerge
// first); the file's rank of an armed layer is at most the layer's (else
// Error(kIncompatible) naming both, with a hint); then names, shapes and
// dtypes (load_into, strict). Loaded into armed layers, it is a hot swap, as
// PEFT's hotswap_adapter: in place, no tensor made on the device; the file's
// scaling (lora_alpha / alpha_pattern, use_rslora), rank and lora_dropout
// replace the layers' own, so that the model computes what the file's
// adapter computes; an adapter of a smaller rank fills the first rows /
// columns of layers armed larger and the rest is zeroed (a grouped
// convolution is not padded); an armed layer the file leaves out has its
// LoRA tensors zeroed, so that it computes its base, as PEFT's hot swap
// does (refused for a DoRA layer, whose zeroed magnitude would leave it only
// its bias).
// Throws as parse_adapter_config and load_into; Error(kNotFound) if a file is
// missing; on any failure before the first write the model is unchanged (its
// parameters, their names and requires_grad, its buffers). An I/O error after
// writing began throws as load_into says (the model partly written).
TransferReport load_adapter(const std::string& dir, torch::nn::Module& module, const AdapterLoadOptions& options = {});

// The config saved beside an adapter. Throws as parse_adapter_config.
LoraConfig read_adapter_config(const std::string& dir);

// Merges the active adapter of every layer that carries it (unmerges every
// merged one); returns how many layers.
int merge_lora(torch::nn::Module& module, bool safe = false);
int unmerge_lora(torch::nn::Module& module);

}  // namespace lorakeep
