// The main job at test size: examples/char_lm with configs/char_lm_tiny.yaml
// (seconds), then examples/apply_delta on its outputs.
#include <cmath>
#include <set>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "base/file_names.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

}  // namespace

TEST_CASE("the example run reloads a best whose recorded metric equals the live model and reports it",
          "[example][expensive]") {
  test::TempDir dir;
  const std::string config = std::string(LORAKEEP_SOURCE_DIR) + "/configs/char_lm_tiny.yaml";
  const std::string out = dir / "run";
  const auto r = test::run_process({LORAKEEP_CHAR_LM_PATH, "--config", config, "--output-dir", out});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Contains("best checkpoint:") && Contains("reloaded at the end:") &&
                        Contains("live model after the reload") && Contains("a sample from the fine-tuned model") &&
                        Contains("final_adapter"));
  const auto summary = nlohmann::json::parse(test::read_file(out + "/run_summary.json"));
  const double recorded = summary["best_metric"];
  const double live = summary["live_metric_after_reload"];
  CHECK(std::fabs(recorded - live) <= 1e-5);
  CHECK(summary["reload"]["peak_device_bytes"] == 0);
  // Rotation left the newest two and the best, and nothing else.
  std::set<std::int64_t> on_disk;
  for (const auto& e : fs::directory_iterator(out)) {
    if (auto step = detail::parse_checkpoint_dir_name(e.path().filename().string())) on_disk.insert(*step);
  }
  const auto saved = summary["saved_steps"].get<std::vector<std::int64_t>>();
  REQUIRE(saved.size() == 6);  // every 5 of 30 steps
  std::set<std::int64_t> want = {saved[4], saved[5], summary["best_step"].get<std::int64_t>()};
  CHECK(on_disk == want);
  CHECK(summary["kept_steps"].get<std::set<std::int64_t>>() == want);
  const std::string report = test::read_file(out + "/report.html");
  CHECK_THAT(report, Contains("<svg") && Contains("Best checkpoint: <b>checkpoint-" +
                                                  std::to_string(summary["best_step"].get<std::int64_t>())));
  CHECK_THAT(report, Contains("rotated away"));
  // What main.cpp gives the shared report: the direction of the best, the
  // reference figures, the summary and the sample.
  CHECK_THAT(report, Contains(", the lowest eval_loss") && Contains("Reference figures") &&
                         Contains("base model eval_loss on the fine-tuning text") &&
                         Contains("base model eval_loss on its own text") && Contains("live model after the reload") &&
                         Contains("<p id='summary'>The base model scored") &&
                         Contains("A sample from the fine-tuned model"));
  // Self-contained: nothing to fetch.
  CHECK(report.find("src=") == std::string::npos);
  CHECK(report.find("<link") == std::string::npos);
  CHECK(report.find("<script") == std::string::npos);

  const auto delta = test::run_process({LORAKEEP_APPLY_DELTA_PATH, "--config", config, "--run-dir", out});
  INFO(delta.out << delta.err);
  REQUIRE(delta.exit_code == 0);
  CHECK_THAT(delta.out, Contains("0 of") && Contains("equal the fine-tuned weights bit for bit"));
}

TEST_CASE("the README shows the compiled training-loop snippet verbatim", "[example]") {
  const std::string source = test::read_file(std::string(LORAKEEP_SOURCE_DIR) + "/examples/readme_snippet.cpp");
  const std::size_t begin = source.find("// [snippet]\n");
  const std::size_t end = source.find("// [/snippet]");
  REQUIRE(begin != std::string::npos);
  REQUIRE(end != std::string::npos);
  const std::string snippet = source.substr(begin + 13, end - begin - 13);
  const std::string readme = test::read_file(std::string(LORAKEEP_SOURCE_DIR) + "/README.md");
  CHECK(readme.find(snippet) != std::string::npos);
}

}  // namespace lorakeep
