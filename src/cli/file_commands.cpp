// inspect, verify, convert: commands about one file, set or directory.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "lorakeep/error.h"
#include "lorakeep/lora_config.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "base/file_names.h"
#include "base/text.h"
#include "checkpoint/run_dir.h"
#include "cli/commands.h"
#include "io/read_file.h"

namespace lorakeep::cli {
namespace {

nlohmann::json shape_json(const std::vector<std::int64_t>& shape) {
  nlohmann::json j = nlohmann::json::array();
  for (std::int64_t d : shape) j.push_back(d);
  return j;
}

// A named adapter in PEFT's layout: a folder of an adapter directory.
struct NamedAdapter {
  std::string name, path;
  LoraConfig config;
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
};

// The named adapters in the folders of `dir` (none when it is not a
// directory), by name. Throws as parse_adapter_config and open_tensor_source
// for a folder whose adapter is broken.
std::vector<NamedAdapter> named_adapters(const std::string& dir) {
  namespace fs = boost::filesystem;
  std::vector<NamedAdapter> out;
  boost::system::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path config_path = it->path() / detail::kAdapterConfigFile;
    if (!fs::is_directory(it->path(), ec) || !fs::exists(config_path, ec)) continue;
    NamedAdapter a;
    a.name = it->path().filename().string();
    a.path = it->path().string();
    a.config = parse_adapter_config(detail::read_small_file(config_path.string(), 16ull << 20), config_path.string());
    const auto source = open_tensor_source(a.path);
    a.tensors = source->names().size();
    a.bytes = source->total_bytes();
    out.push_back(std::move(a));
  }
  std::sort(out.begin(), out.end(), [](const NamedAdapter& x, const NamedAdapter& y) { return x.name < y.name; });
  return out;
}

std::string targets_of(const LoraConfig& c) {
  if (!c.target_modules_regex.empty()) return "'" + c.target_modules_regex + "'";
  std::string out;
  for (const std::string& t : c.target_modules) out += (out.empty() ? "" : ", ") + t;
  return out;
}

int run_inspect(const std::string& path, bool json) {
  const auto source = open_tensor_source(path);
  const std::vector<NamedAdapter> named = named_adapters(path);
  if (json) {
    nlohmann::json j;
    j["path"] = source->path();
    j["kind"] = source->kind();
    j["metadata"] = source->metadata();
    j["tensors"] = nlohmann::json::array();
    for (const std::string& name : source->names()) {
      const TensorInfo& t = source->info(name);
      nlohmann::json row = {{"name", name},
                            {"dtype", std::string(dtype_name(t.dtype))},
                            {"shape", shape_json(t.shape)},
                            {"bytes", t.byte_size()}};
      if (source->file_of(name) != source->path()) row["file"] = source->file_of(name);
      j["tensors"].push_back(std::move(row));
    }
    j["total_bytes"] = source->total_bytes();
    if (!named.empty()) {
      j["named_adapters"] = nlohmann::json::array();
      for (const NamedAdapter& a : named) {
        j["named_adapters"].push_back({{"name", a.name},
                                       {"path", a.path},
                                       {"r", a.config.r},
                                       {"lora_alpha", a.config.lora_alpha},
                                       {"target_modules", targets_of(a.config)},
                                       {"tensors", a.tensors},
                                       {"total_bytes", a.bytes}});
      }
    }
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return kExitOk;
  }
  std::printf("%s: %s, %zu tensors, %s\n", source->path().c_str(), source->kind().c_str(), source->names().size(),
              detail::format_bytes(source->total_bytes()).c_str());
  if (!source->metadata().empty()) {
    std::printf("metadata:\n");
    for (const auto& [k, v] : source->metadata()) std::printf("  %s: %s\n", k.c_str(), v.c_str());
  }
  std::size_t width = 4;
  for (const std::string& name : source->names()) width = std::max(width, name.size());
  std::printf("%-*s  %-7s  %-20s  %s\n", static_cast<int>(width), "name", "dtype", "shape", "bytes");
  for (const std::string& name : source->names()) {
    const TensorInfo& t = source->info(name);
    std::printf("%-*s  %-7s  %-20s  %llu\n", static_cast<int>(width), name.c_str(),
                std::string(dtype_name(t.dtype)).c_str(), format_shape(t.shape).c_str(),
                static_cast<unsigned long long>(t.byte_size()));
  }
  if (!named.empty()) {
    std::printf("named adapters (PEFT's layout: each in its folder; this directory's is \"default\"):\n");
    for (const NamedAdapter& a : named) {
      std::printf("  %s: r=%d, lora_alpha=%g, %zu tensors, %s, targets %s\n", a.name.c_str(), a.config.r,
                  a.config.lora_alpha, a.tensors, detail::format_bytes(a.bytes).c_str(), targets_of(a.config).c_str());
    }
  }
  return kExitOk;
}

bool is_checkpoint_or_run_dir(const std::string& path) {
  namespace fs = boost::filesystem;
  boost::system::error_code ec;
  if (!fs::is_directory(path, ec)) return false;
  if (fs::exists(fs::path(path) / detail::kManifestFile, ec)) return true;
  if (detail::parse_checkpoint_dir_name(fs::path(path).filename().string())) return true;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (detail::parse_checkpoint_dir_name(it->path().filename().string())) return true;
  }
  return false;
}

int run_verify(const std::string& path) {
  if (is_checkpoint_or_run_dir(path)) {
    for (const std::string& line : detail::verify_checkpoints(path)) std::printf("%s\n", line.c_str());
    return kExitOk;
  }
  const auto source = open_tensor_source(path);
  std::printf("ok: %s (%s, %zu tensors, %s)\n", source->path().c_str(), source->kind().c_str(), source->names().size(),
              detail::format_bytes(source->total_bytes()).c_str());
  return kExitOk;
}

int run_convert(const std::string& in, const std::string& out) {
  const auto source = open_tensor_source(in);
  NamedTensors tensors;
  for (const std::string& name : source->names()) tensors.emplace_back(name, source->tensor(name));
  const SaveReport report = save_safetensors(out, tensors, {{"format", "pt"}});
  std::printf("wrote %s: %zu tensors, %s\n", report.path.c_str(), report.tensors.size(),
              detail::format_bytes(report.file_size).c_str());
  return kExitOk;
}

}  // namespace

void add_file_commands(CLI::App& app, std::vector<Command>& commands) {
  {
    auto* sub = app.add_subcommand("inspect", "list the tensors (name, dtype, shape, bytes) and metadata of a "
                                              "file, sharded set, adapter directory or checkpoint");
    auto path = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    sub->add_option("PATH", *path, "file, index, or directory")->required();
    sub->add_flag("--json", *json, "print JSON");
    commands.push_back({sub, [path, json] { return run_inspect(*path, *json); }, json, path});
  }
  {
    auto* sub = app.add_subcommand("verify", "check the format and, for checkpoints, every checksum");
    auto path = std::make_shared<std::string>();
    sub->add_option("PATH", *path, "file, index, or directory")->required();
    commands.push_back({sub, [path] { return run_verify(*path); }, nullptr, path});
  }
  {
    auto* sub = app.add_subcommand("convert", "convert a .bin / .pt state dict to safetensors");
    auto in = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    sub->add_option("IN", *in, ".bin or .pt file")->required();
    sub->add_option("OUT", *out, "safetensors file to write")->required();
    commands.push_back({sub, [in, out] { return run_convert(*in, *out); }, nullptr, in});
  }
}

}  // namespace lorakeep::cli
