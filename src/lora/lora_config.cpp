#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "lorakeep/error.h"
#include "lorakeep/lora_config.h"
#include "base/logging.h"
#include "format/json.h"

namespace lorakeep {
namespace {

using detail::OrderedJson;

[[noreturn]] void bad(const std::string& path, const std::string& key, const std::string& want) {
  throw Error(ErrorCode::kCorruption, "'" + path + "': field '" + key + "' must be " + want);
}

[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kNotSupported, "'" + path + "' uses " + what + ", which lorakeep does not implement");
}

std::regex compile(const std::string& pattern, const std::string& where) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw Error(ErrorCode::kInvalidArgument, where + " pattern '" + pattern +
                                                 "' is not a regular expression lorakeep "
                                                 "can use (ECMAScript syntax): " +
                                                 e.what());
  }
}

bool ends_with_component(const std::string& path, const std::string& name) {
  return path == name ||
         (path.size() > name.size() && path.compare(path.size() - name.size(), name.size(), name) == 0 &&
          path[path.size() - name.size() - 1] == '.');
}

// PEFT's get_pattern_key: the first pattern p with `path` matching (.*\.)?(p)$.
template <class V>
const V* pattern_value(const std::vector<std::pair<std::string, V>>& patterns, const std::string& path) {
  for (const auto& [pattern, value] : patterns) {
    if (std::regex_match(path, compile("(.*\\.)?(" + pattern + ")", "rank/alpha"))) return &value;
  }
  return nullptr;
}

