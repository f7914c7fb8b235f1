// The declarations of run-configuration sections and how a file is read
// against them; lorakeep's own sections (config.cpp) use the same path.
#include "lorakeep/config_schema.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "lorakeep/error.h"
#include "base/text.h"
#include "train/config_reader.h"

namespace lorakeep {
namespace detail {
namespace {

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// "at least 1", "in [0, 10]": the bounds that are not the type's own.
template <class T>
std::string range(T lo, T hi, T tmin, T tmax, std::string (*show)(T)) {
  if (hi >= tmax) return "at least " + show(lo);
  if (lo <= tmin) return "at most " + show(hi);
  return "in [" + show(lo) + ", " + show(hi) + "]";
}

std::string show_integer(long long v) { return std::to_string(v); }
std::string show_real(double v) { return number(v); }

}  // namespace

std::string where(const std::string& file, const YAML::Mark& mark) {
  if (mark.is_null()) return file + ": ";
  return file + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": ";
}

SectionReader::SectionReader(const YAML::Node& node, std::string name, const std::string& file)
    : node_(node), name_(std::move(name)), file_(file) {
  if (node_ && !node_.IsNull() && !node_.IsMap()) fail(node_, "must be a mapping of keys to values");
}

void SectionReader::fail(const YAML::Node& at, const std::string& why) const {
  const std::string what = name_.empty() ? "the run configuration " : "'" + name_ + "' ";
  throw Error(ErrorCode::kInvalidArgument, where(file_, at.Mark()) + what + why);
}

void SectionReader::fail_key(const YAML::Node& at, const std::string& key, const std::string& why) const {
  throw Error(ErrorCode::kInvalidArgument, where(file_, at.Mark()) + "'" + path(key) + "' " + why);
}

YAML::Node SectionReader::take(const std::string& key) {
  known_.insert(key);
  if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return at(key);
}

YAML::Node SectionReader::at(const std::string& key) const {
  if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  const YAML::Node& map = node_;
  return map[key];
}

void SectionReader::integer(const std::string& key, long long* out, long long lo, long long hi, long long tmin,
                            long long tmax) {
  long long v = *out;
  if (scalar(key, &v, "an integer") && (v < lo || v > hi)) {
    fail_key(at(key), key, "must be " + range(lo, hi, tmin, tmax, show_integer) + ", not " + std::to_string(v));
  }
  *out = v;
}

void SectionReader::unsigned64(const std::string& key, std::uint64_t* out) {
  unsigned long long v = *out;
  if (scalar(key, &v, "a non-negative integer")) *out = v;
}

void SectionReader::real(const std::string& key, double* out, double lo, double hi) {
  constexpr double kMin = std::numeric_limits<double>::lowest(), kMax = std::numeric_limits<double>::max();
  double v = *out;
  if (scalar(key, &v, "a number") && (!std::isfinite(v) || v < lo || v > hi)) {
    const std::string bounds = lo <= kMin && hi >= kMax ? "finite" : range(lo, hi, kMin, kMax, show_real);
    fail_key(at(key), key, "must be " + bounds + ", not " + at(key).Scalar());
  }
  *out = v;
}

void SectionReader::strings(const std::string& key, std::vector<std::string>* out) {
  const YAML::Node v = take(key);
  if (!v || v.IsNull()) return;
  if (!v.IsSequence()) fail_key(v, key, "must be a list of strings");
  out->clear();
  for (const YAML::Node& item : v) {
    if (!item.IsScalar()) fail_key(item, key, "must be a list of strings");
    out->push_back(item.Scalar());
  }
}

void SectionReader::bytes(const std::string& key, std::uint64_t* out, std::uint64_t lo) {
  const YAML::Node v = take(key);
  if (!v || v.IsNull()) return;
  std::uint64_t n = 0;
  if (!v.IsScalar() || !parse_byte_size(v.Scalar(), &n)) {
    fail_key(v, key,
             "must be a byte size such as 67108864, 64MiB or 1GB, not '" + (v.IsScalar() ? v.Scalar() : "") + "'");
  }
  if (n < lo) fail_key(v, key, "must be at least " + std::to_string(lo) + " bytes, not " + v.Scalar());
  *out = n;
}

bool SectionReader::choice(const std::string& key, const std::vector<std::string>& names, std::size_t* index) {
  std::string s;
  if (!scalar(key, &s, "a string")) return false;
  const auto it = std::find(names.begin(), names.end(), s);
  if (it == names.end()) {
    std::vector<std::string> sorted = names;
    std::sort(sorted.begin(), sorted.end());
    std::string options;
    for (const std::string& name : sorted) options += (options.empty() ? "" : ", ") + name;
    fail_key(at(key), key, "must be one of " + options + ", not '" + s + "'");
  }
  *index = static_cast<std::size_t>(it - names.begin());
  return true;
}

void SectionReader::finish() const {
  if (!node_ || !node_.IsMap()) return;
  for (const auto& kv : node_) {
    const std::string key = kv.first.Scalar();
    if (known_.count(key)) continue;
    std::string hint;
    std::size_t best = 3;
    for (const std::string& k : known_) {
      const std::size_t d = edit_distance(key, k);
      if (d < best) best = d, hint = k;
    }
    throw Error(ErrorCode::kInvalidArgument, where(file_, kv.first.Mark()) + "unknown key '" + path(key) + "'" +
                                                 (hint.empty() ? "" : " (hint: did you mean '" + path(hint) + "'?)"));
  }
}

void SchemaAccess::read(const ConfigSection& section, SectionReader& reader) {
  for (const auto& key : section.keys_) reader.declare(key.first);
  for (const auto& [key, read] : section.keys_) read(reader);
  reader.finish();
  const SectionCheck check(reader);
  for (const auto& rule : section.checks_) rule(check);
}

void read_sections(const YAML::Node& root, const std::string& file, const ConfigSchema& own, const ConfigSchema& app) {
  std::vector<const ConfigSection*> sections;
  for (const ConfigSection& s : SchemaAccess::sections(own)) sections.push_back(&s);
  for (const ConfigSection& s : SchemaAccess::sections(app)) {
    for (const ConfigSection& o : SchemaAccess::sections(own)) {
      if (o.name() == s.name()) {
        throw Error(ErrorCode::kInvalidArgument, "the application declares the section '" + s.name() +
                                                     "', which is lorakeep's own (hint: name it differently)");
      }
    }
    sections.push_back(&s);
  }
  if (!root.IsMap()) {
    std::string names;
    for (const ConfigSection* s : sections) names += (names.empty() ? "" : ", ") + s->name();
    throw Error(ErrorCode::kInvalidArgument,
                where(file, root.Mark()) + "the run configuration must be a mapping with the sections " + names);
  }
  SectionReader top(root, "", file);
  // Unknown sections first: a misspelt 'checkpont' gets its hint, not "needs a 'checkpoint' section".
  for (const ConfigSection* s : sections) top.declare(s->name());
  top.finish();
  for (const ConfigSection* s : sections) {
    const YAML::Node node = top.at(s->name());
    if (!node || node.IsNull()) {
      if (SchemaAccess::required(*s)) top.fail(root, "needs a '" + s->name() + "' section");
      continue;
    }
    SectionReader reader(node, s->name(), file);
    SchemaAccess::read(*s, reader);
  }
}

}  // namespace detail

void SectionCheck::fail(const std::string& key, const std::string& why) const {
  const YAML::Node v = reader_.at(key);
  reader_.fail_key(v.IsDefined() && !v.IsNull() ? v : reader_.node(), key, why);
}

void SectionCheck::fail(const std::string& why) const { reader_.fail(reader_.node(), why); }

bool SectionCheck::has(const std::string& key) const {
  const YAML::Node v = reader_.at(key);
  return v.IsDefined() && !v.IsNull();
}

ConfigSection::ConfigSection(std::string name) : name_(std::move(name)) {
  if (name_.empty()) throw Error(ErrorCode::kInvalidArgument, "a config section needs a name");
}

ConfigSection& ConfigSection::add(const std::string& key, Reader read) {
  for (const auto& k : keys_) {
    if (k.first == key) {
      throw Error(ErrorCode::kInvalidArgument, "config key '" + name_ + "." + key + "' is declared twice");
    }
  }
  keys_.emplace_back(key, std::move(read));
  return *this;
}

ConfigSection& ConfigSection::integer(const std::string& key, int* field, long long lo, long long hi) {
  return add(key, [=](detail::SectionReader& r) {
    long long v = *field;
    r.integer(key, &v, lo, hi, std::numeric_limits<int>::min(), std::numeric_limits<int>::max());
    *field = static_cast<int>(v);
  });
}

ConfigSection& ConfigSection::integer(const std::string& key, std::int64_t* field, long long lo, long long hi) {
  return add(key, [=](detail::SectionReader& r) {
    long long v = *field;
    r.integer(key, &v, lo, hi, std::numeric_limits<long long>::min(), std::numeric_limits<long long>::max());
    *field = v;
  });
}

ConfigSection& ConfigSection::integer(const std::string& key, std::uint64_t* field) {
  return add(key, [=](detail::SectionReader& r) { r.unsigned64(key, field); });
}

ConfigSection& ConfigSection::real(const std::string& key, double* field, double lo, double hi) {
  return add(key, [=](detail::SectionReader& r) { r.real(key, field, lo, hi); });
}

ConfigSection& ConfigSection::boolean(const std::string& key, bool* field) {
  return add(key, [=](detail::SectionReader& r) { r.scalar(key, field, "true or false"); });
}

ConfigSection& ConfigSection::boolean(const std::string& key, std::optional<bool>* field) {
  return add(key, [=](detail::SectionReader& r) {
    bool v = false;
    if (r.scalar(key, &v, "true or false")) *field = v;
  });
}

ConfigSection& ConfigSection::text(const std::string& key, std::string* field) {
  return add(key, [=](detail::SectionReader& r) { r.scalar(key, field, "a string"); });
}

ConfigSection& ConfigSection::text(const std::string& key, std::optional<std::string>* field) {
  return add(key, [=](detail::SectionReader& r) {
    std::string v;
    if (r.scalar(key, &v, "a string")) *field = v;
  });
}

ConfigSection& ConfigSection::strings(const std::string& key, std::vector<std::string>* field) {
  return add(key, [=](detail::SectionReader& r) { r.strings(key, field); });
}

ConfigSection& ConfigSection::bytes(const std::string& key, std::uint64_t* field, std::uint64_t lo) {
  return add(key, [=](detail::SectionReader& r) { r.bytes(key, field, lo); });
}

ConfigSection& ConfigSection::choice(const std::string& key, std::string* field, std::vector<std::string> allowed) {
  return choice_index(key, allowed, [field, allowed](std::size_t i) { *field = allowed[i]; });
}

ConfigSection& ConfigSection::choice_index(const std::string& key, std::vector<std::string> names,
                                           std::function<void(std::size_t)> set) {
  return add(key, [key, names = std::move(names), set = std::move(set)](detail::SectionReader& r) {
    std::size_t i = 0;
    if (r.choice(key, names, &i)) set(i);
  });
}

ConfigSection& ConfigSection::required() {
  required_ = true;
  return *this;
}

ConfigSection& ConfigSection::check(std::function<void(const SectionCheck&)> rule) {
  checks_.push_back(std::move(rule));
  return *this;
}

ConfigSection& ConfigSchema::section(const std::string& name) {
  for (ConfigSection& s : sections_) {
    if (s.name() == name) return s;
  }
  return sections_.emplace_back(name);
}

}  // namespace lorakeep
