// Offline merges: make-delta + merge-delta round trips, validation before
// writing, and the memory bound of a merge measured on a real process.
#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/lora.h"
#include "lorakeep/lora_config.h"
#include "lorakeep/merge.h"
#include "lorakeep/merge_lora.h"
#include "lorakeep/tensor_source.h"
#include "lorakeep/transfer.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;
constexpr std::uint64_t kMiB = 1ull << 20;

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), static_cast<std::size_t>(x.numel()) * x.element_size()) == 0;
}

// Checks that `dir` holds no temporary left by an unfinished write.
void check_no_temporaries(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    CHECK(entry.path().filename().string().find(".tmp-") == std::string::npos);
  }
}

// Writes dir/base.safetensors, `layers` F32 weights [rows, cols]
// "model.layers.<i>.weight" filled with i, and dir/adapter, a PEFT adapter of
// rank r on every one of them with A filled with `a` and B with `b`: merged,
// every element of layer i is i + alpha * a * b. A non-zero `magnitude`
// makes it a DoRA adapter with every magnitude that value.
void write_base_and_adapter(const test::TempDir& dir, int layers, std::int64_t rows, std::int64_t cols, int r,
                            double alpha, double a, double b, double magnitude = 0) {
  NamedTensors base, adapter;
  LoraConfig config;
  config.r = r;
  config.lora_alpha = alpha;
  config.use_dora = magnitude != 0;  // DoRA, every magnitude `magnitude`
  for (int i = 0; i < layers; ++i) {
    const std::string path = "model.layers." + std::to_string(i);
    base.emplace_back(path + ".weight", at::full({rows, cols}, static_cast<double>(i)));
    config.target_modules.push_back(path);
    adapter.emplace_back("base_model.model." + path + ".lora_A.weight", at::full({r, cols}, a));
    adapter.emplace_back("base_model.model." + path + ".lora_B.weight", at::full({rows, r}, b));
    if (config.use_dora) {
      adapter.emplace_back("base_model.model." + path + ".lora_magnitude_vector", at::full({rows}, magnitude));
    }
  }
  save_safetensors(dir / "base.safetensors", base);
  base.clear();
  fs::create_directories(dir / "adapter");
  save_safetensors(dir / "adapter/adapter_model.safetensors", adapter);
  std::ofstream(dir / "adapter/adapter_config.json") << format_adapter_config(config);
}

// The lorakeep CLI's peak RSS running `args` (from /usr/bin/time -v).
std::uint64_t cli_peak_rss(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/time", "-v", test::cli_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto r = test::run_process(argv);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  std::smatch m;
  REQUIRE(std::regex_search(r.err, m, std::regex("Maximum resident set size \\(kbytes\\): (\\d+)")));
  return std::stoull(m[1]) * 1024;
}

// Runs the lorakeep CLI with `args` and checks its peak RSS against a merge's
// bound: 2 x the largest tensor + 128 MiB above the process's idle RSS (that
// of `lorakeep --version`: LibTorch's own, about 160 MiB for Debian's 1.13 and
// 470 MiB for 2.15 with its CUDA libraries). Not checked under ASan, whose
// shadow memory inflates the RSS.
void check_merge_rss(const std::vector<std::string>& args, std::uint64_t largest) {
  static const std::uint64_t idle = cli_peak_rss({"--version"});
  const std::uint64_t peak = cli_peak_rss(args), bound = idle + 2 * largest + 128 * kMiB;
  INFO("peak RSS of " << args[0] << ": " << peak / kMiB << " MiB; idle " << idle / kMiB << " MiB; bound "
                      << bound / kMiB << " MiB");
  if (!test::kUnderSanitizer) CHECK(peak <= bound);
}

}  // namespace

