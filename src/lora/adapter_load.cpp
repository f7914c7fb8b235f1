#include "lora/adapter_load.h"

#include <map>
#include <set>

#include <boost/filesystem.hpp>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "lora/peft_keys.h"
#include "tensors/rng.h"

namespace lorakeep::detail {
namespace {

// An adapter's kind, for messages.
std::string kind_of(bool use_dora, bool lora_bias) {
  return use_dora ? "DoRA" : lora_bias ? "LoRA with lora_bias" : "plain LoRA";
}

}  // namespace

std::string adapter_weights_path(const std::string& dir) {
  namespace fs = boost::filesystem;
  boost::system::error_code ec;
  for (const char* name : {kAdapterWeightsFile, kAdapterPickleFile}) {
    const std::string path = (fs::path(dir) / name).string();
    if (fs::exists(path, ec)) return path;
  }
  throw Error(ErrorCode::kNotFound,
              "adapter directory '" + dir + "' has neither " + kAdapterWeightsFile + " nor " + kAdapterPickleFile);
}

AdapterLoad::AdapterLoad(const std::string& dir, LoraConfig config, std::unique_ptr<TensorSource> weights,
                         torch::nn::Module& module, const LoadOptions& transfer, std::string name)
    : module_(&module), config_(std::move(config)), name_(std::move(name)), source_(std::move(weights)) {
  const AdapterLayout layout = classify_adapter_keys(*source_);
  check_optional_tensors(layout, config_.use_dora, config_.lora_bias, source_->path());
  if (name_ != kDefaultAdapter && !layout.whole.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "adapter '" + dir + "' holds whole tensors (modules_to_save: " + list_paths(layout.whole) +
                    "), which lorakeep loads into the default adapter only: as the named adapter '" + name_ +
                    "' they would change the model of every adapter (PEFT keeps a copy per adapter) (nothing was "
                    "changed)");
  }
  // The config's rank of each layer is the rank its factors have: the
  // scaling, which depends on it, is computed from the config.
  for (const std::string& path : layout.layers) {
    const std::vector<std::int64_t>& shape = source_->info(file_key(layout.factor_a(path))).shape;
    if (shape.empty()) continue;  // the transfer plan names the shape
    const std::int64_t in_file = shape[0];
    if (in_file != rank_for(config_, path)) {
      throw Error(ErrorCode::kCorruption, "adapter '" + dir + "': its config gives '" + path + "' rank " +
                                              std::to_string(rank_for(config_, path)) + ", its factors have rank " +
                                              std::to_string(in_file) + " (nothing was changed)");
    }
  }

