#include "lora/injection.h"

#include <algorithm>
#include <cctype>
#include <set>

#include <ATen/ATen.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "lorakeep/lora_linear.h"
#include "base/logging.h"
#include "lora/layer_parts.h"

namespace lorakeep::detail {

std::string list_paths(const std::vector<std::string>& paths, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < paths.size() && i < limit; ++i) out += (i ? ", " : "") + paths[i];
  if (paths.size() > limit) out += ", ... (" + std::to_string(paths.size() - limit) + " more)";
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> model_modules(torch::nn::Module& module) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  std::string inside;  // the LoRA layer whose children are skipped (named_modules lists them right after it)
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    const std::string& path = item.key();
    if (!inside.empty() && path.compare(0, inside.size() + 1, inside + ".") == 0) continue;
    inside = std::dynamic_pointer_cast<LoraLayer>(item.value()) ? path : "";
    out.emplace_back(path, item.value());
  }
  return out;
}

PathLayers lora_layers(torch::nn::Module& module) {
  PathLayers out;
  for (const auto& [path, m] : model_modules(module)) {
    if (auto lora = std::dynamic_pointer_cast<LoraLayer>(m)) out.emplace_back(path, lora);
  }
  return out;
}

PathLayers armed_layers(torch::nn::Module& module, const std::string& name) {
  PathLayers out;
  for (auto& [path, lora] : lora_layers(module)) {
    LoraLayer* holder = lora->adapter(name);
    // Shares the layer's ownership: the named adapter's layer lives in it.
    if (holder && holder->has_adapter()) out.emplace_back(path, std::shared_ptr<LoraLayer>(lora, holder));
  }
  return out;
}

std::vector<PlannedLayer> plan_injection(torch::nn::Module& module, const LoraConfig& given, const std::string& name) {
  check_adapter_name(name);
  const LoraConfig config = resolve_target_modules(module, given);
  if (config.target_modules.empty() && config.target_modules_regex.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "LoraConfig has no target_modules");
  }
  if (name != kDefaultAdapter && !config.modules_to_save.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "adapter '" + name +
                    "': modules_to_save with a named adapter is not supported (PEFT keeps a copy of those modules "
                    "per adapter; lorakeep trains them in place, which would change every adapter's model)");
  }
  std::vector<std::string> paths, problems;
  std::vector<PlannedLayer> targets;
  for (const auto& [path, m] : model_modules(module)) {
    paths.push_back(path);
    if (!is_lora_target(config, path)) continue;
    if (auto lora = std::dynamic_pointer_cast<LoraLayer>(m)) {
      if (const LoraLayer* held = lora->adapter(name); held && held->has_adapter()) {
        problems.push_back("'" + path + "' already has " +
                           (name == kDefaultAdapter ? std::string("an adapter") : "an adapter named '" + name + "'"));
      } else if (lora->any_merged()) {
        problems.push_back("'" + path + "' holds a merged adapter (hint: unmerge first)");
      } else {
        LoraAdapterOptions o;
        o.r = rank_for(config, path);
        o.alpha = alpha_for(config, path);
        o.dropout = config.lora_dropout;
        o.use_rslora = config.use_rslora;
        o.init = config.init_lora_weights;
        o.use_dora = config.use_dora;
        o.lora_bias = config.lora_bias;
        if (const std::string why = lora->refusal(o); !why.empty()) {
          problems.push_back("'" + path + "' (" + lora->kind() + "): " + why);
        } else {
          targets.push_back(PlannedLayer{path, lora, o});
        }
      }
    } else if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Linear (hint: declare it as lorakeep::LoraLinear, a drop-in "
                         "with the same arguments, names and forward: LibTorch models call their layers through "
                         "member variables, so a layer cannot be swapped from outside)");
    } else if (std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(m)) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Embedding (hint: declare it as lorakeep::LoraEmbedding, a "
                         "drop-in with the same arguments, names and forward)");
    } else if (std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Conv2d (hint: declare it as lorakeep::LoraConv2d, a "
                         "drop-in with the same arguments, names and forward)");
    } else if (std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(m) ||
               std::dynamic_pointer_cast<torch::nn::Conv3dImpl>(m)) {
      problems.push_back("'" + path + "' is a " + m->name() +
                         ": lorakeep implements LoRA on 2-D convolutions only (PEFT's Conv1d / Conv3d adapters "
                         "are not supported)");
    } else {
      problems.push_back("'" + path + "' is a " + m->name() +
                         ", which cannot carry a LoRA adapter (lorakeep's LoRA layers: LoraLinear, LoraEmbedding, "
                         "LoraConv2d)");
    }
  }
  if (!problems.empty()) {
    std::string msg = "cannot inject LoRA: " + std::to_string(problems.size()) + " selected module" +
                      (problems.size() == 1 ? "" : "s") + " cannot carry an adapter";
    for (const std::string& p : problems) msg += "\n  " + p;
    throw Error(ErrorCode::kInvalidArgument, msg);
  }
  if (targets.empty()) {
    const std::string wanted = config.target_modules_regex.empty()
                                   ? "target_modules [" + list_paths(config.target_modules) + "]"
                                   : "target_modules '" + config.target_modules_regex + "'";
    throw Error(ErrorCode::kInvalidArgument,
                wanted + " select no module of the model; its modules are: " + list_paths(paths, 60));
  }
  return targets;
}

