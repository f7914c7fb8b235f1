#include "format/shard_index.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "lorakeep/error.h"
#include "format/json.h"

namespace lorakeep::detail {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kCorruption, "invalid shard index '" + path + "': " + why);
}

bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

ShardIndex parse_shard_index(std::string_view text, const std::string& path) {
  const OrderedJson j = parse_json_strict(text, path);
  if (!j.is_object()) fail(path, "the top level must be a JSON object");
  ShardIndex index;
  if (auto m = j.find("metadata"); m != j.end() && !m->is_null()) {
    if (!m->is_object()) fail(path, "'metadata' must be an object");
    if (auto t = m->find("total_size"); t != m->end()) {
      // Some writers store total_size as a float of an integral value.
      if (t->is_number_unsigned()) {
        index.total_size = t->get<std::uint64_t>();
      } else if (const double d = t->is_number_float() ? t->get<double>() : -1;
                 d >= 0 && d < 18446744073709551616.0 && d == std::floor(d)) {  // below 2^64: the cast is defined
        index.total_size = static_cast<std::uint64_t>(d);
      } else {
        fail(path, "'metadata.total_size' must be a non-negative integer");
      }
    }
  }
  auto w = j.find("weight_map");
  if (w == j.end()) fail(path, "there is no 'weight_map' (hint: is this a sharded-checkpoint index?)");
  if (!w->is_object()) fail(path, "'weight_map' must be an object");
  std::set<std::string> files;
  for (auto it = w->begin(); it != w->end(); ++it) {
    if (!it.value().is_string()) fail(path, "'weight_map' entry '" + it.key() + "' must be a file name string");
    const std::string file = it.value().get<std::string>();
    if (!is_plain_file_name(file)) {
      fail(path, "'weight_map' entry '" + it.key() + "' names '" + file +
                     "', which is not a plain file name in the index's directory");
    }
    index.weight_map.emplace_back(it.key(), file);
    files.insert(file);
  }
  index.shard_files.assign(files.begin(), files.end());
  return index;
}

std::string render_shard_index(std::uint64_t total_size,
                               const std::vector<std::pair<std::string, std::string>>& weight_map) {
  nlohmann::json j;  // std::map-backed: keys come out sorted, as json.dumps(sort_keys=True)
  j["metadata"]["total_size"] = total_size;
  j["weight_map"] = nlohmann::json::object();
  for (const auto& [key, file] : weight_map) j["weight_map"][key] = file;
  return j.dump(2) + "\n";
}

}  // namespace lorakeep::detail
