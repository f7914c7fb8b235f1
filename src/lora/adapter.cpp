// inject_lora, save_adapter, load_adapter: PEFT's adapter contract.
#include <algorithm>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "lorakeep/lora.h"
#include "checkpoint/layout.h"
#include "format/json_util.h"
#include "io/atomic_file.h"
#include "logging.h"
#include "lora/adapter_internal.h"
#include "safetensors_writer.h"

namespace lorakeep {
namespace {

namespace fs = boost::filesystem;

std::string list_paths(const std::vector<std::string>& paths, std::size_t limit = 30) {
  std::string out;
  for (std::size_t i = 0; i < paths.size() && i < limit; ++i) out += (i ? ", " : "") + paths[i];
  if (paths.size() > limit) out += ", ... (" + std::to_string(paths.size() - limit) + " more)";
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

namespace detail {

std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> armed_layers(torch::nn::Module& module) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> out;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(item.value());
    if (lora && lora->has_adapter()) out.emplace_back(item.key(), lora);
  }
  return out;
}

}  // namespace detail

std::vector<std::string> inject_lora(torch::nn::Module& module, const LoraConfig& config) {
  if (config.target_modules.empty() && config.target_modules_regex.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "LoraConfig has no target_modules");
  }
  std::vector<std::string> paths, problems;
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> targets;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    const std::string& path = item.key();
    paths.push_back(path);
    if (!is_lora_target(config, path)) continue;
    if (auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(item.value())) {
      if (lora->has_adapter()) problems.push_back("'" + path + "' already has an adapter");
      else targets.emplace_back(path, lora);
    } else if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value())) {
      problems.push_back("'" + path + "' is a torch::nn::Linear (hint: declare it as lorakeep::LoraLinear, a drop-in "
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
  for (auto& [path, layer] : targets) {
    if (layer->options().fan_in_fan_out() != config.fan_in_fan_out) {
      // PEFT corrects the flag to the layer's layout with a warning; so do we.
      detail::logger()->warn("'{}' stores its weight as [{}], but fan_in_fan_out is {}: following the layer", path,
                             layer->options().fan_in_fan_out() ? "in, out" : "out, in",
                             config.fan_in_fan_out ? "true" : "false");
    }
    LoraAdapterOptions o;
    o.r = rank_for(config, path);
    o.alpha = alpha_for(config, path);
    o.dropout = config.lora_dropout;
    o.use_rslora = config.use_rslora;
    o.init = config.init_lora_weights;
    layer->add_adapter(o);
  }
  // Freeze everything, then open the adapters and the modules trained whole.
  for (auto& p : module.parameters(/*recurse=*/true)) p.set_requires_grad(false);
  std::vector<std::string> trainable;
  for (auto& [path, layer] : targets) {
    layer->lora_A->weight.set_requires_grad(true);
    layer->lora_B->weight.set_requires_grad(true);
    trainable.push_back(path + ".lora_A.weight");
    trainable.push_back(path + ".lora_B.weight");
  }
  std::set<std::string> opened;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (!is_module_to_save(config, item.key())) continue;
    for (const auto& p : item.value()->named_parameters(/*recurse=*/true)) {
      p.value().set_requires_grad(true);
      if (opened.insert(item.key() + "." + p.key()).second) trainable.push_back(item.key() + "." + p.key());
    }
  }
  detail::logger()->info("LoRA r={} alpha={} on {} layers; {} trainable tensors", config.r, config.lora_alpha,
                         targets.size(), trainable.size());
  return trainable;
}

NamedTensors adapter_tensors(torch::nn::Module& module, const LoraConfig& config) {
  NamedTensors out;
  for (const auto& [path, layer] : detail::armed_layers(module)) {
    out.emplace_back(detail::kPeftPrefix + path + ".lora_A.weight", layer->lora_A->weight);
    out.emplace_back(detail::kPeftPrefix + path + ".lora_B.weight", layer->lora_B->weight);
  }
  if (!config.modules_to_save.empty()) {
    std::set<std::string> saved;
    for (const auto& item : module.named_modules("", /*include_self=*/false)) {
      if (!is_module_to_save(config, item.key())) continue;
      for (const auto& p : item.value()->named_parameters(/*recurse=*/true)) {
        const std::string name = item.key() + "." + p.key();
        if (saved.insert(name).second) out.emplace_back(detail::kPeftPrefix + name, p.value());
      }
    }
  }
  return out;
}

namespace detail {

AdapterSaveReport write_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config,
                                bool direct) {
  NamedTensors tensors = adapter_tensors(module, config);
  if (tensors.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "the model has no LoRA adapter to save (hint: call inject_lora first)");
  }
  LoraConfig saved = config;
  saved.inference_mode = true;
  const std::string text = format_adapter_config(saved);
  AdapterSaveReport report;
  report.config_path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  const std::string weights = (fs::path(dir) / detail::kAdapterWeightsFile).string();
  if (direct) {
    // Inside a directory that is published whole later: plain files, synced.
    report.weights = write_safetensors(weights, tensors, {{"format", "pt"}}, SafetensorsWriter::Mode::kDirect,
                                       64ull << 20);
    WritableFile file = WritableFile::create(report.config_path);
    file.append(text.data(), text.size());
    file.sync();
    file.close();
  } else {
    report.weights = save_safetensors(weights, tensors, {{"format", "pt"}});
    write_file_atomically(report.config_path, [&](WritableFile& f) { f.append(text.data(), text.size()); });
  }
  return report;
}

}  // namespace detail

