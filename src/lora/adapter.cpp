// inject_lora, save_adapter, load_adapter: PEFT's adapter contract.
#include <algorithm>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "lorakeep/lora.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "base/text.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/read_file.h"
#include "lora/adapter.h"
#include "tensors/rng.h"
#include "tensors/safetensors_writer.h"

namespace lorakeep {
namespace {

namespace fs = boost::filesystem;

std::string list_paths(const std::vector<std::string>& paths, std::size_t limit = 30) {
  std::string out;
  for (std::size_t i = 0; i < paths.size() && i < limit; ++i) out += (i ? ", " : "") + paths[i];
  if (paths.size() > limit) out += ", ... (" + std::to_string(paths.size() - limit) + " more)";
  return out;
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

namespace detail {

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
  }
  return targets;
}

NamedTensors planned_factors(const std::vector<PlannedLayer>& layers) {
  NamedTensors out;
  for (const PlannedLayer& t : layers) {
    const at::Tensor& w = t.layer->weight;
    const auto dtype = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // as add_adapter makes them
    const auto meta = at::TensorOptions().dtype(dtype).device(at::kMeta);
    const std::int64_t in = t.layer->options().in_features(), out_features = t.layer->options().out_features();
    out.emplace_back(t.path + ".lora_A.weight", at::empty({t.options.r, in}, meta));
    out.emplace_back(t.path + ".lora_B.weight", at::empty({out_features, t.options.r}, meta));
  }
  return out;
}

std::vector<std::string> arm(torch::nn::Module& module, const LoraConfig& config,
                             const std::vector<PlannedLayer>& layers) {
  for (const PlannedLayer& t : layers) {
    if (t.layer->options().fan_in_fan_out() != config.fan_in_fan_out) {
      // PEFT corrects the flag to the layer's layout with a warning; so do we.
      log_warn("'{}' stores its weight as [{}], but fan_in_fan_out is {}: following the layer", t.path,
               t.layer->options().fan_in_fan_out() ? "in, out" : "out, in", config.fan_in_fan_out ? "true" : "false");
    }
    t.layer->add_adapter(t.options);
  }
  // Freeze everything, then open the adapters and the modules trained whole.
  for (auto& p : module.parameters(/*recurse=*/true)) p.set_requires_grad(false);
  std::vector<std::string> trainable;
  for (const PlannedLayer& t : layers) {
    t.layer->lora_A->weight.set_requires_grad(true);
    t.layer->lora_B->weight.set_requires_grad(true);
    trainable.push_back(t.path + ".lora_A.weight");
    trainable.push_back(t.path + ".lora_B.weight");
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

}  // namespace detail

std::vector<std::string> inject_lora(torch::nn::Module& module, const LoraConfig& config) {
  return detail::arm(module, config, detail::plan_injection(module, config));
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

std::uint64_t adapter_digest(torch::nn::Module& module, const LoraConfig& config) {
  detail::Xxh3Stream hash;
  for (const auto& [name, tensor] : adapter_tensors(module, config)) {
    hash.update(name.data(), name.size());
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const auto dtype = static_cast<std::int64_t>(t.scalar_type());
    hash.update(&dtype, sizeof dtype);
    for (const std::int64_t d : t.sizes()) hash.update(&d, sizeof d);
    hash.update(t.data_ptr(), t.nbytes());
  }
  return hash.digest();
}

namespace detail {

AdapterSaveReport write_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config,
                                bool direct) {
  return write_adapter(dir, adapter_tensors(module, config), config, direct);
}

AdapterSaveReport write_adapter(const std::string& dir, const NamedTensors& tensors, const LoraConfig& config,
                                bool direct) {
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
  detail::StagedDirectory staged(dir);
  AdapterSaveReport report = detail::write_adapter(staged.path(), module, config, /*direct=*/true);
  staged.publish(/*replace=*/false);
  report.weights.path = (fs::path(dir) / detail::kAdapterWeightsFile).string();
  report.config_path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  return report;
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
  throw Error(ErrorCode::kNotFound, "adapter directory '" + dir + "' has neither " + detail::kAdapterWeightsFile +
                                        " nor " + detail::kAdapterPickleFile);
}

AdapterLayout classify_adapter_keys(const TensorSource& source) {
  AdapterLayout layout;
  std::map<std::string, int> halves;  // layer path -> bit 1: A, bit 2: B
  for (const std::string& key : source.names()) {
    if (key.compare(0, std::string(kPeftPrefix).size(), kPeftPrefix) != 0) {
      throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has the key '" + key +
                                              "', which is not a PEFT "
                                              "adapter key (they start with '" +
                                              kPeftPrefix + "')");
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

namespace detail {

AdapterLoad::AdapterLoad(const std::string& dir, torch::nn::Module& module, const LoadOptions& transfer)
    : module_(&module) {
  config_ = read_adapter_config(dir);  // refuses other PEFT types before any tensor is read
  source_ = open_tensor_source(adapter_weights_path(dir));
  const AdapterLayout layout = classify_adapter_keys(*source_);

  // The layers the adapter fills: those armed already, or, in a model with
  // none armed, those injection would arm (planned only: nothing changes
  // until everything is checked).
  std::map<std::string, std::shared_ptr<LoraLinearImpl>> armed;
  for (auto& [path, layer] : armed_layers(module)) armed[path] = layer;
  NamedTensors targets;
  if (armed.empty()) {
    to_arm_ = plan_injection(module, config_);
    for (const PlannedLayer& t : to_arm_) armed[t.path] = t.layer;
    targets = planned_factors(to_arm_);
  } else {
    for (const auto& [path, layer] : armed) {
      targets.emplace_back(path + ".lora_A.weight", layer->lora_A->weight);
      targets.emplace_back(path + ".lora_B.weight", layer->lora_B->weight);
    }
  }
  std::vector<std::string> absent;
  for (const std::string& path : layout.layers) {
    if (!armed.count(path)) absent.push_back(path);
  }
  if (!absent.empty()) {
    std::vector<std::string> have;
    for (const auto& [path, layer] : armed) have.push_back(path);
    throw Error(ErrorCode::kIncompatible,
                "adapter '" + dir + "' adapts " + std::to_string(absent.size()) + " layer(s) the model has no " +
                    (to_arm_.empty() ? "adapter on" : "target among") + ": " + list_paths(absent) + " (the model's " +
                    (to_arm_.empty() ? "adapted" : "target") + " layers: " + list_paths(have) +
                    ") (hint: wrong base model, or different target_modules?) (nothing was changed)");
  }
  // The whole tensors the file holds (modules_to_save, task heads): live
  // parameters already, whose tensors arming does not replace.
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
                                              list_paths(unknown) + " (hint: wrong base model?) (nothing was changed)");
  }
  // PEFT saves every parameter of modules_to_save: one missing means the
  // file is incomplete, and loading the rest would mix two trainings.
  const std::set<std::string> in_file(layout.whole.begin(), layout.whole.end());
  std::vector<std::string> lacking;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (!is_module_to_save(config_, item.key())) continue;
    for (const auto& p : item.value()->named_parameters(/*recurse=*/true)) {
      const std::string name = item.key() + "." + p.key();
      if (!in_file.count(name)) lacking.push_back(name);
    }
  }
  if (!lacking.empty()) {
    throw Error(ErrorCode::kCorruption, "adapter '" + dir + "' lacks tensors of its modules_to_save: " +
                                            list_paths(lacking) + " (nothing was changed)");
  }
  LoadOptions options = transfer;
  options.op = TransferOp::kCopy;
  options.scale = 1.0;
  options.strip_prefix = kPeftPrefix;
  options.add_prefix.clear();
  options.strict = true;
  plan_.emplace(targets, *source_, options);
}

AdapterLoad::~AdapterLoad() = default;
AdapterLoad::AdapterLoad(AdapterLoad&&) noexcept = default;

TransferReport AdapterLoad::apply() {
  if (!to_arm_.empty()) {
    // Arming initialises the factors the load then overwrites: the training
    // run's random stream must not move for that.
    RngGuard keep_random_stream;
    arm(*module_, config_, to_arm_);
    NamedTensors live;
    for (const PlannedLayer& t : to_arm_) {
      live.emplace_back(t.path + ".lora_A.weight", t.layer->lora_A->weight);
      live.emplace_back(t.path + ".lora_B.weight", t.layer->lora_B->weight);
    }
    plan_->retarget(live);
    to_arm_.clear();
  }
  return plan_->apply();
}

}  // namespace detail

TransferReport load_adapter(const std::string& dir, torch::nn::Module& module, const AdapterLoadOptions& options) {
  LoadOptions transfer;
  transfer.chunk_bytes = options.chunk_bytes;
  return detail::AdapterLoad(dir, module, transfer).apply();
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
