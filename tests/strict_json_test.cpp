// The strict JSON parser of the metadata files (format/json.h): a key that
// appears twice in one object is refused, naming the file and the key, at any
// depth and through a real reader (adapter_config.json); the same key in
// different objects is no duplicate.
#include <string>
#include <vector>

#include <boost/filesystem.hpp>

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "lorakeep/lora_config.h"
#include "format/json.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

Error parse_error(const std::string& text, const std::string& path) {
  return test::capture_error([&] { detail::parse_json_strict(text, path); });
}

// An adapter_config.json as PEFT writes one, with `extra` inserted before its
// closing brace.
std::string adapter_config(const std::string& extra) {
  return R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],)"
         R"( "rank_pattern": {"q_proj": 4})" +
         extra + "}";
}

}  // namespace

TEST_CASE("a key twice at the top level of a JSON file is refused, naming the file and the key", "[json]") {
  const Error e = parse_error(R"({"step": 1, "epoch": 2.5, "step": 3})", "dir/trainer_state.json");
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Contains("'dir/trainer_state.json'") && Contains("the key 'step' twice"));
}

TEST_CASE("a key twice in a nested JSON object is refused at any depth", "[json]") {
  struct Row {
    std::string what, text, key;
  };
  const std::vector<Row> rows = {
      {"in an object", R"({"metrics": {"loss": 1, "acc": 0.5, "loss": 2}})", "loss"},
      {"three levels down", R"({"a": {"b": {"c": {"d": 1, "d": 1}}}})", "d"},
      {"in an object in an array", R"({"log": [{"b": 1}, {"b": 1, "b": 2}]})", "b"},
      {"in an object in a top-level array", R"([{"x": 1}, {"x": 1, "y": 2, "x": 3}])", "x"},
      {"at the top level after a nested object closed", R"({"a": {"x": 1}, "b": 2, "b": 3})", "b"},
      {"spelled with an escape", R"({"k": {"key": 1, "k\u0065y": 2}})", "key"},
  };
  for (const Row& r : rows) {
    INFO(r.what << ": " << r.text);
    const Error e = parse_error(r.text, "nested.json");
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'nested.json'") && Contains("the key '" + r.key + "' twice"));
  }
}

TEST_CASE("the same key in different JSON objects is no duplicate", "[json]") {
  const detail::OrderedJson j = detail::parse_json_strict(
      R"({"k": {"k": 1, "v": {"k": 2}}, "list": [{"k": 3}, {"k": 4}], "v": {"k": 5}})", "ok.json");
  CHECK(j.at("k").at("k").get<int>() == 1);
  CHECK(j.at("k").at("v").at("k").get<int>() == 2);
  CHECK(j.at("list").at(0).at("k").get<int>() == 3);
  CHECK(j.at("list").at(1).at("k").get<int>() == 4);
  CHECK(j.at("v").at("k").get<int>() == 5);
  std::vector<std::string> keys;  // in file order
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  CHECK(keys == std::vector<std::string>{"k", "list", "v"});
}

TEST_CASE("adapter_config.json with a key twice is refused by read_adapter_config", "[json][lora]") {
  test::TempDir dir;
  const std::string path = (fs::path(dir.path()) / "adapter_config.json").string();

  test::write_file(path, adapter_config(""));
  const LoraConfig config = read_adapter_config(dir.path());
  CHECK(config.r == 8);
  CHECK(config.lora_alpha == 16);
  CHECK(config.target_modules == std::vector<std::string>{"q_proj", "v_proj"});
  REQUIRE(config.rank_pattern.size() == 1);
  CHECK(config.rank_pattern[0].first == "q_proj");
  CHECK(config.rank_pattern[0].second == 4);

  SECTION("at the top level") {
    // Lenient JSON would keep one of the two ranks; the file is ambiguous.
    test::write_file(path, adapter_config(R"(, "r": 4)"));
    const Error e = test::capture_error([&] { read_adapter_config(dir.path()); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'" + path + "'") && Contains("the key 'r' twice"));
  }
  SECTION("nested") {
    test::write_file(path, adapter_config(R"(, "alpha_pattern": {"v_proj": 8, "v_proj": 32})"));
    const Error e = test::capture_error([&] { read_adapter_config(dir.path()); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("'" + path + "'") && Contains("the key 'v_proj' twice"));
  }
}

}  // namespace lorakeep