std::vector<std::string> layout_mismatches(const std::vector<PlannedLayer>& planned, const LoraConfig& config) {
  std::vector<std::string> out;
  for (const PlannedLayer& t : planned) {
    const std::optional<bool> stored = t.layer->fan_in_fan_out();  // PEFT reads it for linear layers only
    if (!stored || *stored == config.fan_in_fan_out) continue;
    out.push_back("'" + t.path + "' stores its weight as [" +
                  (*stored ? "in, out] (GPT-2's Conv1D)" : "out, in] (nn.Linear)") + " but fan_in_fan_out is " +
                  (config.fan_in_fan_out ? "true" : "false"));
  }
  return out;
}

NamedTensors planned_factors(const std::vector<PlannedLayer>& layers) {
  NamedTensors out;
  for (const PlannedLayer& t : layers) {
    // In the dtype add_adapter makes them.
    const auto meta = at::TensorOptions().dtype(compute_dtype(t.layer->base_weight())).device(at::kMeta);
    for (const auto& [name, shape] : t.layer->lora_shapes(t.options)) {
      out.emplace_back(t.path + "." + name, at::empty(shape, meta));
    }
  }
  return out;
}

NamedTensors live_factors(const PathLayers& layers) {
  NamedTensors out;
  for (const auto& [path, layer] : layers) {
    for (const auto& [name, tensor] : layer->lora_tensors_at(layer->rank()))
      out.emplace_back(path + "." + name, tensor);
  }
  return out;
}

