#include "lora/config_check.h"

#include <set>
#include <sstream>

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "lorakeep/lora_linear.h"
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

void check_config_matches_layers(torch::nn::Module& module, const LoraConfig& given) {
  const LoraConfig config = resolve_target_modules(module, given);
  const auto armed = armed_layers(module);
  if (armed.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "the model has no LoRA adapter to save (hint: call inject_lora first)");
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
    const bool linear = dynamic_cast<const LoraLinearImpl*>(layer.get()) != nullptr;  // PEFT reads it for these
    if (linear && config.fan_in_fan_out != layer->fan_in_fan_out()) {
      differs(path, "fan_in_fan_out", flag(config.fan_in_fan_out),
              flag(layer->fan_in_fan_out()) + " (its weight is stored [" +
                  (layer->fan_in_fan_out() ? "in, out]" : "out, in]") + ")");
    }
  }
  std::vector<std::string> module_paths;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    module_paths.push_back(item.key());
    if (is_lora_target(config, item.key()) && !armed_paths.count(item.key())) {
      problems.push_back("'" + item.key() + "' is selected by the config's targets but carries no adapter");
    }
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
