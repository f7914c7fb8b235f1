// The YAML side of the run configuration: one mapping of the file read key
// by key (SectionReader), and the walk over every declared section. Private
// to train/: yaml-cpp stays out of the public headers.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "lorakeep/config_schema.h"

namespace lorakeep::detail {

// "<file>:<line>:<column>: ", or "<file>: " where yaml-cpp has no position.
std::string where(const std::string& file, const YAML::Mark& mark);

// One mapping of the file: values are read by key, and whatever is left at
// the end is an unknown key.
class SectionReader {
 public:
  // `name` is "" for the top level.
  SectionReader(const YAML::Node& node, std::string name, const std::string& file);

  [[noreturn]] void fail(const YAML::Node& at, const std::string& why) const;
  [[noreturn]] void fail_key(const YAML::Node& at, const std::string& key, const std::string& why) const;

  // "lora.r" for "r" in lora.
  std::string path(const std::string& key) const { return name_.empty() ? key : name_ + "." + key; }

  // `key` is known: finish() accepts it and suggests it for a near miss.
  void declare(const std::string& key) { known_.insert(key); }
  // The value at `key`, or an undefined node if absent. Marks it read.
  YAML::Node take(const std::string& key);
  // The value at `key`, undefined if absent, without inserting it (the
  // non-const operator[] would).
  YAML::Node at(const std::string& key) const;

  // Reads a scalar at `key` into *out; false if absent or null.
  template <class T>
  bool scalar(const std::string& key, T* out, const std::string& what) {
    const YAML::Node v = take(key);
    if (!v || v.IsNull()) return false;
    if (!v.IsScalar()) fail_key(v, key, "must be " + what);
    try {
      *out = v.as<T>();
    } catch (const YAML::Exception&) {
      fail_key(v, key, "must be " + what + ", not '" + v.Scalar() + "'");
    }
    return true;
  }

  // [lo, hi] within [tmin, tmax], the range of the field's type.
  void integer(const std::string& key, long long* out, long long lo, long long hi, long long tmin, long long tmax);
  void unsigned64(const std::string& key, std::uint64_t* out);
  void real(const std::string& key, double* out, double lo, double hi);
  void strings(const std::string& key, std::vector<std::string>* out);
  void bytes(const std::string& key, std::uint64_t* out, std::uint64_t lo);
  // The index of the value in `names`; false if absent.
  bool choice(const std::string& key, const std::vector<std::string>& names, std::size_t* index);

  const YAML::Node& node() const { return node_; }

  // Every key not declared is a mistake; suggests the nearest known one.
  void finish() const;

 private:
  YAML::Node node_;
  std::string name_;
  const std::string& file_;
  std::set<std::string> known_;
};

// Reads `root` against lorakeep's sections (`own`) and the application's
// (`app`): first any section neither declares, then each declared section
// in order (its keys, its unknown keys, its rules).
void read_sections(const YAML::Node& root, const std::string& file, const ConfigSchema& own, const ConfigSchema& app);

// The library's view of the declarations.
struct SchemaAccess {
  // A key whose value the public kinds cannot describe (lorakeep's
  // list-or-regex and pattern maps).
  static ConfigSection& custom(ConfigSection& section, const std::string& key,
                               std::function<void(SectionReader&)> read) {
    return section.add(key, std::move(read));
  }
  static const std::deque<ConfigSection>& sections(const ConfigSchema& schema) { return schema.sections_; }
  static bool required(const ConfigSection& section) { return section.required_; }
  // The section's keys, its unknown keys, then its rules.
  static void read(const ConfigSection& section, SectionReader& reader);
};

}  // namespace lorakeep::detail
