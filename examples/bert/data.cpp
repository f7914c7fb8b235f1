#include "data.h"

#include <algorithm>
#include <fstream>
#include <random>

#include "lorakeep/error.h"

namespace bert {
namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

std::vector<std::size_t> permutation(std::size_t n, std::mt19937_64& gen) {
  std::vector<std::size_t> p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = i;
  for (std::size_t i = n; i > 1; --i) std::swap(p[i - 1], p[gen() % i]);
  return p;
}

std::vector<std::string> read_fortunes(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw lorakeep::Error(lorakeep::ErrorCode::kNotFound,
                          "cannot open '" + path +
                              "' (hint: Debian's fortunes files come with the packages "
                              "fortunes-min and fortunes, which scripts/install-deps.sh installs)");
  }
  std::vector<std::string> out;
  std::string line, text;
  auto flush = [&] {
    std::string t = trim(text);
    if (!t.empty()) out.push_back(std::move(t));
    text.clear();
  };
  while (std::getline(in, line)) {
    if (line == "%") {
      flush();
    } else {
      text += line;
      text += '\n';
    }
  }
  flush();
  return out;
}

Dataset make_dataset(const std::vector<std::string>& files, int eval_per_class, int train_per_class,
                     std::uint64_t seed) {
  Dataset d;
  std::vector<std::vector<std::string>> drawn;
  std::mt19937_64 gen(seed);
  std::size_t smallest = SIZE_MAX;
  for (const std::string& f : files) {
    std::vector<std::string> all = read_fortunes(f);
    if (all.size() <= static_cast<std::size_t>(eval_per_class)) {
      throw lorakeep::Error(lorakeep::ErrorCode::kInvalidArgument, "'" + f + "' has " + std::to_string(all.size()) +
                                                                       " fortunes, not more than eval_per_class (" +
                                                                       std::to_string(eval_per_class) +
                                                                       ") (hint: lower data.eval_per_class)");
    }
    std::vector<std::string> shuffled;
    for (std::size_t i : permutation(all.size(), gen)) shuffled.push_back(std::move(all[i]));
    d.class_names.push_back(f.substr(f.find_last_of('/') + 1));
    d.class_sizes.push_back(shuffled.size());
    smallest = std::min(smallest, shuffled.size() - eval_per_class);
    drawn.push_back(std::move(shuffled));
  }
  std::size_t n_train = train_per_class > 0 ? static_cast<std::size_t>(train_per_class) : smallest;
  if (n_train > smallest) {
    throw lorakeep::Error(lorakeep::ErrorCode::kInvalidArgument,
                          "train_per_class is " + std::to_string(n_train) + " but the smallest class has " +
                              std::to_string(smallest) +
                              " fortunes left after eval (hint: lower data.train_per_class, "
                              "or 0 for as many as every class has)");
  }
  for (std::size_t c = 0; c < drawn.size(); ++c) {
    const auto label = static_cast<std::int64_t>(c);
    for (std::size_t i = 0; i < drawn[c].size() && i < eval_per_class + n_train; ++i) {
      (i < static_cast<std::size_t>(eval_per_class) ? d.eval : d.train).push_back({drawn[c][i], label});
    }
  }
  std::vector<Example> train;
  for (std::size_t i : permutation(d.train.size(), gen)) train.push_back(std::move(d.train[i]));
  d.train = std::move(train);
  return d;
}

}  // namespace bert
