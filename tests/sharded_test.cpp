// Sharded sets: reading an index as one source, refusing inconsistent sets,
// and writing sets Hugging Face would write.
#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "lorakeep/sharded.h"
#include "lorakeep/tensor_source.h"
#include "base/text.h"
#include "format/shard_index.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

// Two shards: a.safetensors {x, y}, b.safetensors {z}.
void make_set(const test::TempDir& dir) {
  save_safetensors(dir / "a.safetensors", {{"x", at::ones({2})}, {"y", at::zeros({3})}});
  save_safetensors(dir / "b.safetensors", {{"z", at::full({4}, 7.0)}});
}

void write_index(const test::TempDir& dir, const nlohmann::json& weight_map) {
  nlohmann::json j;
  j["metadata"]["total_size"] = 36;
  j["weight_map"] = weight_map;
  test::write_file(dir / "model.safetensors.index.json", j.dump());
}

Error open_error(const test::TempDir& dir) {
  return test::capture_error([&] { open_tensor_source(dir / "model.safetensors.index.json"); });
}

}  // namespace

TEST_CASE("a consistent sharded set reads as one source", "[sharded]") {
  test::TempDir dir;
  make_set(dir);
  write_index(dir, {{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"z", "b.safetensors"}});
  const auto src = open_tensor_source(dir / "model.safetensors.index.json");
  CHECK(src->names() == std::vector<std::string>{"x", "y", "z"});
  CHECK(at::equal(src->tensor("z"), at::full({4}, 7.0)));
  CHECK_THAT(src->file_of("z"), Contains("b.safetensors"));
  // A directory holding the index opens the same way.
  CHECK(open_tensor_source(dir.path())->names().size() == 3);
}

TEST_CASE("a sharded set with a missing or inconsistent shard is refused by name", "[sharded]") {
  test::TempDir dir;
  make_set(dir);
  SECTION("the index names a shard that does not exist") {
    write_index(dir, {{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"z", "c.safetensors"}});
    const Error e = open_error(dir);
    CHECK(e.code() == ErrorCode::kNotFound);
    CHECK_THAT(e.what(), Contains("c.safetensors") && Contains("incomplete download"));
  }
  SECTION("the index maps a key to a shard without it") {
    write_index(dir, {{"x", "b.safetensors"}, {"y", "a.safetensors"}, {"z", "b.safetensors"}});
    const Error e = open_error(dir);
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'x'") && Contains("b.safetensors"));
  }
  SECTION("a key is in two shards") {
    save_safetensors(dir / "b.safetensors", {{"z", at::ones({4})}, {"x", at::ones({2})}});
    write_index(dir, {{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"z", "b.safetensors"}});
    const Error e = open_error(dir);
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'x'") && Contains("two shards"));
  }
  SECTION("a shard holds a key the index does not list") {
    write_index(dir, {{"x", "a.safetensors"}, {"z", "b.safetensors"}});
    const Error e = open_error(dir);
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'y'") && Contains("not listed"));
  }
  SECTION("the index points outside its directory") {
    write_index(dir, {{"x", "../a.safetensors"}});
    const Error e = open_error(dir);
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("not a plain file name"));
  }
  SECTION("the index is not an index") {
    test::write_file(dir / "model.safetensors.index.json", R"({"metadata":{}})");
    CHECK_THAT(open_error(dir).what(), Contains("no 'weight_map'"));
    test::write_file(dir / "model.safetensors.index.json",
                     R"({"weight_map":{"x":"a.safetensors","x":"b.safetensors"}})");
    CHECK_THAT(open_error(dir).what(), Contains("'x' twice"));
    test::write_file(dir / "model.safetensors.index.json", R"({"weight_map":{"x":1}})");
    CHECK_THAT(open_error(dir).what(), Contains("must be a file name"));
  }
  SECTION("total_size out of range (found by fuzzing)") {
    for (const char* size : {"8e95", "-1", "1.5", "18446744073709551616.0"}) {
      INFO(size);
      const std::string text = std::string(R"({"metadata":{"total_size":)") + size + R"(},"weight_map":{}})";
      CHECK_THAT(test::capture_error([&] { detail::parse_shard_index(text, "index"); }).what(),
                 Contains("'metadata.total_size' must be a non-negative integer"));
    }
    CHECK(detail::parse_shard_index(R"({"metadata":{"total_size":1024.0},"weight_map":{}})", "index").total_size ==
          1024u);
  }
}

