#include "checkpoint/manifest.h"

#include <climits>
#include <cmath>
#include <limits>
#include <optional>
#include <string_view>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "format/json.h"
#include "io/checksum.h"

namespace lorakeep::detail {
namespace {

constexpr const char* kFormat = "lorakeep-checkpoint";

// The manifest checks itself: "manifest_xxh3" holds the XXH3-64 of the file's
// text with that value written as 16 zeros. Any changed byte fails.
constexpr std::string_view kSelfKey = "\"manifest_xxh3\": \"";
constexpr std::size_t kHexDigits = 16;

// Where the self-checksum's digits start, if the key is there exactly once
// with room for them.
std::optional<std::size_t> self_checksum_at(std::string_view text) {
  const std::size_t key = text.find(kSelfKey);
  if (key == std::string_view::npos || text.find(kSelfKey, key + 1) != std::string_view::npos) return std::nullopt;
  const std::size_t at = key + kSelfKey.size();
  if (text.size() < at + kHexDigits) return std::nullopt;
  return at;
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kCorruption, "invalid manifest '" + path + "': " + what);
}

nlohmann::json number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return v;
}

double read_number(const OrderedJson& v, const std::string& path, const std::string& key) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
  }
  bad(path, "'" + key + "' must be a number");
}

const OrderedJson& field(const OrderedJson& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end()) bad(path, std::string("no '") + key + "' field");
  return *it;
}

std::uint64_t read_checksum(const OrderedJson& v, const std::string& path, const std::string& key) {
  std::uint64_t out = 0;
  if (!v.is_string() || !parse_checksum(v.get<std::string>(), &out)) {
    bad(path, "'" + key + "' must be 16 lowercase hex digits");
  }
  return out;
}

// A name a checkpoint's file may have: a file of its directory, or of one
// folder in it (a named adapter's), never the manifest or a way out.
bool is_checkpoint_file(const std::string& name) {
  const auto plain = [](std::string_view part) {
    return !part.empty() && part != "." && part != ".." && part.find('/') == std::string_view::npos;
  };
  const std::size_t slash = name.find('/');
  if (slash == std::string::npos) return plain(name) && name != kManifestFile;
  return plain(std::string_view(name).substr(0, slash)) && plain(std::string_view(name).substr(slash + 1));
}

}  // namespace