std::vector<std::string> strings_or_list(const OrderedJson& v, const std::string& path, const std::string& key,
                                         std::string* regex) {
  std::vector<std::string> out;
  if (v.is_null()) return out;
  if (v.is_string()) {
    if (regex == nullptr) bad(path, key, "a list of strings");
    *regex = v.get<std::string>();
    return out;
  }
  if (!v.is_array()) bad(path, key, regex ? "a string or a list of strings" : "a list of strings");
  for (const auto& item : v) {
    if (!item.is_string()) bad(path, key, "a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::optional<std::string> optional_string(const OrderedJson& v, const std::string& path, const std::string& key) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_string()) bad(path, key, "a string or null");
  return v.get<std::string>();
}

bool truthy(const OrderedJson& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.empty();  // arrays and objects
}

}  // namespace

LoraConfig parse_adapter_config(const std::string& text, const std::string& path) {
  const OrderedJson j = detail::parse_json_strict(text, path);
  if (!j.is_object()) throw Error(ErrorCode::kCorruption, "'" + path + "' must hold a JSON object");
  auto peft_type = j.find("peft_type");
  if (peft_type == j.end() || !peft_type->is_string()) {
    throw Error(ErrorCode::kCorruption, "'" + path + "' has no 'peft_type' string (hint: not a PEFT adapter config?)");
  }
  if (peft_type->get<std::string>() != "LORA") {
    throw Error(ErrorCode::kNotSupported,
                "'" + path + "' is a " + peft_type->get<std::string>() + " adapter; lorakeep loads LORA adapters only");
  }
  LoraConfig c;
  // Fields that change nothing lorakeep reads: metadata, or the settings of
  // an initialisation or a variant refused by its own field.
  static const std::set<std::string> kIgnored = {
      "peft_type",    "auto_mapping", "megatron_config", "megatron_core",  "loftq_config",      "runtime_config",
      "peft_version", "eva_config",   "corda_config",    "layers_pattern", "qalora_group_size", "lora_ga_config"};
  // PEFT's variants and options that change the tensors or the forward, by
  // field: refused whenever set (PEFT 0.21 writes them at their defaults).
  static const std::map<std::string, std::string> kRefused = {
      {"layer_replication", "layer_replication"},
      {"target_parameters", "target_parameters"},
      {"trainable_token_indices", "trainable_token_indices"},
      {"use_qalora", "QALoRA (use_qalora)"},
      {"alora_invocation_tokens", "aLoRA (alora_invocation_tokens)"},
      {"velora_config", "VeLoRA (velora_config)"},
      {"monteclora_config", "MonteCLoRA (monteclora_config)"},
      {"use_bdlora", "BD-LoRA (use_bdlora)"},
      {"arrow_config", "Arrow routing (arrow_config)"},
      {"kasa_config", "KaSA (kasa_config)"},
      {"ensure_weight_tying", "ensure_weight_tying"},
  };
  // The fields that are true or false.
  static const std::map<std::string, bool LoraConfig::*> kFlags = {
      {"fan_in_fan_out", &LoraConfig::fan_in_fan_out},
      {"use_rslora", &LoraConfig::use_rslora},
      {"use_dora", &LoraConfig::use_dora},
      {"lora_bias", &LoraConfig::lora_bias},
      {"inference_mode", &LoraConfig::inference_mode},
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const OrderedJson& v = it.value();
    if (key == "r") {
      std::int64_t r = 0;
      if (!detail::json_integer(v, &r, 1, INT_MAX)) bad(path, key, "a positive integer");
      c.r = static_cast<int>(r);
    } else if (key == "lora_alpha") {
      if (!v.is_number()) bad(path, key, "a number");
      c.lora_alpha = v.get<double>();
    } else if (key == "lora_dropout") {
      if (!v.is_number() || v.get<double>() < 0 || v.get<double>() >= 1) bad(path, key, "a number in [0, 1)");
      c.lora_dropout = v.get<double>();
    } else if (key == "target_modules") {
      c.target_modules = strings_or_list(v, path, key, &c.target_modules_regex);
    } else if (key == "exclude_modules") {
      c.exclude_modules = strings_or_list(v, path, key, &c.exclude_modules_regex);
    } else if (key == "modules_to_save") {
      c.modules_to_save = strings_or_list(v, path, key, nullptr);
    } else if (auto flag = kFlags.find(key); flag != kFlags.end()) {
      if (!v.is_boolean()) bad(path, key, "true or false");
      c.*(flag->second) = v.get<bool>();
    } else if (key == "layers_to_transform") {
      std::int64_t layer = 0;
      if (v.is_number_integer()) {
        if (!detail::json_integer(v, &layer, INT_MIN, INT_MAX)) bad(path, key, "an integer or a list of integers");
        c.layers_to_transform = {static_cast<int>(layer)};
      } else if (v.is_array()) {
        for (const auto& item : v) {
          if (!detail::json_integer(item, &layer, INT_MIN, INT_MAX)) bad(path, key, "an integer or a list of integers");
          c.layers_to_transform.push_back(static_cast<int>(layer));
        }
      } else if (!v.is_null()) {
        bad(path, key, "an integer or a list of integers");
      }
    } else if (key == "rank_pattern") {
      if (v.is_null()) continue;
      if (!v.is_object()) bad(path, key, "an object of integers");
      for (auto p = v.begin(); p != v.end(); ++p) {
        std::int64_t r = 0;
        if (!detail::json_integer(p.value(), &r, 1, INT_MAX)) bad(path, key, "an object of positive integers");
        c.rank_pattern.emplace_back(p.key(), static_cast<int>(r));
      }
    } else if (key == "alpha_pattern") {
      if (v.is_null()) continue;
      if (!v.is_object()) bad(path, key, "an object of numbers");
      for (auto p = v.begin(); p != v.end(); ++p) {
        if (!p.value().is_number()) bad(path, key, "an object of numbers");
        c.alpha_pattern.emplace_back(p.key(), p.value().get<double>());
      }
    } else if (key == "init_lora_weights") {
      if (v.is_boolean()) {
        c.init_lora_weights = v.get<bool>() ? "true" : "false";
      } else if (v.is_string()) {
        const std::string init = v.get<std::string>();
        if (init == "eva" || init == "orthogonal" || init == "mica") {
          // Factors drawn otherwise, the base untouched: trained, they are
          // plain LoRA, but lorakeep cannot arm a fresh adapter this way.
          unsupported(path, "init_lora_weights='" + init +
                                "' (an initialisation of the factors lorakeep does not implement; it leaves the "
                                "base weights alone, so a trained adapter loads with init_lora_weights set to true)");
        }
        if (init != "gaussian") {
          // pissa, olora, loftq, corda, lora_ga: the base weights were changed
          // at initialisation, so these factors only fit that changed base.
          unsupported(path, "init_lora_weights='" + init +
                                "' (it rewrites the base weights; convert the adapter "
                                "with PEFT's path_initial_model_for_weight_conversion)");
        }
        c.init_lora_weights = init;
      } else {
        bad(path, key, "true, false or a string");
      }
    } else if (key == "bias") {
      if (!v.is_string()) bad(path, key, "a string");
      if (v.get<std::string>() != "none") unsupported(path, "bias='" + v.get<std::string>() + "'");
    } else if (auto refused = kRefused.find(key); refused != kRefused.end()) {
      if (truthy(v)) unsupported(path, refused->second);
    } else if (key == "task_type") {
      c.task_type = optional_string(v, path, key);
    } else if (key == "base_model_name_or_path") {
      c.base_model_name_or_path = optional_string(v, path, key);
    } else if (key == "revision") {
      c.revision = optional_string(v, path, key);
    } else if (!kIgnored.count(key)) {
      detail::log_warn("'{}': field '{}' is unknown to lorakeep, ignored (hint: written by a PEFT newer than "
                       "lorakeep knows; if it changes the adapter, the load may not mean what PEFT means)",
                       path, key);
    }
  }
  if (c.lora_bias && c.use_dora) unsupported(path, "lora_bias with use_dora (PEFT refuses the combination too)");
  if (c.lora_bias && c.init_lora_weights == "gaussian") {
    unsupported(path, "lora_bias with init_lora_weights='gaussian' (PEFT refuses the combination too)");
  }
  if (auto lp = j.find("layers_pattern"); lp != j.end()) {
    std::string single;
    c.layers_pattern = strings_or_list(*lp, path, "layers_pattern", &single);
    if (!single.empty()) c.layers_pattern = {single};
  }
  return c;
}

std::string format_adapter_config(const LoraConfig& c) {
  auto opt = [](const std::optional<std::string>& s) { return s ? nlohmann::json(*s) : nlohmann::json(nullptr); };
  auto list_or_null = [](const std::vector<std::string>& v) {
    return v.empty() ? nlohmann::json(nullptr) : nlohmann::json(v);
  };
  nlohmann::json j;  // std::map-backed: sorted keys, as PEFT's json.dumps(sort_keys=True)
  j["alpha_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.alpha_pattern) j["alpha_pattern"][k] = v;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = opt(c.base_model_name_or_path);
  j["bias"] = c.bias;
  j["fan_in_fan_out"] = c.fan_in_fan_out;
  j["inference_mode"] = c.inference_mode;
  if (c.init_lora_weights == "true" || c.init_lora_weights == "false") {
    j["init_lora_weights"] = c.init_lora_weights == "true";
  } else {
    j["init_lora_weights"] = c.init_lora_weights;
  }
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = c.layers_pattern.empty()       ? nlohmann::json(nullptr)
                        : c.layers_pattern.size() == 1 ? nlohmann::json(c.layers_pattern[0])
                                                       : nlohmann::json(c.layers_pattern);
  j["layers_to_transform"] = c.layers_to_transform.empty() ? nlohmann::json(nullptr)
                                                           : nlohmann::json(c.layers_to_transform);
  j["loftq_config"] = nlohmann::json::object();
  // Integral values as integers, as Python writes them.
  if (c.lora_alpha == std::floor(c.lora_alpha) && std::fabs(c.lora_alpha) < 1e15) {
    j["lora_alpha"] = static_cast<std::int64_t>(c.lora_alpha);
  } else {
    j["lora_alpha"] = c.lora_alpha;
  }
  j["lora_dropout"] = c.lora_dropout;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = list_or_null(c.modules_to_save);
  j["peft_type"] = "LORA";
  j["r"] = c.r;
  j["rank_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.rank_pattern) j["rank_pattern"][k] = v;
  j["revision"] = opt(c.revision);
  if (!c.target_modules_regex.empty()) {
    j["target_modules"] = c.target_modules_regex;
  } else {
    j["target_modules"] = list_or_null(c.target_modules);
  }
  if (!c.exclude_modules_regex.empty()) j["exclude_modules"] = c.exclude_modules_regex;
  if (!c.exclude_modules.empty()) j["exclude_modules"] = c.exclude_modules;
  j["task_type"] = opt(c.task_type);
  j["use_dora"] = c.use_dora;
  if (c.lora_bias) j["lora_bias"] = true;  // PEFT 0.10 does not know the field
  j["use_rslora"] = c.use_rslora;
  return j.dump(2) + "\n";
}

int rank_for(const LoraConfig& c, const std::string& path) {
  const int* r = pattern_value(c.rank_pattern, path);
  return r ? *r : c.r;
}

double alpha_for(const LoraConfig& c, const std::string& path) {
  const double* a = pattern_value(c.alpha_pattern, path);
  return a ? *a : c.lora_alpha;
}

bool is_module_to_save(const LoraConfig& c, const std::string& path) {
  for (const std::string& m : c.modules_to_save) {
    if (ends_with_component(path, m)) return true;
  }
  return false;
}

bool is_lora_target(const LoraConfig& c, const std::string& path) {
  if (!c.exclude_modules_regex.empty() && std::regex_match(path, compile(c.exclude_modules_regex, "exclude_modules"))) {
    return false;
  }
  for (const std::string& e : c.exclude_modules) {
    if (ends_with_component(path, e)) return false;
  }
  // Adapters never go inside modules that are trained whole.
  for (const std::string& m : c.modules_to_save) {
    if (std::regex_match(path, compile("(^|.*\\.)" + m + "($|\\..*)", "modules_to_save"))) return false;
  }
  if (!c.target_modules_regex.empty()) {
    return std::regex_match(path, compile(c.target_modules_regex, "target_modules"));
  }
  // As PEFT: a path named exactly is adapted whatever layers_to_transform
  // says; a path matched by its last components is filtered by layer.
  if (std::find(c.target_modules.begin(), c.target_modules.end(), path) != c.target_modules.end()) return true;
  bool found = false;
  for (const std::string& t : c.target_modules) found = found || ends_with_component(path, t);
  if (!found || c.layers_to_transform.empty()) return found;
  // PEFT: the index right after the layer list's name, which must follow a
  // dot (so the list cannot be the root's own attribute).
  std::smatch m;
  bool have_index = false;
  if (c.layers_pattern.empty()) {
    have_index = std::regex_search(path, m, compile("^.*?\\.[^.]*\\.(\\d+)\\.", "layers_pattern"));
  } else {
    for (const std::string& pattern : c.layers_pattern) {
      if (std::regex_search(path, m, compile("^.*?\\." + pattern + "\\.(\\d+)\\.", "layers_pattern"))) {
        have_index = true;
        break;
      }
    }
  }
  if (!have_index) return false;
  const std::string digits = m[1].str();
  if (digits.size() > 9) return false;
  const int index = std::stoi(digits);
  return std::find(c.layers_to_transform.begin(), c.layers_to_transform.end(), index) != c.layers_to_transform.end();
}

}  // namespace lorakeep