TEST_CASE("save_sharded splits greedily like Hugging Face and writes an index", "[sharded]") {
  test::TempDir dir;
  NamedTensors tensors = {{"a", at::ones({10})},    // 40 bytes
                          {"b", at::ones({10})},    // 40: a+b = 80 <= 100
                          {"c", at::ones({10})},    // 40: would be 120 > 100, new shard
                          {"big", at::ones({50})},  // 200 > max: a shard of its own
                          {"d", at::ones({5}, at::kDouble)}};
  ShardOptions options;
  options.max_shard_size = 100;
  const auto report = save_sharded(dir / "out", tensors, {{"format", "pt"}}, options);
  REQUIRE(report.shards.size() == 3);
  const auto index = detail::parse_shard_index(test::read_file(dir / "out/model.safetensors.index.json"), "index");
  CHECK(index.total_size == 40 * 3 + 200 + 40);
  std::map<std::string, std::string> where(index.weight_map.begin(), index.weight_map.end());
  CHECK(where["a"] == "model-00001-of-00003.safetensors");
  CHECK(where["b"] == "model-00001-of-00003.safetensors");
  CHECK(where["big"] == "model-00002-of-00003.safetensors");
  CHECK(where["c"] == "model-00003-of-00003.safetensors");
  CHECK(where["d"] == "model-00003-of-00003.safetensors");
  const auto src = open_tensor_source(dir / "out");
  for (const auto& [name, t] : tensors) CHECK(at::equal(src->tensor(name), t));
  CHECK(src->metadata().at("format") == "pt");
  // The index text is what huggingface_hub writes: sorted keys, indent 2.
  CHECK(test::read_file(dir / "out/model.safetensors.index.json")
            .rfind("{\n  \"metadata\": {\n    \"total_size\": 360\n  },\n  \"weight_map\": {\n    \"a\": ", 0) == 0);
}

TEST_CASE("save_sharded writes one file without an index when everything fits", "[sharded]") {
  test::TempDir dir;
  save_sharded(dir / "out", {{"a", at::ones({4})}});
  CHECK(fs::exists(dir / "out/model.safetensors"));
  CHECK_FALSE(fs::exists(dir / "out/model.safetensors.index.json"));
}

TEST_CASE("save_sharded refuses a non-empty output directory and leaves it alone", "[sharded]") {
  test::TempDir dir;
  fs::create_directory(dir / "out");
  test::write_file(dir / "out/keep.txt", "mine");
  const Error e = test::capture_error([&] { save_sharded(dir / "out", {{"a", at::ones({4})}}); });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  CHECK(test::read_file(dir / "out/keep.txt") == "mine");
  // An empty directory is fine.
  fs::create_directory(dir / "empty");
  save_sharded(dir / "empty", {{"a", at::ones({4})}});
  CHECK(fs::exists(dir / "empty/model.safetensors"));
}

TEST_CASE("byte sizes parse as the max_shard_size strings of Hugging Face", "[sharded]") {
  std::uint64_t v = 0;
  CHECK((detail::parse_byte_size("5GB", &v) && v == 5'000'000'000ull));
  CHECK((detail::parse_byte_size("2GiB", &v) && v == (2ull << 30)));
  CHECK((detail::parse_byte_size("500mb", &v) && v == 500'000'000ull));
  CHECK((detail::parse_byte_size("123", &v) && v == 123));
  CHECK_FALSE(detail::parse_byte_size("", &v));
  CHECK_FALSE(detail::parse_byte_size("GB", &v));
  CHECK_FALSE(detail::parse_byte_size("5 GB", &v));
  CHECK_FALSE(detail::parse_byte_size("99999999999999999999", &v));
}

}  // namespace lorakeep
