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

namespace lorakeep::detail {

std::string list_paths(const std::vector<std::string>& paths, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < paths.size() && i < limit; ++i) out += (i ? ", " : "") + paths[i];
  if (paths.size() > limit) out += ", ... (" + std::to_string(paths.size() - limit) + " more)";
  return out;
}

PathLayers armed_layers(torch::nn::Module& module) {
  PathLayers out;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    auto lora = std::dynamic_pointer_cast<LoraLayer>(item.value());
    if (lora && lora->has_adapter()) out.emplace_back(item.key(), lora);
  }
  return out;
}

std::vector<PlannedLayer> plan_injection(torch::nn::Module& module, const LoraConfig& given) {
  const LoraConfig config = resolve_target_modules(module, given);
  if (config.target_modules.empty() && config.target_modules_regex.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "LoraConfig has no target_modules");
  }
  std::vector<std::string> paths, problems;
  std::vector<PlannedLayer> targets;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    const std::string& path = item.key();
    paths.push_back(path);
    if (!is_lora_target(config, path)) continue;
    if (auto lora = std::dynamic_pointer_cast<LoraLayer>(item.value())) {
      if (lora->has_adapter()) {
        problems.push_back("'" + path + "' already has an adapter");
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
    } else if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value())) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Linear (hint: declare it as lorakeep::LoraLinear, a drop-in "
                         "with the same arguments, names and forward: LibTorch models call their layers through "
                         "member variables, so a layer cannot be swapped from outside)");
    } else if (std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(item.value())) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Embedding (hint: declare it as lorakeep::LoraEmbedding, a "
                         "drop-in with the same arguments, names and forward)");
    } else if (std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(item.value())) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Conv2d (hint: declare it as lorakeep::LoraConv2d, a "
                         "drop-in with the same arguments, names and forward)");
    } else if (std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(item.value()) ||
               std::dynamic_pointer_cast<torch::nn::Conv3dImpl>(item.value())) {
      problems.push_back("'" + path + "' is a " + item.value()->name() +
                         ": lorakeep implements LoRA on 2-D convolutions only (PEFT's Conv1d / Conv3d adapters "
                         "are not supported)");
    } else {
      problems.push_back("'" + path + "' is a " + item.value()->name() +
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
    // PEFT reads fan_in_fan_out for linear layers only.
    if (!dynamic_cast<const LoraLinearImpl*>(t.layer.get()) || t.layer->fan_in_fan_out() == config.fan_in_fan_out) {
      continue;
    }
    out.push_back("'" + t.path + "' stores its weight as [" +
                  (t.layer->fan_in_fan_out() ? "in, out] (GPT-2's Conv1D)" : "out, in] (nn.Linear)") +
                  " but fan_in_fan_out is " + (config.fan_in_fan_out ? "true" : "false"));
  }
  return out;
}

NamedTensors planned_factors(const std::vector<PlannedLayer>& layers) {
  NamedTensors out;
  for (const PlannedLayer& t : layers) {
    const at::Tensor& w = t.layer->base_weight();
    const auto dtype = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // as add_adapter makes them
    const auto meta = at::TensorOptions().dtype(dtype).device(at::kMeta);
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
                             const std::vector<PlannedLayer>& layers) {
  for (const std::string& m : layout_mismatches(layers, config)) {
    // PEFT corrects the flag to the layer's layout with a warning; so does a load.
    log_warn("{}: following the layer", m);
  }
  PathLayers armed;
  for (const PlannedLayer& t : layers) {
    t.layer->add_adapter(t.options);
    armed.emplace_back(t.path, t.layer);
  }
  // Freeze everything, then open the adapters and the modules trained whole.
  for (auto& p : module.parameters(/*recurse=*/true)) p.set_requires_grad(false);
  std::vector<std::string> trainable;
  for (auto& [name, factor] : live_factors(armed)) {
    factor.set_requires_grad(true);
    trainable.push_back(name);
  }
  std::set<std::string> opened;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (!is_module_to_save(config, item.key())) continue;
    for (const auto& p : item.value()->named_parameters(/*recurse=*/true)) {
      p.value().set_requires_grad(true);
      if (opened.insert(item.key() + "." + p.key()).second) trainable.push_back(item.key() + "." + p.key());
    }
  }
  log_info("LoRA r={} alpha={} on {} layers; {} trainable tensors", config.r, config.lora_alpha, layers.size(),
           trainable.size());
  return trainable;
}

}  // namespace lorakeep::detail

namespace lorakeep {

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
  std::vector<std::string> inside;  // paths of LoRA layers, whose children are their own
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    const std::string& path = item.key();
    bool nested = false;
    for (const std::string& p : inside) nested = nested || path.compare(0, p.size() + 1, p + ".") == 0;
    if (nested) continue;
    if (std::dynamic_pointer_cast<LoraLayer>(item.value())) inside.push_back(path);
    const bool linear = std::dynamic_pointer_cast<LoraLinearImpl>(item.value()) ||
                        std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value());
    if (!linear || std::find(left_out.begin(), left_out.end(), path) != left_out.end()) continue;
    LoraConfig one = resolved;
    one.target_modules = {path};
    if (is_lora_target(one, path)) resolved.target_modules.push_back(path);  // not excluded, not modules_to_save
  }
  if (resolved.target_modules.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "target_modules 'all-linear' selects no linear layer of the model");
  }
  return resolved;
}

}  // namespace lorakeep
