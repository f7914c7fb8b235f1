// inject_lora, save_adapter, load_adapter: PEFT's adapter contract.
#include "lorakeep/adapter.h"

#include <algorithm>
#include <set>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/read_file.h"
#include "lora/adapter_load.h"
#include "lora/adapter_writer.h"
#include "lora/config_check.h"
#include "lora/injection.h"
#include "lora/layer_parts.h"
#include "lora/peft_keys.h"

namespace lorakeep {

namespace fs = boost::filesystem;

std::vector<std::string> inject_lora(torch::nn::Module& module, const LoraConfig& config,
                                     const std::string& adapter_name) {
  const std::vector<detail::PlannedLayer> planned = detail::plan_injection(module, config, adapter_name);
  if (const auto wrong = detail::layout_mismatches(planned, config); !wrong.empty()) {
    std::string msg = "cannot inject LoRA: the weight layout contradicts fan_in_fan_out";
    for (const std::string& w : wrong) msg += "\n  " + w;
    throw Error(ErrorCode::kInvalidArgument, msg + "\n(hint: set fan_in_fan_out to the layers' layout, as PEFT "
                                                   "corrects it; merges transpose by it) (nothing was armed)");
  }
  return detail::arm(module, config, planned, adapter_name);
}

void set_adapter(torch::nn::Module& module, const std::string& adapter_name) {
  detail::check_adapter_name(adapter_name);
  const detail::PathLayers layers = detail::lora_layers(module);
  const std::vector<std::string> names = adapter_names(module);
  if (std::find(names.begin(), names.end(), adapter_name) == names.end()) {
    throw Error(ErrorCode::kInvalidArgument, "no layer carries an adapter named '" + adapter_name +
                                                 "' (the model's adapters: " + detail::list_paths(names) + ")");
  }
  std::vector<std::string> merged;
  for (const auto& [path, layer] : layers) {
    if (layer->any_merged() && layer->active_adapter() != adapter_name) merged.push_back(path);
  }
  if (!merged.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "cannot make adapter '" + adapter_name +
                                                 "' active: these layers hold a merged adapter: " +
                                                 detail::list_paths(merged) + " (hint: unmerge_lora first)");
  }
  for (const auto& [path, layer] : layers) {
    layer->set_active_adapter(adapter_name);
    for (const std::string& name : layer->adapter_names()) {
      for (auto& [tensor, value] : layer->adapter(name)->lora_tensors()) value.set_requires_grad(name == adapter_name);
    }
  }
}

NamedTensors adapter_tensors(torch::nn::Module& module, const LoraConfig& given, const std::string& adapter_name) {
  const LoraConfig config = resolve_target_modules(module, given);  // a copy when resolved already
  detail::check_config_matches_layers(module, config, adapter_name);
  NamedTensors out;
  for (auto& [name, factor] : detail::live_factors(detail::armed_layers(module, adapter_name))) {
    out.emplace_back(detail::kPeftPrefix + name, factor);
  }
  if (!config.modules_to_save.empty()) {
    std::set<std::string> saved;
    for (const auto& [path, m] : detail::model_modules(module)) {
      if (!is_module_to_save(config, path)) continue;
      for (const auto& p : m->named_parameters(/*recurse=*/true)) {
        const std::string name = path + "." + p.key();
        if (saved.insert(name).second)
          out.emplace_back(detail::file_key({detail::PeftTensor::kWhole, name}), p.value());
      }
    }
  }
  return out;
}

std::uint64_t adapter_digest(torch::nn::Module& module, const LoraConfig& config, const std::string& adapter_name) {
  detail::Xxh3Stream hash;
  for (const auto& [name, tensor] : adapter_tensors(module, config, adapter_name)) {
    hash.update(name.data(), name.size());
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const auto dtype = static_cast<std::int64_t>(t.scalar_type());
    hash.update(&dtype, sizeof dtype);
    for (const std::int64_t d : t.sizes()) hash.update(&d, sizeof d);
    hash.update(t.data_ptr(), t.nbytes());
  }
  return hash.digest();
}

AdapterSaveReport save_adapter(const std::string& root, torch::nn::Module& module, const LoraConfig& config,
                               const std::string& adapter_name) {
  const LoraConfig saved = resolve_target_modules(module, config);
  const NamedTensors tensors = adapter_tensors(module, saved, adapter_name);
  const std::string dir = adapter_name == kDefaultAdapter ? root : (fs::path(root) / adapter_name).string();
  boost::system::error_code ec;
  if (dir != root) {  // PEFT's layout: the named adapter in a folder of the root
    fs::create_directories(root, ec);
    if (ec) throw Error(ErrorCode::kIOError, "cannot create directory '" + root + "': " + ec.message());
  }
  AdapterSaveReport report;
  if (fs::is_directory(dir, ec)) {
    const detail::WrittenAdapter written = detail::write_adapter(dir, tensors, saved, /*direct=*/false);
    report.weights = written.weights;
  } else {
    detail::StagedDirectory staged(dir);
    report.weights = detail::write_adapter(staged.path(), tensors, saved, /*direct=*/true).weights;
    staged.publish(/*replace=*/false);
  }
  report.weights.path = (fs::path(dir) / detail::kAdapterWeightsFile).string();
  report.config_path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  return report;
}

LoraConfig read_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  return parse_adapter_config(detail::read_small_file(path, 16ull << 20), path);
}

TransferReport load_adapter(const std::string& given, torch::nn::Module& module, const AdapterLoadOptions& options) {
  LoadOptions transfer;
  transfer.chunk_bytes = options.chunk_bytes;
  boost::system::error_code ec;
  const fs::path in_folder = fs::path(given) / options.adapter_name;  // PEFT's layout
  const std::string dir = options.adapter_name != kDefaultAdapter &&
                                  fs::exists(in_folder / detail::kAdapterConfigFile, ec)
                              ? in_folder.string()
                              : given;
  LoraConfig config = read_adapter_config(dir);  // refuses other PEFT types before any tensor is read
  return detail::AdapterLoad(dir, std::move(config), open_tensor_source(detail::adapter_weights_path(dir)), module,
                             transfer, options.adapter_name)
      .apply();
}

int merge_lora(torch::nn::Module& module, bool safe) {
  int n = 0;
  for (auto& [path, layer] : detail::lora_layers(module)) {
    LoraLayer* active = layer->adapter(layer->active_adapter());
    if (!active || !active->has_adapter()) continue;
    active->merge(safe);
    ++n;
  }
  return n;
}

int unmerge_lora(torch::nn::Module& module) {
  int n = 0;
  for (auto& [path, layer] : detail::lora_layers(module)) {
    for (const std::string& name : layer->adapter_names()) {
      if (!layer->adapter(name)->merged()) continue;
      layer->adapter(name)->unmerge();
      ++n;
    }
  }
  return n;
}

}  // namespace lorakeep
