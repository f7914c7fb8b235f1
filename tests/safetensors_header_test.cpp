// The torch-free safetensors header parser: the reference test vectors, and
// hostile headers the vectors do not cover.
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "format/header.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

std::string with_length(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[static_cast<std::size_t>(i)] = static_cast<char>(n & 0xFF);
  return out + header + data;
}

detail::SafetensorsHeader parse(const std::string& bytes) {
  return detail::parse_safetensors_header(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(),
                                          "mem.safetensors");
}

// The phrase our message carries for each of the reference's error kinds.
const std::map<std::string, std::string> kPhraseForKind = {
    {"HeaderTooSmall", "header too small"},
    {"HeaderTooLarge", "header too large"},
    {"InvalidHeaderLength", "invalid header length"},
    {"InvalidHeader", "not valid UTF-8"},
    {"InvalidHeaderDeserialization", "not valid JSON"},
    {"TensorInvalidInfo", "invalid tensor info"},
    {"ValidationOverflow", "validation overflow"},
    {"MetadataIncompleteBuffer", "incomplete buffer"},
    {"InvalidOffset", "invalid offset"},
};

}  // namespace

TEST_CASE("the header parser accepts and refuses every reference test vector as its MANIFEST says", "[safetensors]") {
  const auto manifest = nlohmann::json::parse(
      test::read_file(test::fixture("hf_safetensors_rust_test_vectors/MANIFEST.json")));
  REQUIRE(manifest.size() >= 25);
  int accepted = 0, refused = 0;
  for (const auto& entry : manifest) {
    const std::string file = entry["file"].get<std::string>();
    const std::string expected = entry["expected"].get<std::string>();
    const std::string bytes = test::read_file(test::fixture("hf_safetensors_rust_test_vectors/" + file));
    REQUIRE(bytes.size() == entry["len"].get<std::size_t>());
    INFO(file << ": expected " << expected);
    if (expected.rfind("OK", 0) == 0) {
      const auto header = parse(bytes);
      if (expected == "OK (0 tensors)") CHECK(header.tensors.empty());
      ++accepted;
    } else {
      const Error e = test::capture_error([&] { parse(bytes); });
      CHECK(e.code() == ErrorCode::kCorruption);
      REQUIRE(kPhraseForKind.count(expected) == 1);
      CHECK_THAT(e.what(), Contains(kPhraseForKind.at(expected)) && Contains("mem.safetensors"));
      ++refused;
    }
  }
  CHECK(accepted == 14);
  CHECK(refused == 11);
}

TEST_CASE("the header parser reads shapes and offsets and metadata as written", "[safetensors]") {
  const auto h = parse(with_length(
      R"({"__metadata__":{"format":"pt","k":"v"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"s":{"dtype":"I32","shape":[],"data_offsets":[12,16]}})",
      std::string(16, 'x')));
  REQUIRE(h.tensors.size() == 3);
  CHECK(h.tensors[0].name == "a");  // sorted by offset, not by key order
  CHECK(h.tensors[0].shape == std::vector<std::int64_t>{1, 2});
  CHECK(h.tensors[1].name == "b");
  CHECK(h.tensors[1].dtype == Dtype::kF16);
  CHECK(h.tensors[2].shape.empty());
  CHECK(h.tensors[2].data_begin == 12);
  CHECK(h.metadata == std::map<std::string, std::string>{{"format", "pt"}, {"k", "v"}});
  CHECK(h.data_size == 16);
}

