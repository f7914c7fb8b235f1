// The BERT example's data: Debian's fortunes files as classes (a fortune's
// label is the file it comes from), the same number of texts from each,
// split into train and eval by a fixed seed. No LibTorch.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace bert {

struct Example {
  std::string text;
  std::int64_t label = 0;
};

struct Dataset {
  std::vector<std::string> class_names;  // the files' names, by label
  std::vector<std::size_t> class_sizes;  // fortunes in each file
  std::vector<Example> train;            // shuffled
  std::vector<Example> eval;             // by label, then in draw order
};

// 0 .. n-1 shuffled by Fisher-Yates with the 64-bit Mersenne Twister, whose
// output the standard fixes: the same permutation with every standard library
// (std::shuffle's is not).
std::vector<std::size_t> permutation(std::size_t n, std::mt19937_64& gen);

// The fortunes of a file: the texts between lines holding only "%", trimmed,
// empty ones left out. Throws lorakeep::Error(kNotFound) naming the file, with
// a hint to run scripts/install-deps.sh.
std::vector<std::string> read_fortunes(const std::string& path);

// From each file: a permutation drawn with `seed`; its first eval_per_class
// texts go to eval, the next train_per_class (0: as many as the smallest file
// has left) to train. Throws lorakeep::Error(kInvalidArgument) if a file has
// too few texts, naming it.
Dataset make_dataset(const std::vector<std::string>& files, int eval_per_class, int train_per_class,
                     std::uint64_t seed);

}  // namespace bert
