// YAML run configurations: every shipped config loads, and every kind of
// mistake is reported with file, line, column and key.
#include <boost/filesystem.hpp>

#include "lorakeep/config.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

const char* kGood = R"(checkpoint:
  output_dir: runs/x
  save_steps: 10
  metric_for_best_model: accuracy
lora:
  r: 4
  target_modules: [q_proj]
)";

}  // namespace

TEST_CASE("every config in configs/ loads", "[config]") {
  int loaded = 0;
  for (const auto& e : fs::directory_iterator(std::string(LORAKEEP_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    INFO(e.path().string());
    const RunConfig run = load_run_config(e.path().string());
    CHECK_FALSE(run.checkpoint.output_dir.empty());
    CHECK_FALSE(run.lora.target_modules.empty());
    CHECK_FALSE(run.data.finetune_texts.empty());
    ++loaded;
  }
  CHECK(loaded >= 2);
  const RunConfig demo = load_run_config(std::string(LORAKEEP_SOURCE_DIR) + "/configs/char_lm_lora.yaml");
  CHECK(demo.lora.target_modules == std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"});
  CHECK(metric_key(demo.checkpoint) == "eval_loss");
  CHECK_FALSE(greater_is_better(demo.checkpoint));
  CHECK(demo.transfer.chunk_bytes == 64ull << 20);
  CHECK(demo.checkpoint.save_total_limit == 2);
}

TEST_CASE("a minimal config takes the defaults of Trainer and PEFT", "[config]") {
  const RunConfig run = parse_run_config(kGood, "good.yaml");
  CHECK(run.checkpoint.save_steps == 10);
  CHECK(run.checkpoint.save_strategy == SaveStrategy::kSteps);
  CHECK(metric_key(run.checkpoint) == "eval_accuracy");
  CHECK(greater_is_better(run.checkpoint));  // not a loss
  CHECK(run.lora.lora_alpha == 8);
  CHECK(run.lora.lora_dropout == 0.0);
  CHECK(run.lora.init_lora_weights == "true");
  CHECK(run.checkpoint.verify_checksums);
}

TEST_CASE("the transfer section sets how reloads read: piece size and checksum verification", "[config]") {
  const RunConfig run = parse_run_config(
      std::string(kGood) + "transfer:\n  chunk_bytes: 1MiB\n  verify_checksums: false\n", "t.yaml");
  CHECK(run.checkpoint.chunk_bytes == 1ull << 20);
  CHECK_FALSE(run.checkpoint.verify_checksums);  // what load_best_into and resume honour
}

TEST_CASE("each kind of bad YAML gives an error with line and key", "[config]") {
  struct Case {
    const char* what;
    std::string text;
    std::string where;  // "file:line:column:"
    std::string phrase;
  };
  const std::vector<Case> cases = {
      {"unknown key with a near miss", std::string(kGood) + "  rank: 8\n", "bad.yaml:8:3:", "unknown key 'lora.rank'"},
      {"misspelled section key", std::string(kGood) + "  lora_alfa: 8\n",
       "bad.yaml:8:3:", "did you mean 'lora.lora_alpha'"},
      {"unknown section", std::string(kGood) + "optimizer:\n  lr: 1\n", "bad.yaml:8:1:", "unknown key 'optimizer'"},
      {"wrong type", "checkpoint:\n  output_dir: x\n  save_steps: often\nlora:\n  target_modules: [q]\n",
       "bad.yaml:3:15:", "'checkpoint.save_steps' must be an integer, not 'often'"},
      {"out of range", "checkpoint:\n  output_dir: x\nlora:\n  r: 0\n  target_modules: [q]\n",
       "bad.yaml:4:6:", "'lora.r' must be in [1,"},
      {"bad choice", "checkpoint:\n  output_dir: x\n  save_strategy: sometimes\nlora:\n  target_modules: [q]\n",
       "bad.yaml:3:18:", "must be one of best, epoch, no, steps"},
      {"bad byte size", std::string(kGood) + "transfer:\n  chunk_bytes: lots\n",
       "bad.yaml:9:16:", "'transfer.chunk_bytes' must be a byte size"},
      {"list expected", "checkpoint:\n  output_dir: x\nlora:\n  target_modules: {a: 1}\n",
       "bad.yaml:4:19:", "'lora.target_modules' must be a list"},
      {"YAML syntax", "checkpoint:\n  output_dir: [x\n", "bad.yaml:3:1:", "not valid YAML"},
      {"missing section", "checkpoint:\n  output_dir: x\n", "bad.yaml:1:1:", "needs a 'lora' section"},
      {"cross-field check", std::string(kGood) + "model:\n  n_head: 3\n  n_embd: 64\n",
       "bad.yaml:10:11:", "'model.n_embd' must be a multiple of n_head"},
      {"rank_pattern value", std::string(kGood) + "  rank_pattern: {q_proj: -2}\n",
       "bad.yaml:8:26:", "'lora.rank_pattern.q_proj' must be a positive integer"},
      {"not a mapping", "- a\n- b\n", "bad.yaml:1:1:", "must be a mapping"},
  };
  for (const Case& c : cases) {
    INFO(c.what << "\n" << c.text);
    const Error e = test::capture_error([&] { parse_run_config(c.text, "bad.yaml"); });
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK_THAT(e.what(), Contains(c.where) && Contains(c.phrase));
  }
  CHECK(test::capture_error([] { load_run_config("/no/such/config.yaml"); }).code() == ErrorCode::kNotFound);
}

}  // namespace lorakeep