TEST_CASE("make-delta then merge-delta reproduces the tuned tensors exactly", "[merge]") {
  test::TempDir dir;
  at::manual_seed(11);
  NamedTensors base, tuned;
  auto pair = [&](const std::string& name, const at::Tensor& b, const at::Tensor& t) {
    base.emplace_back(name, b);
    tuned.emplace_back(name, t);
  };
  const at::Tensor w = at::randn({300, 257});
  pair("f32", w, w + 0.01 * at::randn({300, 257}));
  const at::Tensor h = at::randn({64, 33}).to(at::kHalf);
  pair("f16", h, (h.to(at::kFloat) * 1.01).to(at::kHalf));
  const at::Tensor bf = at::randn({50, 40}).to(at::kBFloat16);
  pair("bf16", bf, (bf.to(at::kFloat) - 0.003).to(at::kBFloat16));
  pair("ids", at::arange(100, at::kLong), at::arange(100, at::kLong) * 3 - 7);
  pair("zeroed", at::randn({10}), at::zeros({10}));
  // An added vocabulary: the tuned embedding has 4 more rows.
  const at::Tensor emb = at::randn({20, 8});
  base.emplace_back("embed", emb);
  tuned.emplace_back("embed", at::cat({emb + 0.5, at::randn({4, 8})}));
  tuned.emplace_back("new_head", at::randn({3, 8}));
  save_safetensors(dir / "base.safetensors", base);
  save_safetensors(dir / "tuned.safetensors", tuned);

  MakeDeltaOptions make;
  make.allow_grow = true;
  make.allow_new = true;
  make.shards.max_shard_size = 100'000;  // several shards
  const MergeReport made = make_delta_files(dir / "base.safetensors", dir / "tuned.safetensors", dir / "delta", make);
  CHECK(made.inexact_elements == 0);
  CHECK(made.output.shards.size() > 1);
  const auto delta = open_tensor_source(dir / "delta");
  CHECK(delta->info("f32").dtype == Dtype::kF64);  // lossless by default
  CHECK(delta->info("f16").dtype == Dtype::kF32);
  CHECK(delta->info("ids").dtype == Dtype::kI64);

  MergeDeltaOptions merge;
  merge.allow_grow = true;
  merge.allow_new = true;
  merge_delta_files(dir / "base.safetensors", dir / "delta", dir / "merged", merge);
  const auto merged = open_tensor_source(dir / "merged");
  REQUIRE(merged->names().size() == tuned.size());
  for (const auto& [name, t] : tuned) {
    INFO(name);
    // Output dtypes follow the base; the new tensor takes the delta's.
    const at::Tensor got = merged->tensor(name);
    CHECK(same_bits(name == "new_head" ? got.to(at::kFloat) : got, t));
  }
}

TEST_CASE("make-delta counts exactly the elements a narrower delta dtype will not reproduce", "[merge]") {
  test::TempDir dir;
  at::manual_seed(12);
  const at::Tensor w = at::randn({257, 129});
  const at::Tensor h = at::randn({300}).to(at::kHalf);
  const NamedTensors base = {{"f32", w}, {"f16", h}};
  const NamedTensors tuned = {{"f32", w + 1e-3 * at::randn({257, 129})},
                              {"f16", (h.to(at::kFloat) * 1.01).to(at::kHalf)}};
  save_safetensors(dir / "base.safetensors", base);
  save_safetensors(dir / "tuned.safetensors", tuned);
  MakeDeltaOptions make;
  make.dtype = Dtype::kBF16;  // too narrow for either
  const MergeReport made = make_delta_files(dir / "base.safetensors", dir / "tuned.safetensors", dir / "delta", make);
  merge_delta_files(dir / "base.safetensors", dir / "delta", dir / "merged");
  // What merge-delta actually got wrong, element by element.
  const auto merged = open_tensor_source(dir / "merged");
  std::int64_t wrong = 0;
  for (const auto& [name, t] : tuned) {
    const c10::ScalarType word = t.element_size() == 4 ? at::kInt : at::kShort;
    wrong += at::ne(merged->tensor(name).view(word), t.view(word)).sum().item<std::int64_t>();
  }
  INFO("inexact elements: reported " << made.inexact_elements << ", found " << wrong);
  CHECK(wrong > 0);
  CHECK(made.inexact_elements == static_cast<std::uint64_t>(wrong));
}