AdapterSaveReport save_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config) {
  boost::system::error_code ec;
  if (fs::is_directory(dir, ec)) return detail::write_adapter(dir, module, config, /*direct=*/false);
  const std::string tmp = detail::temp_path_beside(dir);
  if (!fs::create_directory(tmp, ec)) {
    throw Error(ErrorCode::kIOError, "cannot create directory '" + tmp + "': " + ec.message());
  }
  try {
    AdapterSaveReport report = detail::write_adapter(tmp, module, config, /*direct=*/true);
    detail::publish(tmp, dir, /*replace=*/false);
    report.weights.path = (fs::path(dir) / detail::kAdapterWeightsFile).string();
    report.config_path = (fs::path(dir) / detail::kAdapterConfigFile).string();
    return report;
  } catch (...) {
    detail::remove_all_logged(tmp);
    throw;
  }
}

LoraConfig read_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  return parse_adapter_config(detail::read_small_file(path, 16ull << 20), path);
}

namespace detail {

std::string adapter_weights_path(const std::string& dir) {
  boost::system::error_code ec;
  for (const char* name : {detail::kAdapterWeightsFile, detail::kAdapterPickleFile}) {
    const std::string path = (fs::path(dir) / name).string();
    if (fs::exists(path, ec)) return path;
  }
  throw Error(ErrorCode::kNotFound, "adapter directory '" + dir + "' has neither " + detail::kAdapterWeightsFile + " nor " +
                                        detail::kAdapterPickleFile);
}

AdapterLayout classify_adapter_keys(const TensorSource& source) {
  AdapterLayout layout;
  std::map<std::string, int> halves;  // layer path -> bit 1: A, bit 2: B
  for (const std::string& key : source.names()) {
    if (key.compare(0, std::string(kPeftPrefix).size(), kPeftPrefix) != 0) {
      throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has the key '" + key + "', which is not a PEFT "
                                          "adapter key (they start with '" + kPeftPrefix + "')");
    }
    const std::string rest = key.substr(std::string(kPeftPrefix).size());
    if (ends_with(rest, ".lora_A.weight")) {
      halves[rest.substr(0, rest.size() - 14)] |= 1;
    } else if (ends_with(rest, ".lora_B.weight")) {
      halves[rest.substr(0, rest.size() - 14)] |= 2;
    } else if (rest.find("lora_") != std::string::npos) {
      throw Error(ErrorCode::kNotSupported, "'" + source.path() + "' has the tensor '" + key +
                                                "', a kind of LoRA factor lorakeep does not implement");
    } else {
      layout.whole.push_back(rest);
    }
  }
  for (const auto& [path, bits] : halves) {
    if (bits != 3) {
      throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has lora_" + (bits == 1 ? "A" : "B") +
                                              " but not lora_" + (bits == 1 ? "B" : "A") + " for '" + path + "'");
    }
    layout.layers.push_back(path);
  }
  return layout;
}

}  // namespace detail

TransferReport load_adapter(const std::string& dir, torch::nn::Module& module, LoadOptions options) {
  const LoraConfig config = read_adapter_config(dir);  // refuses other PEFT types before any tensor is read
  const auto source = open_tensor_source(detail::adapter_weights_path(dir));
  const detail::AdapterLayout layout = detail::classify_adapter_keys(*source);
  if (detail::armed_layers(module).empty()) inject_lora(module, config);

  std::map<std::string, std::shared_ptr<LoraLinearImpl>> armed;
  for (auto& [path, layer] : detail::armed_layers(module)) armed[path] = layer;
  std::vector<std::string> absent;
  for (const std::string& path : layout.layers) {
    if (!armed.count(path)) absent.push_back(path);
  }
  if (!absent.empty()) {
    std::vector<std::string> have;
    for (const auto& [path, layer] : armed) have.push_back(path);
    throw Error(ErrorCode::kIncompatible,
                "adapter '" + dir + "' adapts " + std::to_string(absent.size()) + " layer(s) the model has no adapter "
                "on: " + list_paths(absent) + " (the model's adapted layers: " + list_paths(have) +
                ") (hint: wrong base model, or different target_modules?)");
  }
  // Targets: every adapter factor of the model, and the whole tensors the file
  // holds (modules_to_save, task heads).
  NamedTensors targets;
  for (const auto& [path, layer] : armed) {
    targets.emplace_back(path + ".lora_A.weight", layer->lora_A->weight);
    targets.emplace_back(path + ".lora_B.weight", layer->lora_B->weight);
  }
  std::map<std::string, at::Tensor> named;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) named[item.key()] = item.value();
  for (const auto& item : module.named_buffers(/*recurse=*/true)) named[item.key()] = item.value();
  std::vector<std::string> unknown;
  for (const std::string& name : layout.whole) {
    auto it = named.find(name);
    if (it == named.end()) unknown.push_back(name);
    else targets.emplace_back(name, it->second);
  }
  if (!unknown.empty()) {
    throw Error(ErrorCode::kIncompatible, "adapter '" + dir + "' holds whole tensors the model does not have: " +
                                              list_paths(unknown) + " (hint: wrong base model?)");
  }
  options.strip_prefix = detail::kPeftPrefix;
  options.add_prefix.clear();
  options.strict = true;
  return load_into(targets, *source, options);
}

int merge_lora(torch::nn::Module& module, bool safe) {
  int n = 0;
  for (auto& [path, layer] : detail::armed_layers(module)) {
    layer->merge(safe);
    ++n;
  }
  return n;
}

int unmerge_lora(torch::nn::Module& module) {
  int n = 0;
  for (auto& [path, layer] : detail::armed_layers(module)) {
    layer->unmerge();
    ++n;
  }
  return n;
}

}  // namespace lorakeep
