// The lorakeep tool as a user runs it: real processes, real exit codes.
#include <sys/stat.h>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

std::vector<std::string> all_fixture_files() {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(test::fixture(""))) {
    if (fs::is_regular_file(e.path())) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("lorakeep verify accepts and refuses every reference test vector as its MANIFEST says", "[cli]") {
  const auto manifest = nlohmann::json::parse(
      test::read_file(test::fixture("hf_safetensors_rust_test_vectors/MANIFEST.json")));
  for (const auto& entry : manifest) {
    const std::string path = test::fixture("hf_safetensors_rust_test_vectors/" + entry["file"].get<std::string>());
    const bool ok = entry["expected"].get<std::string>().rfind("OK", 0) == 0;
    const auto r = test::run_process({test::cli_path(), "verify", path});
    INFO(path << "\n" << r.out << r.err);
    CHECK(r.signal == 0);
    CHECK(r.exit_code == (ok ? 0 : 1));
    if (!ok) CHECK_THAT(r.err, Contains(entry["file"].get<std::string>()));
  }
}

TEST_CASE("lorakeep inspect --json prints valid JSON for every fixture good or bad", "[cli]") {
  int good = 0, bad = 0;
  for (const std::string& path : all_fixture_files()) {
    const auto r = test::run_process({test::cli_path(), "inspect", "--json", path});
    INFO(path << "\n" << r.err);
    CHECK(r.signal == 0);
    REQUIRE((r.exit_code == 0 || r.exit_code == 1));
    const auto j = nlohmann::json::parse(r.out);  // throws, and fails the test, if not JSON
    if (r.exit_code == 0) {
      CHECK(j.contains("tensors"));
      ++good;
    } else {
      CHECK(j["error"]["message"].get<std::string>().size() > 0);
      ++bad;
    }
  }
  CHECK(good >= 30);
  CHECK(bad >= 10);
}

TEST_CASE("lorakeep inspect shows names dtypes shapes and metadata", "[cli]") {
  const auto r = test::run_process(
      {test::cli_path(), "inspect", test::fixture("safetensors_jl/non_sharded/model.with_metadata.safetensors")});
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Contains("36 tensors") && Contains("version: 2.2") && Contains("bfloat16_357") &&
                        Contains("[3, 5, 7]") && Contains("BF16"));
}

TEST_CASE("lorakeep exits 2 on usage errors", "[cli]") {
  CHECK(test::run_process({test::cli_path()}).exit_code == 2);
  CHECK(test::run_process({test::cli_path(), "no-such-command"}).exit_code == 2);
  CHECK(test::run_process({test::cli_path(), "inspect"}).exit_code == 2);
  CHECK(test::run_process({test::cli_path(), "inspect", "a", "b"}).exit_code == 2);
  const auto help = test::run_process({test::cli_path(), "--help"});
  CHECK(help.exit_code == 0);
  CHECK_THAT(help.out, Contains("inspect") && Contains("verify"));
}

TEST_CASE("lorakeep convert writes safetensors from a .bin and a failed write keeps the old file", "[cli]") {
  test::TempDir dir;
  const std::string bin = test::fixture("peft/regression_0.6.1/lora_mlp/adapter_model.bin");
  const auto ok = test::run_process({test::cli_path(), "convert", bin, dir / "a.safetensors"});
  INFO(ok.err);
  REQUIRE(ok.exit_code == 0);
  const std::string before = test::read_file(dir / "a.safetensors");
  // A real write failure: the file size limit is hit mid-write (EFBIG), with
  // SIGXFSZ ignored as a daemon would.
  const auto fail = test::run_shell("trap '' XFSZ; ulimit -f 1; exec '" + test::cli_path() + "' convert '" + bin +
                                    "' '" + (dir / "a.safetensors") + "'");
  CHECK(fail.exit_code == 1);
  CHECK_THAT(fail.err, Contains("File too large") && Contains("a.safetensors"));
  CHECK(test::read_file(dir / "a.safetensors") == before);
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);  // no temp file left behind
}

}  // namespace lorakeep

namespace lorakeep {

TEST_CASE("lorakeep refuses a FIFO or a device instead of blocking on it", "[cli]") {
  test::TempDir dir;
  REQUIRE(::mkfifo((dir / "pipe.safetensors").c_str(), 0600) == 0);
  for (const std::string& path : {dir / "pipe.safetensors", std::string("/dev/zero")}) {
    const auto r = test::run_process({"timeout", "20", test::cli_path(), "inspect", "--json", path});
    INFO(path << "\n" << r.out << r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(nlohmann::json::parse(r.out)["error"]["message"].get<std::string>(), Contains("not a regular file"));
  }
}

}  // namespace lorakeep