std::optional<double> Manifest::metric() const {
  if (metric_for_best_model.empty()) return std::nullopt;
  auto it = metrics.find(metric_for_best_model);
  if (it == metrics.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Manifest::named_adapters() const {
  std::vector<std::string> out;
  const std::string config = std::string("/") + kAdapterConfigFile;
  for (const auto& [name, digest] : files) {
    if (name.size() > config.size() && name.compare(name.size() - config.size(), config.size(), config) == 0) {
      out.push_back(name.substr(0, name.size() - config.size()));
    }
  }
  return out;
}

std::string format_manifest(const Manifest& m) {
  nlohmann::json j;
  j["format"] = kFormat;
  j["format_version"] = m.format_version;
  j["library_version"] = m.library_version;
  j["step"] = m.step;
  j["epoch"] = number(m.epoch);
  j["metrics"] = nlohmann::json::object();
  for (const auto& [k, v] : m.metrics) j["metrics"][k] = number(v);
  j["metric_for_best_model"] = m.metric_for_best_model;
  j["greater_is_better"] = m.greater_is_better;
  j["files"] = nlohmann::json::object();
  for (const auto& [name, f] : m.files) j["files"][name] = {{"size", f.size}, {"xxh3", format_checksum(f.xxh3)}};
  j["tensors"] = nlohmann::json::object();
  for (const auto& [name, c] : m.tensors) j["tensors"][name] = format_checksum(c);
  if (!m.active_adapter.empty()) j["active_adapter"] = m.active_adapter;
  if (m.early_stopping) {
    j["early_stopping"] = {{"patience", m.early_stopping->patience},
                           {"threshold", number(m.early_stopping->threshold)},
                           {"counter", m.early_stopping->counter}};
  }
  j["created"] = m.created;
  j["manifest_xxh3"] = std::string(kHexDigits, '0');
  return seal_manifest(j.dump(2, ' ', false, nlohmann::json::error_handler_t::strict) + "\n");
}

std::string seal_manifest(std::string text) {
  const std::optional<std::size_t> at = self_checksum_at(text);
  if (!at) return text;
  text.replace(*at, kHexDigits, std::string(kHexDigits, '0'));
  text.replace(*at, kHexDigits, format_checksum(xxh3_64(text.data(), text.size())));
  return text;
}

Manifest parse_manifest(std::string_view text, const std::string& path) {
  if (!self_checksum_at(text)) bad(path, "it has no self-checksum (hint: damaged, or not written by lorakeep)");
  if (seal_manifest(std::string(text)) != text) {
    bad(path, "it fails its own checksum (hint: the manifest was damaged after it was written)");
  }
  const OrderedJson j = parse_json_strict(text, path);
  if (!j.is_object()) bad(path, "not a JSON object");
  const OrderedJson& format = field(j, "format", path);
  if (!format.is_string() || format.get<std::string>() != kFormat)
    bad(path, "'format' is not \"" + std::string(kFormat) + "\"");
  Manifest m;
  const OrderedJson& version = field(j, "format_version", path);
  if (!version.is_number_integer() || version.get<std::int64_t>() != 1) {
    throw Error(ErrorCode::kNotSupported, "manifest '" + path + "' has format_version " + version.dump() +
                                              "; this lorakeep reads version 1 (hint: written by a newer lorakeep?)");
  }
  const OrderedJson& lib = field(j, "library_version", path);
  if (!lib.is_string()) bad(path, "'library_version' must be a string");
  m.library_version = lib.get<std::string>();
  const OrderedJson& step = field(j, "step", path);
  if (!json_integer(step, &m.step, 0)) bad(path, "'step' must be a non-negative integer");
  m.epoch = read_number(field(j, "epoch", path), path, "epoch");
  const OrderedJson& metrics = field(j, "metrics", path);
  if (!metrics.is_object()) bad(path, "'metrics' must be an object");
  for (auto it = metrics.begin(); it != metrics.end(); ++it) {
    m.metrics[it.key()] = read_number(it.value(), path, "metrics." + it.key());
  }
  const OrderedJson& metric = field(j, "metric_for_best_model", path);
  if (!metric.is_string()) bad(path, "'metric_for_best_model' must be a string");
  m.metric_for_best_model = metric.get<std::string>();
  const OrderedJson& greater = field(j, "greater_is_better", path);
  if (!greater.is_boolean()) bad(path, "'greater_is_better' must be true or false");
  m.greater_is_better = greater.get<bool>();
  const OrderedJson& files = field(j, "files", path);
  if (!files.is_object()) bad(path, "'files' must be an object");
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string& name = it.key();
    if (!is_checkpoint_file(name)) bad(path, "'files' names '" + name + "', which is not a file of the checkpoint");
    const OrderedJson& f = it.value();
    if (!f.is_object()) bad(path, "'files." + name + "' must be an object");
    const OrderedJson& size = field(f, "size", path);
    if (!size.is_number_unsigned()) bad(path, "'files." + name + ".size' must be a non-negative integer");
    m.files[name] = FileDigest{size.get<std::uint64_t>(), read_checksum(field(f, "xxh3", path), path, "files." + name)};
  }
  const OrderedJson& tensors = field(j, "tensors", path);
  if (!tensors.is_object()) bad(path, "'tensors' must be an object");
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    m.tensors[it.key()] = read_checksum(it.value(), path, "tensors." + it.key());
  }
  if (auto active = j.find("active_adapter"); active != j.end()) {
    if (!active->is_string() || active->get<std::string>().empty()) {
      bad(path, "'active_adapter' must be an adapter's name");
    }
    m.active_adapter = active->get<std::string>();
  }
  if (auto es = j.find("early_stopping"); es != j.end()) {
    if (!es->is_object()) bad(path, "'early_stopping' must be an object");
    TrainingState::EarlyStoppingState state;
    std::int64_t patience = 0, counter = 0;
    if (!json_integer(field(*es, "patience", path), &patience, 0, INT32_MAX)) {
      bad(path, "'early_stopping.patience' must be a non-negative integer");
    }
    if (!json_integer(field(*es, "counter", path), &counter, 0, INT32_MAX)) {
      bad(path, "'early_stopping.counter' must be a non-negative integer");
    }
    state.patience = static_cast<int>(patience);
    state.counter = static_cast<int>(counter);
    state.threshold = read_number(field(*es, "threshold", path), path, "early_stopping.threshold");
    m.early_stopping = state;
  }
  const OrderedJson& created = field(j, "created", path);
  if (!created.is_string()) bad(path, "'created' must be a string");
  m.created = created.get<std::string>();
  return m;
}

}  // namespace lorakeep::detail
