// Reading real files written by other tools, and writing files the reference
// writer would write byte for byte.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "io/checksum.h"
#include "tensors/torch_compat.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

bool supported(Dtype dtype) {
  try {
    to_scalar_type(dtype);
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::vector<std::string> files_in(const std::string& dir, const std::string& ext) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(test::fixture(dir))) {
    if (e.path().extension() == ext) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Rewrites every tensor of `file` with our writer and returns the bytes.
std::string rewrite(const SafetensorsFile& file, const std::string& out) {
  NamedTensors tensors;
  for (const std::string& name : file.names()) tensors.emplace_back(name, file.tensor(name));
  save_safetensors(out, tensors, file.metadata());
  return test::read_file(out);
}

}  // namespace

TEST_CASE("every sample file reads and unaligned data reads correctly", "[safetensors]") {
  const auto files = files_in("hf_safetensors_samples", ".safetensors");
  REQUIRE(files.size() == 10);
  const SafetensorsFile overall = SafetensorsFile::open(test::fixture("hf_safetensors_samples/overall.safetensors"));
  int views = 0, unaligned = 0;
  for (const std::string& path : files) {
    INFO(path);
    const SafetensorsFile file = SafetensorsFile::open(path);
    CHECK(file.metadata().at("test") == "a");
    for (const std::string& name : file.names()) {
      const TensorInfo& info = file.info(name);
      const auto bytes = file.bytes(name);
      // Each single-dtype file holds the same tensor as overall.safetensors.
      const auto same = overall.bytes(name);
      REQUIRE(same.size == bytes.size);
      CHECK(std::memcmp(same.data, bytes.data, bytes.size) == 0);
      if (!supported(info.dtype)) {
        const Error e = test::capture_error([&] { file.tensor(name); });
        CHECK(e.code() == ErrorCode::kNotSupported);
        CHECK_THAT(e.what(), Contains("'" + name + "'") && Contains(std::string(dtype_name(info.dtype))));
        continue;
      }
      const at::Tensor t = file.tensor(name);
      CHECK(t.sizes().vec() == info.shape);
      CHECK(std::memcmp(t.data_ptr(), bytes.data, bytes.size) == 0);
      CHECK(reinterpret_cast<std::uintptr_t>(t.data_ptr()) % t.element_size() == 0);
      if (reinterpret_cast<std::uintptr_t>(bytes.data) % t.element_size() != 0) ++unaligned;
      ++views;
    }
  }
  CHECK(views >= 7);
  CHECK(unaligned >= 1);  // the samples are not padded: some data sits at odd offsets
}

TEST_CASE("the arange file reads element by element", "[safetensors]") {
  const SafetensorsFile file = SafetensorsFile::open(
      test::fixture("safetensors_jl/non_sharded/model.numpy.safetensors"));
  REQUIRE(file.names().size() == 27);
  for (const std::string& name : file.names()) {
    INFO(name);
    const at::Tensor t = file.tensor(name).flatten();
    REQUIRE(t.numel() == file.info(name).numel());
    const at::Tensor as_double = t.to(at::kDouble);
    const double* v = as_double.data_ptr<double>();
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      const double want = t.scalar_type() == at::kBool ? static_cast<double>(i % 2) : static_cast<double>(i);
      REQUIRE(v[i] == want);
    }
  }
}

TEST_CASE("the sharded set reads as one source equal to the non-sharded file", "[safetensors][sharded]") {
  const auto sharded = open_tensor_source(test::fixture("safetensors_jl/sharded/model.safetensors.index.json"));
  const auto single = open_tensor_source(test::fixture("safetensors_jl/non_sharded/model.safetensors"));
  CHECK(sharded->kind() == "sharded safetensors");
  REQUIRE(sharded->names().size() == 36);
  REQUIRE(single->names().size() == 36);
  for (const std::string& name : single->names()) {
    INFO(name);
    REQUIRE(sharded->contains(name));
    const TensorInfo& a = sharded->info(name);
    const TensorInfo& b = single->info(name);
    CHECK(a.dtype == b.dtype);
    CHECK(a.shape == b.shape);
    const auto x = sharded->bytes(name);
    const auto y = single->bytes(name);
    REQUIRE(x.size == y.size);
    CHECK(std::memcmp(x.data, y.data, x.size) == 0);
  }
  CHECK(sharded->total_bytes() == 4305);  // the index's metadata.total_size
  CHECK_THAT(sharded->file_of("bfloat16_357"), Contains("model-00006-of-00006.safetensors"));
}

