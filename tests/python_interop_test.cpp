// Round trips with the reference implementation (Python safetensors): our
// files read there, theirs read here, and the bytes are the same.
#include <ATen/ATen.h>

#include "lorakeep/safetensors.h"
#include "test_util.h"

namespace lorakeep {
namespace {

// Must stay identical to expected() in tests/python/reference_roundtrip.py.
NamedTensors expected() {
  auto floats = [](std::int64_t n, at::ScalarType type) { return (at::arange(n, at::kDouble) * 0.5 - 3).to(type); };
  auto ints = [](std::int64_t n, at::ScalarType type, std::int64_t offset) {
    return (at::arange(n, at::kLong) - offset).to(type);
  };
  return {
      {"f32", floats(12, at::kFloat).reshape({3, 4})},
      {"f16", floats(6, at::kHalf).reshape({2, 3})},
      {"bf16", floats(5, at::kBFloat16)},
      {"f64", floats(4, at::kDouble).reshape({2, 2})},
      {"i64", ints(3, at::kLong, 2)},
      {"i32", ints(4, at::kInt, 2).reshape({2, 2})},
      {"i16", ints(4, at::kShort, 2)},
      {"i8", ints(3, at::kChar, 2)},
      {"u8", ints(6, at::kByte, 0)},
      {"bool", (at::arange(5) % 2).to(at::kBool)},
      {"scalar", at::scalar_tensor(1.5, at::kFloat)},
      {"empty", at::zeros({2, 0}, at::kFloat)},
      {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight", floats(32, at::kFloat).reshape({4, 8})},
      {"na\xc3\xafve \xe2\x9c\x93", floats(2, at::kFloat)},
      {"quote\"back\\slash", floats(1, at::kFloat)},
  };
}

const std::map<std::string, std::string> kMetadata = {{"format", "pt"}};

}  // namespace

TEST_CASE("our files read in the reference reader and its files read here with equal bytes",
          "[safetensors][python][peers]") {
  test::TempDir dir;
  save_safetensors(dir / "ours.safetensors", expected(), kMetadata);

  const auto check = test::run_python("reference_roundtrip.py", {"check", dir / "ours.safetensors"});
  INFO(check.out << check.err);
  REQUIRE(check.exit_code == 0);

  const auto write = test::run_python("reference_roundtrip.py", {"write", dir / "ref.safetensors"});
  INFO(write.out << write.err);
  REQUIRE(write.exit_code == 0);

  const SafetensorsFile ref = SafetensorsFile::open(dir / "ref.safetensors");
  CHECK(ref.metadata() == kMetadata);
  const NamedTensors want = expected();
  REQUIRE(ref.names().size() == want.size());
  for (const auto& [name, t] : want) {
    INFO(name);
    const at::Tensor got = ref.tensor(name);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(at::equal(got, t));
  }
  CHECK(test::read_file(dir / "ours.safetensors") == test::read_file(dir / "ref.safetensors"));
}

}  // namespace lorakeep