TEST_CASE("make-delta of BF16 models into a BF16 delta gives ATen's values and counts what merge-delta misses",
          "[merge]") {
  // The all-BF16 case has a kernel of its own (src/merge/bf16_delta.cpp):
  // it must give what ATen gives in F32, rounded to BF16, bit for bit, on
  // values of every scale, zeros of both signs, subnormals and infinities,
  // over more elements than one piece, ties included.
  test::TempDir dir;
  at::manual_seed(13);
  const std::int64_t n = 200003;
  at::Tensor base = (at::randn({n}) * at::pow(10.0, at::randint(-30, 30, {n}))).to(at::kBFloat16);
  // Near the base (a fine-tune), and every third element unrelated to it,
  // so that most differences need rounding.
  at::Tensor tuned = (base.to(at::kFloat) * (1 + 0.01 * at::randn({n}))).to(at::kBFloat16);
  tuned.slice(0, 0, n, 3).copy_(at::randn({(n + 2) / 3}) * 100);
  const std::vector<std::pair<float, float>> special = {
      {0.0f, -0.0f},
      {-0.0f, 0.0f},
      {1e-40f, 3e-40f},
      {1.0f, INFINITY},
      {-2.0f, -INFINITY},
      {3e38f, -3e38f},
      {1.0f, 1.0f + 1.0f / 256},
      {1e30f, 1e-30f},
      // Ties: 257 and -261 lie halfway between two BF16 values; the even one wins.
      {1.0f, 258.0f},
      {-1.0f, -262.0f}};
  for (std::size_t i = 0; i < special.size(); ++i) {
    base[static_cast<std::int64_t>(i)] = special[i].first;
    tuned[static_cast<std::int64_t>(i)] = special[i].second;
  }
  save_safetensors(dir / "base.safetensors", {{"w", base}});
  save_safetensors(dir / "tuned.safetensors", {{"w", tuned}});
  MakeDeltaOptions make;
  make.dtype = Dtype::kBF16;
  const MergeReport made = make_delta_files(dir / "base.safetensors", dir / "tuned.safetensors", dir / "delta", make);
  const at::Tensor expected = (tuned.to(at::kFloat) - base.to(at::kFloat)).to(at::kBFloat16);
  CHECK(same_bits(open_tensor_source(dir / "delta")->tensor("w"), expected));
  merge_delta_files(dir / "base.safetensors", dir / "delta", dir / "merged");
  const std::int64_t wrong = at::ne(open_tensor_source(dir / "merged")->tensor("w").view(at::kShort),
                                    tuned.view(at::kShort))
                                 .sum()
                                 .item<std::int64_t>();
  INFO("inexact elements: reported " << made.inexact_elements << ", found " << wrong);
  CHECK(wrong > 0);
  CHECK(made.inexact_elements == static_cast<std::uint64_t>(wrong));
}

TEST_CASE("merge-delta validates everything before writing anything", "[merge]") {
  test::TempDir dir;
  save_safetensors(dir / "base.safetensors",
                   {{"a", at::ones({4, 4})}, {"b", at::ones({3})}, {"emb", at::ones({5, 2})}});
  save_safetensors(dir / "delta.safetensors",
                   {{"a", at::ones({4, 5})}, {"c", at::ones({3})}, {"emb", at::ones({7, 2})}});
  const Error e = test::capture_error(
      [&] { merge_delta_files(dir / "base.safetensors", dir / "delta.safetensors", dir / "out"); });
  CHECK(e.code() == ErrorCode::kIncompatible);
  CHECK_THAT(e.what(), Contains("4 problems") && Contains("'a' is [4, 4] in the base but [4, 5] in the delta") &&
                           Contains("'b' is in the base but not in the delta (hint: --allow-missing)") &&
                           Contains("'c' is in the delta but not in the base (hint: --allow-new)") &&
                           Contains("--allow-grow"));
  CHECK_FALSE(fs::exists(dir / "out"));
  check_no_temporaries(dir.path());
}

