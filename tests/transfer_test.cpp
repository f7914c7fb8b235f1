// The transfer engine: validate-then-apply loads into live tensors, with the
// memory bounds of docs/ARCHITECTURE.md counted in bytes.
#include <cstring>
#include <fstream>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include "lorakeep/memory.h"
#include "lorakeep/transfer.h"
#include "tensor_util.h"
#include "tensors/pickle.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

constexpr std::uint64_t kMiB = 1ull << 20;

// `count` tensors of [rows, cols] with distinct values.
NamedTensors make_tensors(int count, std::int64_t rows, std::int64_t cols, at::ScalarType type = at::kFloat,
                          std::uint64_t seed = 1) {
  at::manual_seed(seed);
  NamedTensors out;
  for (int i = 0; i < count; ++i) {
    out.emplace_back("layers." + std::to_string(i) + ".weight", at::randn({rows, cols}).to(type));
  }
  return out;
}

// Live tensors with the same names and shapes, all zero.
NamedTensors zeros_like(const NamedTensors& tensors, at::ScalarType type = at::kFloat) {
  NamedTensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(name, at::zeros(t.sizes(), type));
  return out;
}

// The naive path of the seed's bug: materialise the whole state dict in fresh
// tensors, then copy them into the parameters.
void naive_load(const NamedTensors& targets, const TensorSource& source) {
  std::map<std::string, at::Tensor> state;
  for (const std::string& name : source.names()) state[name] = source.tensor(name).clone();
  for (const auto& [name, t] : targets) t.copy_(state.at(name));
}

}  // namespace

TEST_CASE("the seed bug reproduced: a capped allocator stops the naive reload but not lorakeep", "[transfer]") {
  test::TempDir dir;
  const NamedTensors adapter = make_tensors(64, 512, 2048);  // 64 x 4 MiB = 256 MiB
  save_safetensors(dir / "adapter.safetensors", adapter);
  const NamedTensors live = zeros_like(adapter);
  const auto source = open_tensor_source(dir / "adapter.safetensors");
  REQUIRE(source->total_bytes() == 256 * kMiB);

  {
    // The live parameters are already allocated; the cap allows 64 MiB more.
    CpuAllocationLimit cap(64 * kMiB);
    const Error e = test::capture_error([&] {
      try {
        naive_load(live, *source);
      } catch (const c10::Error& oom) {
        throw Error(ErrorCode::kIOError, oom.what());
      }
    });
    CHECK_THAT(e.what(), Contains("out of memory"));
  }
  CHECK_FALSE(at::equal(live[0].second, adapter[0].second));  // the naive path never got to copy

  TransferReport report;
  {
    CpuAllocationLimit cap(64 * kMiB);
    AllocationProbe probe;
    report = load_into(live, *source);
    CHECK(probe.peak_bytes() == 0);  // same dtype, contiguous CPU targets: nothing allocated at all
  }
  CHECK(test::bitwise_equal(live, adapter));
  CHECK(report.tensors == 64);
  CHECK(report.bytes == 256 * kMiB);
  CHECK(report.peak_device_bytes == 0);
  CHECK(report.naive_device_bytes == 256 * kMiB);
}

TEST_CASE("a BF16 file reloads into F32 parameters allocating at most one chunk", "[transfer]") {
  test::TempDir dir;
  const NamedTensors adapter = make_tensors(8, 1024, 1024, at::kBFloat16);  // 8 x 2 MiB
  save_safetensors(dir / "bf16.safetensors", adapter);
  const NamedTensors live = zeros_like(adapter, at::kFloat);
  const auto source = open_tensor_source(dir / "bf16.safetensors");
  LoadOptions options;
  options.chunk_bytes = 1 * kMiB;  // smaller than a tensor: each goes in pieces
  AllocationProbe probe;
  load_into(live, *source, options);
  INFO("peak extra CPU allocator bytes: " << probe.peak_bytes());
  CHECK(probe.peak_bytes() <= static_cast<std::int64_t>(options.chunk_bytes));
  for (std::size_t i = 0; i < live.size(); ++i) CHECK(at::equal(live[i].second, adapter[i].second.to(at::kFloat)));
}

