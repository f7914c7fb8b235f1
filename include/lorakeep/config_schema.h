// lorakeep/config_schema.h: an application's own sections of the run
// configuration, in the same YAML file as lorakeep's and checked as strictly.
// The application declares each section and key, bound to a field it owns;
// load_run_config (config.h) fills the fields. Includes neither LibTorch nor
// a YAML library.
//
//   TrainingSettings t;
//   lorakeep::ConfigSchema app;
//   app.section("training")
//       .integer("max_steps", &t.max_steps, 1)
//       .real("learning_rate", &t.learning_rate, 0, 10)
//       .check([&](const lorakeep::SectionCheck& s) {
//         if (t.warmup_steps > t.max_steps) s.fail("warmup_steps", "must be at most max_steps");
//       });
//   lorakeep::RunConfig run = lorakeep::load_run_config(path, app);
//
// A section or key that neither lorakeep nor the application declares, a
// value of the wrong type or out of range is an Error(kInvalidArgument) whose
// message starts with "<file>:<line>:<column>:" and names the key
// ("training.max_steps"), with a did-you-mean hint for a misspelt name.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lorakeep {

namespace detail {
class SectionReader;  // the YAML side, private to the library
struct SchemaAccess;  // how the library reads the declarations
}  // namespace detail

// What a section's rule is given: where to point when it refuses the values.
class SectionCheck {
 public:
  // Throws Error(kInvalidArgument) "<file>:<line>:<column>: '<section>.<key>'
  // <why>" at the key's value, or at the section if the file leaves it out.
  [[noreturn]] void fail(const std::string& key, const std::string& why) const;
  // The same about the whole section: "'<section>' <why>".
  [[noreturn]] void fail(const std::string& why) const;
  // Whether the file sets `key` (the field does not hold its default).
  bool has(const std::string& key) const;

 private:
  friend struct detail::SchemaAccess;
  explicit SectionCheck(const detail::SectionReader& reader) : reader_(reader) {}
  const detail::SectionReader& reader_;
};

// One section: its keys, each bound to a field that must outlive the parse.
// A key the file leaves out keeps the field's value. Declaring a key twice
// throws Error(kInvalidArgument).
class ConfigSection {
 public:
  explicit ConfigSection(std::string name);

  ConfigSection& integer(const std::string& key, int* field, long long lo = std::numeric_limits<int>::min(),
                         long long hi = std::numeric_limits<int>::max());
  ConfigSection& integer(const std::string& key, std::int64_t* field,
                         long long lo = std::numeric_limits<long long>::min(),
                         long long hi = std::numeric_limits<long long>::max());
  ConfigSection& integer(const std::string& key, std::uint64_t* field);  // any non-negative integer
  // A finite number in [lo, hi].
  ConfigSection& real(const std::string& key, double* field, double lo = std::numeric_limits<double>::lowest(),
                      double hi = std::numeric_limits<double>::max());
  ConfigSection& boolean(const std::string& key, bool* field);
  ConfigSection& boolean(const std::string& key, std::optional<bool>* field);
  ConfigSection& text(const std::string& key, std::string* field);
  ConfigSection& text(const std::string& key, std::optional<std::string>* field);
  ConfigSection& strings(const std::string& key, std::vector<std::string>* field);
  // 67108864, "64MiB", "1GB" (Hugging Face's units), at least `lo` bytes.
  ConfigSection& bytes(const std::string& key, std::uint64_t* field, std::uint64_t lo = 0);
  // One of `allowed`, stored as written.
  ConfigSection& choice(const std::string& key, std::string* field, std::vector<std::string> allowed);
  // One of the names of `allowed`, stored as its value (an enum).
  template <class E>
  ConfigSection& choice(const std::string& key, E* field, std::vector<std::pair<std::string, E>> allowed) {
    std::vector<std::string> names;
    for (const auto& a : allowed) names.push_back(a.first);
    return choice_index(key, std::move(names), [field, allowed](std::size_t i) { *field = allowed[i].second; });
  }
  // The file must have this section.
  ConfigSection& required();
  // A rule over the section's values once every key is read (cross-key
  // constraints such as n_embd % n_head == 0); runs when the file has the
  // section. Refuses by calling one of `check`'s fail().
  ConfigSection& check(std::function<void(const SectionCheck& check)> rule);

  const std::string& name() const { return name_; }

 private:
  friend struct detail::SchemaAccess;
  using Reader = std::function<void(detail::SectionReader&)>;
  ConfigSection& add(const std::string& key, Reader read);
  ConfigSection& choice_index(const std::string& key, std::vector<std::string> names,
                              std::function<void(std::size_t)> set);

  std::string name_;
  bool required_ = false;
  std::vector<std::pair<std::string, Reader>> keys_;
  std::vector<std::function<void(const SectionCheck&)>> checks_;
};

// The sections an application adds to lorakeep's (checkpoint, lora,
// transfer), which it may not declare again.
class ConfigSchema {
 public:
  // The section `name`, declared on first use. Throws Error(kInvalidArgument)
  // for an empty name.
  ConfigSection& section(const std::string& name);

 private:
  friend struct detail::SchemaAccess;
  std::deque<ConfigSection> sections_;  // a deque: references stay valid as sections are added
};

}  // namespace lorakeep