// Merges read and compute on a second thread while the caller writes: a
// failure on either side stops both, and nothing is published.
TEST_CASE("a merge whose input is truncated while it runs fails with the reader's error and publishes nothing",
          "[merge]") {
  test::TempDir dir;
  NamedTensors base;
  for (int i = 0; i < 4; ++i) {
    base.emplace_back("t" + std::to_string(i), at::full({1024, 1024}, 1.0));  // 4 MiB: 16 pieces
  }
  save_safetensors(dir / "base.safetensors", base);
  save_safetensors(dir / "delta.safetensors", base);
  const std::uint64_t first_end = fs::file_size(dir / "base.safetensors") - 3 * 4 * kMiB;  // t0's last byte
  MergeDeltaOptions o;
  std::vector<std::size_t> done;
  o.progress = [&](std::size_t tensors, std::size_t, std::uint64_t) {
    done.push_back(tensors);
    // After t0 is written, everything past it goes: the reader is at most
    // a few pieces into t1, so some of t1 is still to read.
    if (tensors == 1) fs::resize_file(dir / "base.safetensors", first_end);
  };
  const Error e = test::capture_error(
      [&] { merge_delta_files(dir / "base.safetensors", dir / "delta.safetensors", dir / "out", o); });
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Contains("base.safetensors") && Contains("another process truncated it"));
  CHECK(done == std::vector<std::size_t>{1});
  CHECK_FALSE(fs::exists(dir / "out"));
  check_no_temporaries(dir.path());
}

TEST_CASE("a merge whose writing side fails stops its reader and publishes nothing", "[merge]") {
  test::TempDir dir;
  write_base_and_adapter(dir, 4, 512, 512, /*r=*/2, /*alpha=*/2, /*a=*/1, /*b=*/1);  // 1 MiB: 4 pieces each
  MergeLoraOptions o;
  int calls = 0;
  o.progress = [&](std::size_t, std::size_t, std::uint64_t) {
    if (++calls == 2) throw std::runtime_error("stopped by the caller");
  };
  REQUIRE_THROWS_WITH(merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "out", o),
                      "stopped by the caller");
  CHECK(calls == 2);
  CHECK_FALSE(fs::exists(dir / "out"));
  check_no_temporaries(dir.path());
  // The same merge, uninterrupted, still works.
  merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "out");
  CHECK(at::equal(open_tensor_source(dir / "out")->tensor("model.layers.3.weight"), at::full({512, 512}, 5.0)));
}

TEST_CASE("merge-delta scales the delta and converts the output dtype", "[merge]") {
  test::TempDir dir;
  save_safetensors(dir / "base.safetensors", {{"w", at::full({2, 3}, 1.0, at::kHalf)}});
  save_safetensors(dir / "delta.safetensors", {{"w", at::full({2, 3}, 4.0)}});
  MergeDeltaOptions o;
  o.scale = 0.25;
  o.dtype = Dtype::kF32;
  merge_delta_files(dir / "base.safetensors", dir / "delta.safetensors", dir / "out", o);
  const at::Tensor w = open_tensor_source(dir / "out")->tensor("w");
  CHECK(w.scalar_type() == at::kFloat);
  CHECK(at::equal(w, at::full({2, 3}, 2.0)));
}