  // The layers the adapter fills: those armed already, or, in a model with
  // none armed, those injection would arm (planned only: nothing changes
  // until everything is checked).
  std::map<std::string, std::shared_ptr<LoraLayer>> armed;
  for (auto& [path, layer] : armed_layers(module, name_)) armed[path] = layer;
  NamedTensors targets;
  if (armed.empty()) {
    to_arm_ = plan_injection(module, config_, name_);
    for (const PlannedLayer& t : to_arm_) armed[t.path] = t.layer;
  } else {
    const std::set<std::string> in_file(layout.layers.begin(), layout.layers.end());
    for (const auto& [path, layer] : armed) (in_file.count(path) ? to_rescale_ : to_zero_).emplace_back(path, layer);
  }
  std::vector<std::string> absent, merged, other_rank, other_kind, dora_left;
  for (const auto& [path, layer] : to_zero_) {
    if (layer->merged()) merged.push_back(path);
    if (layer->use_dora()) dora_left.push_back(path);
  }
  for (const std::string& path : layout.layers) {
    auto it = armed.find(path);
    if (it == armed.end()) {
      absent.push_back(path);
    } else if (to_arm_.empty() && it->second->merged()) {
      merged.push_back(path);
    } else if (const int in_file = rank_for(config_, path), armed_rank = it->second->adapter_options().r;
               to_arm_.empty() && (in_file > armed_rank || (in_file < armed_rank && !it->second->pads_rank()))) {
      other_rank.push_back("'" + path + "' (" + std::to_string(in_file) + " in the file, " +
                           std::to_string(armed_rank) + " armed" +
                           (in_file < armed_rank ? ", a grouped convolution, which is not padded" : "") + ")");
    } else if (to_arm_.empty() && (it->second->use_dora() != config_.use_dora ||
                                   it->second->adapter_options().lora_bias != config_.lora_bias)) {
      other_kind.push_back("'" + path + "' (" +
                           kind_of(it->second->use_dora(), it->second->adapter_options().lora_bias) + ")");
    }
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
  if (!merged.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "cannot load adapter '" + dir + "' into merged layers: " + list_paths(merged) +
                    " (their weights hold the merged adapter, which a load would not take out; hint: unmerge_lora "
                    "first) (nothing was changed)");
  }
  if (!dora_left.empty()) {
    throw Error(ErrorCode::kIncompatible,
                "adapter '" + dir + "' leaves out DoRA layers the model has armed: " + list_paths(dora_left) +
                    " (PEFT's hot swap zeroes such a layer's tensors, its magnitude too, which leaves the layer only "
                    "its bias; hint: swap in an adapter of the same layers, or load it into a model not armed yet) "
                    "(nothing was changed)");
  }
  if (!other_rank.empty()) {
    throw Error(ErrorCode::kIncompatible,
                "adapter '" + dir + "' does not fit the rank of the armed layers: " + list_paths(other_rank) +
                    " (hint: load it into a model that is not armed yet, which arms the file's ranks; or arm the "
                    "layers with the largest rank of the adapters you swap, as PEFT's "
                    "prepare_model_for_compiled_hotswap pads to: an adapter of a smaller rank fills their first rows "
                    "and columns) (nothing was changed)");
  }
  if (!to_arm_.empty()) {
    targets = planned_factors(to_arm_);
  } else {
    // Each armed layer the file adapts at the file's rank (its first rows /
    // columns when the layer was armed larger).
    for (const auto& [path, layer] : to_rescale_) {
      for (const auto& [name, t] : layer->lora_tensors_at(rank_for(config_, path))) {
        targets.emplace_back(path + "." + name, t);
      }
    }
  }
  if (!other_kind.empty()) {
    throw Error(ErrorCode::kIncompatible,
                "adapter '" + dir + "' is a " + kind_of(config_.use_dora, config_.lora_bias) +
                    " adapter but the armed layers are not: " + list_paths(other_kind) +
                    " (hint: load it into a model that is not armed yet, which arms the file's kind) (nothing "
                    "was changed)");
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
  for (const auto& [path, m] : model_modules(module)) {
    if (!is_module_to_save(config_, path)) continue;
    for (const auto& p : m->named_parameters(/*recurse=*/true)) {
      const std::string name = path + "." + p.key();
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
    arm(*module_, config_, to_arm_, name_);
    plan_->retarget(live_factors(armed_layers(*module_, name_)));
    to_arm_.clear();
  }
  TransferReport report = plan_->apply();
  // What the adapter's layers now compute is the file's adapter.
  const auto config = std::make_shared<const LoraConfig>(config_);
  for (const auto& [path, layer] : armed_layers(*module_, name_)) layer->set_adapter_config(config);
  // The file's scaling and rank with its factors: the layer now computes
  // the file's adapter (checked in the constructor: none merged, ranks that
  // fit). What lies past a smaller rank is zeroed, as PEFT's hot swap does.
  for (const auto& [path, layer] : to_rescale_) {
    const int rank = rank_for(config_, path);
    layer->zero_beyond(rank);
    layer->set_scaling(alpha_for(config_, path), config_.use_rslora, config_.lora_dropout, rank);
  }
  // The armed layers the file leaves out compute their base, as after
  // PEFT's hot swap: every LoRA tensor zeroed (checked: none merged or DoRA).
  c10::NoGradGuard no_grad;
  std::vector<std::string> zeroed;
  for (const auto& [path, layer] : to_zero_) {
    for (auto& [name, t] : layer->lora_tensors()) t.zero_();
    zeroed.push_back(path);
  }
  if (!zeroed.empty()) log_info("the adapter leaves out armed layers, zeroed: {}", list_paths(zeroed));
  return report;
}

}  // namespace lorakeep::detail