TEST_CASE("F8 tensors read where LibTorch has float8 and are refused by name otherwise", "[safetensors]") {
  const SafetensorsFile file = SafetensorsFile::open(test::fixture("safetensors_jl/non_sharded/model.safetensors"));
  if (LORAKEEP_HAS_FLOAT8) {
    // Each stored byte decoded by hand: sign, exponent (bias 7 for E4M3FN,
    // 15 for E5M2), mantissa; subnormals at exponent 0. The fixture holds
    // finite values only.
    const auto decode = [](std::uint8_t byte, int mantissa_bits, int bias) {
      const int exponent_bits = 7 - mantissa_bits;
      const int e = (byte >> mantissa_bits) & ((1 << exponent_bits) - 1);
      const int m = byte & ((1 << mantissa_bits) - 1);
      const double fraction = static_cast<double>(m) / (1 << mantissa_bits);
      const double magnitude = e == 0 ? std::ldexp(fraction, 1 - bias) : std::ldexp(1 + fraction, e - bias);
      return static_cast<float>((byte & 0x80) ? -magnitude : magnitude);
    };
    const std::pair<const char*, std::pair<int, int>> kinds[] = {{"float8_e4m3fn_35", {3, 7}},
                                                                 {"float8_e5m2_35", {2, 15}}};
    for (const auto& [name, format] : kinds) {
      INFO(name);
      const at::Tensor t = file.tensor(name).to(at::kFloat).flatten();
      const auto raw = file.bytes(name);
      REQUIRE(static_cast<std::size_t>(t.numel()) == raw.size);
      for (std::size_t i = 0; i < raw.size; ++i) {
        CHECK(t[static_cast<std::int64_t>(i)].item<float>() == decode(raw.data[i], format.first, format.second));
      }
    }
  } else {
    const Error e = test::capture_error([&] { file.tensor("float8_e4m3fn_35"); });
    CHECK(e.code() == ErrorCode::kNotSupported);
    CHECK_THAT(e.what(), Contains("'float8_e4m3fn_35'") && Contains("F8_E4M3"));
  }
}

TEST_CASE("a view outlives the file handle it came from", "[safetensors]") {
  at::Tensor view;
  {
    const SafetensorsFile file = SafetensorsFile::open(
        test::fixture("safetensors_jl/non_sharded/model.numpy.safetensors"));
    view = file.tensor("float32_357");
  }
  CHECK(view.sum().item<double>() == 104.0 * 105 / 2);
  view.mul_(2);
  CHECK(view.sum().item<double>() == 104.0 * 105);  // copy-on-write: legal, private, and the file is untouched
  const SafetensorsFile again = SafetensorsFile::open(
      test::fixture("safetensors_jl/non_sharded/model.numpy.safetensors"));
  CHECK(again.tensor("float32_357").sum().item<double>() == 104.0 * 105 / 2);
}

TEST_CASE("rewriting a reference-written file reproduces its bytes", "[safetensors]") {
  test::TempDir dir;
  const auto manifest = nlohmann::json::parse(
      test::read_file(test::fixture("hf_safetensors_rust_test_vectors/MANIFEST.json")));
  int checked = 0;
  for (const auto& entry : manifest) {
    if (entry["expected"].get<std::string>().find("golden") == std::string::npos) continue;
    // A hand-made reader input in the reference tests: its header is padded
    // to 102 bytes, which no writer produces.
    if (entry["file"] == "py_test_deserialization_metadata.safetensors") continue;
    const std::string path = test::fixture("hf_safetensors_rust_test_vectors/" + entry["file"].get<std::string>());
    INFO(path);
    CHECK(rewrite(SafetensorsFile::open(path), dir / "out.safetensors") == test::read_file(path));
    ++checked;
  }
  CHECK(checked == 7);
  for (const std::string& path : files_in("safetensors_jl/non_sharded", ".safetensors")) {
    const SafetensorsFile file = SafetensorsFile::open(path);
    bool all = true;
    for (const TensorInfo& t : file.infos()) all = all && supported(t.dtype);
    if (!all) continue;  // F8 needs LibTorch >= 2.1
    INFO(path);
    CHECK(rewrite(file, dir / "jl.safetensors") == test::read_file(path));
    ++checked;
  }
  CHECK(checked >= 8);
}