TEST_CASE("a delta made from files applies in place to a live model", "[merge][transfer]") {
  test::TempDir dir;
  at::manual_seed(5);
  const NamedTensors base = {{"l.weight", at::randn({16, 16})}, {"l.bias", at::randn({16})}};
  const NamedTensors tuned = {{"l.weight", base[0].second * 1.1}, {"l.bias", base[1].second - 1}};
  save_safetensors(dir / "base.safetensors", base);
  save_safetensors(dir / "tuned.safetensors", tuned);
  make_delta_files(dir / "base.safetensors", dir / "tuned.safetensors", dir / "delta");
  NamedTensors live = {{"l.weight", base[0].second.clone()}, {"l.bias", base[1].second.clone()}};
  LoadOptions add;
  add.op = TransferOp::kAdd;
  load_into(live, *open_tensor_source(dir / "delta"), add);  // F64 delta into F32 parameters, on the host
  CHECK(same_bits(live[0].second, tuned[0].second));
  CHECK(same_bits(live[1].second, tuned[1].second));
}

TEST_CASE("lorakeep merge-delta on a 1 GiB base keeps peak RSS under 2 x largest tensor + 128 MiB", "[merge][cli]") {
  test::TempDir dir;
  NamedTensors base, delta;
  for (int i = 0; i < 8; ++i) {  // 8 x 128 MiB
    base.emplace_back("layer." + std::to_string(i), at::full({8192, 4096}, static_cast<double>(i)));
    delta.emplace_back("layer." + std::to_string(i), at::full({8192, 4096}, 0.5));
  }
  save_safetensors(dir / "base.safetensors", base);
  save_safetensors(dir / "delta.safetensors", delta);
  base.clear();
  delta.clear();
  check_merge_rss({"merge-delta", "--base", dir / "base.safetensors", "--delta", dir / "delta.safetensors", "--out",
                   dir / "out", "--max-shard-size", "300MB"},
                  /*largest=*/128 * kMiB);
  const auto out = open_tensor_source(dir / "out");
  CHECK(out->names().size() == 8);
  CHECK(out->tensor("layer.7")[8191][4095].item<float>() == 7.5f);
}

TEST_CASE("lorakeep merge-lora on a 1 GiB base keeps peak RSS under 2 x largest tensor + 128 MiB", "[merge][cli]") {
  // 64 MiB weights, the benchmark's shape: small enough that per-piece
  // temporaries, not the bound's 2 x largest, decide whether it is met.
  test::TempDir dir;
  write_base_and_adapter(dir, 16, 4096, 4096, /*r=*/16, /*alpha=*/32, /*a=*/0.25, /*b=*/0.125);
  check_merge_rss({"merge-lora", "--base", dir / "base.safetensors", "--adapter", dir / "adapter", "--out", dir / "out",
                   "--max-shard-size", "300MB"},
                  /*largest=*/64 * kMiB);
  // Every element gained 2 * (16 * 0.25 * 0.125): scaling alpha / r = 2.
  const auto out = open_tensor_source(dir / "out");
  CHECK(out->names().size() == 16);
  CHECK(out->tensor("model.layers.15.weight")[4095][4095].item<float>() == 16.0f);
}

TEST_CASE("lorakeep merge-lora of a DoRA adapter on a 1 GiB base keeps peak RSS under 2 x largest tensor + 128 MiB",
          "[merge][cli]") {
  // As above, with magnitudes 128: row norms are known, nothing is kept but
  // a piece's norms.
  test::TempDir dir;
  write_base_and_adapter(dir, 16, 4096, 4096, /*r=*/16, /*alpha=*/32, /*a=*/0.25, /*b=*/0.125, /*magnitude=*/128);
  check_merge_rss({"merge-lora", "--base", dir / "base.safetensors", "--adapter", dir / "adapter", "--out", dir / "out",
                   "--max-shard-size", "300MB"},
                  /*largest=*/64 * kMiB);
  // Layer i's rows are all i + 1, of norm 64 (i + 1): scaled to norm 128,
  // every element is 2.
  const auto out = open_tensor_source(dir / "out");
  CHECK(out->names().size() == 16);
  for (const char* name : {"model.layers.0.weight", "model.layers.15.weight"}) {
    const at::Tensor w = out->tensor(name);
    CHECK(w.min().item<float>() == 2.0f);
    CHECK(w.max().item<float>() == 2.0f);
  }
}

}  // namespace lorakeep