TEST_CASE("tensors that need converting spread over threads, each piece in its own thread's buffers", "[transfer]") {
  // 40 MiB of BF16 in 20 tensors: enough for every core, pieces far smaller
  // than a tensor, targets of every kind (converted, transposed, read
  // straight in) interleaved.
  test::TempDir dir;
  NamedTensors file = make_tensors(20, 1024, 1024, at::kBFloat16, 3);
  for (int i = 0; i < 20; i += 5) file[i].second = file[i].second.to(at::kFloat);  // read straight in
  save_safetensors(dir / "mixed.safetensors", file);
  NamedTensors live;
  std::vector<at::Tensor> storage;  // the transposed targets' own tensors
  for (std::size_t i = 0; i < file.size(); ++i) {
    if (i % 5 == 3) {
      storage.push_back(at::zeros({1024, 1024}));
      live.emplace_back(file[i].first, storage.back().t());
    } else {
      live.emplace_back(file[i].first, at::zeros({1024, 1024}));
    }
  }
  const auto source = open_tensor_source(dir / "mixed.safetensors");
  LoadOptions options;
  options.chunk_bytes = 1 * kMiB;
  AllocationProbe probe;
  load_into(live, *source, options);
  CHECK(probe.peak_bytes() <= static_cast<std::int64_t>(options.chunk_bytes));
  for (std::size_t i = 0; i < live.size(); ++i) {
    INFO(live[i].first);
    CHECK(at::equal(live[i].second, file[i].second.to(at::kFloat)));
  }

  // Added, scaled, into F64 parameters: each sum rounded once.
  NamedTensors wide;
  for (const auto& [name, t] : file) wide.emplace_back(name, at::full({1024, 1024}, 0.25, at::kDouble));
  options.op = TransferOp::kAdd;
  options.scale = 3.0;
  load_into(wide, *source, options);
  for (std::size_t i = 0; i < wide.size(); ++i) {
    INFO(wide[i].first);
    CHECK(at::equal(wide[i].second, 0.25 + 3.0 * file[i].second.to(at::kDouble)));
  }
}

TEST_CASE("adding a BF16 delta to F32 parameters stays within one chunk of staging", "[transfer]") {
  test::TempDir dir;
  const NamedTensors delta = make_tensors(4, 1024, 1024, at::kBFloat16);
  save_safetensors(dir / "delta.safetensors", delta);
  NamedTensors live = make_tensors(4, 1024, 1024, at::kFloat, 7);
  const NamedTensors before = test::clone_all(live);
  LoadOptions options;
  options.op = TransferOp::kAdd;
  options.scale = 0.5;
  options.chunk_bytes = 1 * kMiB;
  AllocationProbe probe;
  load_into(live, *open_tensor_source(dir / "delta.safetensors"), options);
  CHECK(probe.peak_bytes() <= static_cast<std::int64_t>(options.chunk_bytes));
  for (std::size_t i = 0; i < live.size(); ++i) {
    CHECK(at::equal(live[i].second, before[i].second + 0.5 * delta[i].second.to(at::kFloat)));
  }
}

TEST_CASE("host RSS stays bounded while loading because file bytes are read and never mapped", "[transfer]") {
  test::TempDir dir;
  const NamedTensors adapter = make_tensors(64, 512, 2048);  // 256 MiB
  save_safetensors(dir / "adapter.safetensors", adapter);
  const NamedTensors live = zeros_like(adapter);
  const auto source = open_tensor_source(dir / "adapter.safetensors");
  std::int64_t lorakeep = 0, converting = 0, naive = 0;
  {
    RssProbe rss;
    REQUIRE(rss.valid());
    load_into(live, *source);
    lorakeep = rss.peak_extra_bytes();
  }
  {
    const NamedTensors half = zeros_like(adapter, at::kHalf);  // a conversion on every piece
    RssProbe rss;
    LoadOptions small;
    small.chunk_bytes = 8 * kMiB;
    load_into(half, *source, small);
    converting = rss.peak_extra_bytes();
  }
  {
    RssProbe rss;  // the same probe sees the naive path's growth: the test can fail
    naive_load(live, *source);
    naive = rss.peak_extra_bytes();
  }
  INFO("peak extra RSS: lorakeep " << lorakeep / kMiB << " MiB, with F32->F16 conversion " << converting / kMiB
                                   << " MiB, naive " << naive / kMiB << " MiB");
  if (!test::kUnderSanitizer) {
    CHECK(lorakeep <= static_cast<std::int64_t>(64 * kMiB));
    CHECK(converting <= static_cast<std::int64_t>(8 * kMiB + 8 * kMiB));
  }
  CHECK(naive >= static_cast<std::int64_t>(250 * kMiB));
  CHECK(test::bitwise_equal(live, adapter));
}