TEST_CASE("the writer streams strided tensors in small pieces to the same bytes", "[safetensors]") {
  test::TempDir dir;
  const at::Tensor base = at::arange(6 * 1000, at::kFloat).reshape({6, 1000});
  const at::Tensor strided = base.t();  // not contiguous
  REQUIRE_FALSE(strided.is_contiguous());
  SaveOptions tiny;
  tiny.chunk_bytes = 64;  // forces splitting down to single rows and below
  const SaveReport a = save_safetensors(dir / "a.safetensors", {{"w", strided}, {"s", at::scalar_tensor(3.0)}}, {},
                                        tiny);
  const SaveReport b = save_safetensors(dir / "b.safetensors",
                                        {{"w", strided.contiguous()}, {"s", at::scalar_tensor(3.0)}});
  CHECK(test::read_file(dir / "a.safetensors") == test::read_file(dir / "b.safetensors"));
  const SafetensorsFile file = SafetensorsFile::open(dir / "a.safetensors");
  CHECK(at::equal(file.tensor("w"), strided));
  // The report carries the checksums a manifest needs, without a second read.
  const std::string bytes = test::read_file(dir / "a.safetensors");
  CHECK(a.file_size == bytes.size());
  CHECK(a.file_checksum == detail::xxh3_64(bytes.data(), bytes.size()));
  REQUIRE(a.tensors.size() == 2);
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    const auto span = file.bytes(a.tensors[i].name);
    CHECK(a.tensor_checksums[i] == detail::xxh3_64(span.data, span.size));
  }
  CHECK(b.tensor_checksums == a.tensor_checksums);
}

TEST_CASE("saving replaces a file atomically and leaves no temp file", "[safetensors]") {
  test::TempDir dir;
  save_safetensors(dir / "x.safetensors", {{"a", at::ones({4})}});
  save_safetensors(dir / "x.safetensors", {{"a", at::zeros({8})}});
  CHECK(SafetensorsFile::open(dir / "x.safetensors").info("a").shape == std::vector<std::int64_t>{8});
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("a failed save removes its temp file and keeps the earlier file", "[safetensors]") {
  test::TempDir dir;
  save_safetensors(dir / "x.safetensors", {{"a", at::ones({4})}});
  const std::string before = test::read_file(dir / "x.safetensors");
  const Error e = test::capture_error([&] {
    save_safetensors(dir / "x.safetensors", {{"a", at::ones({4})}, {"a", at::zeros({2})}});
  });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  const Error missing = test::capture_error([&] { save_safetensors(dir / "no/such/dir/x.safetensors", {}); });
  CHECK(missing.code() == ErrorCode::kIOError);
  CHECK_THAT(missing.what(), Contains("no/such/dir"));
  CHECK(test::read_file(dir / "x.safetensors") == before);
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    (void)entry;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("opening a missing file or a directory or an LFS pointer fails with a clear error", "[safetensors]") {
  test::TempDir dir;
  CHECK(test::capture_error([&] { SafetensorsFile::open(dir / "nope.safetensors"); }).code() == ErrorCode::kNotFound);
  CHECK(test::capture_error([&] { SafetensorsFile::open(dir.path()); }).code() == ErrorCode::kInvalidArgument);
  test::write_file(dir / "lfs.safetensors", "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n");
  const Error lfs = test::capture_error([&] { SafetensorsFile::open(dir / "lfs.safetensors"); });
  CHECK(lfs.code() == ErrorCode::kCorruption);
  CHECK_THAT(lfs.what(), Contains("Git LFS pointer") && Contains("git lfs pull"));
  const SafetensorsFile ok = SafetensorsFile::open(test::fixture("safetensors_jl/non_sharded/model.safetensors"));
  const Error absent = test::capture_error([&] { ok.tensor("nope"); });
  CHECK(absent.code() == ErrorCode::kNotFound);
  CHECK_THAT(absent.what(), Contains("'nope'") && Contains("model.safetensors"));
}

}  // namespace lorakeep
