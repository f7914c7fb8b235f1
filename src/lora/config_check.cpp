#include "lora/config_check.h"

#include <set>
#include <sstream>

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "lora/injection.h"

namespace lorakeep::detail {
namespace {

std::string number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

std::string flag(bool v) { return v ? "true" : "false"; }

}  // namespace

void check_config_matches_layers(torch::nn::Module& module, const LoraConfig& config, const std::string& name) {
  const auto armed = armed_layers(module, name);
  if (armed.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                name == kDefaultAdapter
                    ? std::string("the model has no LoRA adapter to save (hint: call inject_lora first)")
                    : "no layer of the model carries an adapter named '" + name +
                          "' (its adapters: " + list_paths(adapter_names(module)) + ")");
  }
  std::vector<std::string> problems;
  auto differs = [&](const std::string& path, const std::string& field, const std::string& in_config,
                     const std::string& in_layer) {
    problems.push_back("'" + path + "' " + field + ": the config says " + in_config + ", the layer has " + in_layer);
  };
  std::set<std::string> armed_paths;
  for (const auto& [path, layer] : armed) {
    armed_paths.insert(path);
    if (!is_lora_target(config, path)) {
      problems.push_back("'" + path + "' is armed but the config's targets do not select it");
      continue;
    }
    const LoraAdapterOptions& o = layer->adapter_options();
    if (const int r = rank_for(config, path); r != layer->rank()) {
      differs(path, "r", std::to_string(r), std::to_string(layer->rank()));
    }
    if (const double alpha = alpha_for(config, path); alpha != o.alpha) {
      differs(path, "lora_alpha", number(alpha), number(o.alpha));
    }
    if (config.use_rslora != o.use_rslora) differs(path, "use_rslora", flag(config.use_rslora), flag(o.use_rslora));
    if (config.use_dora != layer->use_dora()) differs(path, "use_dora", flag(config.use_dora), flag(layer->use_dora()));
    if (config.lora_bias != o.lora_bias) differs(path, "lora_bias", flag(config.lora_bias), flag(o.lora_bias));
    if (config.lora_dropout != o.dropout) differs(path, "lora_dropout", number(config.lora_dropout), number(o.dropout));
    if (const std::optional<bool> stored = layer->fan_in_fan_out(); stored && config.fan_in_fan_out != *stored) {
      differs(path, "fan_in_fan_out", flag(config.fan_in_fan_out),
              flag(*stored) + " (its weight is stored [" + (*stored ? "in, out]" : "out, in]") + ")");
    }
  }
  std::vector<std::string> module_paths;
  for (const auto& [path, m] : model_modules(module)) {
    module_paths.push_back(path);
    if (is_lora_target(config, path) && !armed_paths.count(path)) {
      problems.push_back("'" + path + "' is selected by the config's targets but carries no " +
                         (name == kDefaultAdapter ? std::string("adapter") : "adapter '" + name + "'"));
    }
  }
  if (name != kDefaultAdapter && !config.modules_to_save.empty()) {
    problems.push_back("modules_to_save: a named adapter has none (lorakeep trains those modules for the default "
                       "adapter only)");
  }
  for (const std::string& entry : config.modules_to_save) {
    bool found = false;
    for (const std::string& path : module_paths) {
      LoraConfig one;
      one.modules_to_save = {entry};
      found = found || is_module_to_save(one, path);
    }
    if (!found) problems.push_back("modules_to_save '" + entry + "' names no module of the model");
  }
  if (problems.empty()) return;
  std::string msg = "the LoraConfig does not describe the model's adapter (" + std::to_string(problems.size()) +
                    " difference" + (problems.size() == 1 ? "" : "s") + "):";
  for (std::size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
  if (problems.size() > 20) msg += "\n  ... (" + std::to_string(problems.size() - 20) + " more)";
  msg += "\n(hint: save with the config the layers were armed with, or, after load_adapter, with the loaded "
         "adapter's read_adapter_config) (nothing was written)";
  throw Error(ErrorCode::kInvalidArgument, msg);
}

}  // namespace lorakeep::detail