std::vector<std::string> arm(torch::nn::Module& module, const LoraConfig& config,
                             const std::vector<PlannedLayer>& layers, const std::string& name) {
  for (const std::string& m : layout_mismatches(layers, config)) {
    // PEFT corrects the flag to the layer's layout with a warning; so does a load.
    log_warn("{}: following the layer", m);
  }
  const bool first = lorakeep::adapter_names(module).empty();
  const auto resolved = std::make_shared<const LoraConfig>(resolve_target_modules(module, config));
  for (const PlannedLayer& t : layers) {
    t.layer->add_named_adapter(name, t.options);
    t.layer->adapter(name)->set_adapter_config(resolved);
  }
  // The tensors' names as named_parameters() spells them.
  const std::string infix = name == kDefaultAdapter ? "." : ".lora_adapters." + name + ".";
  std::vector<std::string> trainable;
  for (const PlannedLayer& t : layers) {
    for (const auto& [tensor, value] : t.layer->adapter(name)->lora_tensors())
      trainable.push_back(t.path + infix + tensor);
  }
  if (!first) {
    for (const PlannedLayer& t : layers) {
      for (auto& [tensor, value] : t.layer->adapter(name)->lora_tensors()) value.set_requires_grad(false);
    }
    log_info("LoRA adapter '{}' r={} alpha={} on {} layers, inactive (set_adapter activates it)", name, config.r,
             config.lora_alpha, layers.size());
    return trainable;
  }
  // The first adapter: freeze everything, then open the adapter, the
  // modules trained whole, and make it active.
  for (auto& p : module.parameters(/*recurse=*/true)) p.set_requires_grad(false);
  for (const PlannedLayer& t : layers) {
    for (auto& [tensor, value] : t.layer->adapter(name)->lora_tensors()) value.set_requires_grad(true);
  }
  std::set<std::string> opened;
  for (const auto& [path, m] : model_modules(module)) {
    if (!is_module_to_save(config, path)) continue;
    for (const auto& p : m->named_parameters(/*recurse=*/true)) {
      p.value().set_requires_grad(true);
      if (opened.insert(path + "." + p.key()).second) trainable.push_back(path + "." + p.key());
    }
  }
  for (auto& [path, lora] : lora_layers(module)) lora->set_active_adapter(name);
  log_info("LoRA r={} alpha={} on {} layers; {} trainable tensors", config.r, config.lora_alpha, layers.size(),
           trainable.size());
  return trainable;
}

LoraConfig armed_config(torch::nn::Module& module, const std::string& name) {
  for (const auto& [path, layer] : armed_layers(module, name)) {
    if (const auto& config = layer->adapter_config()) return *config;
  }
  throw Error(ErrorCode::kInvalidArgument,
              "the model's adapter '" + name +
                  "' has no config (its layers were armed by add_adapter, not by inject_lora or a load; hint: "
                  "arm it with inject_lora(module, config, \"" +
                  name + "\"))");
}

}  // namespace lorakeep::detail

namespace lorakeep {

std::vector<std::string> adapter_names(torch::nn::Module& module) {
  std::vector<std::string> out;
  for (auto& [path, lora] : detail::lora_layers(module)) {
    for (std::string& name : lora->adapter_names()) {
      if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(std::move(name));
    }
  }
  const auto d = std::find(out.begin(), out.end(), kDefaultAdapter);
  if (d != out.end()) std::rotate(out.begin(), d, d + 1);
  return out;
}

LoraConfig resolve_target_modules(torch::nn::Module& module, const LoraConfig& config) {
  std::string shorthand = config.target_modules_regex;
  for (char& ch : shorthand) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (shorthand != "all-linear") return config;
  std::vector<std::string> left_out;  // the output layer PEFT leaves out, by convention
  const std::string task = config.task_type.value_or("");
  if (task == "CAUSAL_LM" || task == "SEQ_2_SEQ_LM") left_out = {"lm_head"};
  if (task == "SEQ_CLS") left_out = {"classifier", "score"};
  LoraConfig resolved = config;
  resolved.target_modules_regex.clear();
  resolved.target_modules.clear();
  LoraConfig one = resolved;  // asks is_lora_target whether a path is excluded or trained whole
  for (const auto& [path, m] : detail::model_modules(module)) {
    const bool linear = std::dynamic_pointer_cast<LoraLinearImpl>(m) ||
                        std::dynamic_pointer_cast<torch::nn::LinearImpl>(m);
    if (!linear || std::find(left_out.begin(), left_out.end(), path) != left_out.end()) continue;
    one.target_modules.assign(1, path);
    if (is_lora_target(one, path)) resolved.target_modules.push_back(path);  // not excluded, not modules_to_save
  }
  if (resolved.target_modules.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "target_modules 'all-linear' selects no linear layer of the model");
  }
  return resolved;
}

}  // namespace lorakeep