TEST_CASE("one large tensor read straight in, in pieces for every core, lands bit for bit", "[transfer]") {
  // An embedding of 40 MiB between small tensors: read in pieces of at most
  // 16 MiB (or chunk_bytes, here also an odd size), on every core.
  test::TempDir dir;
  NamedTensors file = make_tensors(2, 16, 64);
  file.emplace_back("embed_tokens.weight", at::randn({40 * 256, 1024}));
  save_safetensors(dir / "model.safetensors", file);
  const auto source = open_tensor_source(dir / "model.safetensors");
  for (const std::uint64_t chunk : {64 * kMiB, 3 * kMiB + 4}) {
    INFO("chunk_bytes " << chunk);
    const NamedTensors live = zeros_like(file);
    LoadOptions options;
    options.chunk_bytes = chunk;
    AllocationProbe probe;
    const TransferReport report = load_into(live, *source, options);
    CHECK(probe.peak_bytes() == 0);
    CHECK(report.tensors == 3);
    CHECK(test::bitwise_equal(live, file));
  }
}

TEST_CASE("one large tensor is verified whole: a flipped byte anywhere in it is caught, nothing changed",
          "[transfer]") {
  // 40 MiB + 12 bytes, hashed in 1 MiB blocks, the last one partial.
  test::TempDir dir;
  NamedTensors file = make_tensors(2, 16, 64);
  file.emplace_back("embed_tokens.weight", at::randn({static_cast<std::int64_t>(10 * kMiB + 3)}));
  const SaveReport saved = save_safetensors(dir / "model.safetensors", file);
  LoadOptions options;
  for (std::size_t i = 0; i < saved.tensors.size(); ++i)
    options.checksums[saved.tensors[i].name] = saved.tensor_checksums[i];
  const NamedTensors live = zeros_like(file);
  load_into(live, *open_tensor_source(dir / "model.safetensors"), options);
  CHECK(test::bitwise_equal(live, file));
  const NamedTensors before = test::clone_all(live);
  // The embedding's bytes come first (the writer orders by name): a byte
  // of its first block, one in the middle, one in its last (partial) block.
  std::uint64_t header = 0;
  {
    std::ifstream f(dir / "model.safetensors", std::ios::binary);
    f.read(reinterpret_cast<char*>(&header), sizeof header);  // little-endian, as this machine
  }
  for (const std::uint64_t offset : {std::uint64_t{5}, 20 * kMiB, 40 * kMiB + 10}) {
    INFO("byte " << offset << " of the embedding");
    const auto at = static_cast<std::streamoff>(8 + header + offset);
    char original;
    {
      std::fstream f(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(at);
      f.get(original);
      f.seekp(at);
      f.put(static_cast<char>(original ^ 0x5a));
    }
    const Error e = test::capture_error(
        [&] { load_into(live, *open_tensor_source(dir / "model.safetensors"), options); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'embed_tokens.weight' in") && Contains("fails its checksum"));
    CHECK(test::bitwise_equal(live, before));
    std::fstream f(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(at);
    f.put(original);
  }
}

TEST_CASE("a load that fails in planning leaves every live tensor bitwise unchanged", "[transfer]") {
  test::TempDir dir;
  const NamedTensors adapter = make_tensors(6, 16, 32);
  const SaveReport saved = save_safetensors(dir / "a.safetensors", adapter);
  NamedTensors live = make_tensors(6, 16, 32, at::kFloat, 99);
  const NamedTensors before = test::clone_all(live);
  const auto source = open_tensor_source(dir / "a.safetensors");

  SECTION("a shape differs") {
    live[3].second = at::zeros({16, 31});
    const NamedTensors snapshot = test::clone_all(live);
    const Error e = test::capture_error([&] { load_into(live, *source); });
    CHECK(e.code() == ErrorCode::kIncompatible);
    CHECK_THAT(e.what(), Contains("'layers.3.weight' is [16, 32] in the file but [16, 31] in the model") &&
                             Contains("nothing was changed"));
    CHECK(test::bitwise_equal(live, snapshot));
    return;
  }
  SECTION("a target is missing from the file") {
    live.emplace_back("extra.weight", at::ones({2}));
    const Error e = test::capture_error([&] { load_into(live, *source); });
    CHECK(e.code() == ErrorCode::kIncompatible);
    CHECK_THAT(e.what(), Contains("in the model but not in the file (1): 'extra.weight'"));
    live.pop_back();
  }
  SECTION("a dtype cannot be converted") {
    live[0].second = at::zeros({16, 32}, at::kLong);
    const NamedTensors snapshot = test::clone_all(live);
    const Error e = test::capture_error([&] { load_into(live, *source); });
    CHECK_THAT(e.what(), Contains("'layers.0.weight' is F32 in the file; cannot convert it to Long"));
    CHECK(test::bitwise_equal(live, snapshot));
    return;
  }
  SECTION("the bytes are corrupted and fail their checksum") {
    // Flip one byte of the last tensor's data, in the file itself.
    {
      std::fstream f(dir / "a.safetensors", std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(saved.file_size - 3));
      f.put('\x5a');
    }
    const auto damaged = open_tensor_source(dir / "a.safetensors");
    LoadOptions options;
    for (std::size_t i = 0; i < saved.tensors.size(); ++i) {
      options.checksums[saved.tensors[i].name] = saved.tensor_checksums[i];
    }
    const Error e = test::capture_error([&] { load_into(live, *damaged, options); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("fails its checksum") && Contains("a.safetensors"));
  }
  CHECK(test::bitwise_equal(live, before));
}

TEST_CASE("strict errors list every problem at once with a prefix hint", "[transfer]") {
  test::TempDir dir;
  NamedTensors file;
  file.emplace_back("base_model.model.lin0.lora_A.weight", at::ones({8, 10}));
  file.emplace_back("base_model.model.lin0.lora_B.weight", at::ones({20, 8}));
  save_safetensors(dir / "a.safetensors", file);
  const NamedTensors live = {{"lin0.lora_A.weight", at::zeros({8, 10})}, {"lin0.lora_B.weight", at::zeros({20, 8})}};
  const auto source = open_tensor_source(dir / "a.safetensors");
  const Error e = test::capture_error([&] { load_into(live, *source); });
  CHECK_THAT(e.what(), Contains("4 problems") && Contains("in the file but not in the model (2)") &&
                           Contains("set strip_prefix = \"base_model.model.\""));
  LoadOptions options;
  options.strip_prefix = "base_model.model.";
  load_into(live, *source, options);
  CHECK(at::equal(live[0].second, at::ones({8, 10})));
}

TEST_CASE("non-strict loads skip names on either side but still refuse shape problems", "[transfer]") {
  test::TempDir dir;
  save_safetensors(dir / "a.safetensors", {{"a", at::ones({2})}, {"b", at::ones({3})}});
  const NamedTensors live = {{"a", at::zeros({2})}, {"c", at::zeros({4})}};
  LoadOptions lenient;
  lenient.strict = false;
  const auto report = load_into(live, *open_tensor_source(dir / "a.safetensors"), lenient);
  CHECK(report.tensors == 1);
  CHECK(at::equal(live[0].second, at::ones({2})));
  CHECK(at::equal(live[1].second, at::zeros({4})));
  const NamedTensors wrong = {{"a", at::zeros({5})}};
  CHECK(test::capture_error([&] { load_into(wrong, *open_tensor_source(dir / "a.safetensors"), lenient); }).code() ==
        ErrorCode::kIncompatible);
}

TEST_CASE("a delta applied then subtracted restores F32 parameters bit for bit", "[transfer]") {
  test::TempDir dir;
  // Values on a 1/1024 grid, so every sum is exact and the round trip is a
  // test of the mechanism (each piece applied once, in place, scaled), not of
  // rounding.
  at::manual_seed(3);
  NamedTensors delta, base;
  for (int i = 0; i < 5; ++i) {
    delta.emplace_back("w" + std::to_string(i), at::randint(-2048, 2048, {37, 129}).to(at::kFloat) / 1024);
    base.emplace_back("w" + std::to_string(i), at::randint(-4096, 4096, {37, 129}).to(at::kFloat) / 1024);
  }
  save_safetensors(dir / "delta.safetensors", delta);
  const NamedTensors original = test::clone_all(base);
  const auto source = open_tensor_source(dir / "delta.safetensors");
  LoadOptions options;
  options.op = TransferOp::kAdd;
  options.chunk_bytes = 1000;  // odd-sized pieces across rows
  load_into(base, *source, options);
  CHECK(at::equal(base[2].second, original[2].second + delta[2].second));
  options.scale = -1.0;
  load_into(base, *source, options);
  CHECK(test::bitwise_equal(base, original));
}

TEST_CASE("loads into strided parameters and from unaligned files land in the right elements", "[transfer]") {
  test::TempDir dir;
  const at::Tensor w = at::arange(12 * 7, at::kFloat).reshape({12, 7});
  save_safetensors(dir / "w.safetensors", {{"w", w}});
  at::Tensor storage = at::zeros({7, 12});
  const NamedTensors live = {{"w", storage.t()}};  // a transposed view: not contiguous
  LoadOptions tiny;
  tiny.chunk_bytes = 64;
  load_into(live, *open_tensor_source(dir / "w.safetensors"), tiny);
  CHECK(at::equal(storage.t(), w));

  // The reference samples are not padded: tensor data sits at odd addresses.
  const auto sample = open_tensor_source(test::fixture("hf_safetensors_samples/overall.safetensors"));
  REQUIRE(reinterpret_cast<std::uintptr_t>(sample->bytes("f").data) % 4 != 0);
  const NamedTensors f = {{"f", at::zeros({6}, at::kFloat)}, {"d", at::zeros({6}, at::kDouble)}};
  LoadOptions lenient;
  lenient.strict = false;
  load_into(f, *sample, lenient);
  CHECK(at::equal(f[0].second, sample->tensor("f")));
  CHECK(at::equal(f[1].second, sample->tensor("d")));
}

TEST_CASE("a module loads by its parameter and buffer names", "[transfer]") {
  test::TempDir dir;
  torch::nn::Linear layer(4, 3);
  save_safetensors(dir / "l.safetensors", {{"weight", at::full({3, 4}, 2.0)}, {"bias", at::full({3}, -1.0)}});
  load_into(*layer, *open_tensor_source(dir / "l.safetensors"));
  CHECK(at::equal(layer->weight, at::full({3, 4}, 2.0)));
  CHECK(layer->weight.requires_grad());  // still a trainable leaf
  apply_delta(*layer, *open_tensor_source(dir / "l.safetensors"), 0.5);
  CHECK(at::equal(layer->bias, at::full({3}, -1.5)));
}

TEST_CASE("a torch.save archive saved from CUDA loads onto the CPU", "[transfer][pickle]") {
  const c10::IValue value = detail::load_torch_archive(test::fixture("peft/regression_0.6.1/lora_mlp/output.pt"));
  REQUIRE(value.isTensor());
  CHECK(value.toTensor().device().is_cpu());
  CHECK(value.toTensor().sizes() == at::IntArrayRef({9, 2}));
  const auto bin = open_tensor_source(test::fixture("peft/regression_0.6.1/lora_mlp/adapter_model.bin"));
  CHECK(bin->kind() == "torch pickle");
  CHECK(bin->names() ==
        std::vector<std::string>{"base_model.model.lin0.lora_A.weight", "base_model.model.lin0.lora_B.weight"});
  CHECK(bin->info("base_model.model.lin0.lora_B.weight").shape == std::vector<std::int64_t>{20, 8});
}

TEST_CASE("a torch.save archive we write reads back and a legacy one is refused with a hint", "[transfer][pickle]") {
  test::TempDir dir;
  detail::save_torch_pickle(dir / "x.bin", {{"a", at::arange(5, at::kFloat)}, {"b", at::ones({2, 2}, at::kHalf)}});
  const auto src = open_tensor_source(dir / "x.bin");
  CHECK(at::equal(src->tensor("a"), at::arange(5, at::kFloat)));
  CHECK(src->info("b").dtype == Dtype::kF16);
  // The legacy format starts with a pickle protocol byte: 0x80 0x02 ...
  test::write_file(dir / "legacy.bin", std::string("\x80\x02\x8a\x0a"
                                                   "legacy magic"));
  const Error legacy = test::capture_error([&] { open_tensor_source(dir / "legacy.bin"); });
  CHECK(legacy.code() == ErrorCode::kNotSupported);
  CHECK_THAT(legacy.what(), Contains("legacy") && Contains("hint"));
  test::write_file(dir / "junk.bin", "PK\x03\x04 not really a zip");
  CHECK(test::capture_error([&] { open_tensor_source(dir / "junk.bin"); }).code() == ErrorCode::kCorruption);
}

}  // namespace lorakeep