TEST_CASE("the header parser refuses hostile headers with a message naming the problem", "[safetensors]") {
  struct Case {
    const char* what;
    std::string header;
    std::string data;
    const char* phrase;  // nullptr: accepted
  };
  const std::string u8 = R"({"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
  const std::vector<Case> cases = {
      {"duplicate tensor name", R"({"a":)" + u8 + R"(,"a":)" + u8 + "}", "x", "appears twice"},
      {"duplicate __metadata__", R"({"__metadata__":{},"__metadata__":{}})", "", "appears twice"},
      {"duplicate metadata key", R"({"__metadata__":{"k":"1","k":"2"}})", "", "appears twice"},
      {"duplicate field", R"({"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x", "twice"},
      {"integer metadata value", R"({"__metadata__":{"a":1}})", "", "must be a string"},
      {"nested metadata value", R"({"__metadata__":{"a":{"b":"c"}}})", "", "must be a string"},
      {"metadata array", R"({"__metadata__":["a"]})", "", "must be an object of strings"},
      {"null metadata", R"({"__metadata__":null})", "", nullptr},
      {"unknown field ignored", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{"y":[1,{}]}}})", "x",
       nullptr},
      {"unknown dtype", R"({"a":{"dtype":"X8","shape":[1],"data_offsets":[0,1]}})", "x", "unknown dtype 'X8'"},
      {"lowercase dtype", R"({"a":{"dtype":"u8","shape":[1],"data_offsets":[0,1]}})", "x", "unknown dtype"},
      {"three offsets", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "x", "exactly 2"},
      {"one offset", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "x", "exactly 2"},
      {"negative dimension", R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "x", "non-negative"},
      {"float dimension", R"({"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}})", "x", "non-negative"},
      {"missing shape", R"({"a":{"dtype":"U8","data_offsets":[0,1]}})", "x", "no 'shape'"},
      {"missing dtype", R"({"a":{"shape":[1],"data_offsets":[0,1]}})", "x", "no 'dtype'"},
      {"tensor not an object", R"({"a":[1]})", "", "must be an object"},
      {"top level array", "[]", "", "must be a JSON object"},
      {"top level string", R"("x")", "", "must be a JSON object"},
      {"trailing characters", "{} x", "", "not valid JSON"},
      {"byte order mark", "\xEF\xBB\xBF{}", "", "byte order mark"},
      {"overlong UTF-8", "{\"\xC0\xAF\":1}", "", "not valid UTF-8"},
      {"surrogate in UTF-8", "{\"\xED\xA0\x80\":1}", "", "not valid UTF-8"},
      {"lone surrogate escape", R"({"\ud800":)" + u8 + "}", "x", "not valid JSON"},
      {"escaped NUL in name", R"({"a\u0000b":)" + u8 + "}", "x", nullptr},
      {"empty name", R"({"":)" + u8 + "}", "x", nullptr},
      {"hole between tensors", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", "xx", "invalid offset"},
      {"offsets reversed", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}})", "x", "invalid offset"},
      {"data past the tensors", "{}", "xyz", "incomplete buffer"},
      {"5 GB claimed shape", R"({"a":{"dtype":"F32","shape":[1250000000],"data_offsets":[0,5000000000]}})", "x",
       "incomplete buffer"},
      {"shape overflowing 64 bits", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
       "xxxx", "validation overflow"},
      {"sub-byte dtype not on a byte", R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", "xy",
       "validation overflow"},
      {"sub-byte dtype on a byte", R"({"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", "xy", nullptr},
      {"deep nesting in an ignored field",
       R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + std::string(10000, '[') +
           std::string(10000, ']') + "}}",
       "x", nullptr},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    const std::string bytes = with_length(c.header, c.data);
    if (c.phrase == nullptr) {
      CHECK_NOTHROW(parse(bytes));
    } else {
      const Error e = test::capture_error([&] { parse(bytes); });
      CHECK(e.code() == ErrorCode::kCorruption);
      CHECK_THAT(e.what(), Contains(c.phrase));
    }
  }
}

TEST_CASE("a header length beyond the file or beyond 100 MB is refused before anything is read", "[safetensors]") {
  std::string bytes = with_length("{}");
  bytes[0] = 100;  // claims 100 bytes of header in a 10-byte file
  CHECK_THAT(test::capture_error([&] { parse(bytes); }).what(), Contains("invalid header length"));
  std::string big(8, '\0');
  const std::uint64_t n = detail::kMaxHeaderSize + 1;
  std::memcpy(big.data(), &n, 8);
  CHECK_THAT(test::capture_error([&] { parse(big + "{}"); }).what(), Contains("header too large"));
}

TEST_CASE("a zero-element tensor with a dimension past int64 is refused as not supported", "[safetensors]") {
  const auto e = test::capture_error(
      [&] { parse(with_length(R"({"a":{"dtype":"U8","shape":[0,18446744073709551615],"data_offsets":[0,0]}})")); });
  CHECK(e.code() == ErrorCode::kNotSupported);
  CHECK_THAT(e.what(), Contains("'a'"));
}

TEST_CASE("the writer lays out headers sorted by dtype alignment then name and padded to 8 bytes", "[safetensors]") {
  auto info = [](std::string name, Dtype dtype, std::vector<std::int64_t> shape) {
    TensorInfo t;
    t.name = std::move(name);
    t.dtype = dtype;
    t.shape = std::move(shape);
    return t;
  };
  const auto layout = detail::layout_safetensors_header(
      {info("b", Dtype::kF32, {2}), info("a", Dtype::kI8, {3}), info("c", Dtype::kF64, {1}),
       info("d", Dtype::kBool, {1}), info("e", Dtype::kF16, {2}), info("a22", Dtype::kF32, {1})},
      {{"format", "pt"}});
  std::string json =
      R"({"__metadata__":{"format":"pt"},"c":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
      R"("a22":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},)"
      R"("e":{"dtype":"F16","shape":[2],"data_offsets":[20,24]},"a":{"dtype":"I8","shape":[3],"data_offsets":[24,27]},)"
      R"("d":{"dtype":"BOOL","shape":[1],"data_offsets":[27,28]}})";
  REQUIRE(json.size() % 8 != 0);
  json.append(8 - json.size() % 8, ' ');
  CHECK(layout.header == json);
  CHECK(layout.data_size == 28);
}

TEST_CASE("the writer escapes names as serde_json does", "[safetensors]") {
  std::string out;
  detail::append_json_string(out, std::string("a\"b\\c\n\x01\x7f\xc3\xa9/", 11));
  CHECK(out == std::string("\"a\\\"b\\\\c\\n\\u0001\x7f\xc3\xa9/\""));
}

TEST_CASE("the writer refuses duplicate and reserved names", "[safetensors]") {
  TensorInfo t;
  t.name = "x";
  t.dtype = Dtype::kF32;
  TensorInfo u = t;
  u.dtype = Dtype::kI8;  // different dtype: not adjacent after sorting
  TensorInfo v = t;
  v.name = "m";
  CHECK(test::capture_error([&] {
          detail::layout_safetensors_header({t, v, u}, {});
        }).code() == ErrorCode::kInvalidArgument);
  t.name = "__metadata__";
  CHECK(test::capture_error([&] { detail::layout_safetensors_header({t}, {}); }).code() == ErrorCode::kInvalidArgument);
}

}  // namespace lorakeep
