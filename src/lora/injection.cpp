#include "lora/injection.h"

#include <set>

#include <ATen/ATen.h>

#include "lorakeep/error.h"
#include "base/logging.h"
#include "lora/peft_keys.h"

namespace lorakeep::detail {

std::string list_paths(const std::vector<std::string>& paths, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < paths.size() && i < limit; ++i) out += (i ? ", " : "") + paths[i];
  if (paths.size() > limit) out += ", ... (" + std::to_string(paths.size() - limit) + " more)";
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> armed_layers(torch::nn::Module& module) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> out;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(item.value());
    if (lora && lora->has_adapter()) out.emplace_back(item.key(), lora);
  }
  return out;
}

std::vector<PlannedLayer> plan_injection(torch::nn::Module& module, const LoraConfig& config) {
  if (config.target_modules.empty() && config.target_modules_regex.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "LoraConfig has no target_modules");
  }
  std::vector<std::string> paths, problems;
  std::vector<PlannedLayer> targets;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    const std::string& path = item.key();
    paths.push_back(path);
    if (!is_lora_target(config, path)) continue;
    if (auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(item.value())) {
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
        targets.push_back(PlannedLayer{path, lora, o});
      }
    } else if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value())) {
      problems.push_back("'" + path +
                         "' is a torch::nn::Linear (hint: declare it as lorakeep::LoraLinear, a drop-in "
                         "with the same arguments, names and forward: LibTorch models call their layers through "
                         "member variables, so a layer cannot be swapped from outside)");
    } else {
      problems.push_back("'" + path + "' is a " + item.value()->name() + ", not a linear layer");
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
  for (const PlannedLayer& t : targets) {
    if (t.options.r < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "LoRA rank for '" + t.path + "' must be at least 1, not " + std::to_string(t.options.r));
    }
    if (t.options.init != "true" && t.options.init != "false" && t.options.init != "gaussian") {
      throw Error(ErrorCode::kInvalidArgument,
                  "init_lora_weights '" + t.options.init + "' is not true, false or gaussian");
    }
    if (t.options.lora_bias && (t.options.use_dora || t.options.init == "gaussian")) {
      throw Error(ErrorCode::kInvalidArgument, std::string("lora_bias does not combine with ") +
                                                   (t.options.use_dora ? "use_dora" : "init_lora_weights 'gaussian'") +
                                                   " (PEFT refuses it too)");
    }
  }
  return targets;
}

std::vector<std::string> layout_mismatches(const std::vector<PlannedLayer>& planned, const LoraConfig& config) {
  std::vector<std::string> out;
  for (const PlannedLayer& t : planned) {
    if (t.layer->options().fan_in_fan_out() == config.fan_in_fan_out) continue;
    out.push_back("'" + t.path + "' stores its weight as [" +
                  (t.layer->options().fan_in_fan_out() ? "in, out] (GPT-2's Conv1D)" : "out, in] (nn.Linear)") +
                  " but fan_in_fan_out is " + (config.fan_in_fan_out ? "true" : "false"));
  }
  return out;
}

NamedTensors planned_factors(const std::vector<PlannedLayer>& layers) {
  NamedTensors out;
  for (const PlannedLayer& t : layers) {
    const at::Tensor& w = t.layer->weight;
    const auto dtype = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // as add_adapter makes them
    const auto meta = at::TensorOptions().dtype(dtype).device(at::kMeta);
    const std::int64_t in = t.layer->options().in_features(), out_features = t.layer->options().out_features();
    out.emplace_back(model_name({PeftTensor::kLoraA, t.path}), at::empty({t.options.r, in}, meta));
    out.emplace_back(model_name({PeftTensor::kLoraB, t.path}), at::empty({out_features, t.options.r}, meta));
    if (t.options.use_dora) {
      out.emplace_back(model_name({PeftTensor::kMagnitude, t.path}), at::empty({out_features}, meta));
    }
    if (t.options.lora_bias) {
      out.emplace_back(model_name({PeftTensor::kLoraBias, t.path}), at::empty({out_features}, meta));
    }
  }
  return out;
}

NamedTensors live_factors(const std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>>& layers) {
  NamedTensors out;
  for (const auto& [path, layer] : layers) {
    out.emplace_back(model_name({PeftTensor::kLoraA, path}), layer->lora_A->weight);
    out.emplace_back(model_name({PeftTensor::kLoraB, path}), layer->lora_B->weight);
    if (layer->use_dora()) out.emplace_back(model_name({PeftTensor::kMagnitude, path}), layer->lora_magnitude_vector);
    if (layer->adapter_options().lora_bias) {
      out.emplace_back(model_name({PeftTensor::kLoraBias, path}), layer->lora_B->bias);
    }
  }
  return out;
}

std::vector<std::string> arm(torch::nn::Module& module, const LoraConfig& config,
                             const std::vector<PlannedLayer>& layers) {
  for (const std::string& m : layout_mismatches(layers, config)) {
    // PEFT corrects the flag to the layer's layout with a warning; so does a load.
    log_warn("{}: following the layer", m);
  }
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> armed;
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
