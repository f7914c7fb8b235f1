// YAML run configurations: every shipped config loads, an application's own
// sections read through the same checks, and every kind of mistake is
// reported with file, line, column and key.
#include <boost/filesystem.hpp>

#include "lorakeep/config.h"
#include "bert/settings.h"
#include "settings.h"
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

// An application's settings, declared in the test: one of each kind of key.
struct Optim {
  enum class Schedule { kCosine, kLinear };
  int max_steps = 100;
  std::int64_t warmup_steps = 0;
  std::uint64_t seed = 1;
  double learning_rate = 0.1;
  bool amsgrad = false;
  std::optional<bool> fused;
  std::string name = "adamw";
  std::optional<std::string> note;
  std::vector<std::string> files;
  std::uint64_t buffer = 1024;
  std::string precision = "fp32";
  Schedule schedule = Schedule::kCosine;
};

struct App {
  Optim optim;
  int eval_every = 5;
  int rule_runs = 0;  // how often the optim rule ran
  ConfigSchema schema;

  App() {
    schema.section("optim")
        .integer("max_steps", &optim.max_steps, 1, 1000)
        .integer("warmup_steps", &optim.warmup_steps, 0)
        .integer("seed", &optim.seed)
        .real("learning_rate", &optim.learning_rate, 0, 1)
        .boolean("amsgrad", &optim.amsgrad)
        .boolean("fused", &optim.fused)
        .text("name", &optim.name)
        .text("note", &optim.note)
        .strings("files", &optim.files)
        .bytes("buffer", &optim.buffer, 16)
        .choice("precision", &optim.precision, {"fp32", "bf16"})
        .choice("schedule", &optim.schedule,
                {{"cosine", Optim::Schedule::kCosine}, {"linear", Optim::Schedule::kLinear}})
        .check([this](const SectionCheck& check) {
          ++rule_runs;
          if (optim.warmup_steps > optim.max_steps) {
            check.fail("warmup_steps", "must be at most max_steps (" + std::to_string(optim.max_steps) + ")");
          }
          if (optim.fused && !check.has("amsgrad")) check.fail("sets fused but not amsgrad");
        });
    schema.section("eval").required().integer("every", &eval_every, 1);
  }
};

}  // namespace

TEST_CASE("every config in configs/ loads", "[config]") {
  int loaded = 0;
  for (const auto& e : fs::directory_iterator(std::string(LORAKEEP_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    INFO(e.path().string());
    if (e.path().filename().string().rfind("bert", 0) == 0) {  // the BERT example's
      const bert::Config config = bert::load_config(e.path().string());
      CHECK_FALSE(config.run.checkpoint.output_dir.empty());
      CHECK_FALSE(config.run.lora.target_modules.empty());
      CHECK(config.settings.data.classes.size() >= 2);
    } else {
      const char_lm::Config config = char_lm::load_config(e.path().string());
      CHECK_FALSE(config.run.checkpoint.output_dir.empty());
      CHECK_FALSE(config.run.lora.target_modules.empty());
      CHECK_FALSE(config.settings.data.finetune_texts.empty());
    }
    ++loaded;
  }
  CHECK(loaded >= 3);
  // The main job: accuracy, greater is better; PEFT's BERT defaults; the head saved whole.
  const bert::Config job = bert::load_config(std::string(LORAKEEP_SOURCE_DIR) + "/configs/bert_fortunes.yaml");
  CHECK(metric_key(job.run.checkpoint) == "eval_accuracy");
  CHECK(greater_is_better(job.run.checkpoint));
  CHECK(job.run.lora.target_modules == std::vector<std::string>{"query", "value"});
  CHECK(job.run.lora.modules_to_save == std::vector<std::string>{"classifier"});
  CHECK(job.settings.model.max_length == 64);
  CHECK(job.settings.data.classes.size() == 4);
  const char_lm::Config demo = char_lm::load_config(std::string(LORAKEEP_SOURCE_DIR) + "/configs/char_lm_lora.yaml");
  const RunConfig& run = demo.run;
  CHECK(run.path == std::string(LORAKEEP_SOURCE_DIR) + "/configs/char_lm_lora.yaml");
  CHECK(run.lora.target_modules == std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"});
  CHECK(metric_key(run.checkpoint) == "eval_loss");
  CHECK_FALSE(greater_is_better(run.checkpoint));
  CHECK(run.checkpoint.chunk_bytes == 64ull << 20);
  CHECK(run.checkpoint.save_total_limit == 2);
  // The example's sections land in the example's fields.
  const char_lm::Config tiny = char_lm::load_config(std::string(LORAKEEP_SOURCE_DIR) + "/configs/char_lm_tiny.yaml");
  CHECK(tiny.settings.training.seed == 7);
  CHECK(tiny.settings.training.max_steps == 30);
  CHECK(tiny.settings.training.learning_rate == 0.01);
  CHECK(tiny.settings.training.base_learning_rate == char_lm::TrainingSettings().base_learning_rate);  // left out
  CHECK(tiny.settings.model.n_embd == 32);
  CHECK(tiny.settings.model.dropout == 0.0);
  CHECK(tiny.settings.data.base_texts == std::vector<std::string>{"/usr/share/games/fortunes/cookie"});
}

TEST_CASE("a minimal config takes the defaults of Trainer and PEFT", "[config]") {
  const RunConfig run = parse_run_config(kGood, "good.yaml");
  CHECK(run.callbacks.save_steps == 10);
  CHECK(run.callbacks.save_strategy == SaveStrategy::kSteps);
  CHECK(metric_key(run.checkpoint) == "eval_accuracy");
  CHECK(greater_is_better(run.checkpoint));  // not a loss
  CHECK(run.lora.lora_alpha == 8);
  CHECK(run.lora.lora_dropout == 0.0);
  CHECK(run.lora.init_lora_weights == "true");
  CHECK(run.checkpoint.verify_checksums);
  CHECK(run.checkpoint.resume_from_checkpoint == "auto");
  CHECK(resume_from(run.checkpoint) == ResumeFrom::kNewest);
  CHECK_FALSE(run.checkpoint.save_on_each_node);
}

TEST_CASE("save_on_each_node is Trainer's boolean", "[config]") {
  const std::string head = "checkpoint:\n  output_dir: x\n  save_on_each_node: ";
  const std::string tail = "\nlora:\n  target_modules: [q]\n";
  CHECK(parse_run_config(head + "true" + tail, "n.yaml").checkpoint.save_on_each_node);
  const Error e = test::capture_error([&] { parse_run_config(head + "sometimes" + tail, "n.yaml"); });
  CHECK_THAT(e.what(), Contains("n.yaml:3:") && Contains("save_on_each_node"));
}

TEST_CASE("lora.use_dora is PEFT's flag: off unless set", "[config]") {
  const std::string head = "checkpoint:\n  output_dir: x\nlora:\n  target_modules: [q]\n";
  CHECK_FALSE(parse_run_config(head, "d.yaml").lora.use_dora);
  CHECK(parse_run_config(head + "  use_dora: true\n", "d.yaml").lora.use_dora);
}

TEST_CASE("resume_from_checkpoint takes Trainer's values: true, a path, or none", "[config]") {
  const std::string head = "checkpoint:\n  output_dir: x\n  resume_from_checkpoint: ";
  const std::string tail = "\nlora:\n  target_modules: [q]\n";
  const RunConfig yes = parse_run_config(head + "true" + tail, "r.yaml");
  CHECK(resume_from(yes.checkpoint) == ResumeFrom::kNewest);
  const RunConfig none = parse_run_config(head + "none" + tail, "r.yaml");
  CHECK(resume_from(none.checkpoint) == ResumeFrom::kNone);
  const RunConfig path = parse_run_config(head + "/runs/a/checkpoint-40" + tail, "r.yaml");
  CHECK(resume_from(path.checkpoint) == ResumeFrom::kPath);
  CHECK(path.checkpoint.resume_from_checkpoint == "/runs/a/checkpoint-40");
}

TEST_CASE("the transfer section sets how reloads read: piece size and checksum verification", "[config]") {
  const RunConfig run = parse_run_config(
      std::string(kGood) + "transfer:\n  chunk_bytes: 1MiB\n  verify_checksums: false\n", "t.yaml");
  CHECK(run.checkpoint.chunk_bytes == 1ull << 20);
  CHECK_FALSE(run.checkpoint.verify_checksums);  // what load_best_into and resume honour
  // One key for one setting: the piece size is the transfer section's.
  const Error e = test::capture_error([] {
    parse_run_config("checkpoint:\n  output_dir: x\n  chunk_bytes: 1MiB\nlora:\n  target_modules: [q]\n", "c.yaml");
  });
  CHECK_THAT(e.what(), Contains("c.yaml:3:") && Contains("chunk_bytes"));
}

TEST_CASE("each kind of bad YAML gives an error with line and key", "[config]") {
  struct Case {
    const char* what;
    std::string text;
    std::string where;  // "file:line:column:"
    std::string phrase;
    bool example = false;  // uses the example's sections: parsed with its schema only
  };
  const std::vector<Case> cases = {
      {"unknown key with a near miss", std::string(kGood) + "  rank: 8\n", "bad.yaml:8:3:", "unknown key 'lora.rank'"},
      {"misspelled section key", std::string(kGood) + "  lora_alfa: 8\n",
       "bad.yaml:8:3:", "did you mean 'lora.lora_alpha'"},
      {"unknown section", std::string(kGood) + "optimizer:\n  lr: 1\n", "bad.yaml:8:1:", "unknown key 'optimizer'"},
      {"misspelled section", "checkpont:\n  output_dir: x\nlora:\n  target_modules: [q]\n",
       "bad.yaml:1:1:", "unknown key 'checkpont' (hint: did you mean 'checkpoint'?)"},
      {"wrong type", "checkpoint:\n  output_dir: x\n  save_steps: often\nlora:\n  target_modules: [q]\n",
       "bad.yaml:3:15:", "'checkpoint.save_steps' must be an integer, not 'often'"},
      {"out of range", "checkpoint:\n  output_dir: x\nlora:\n  r: 0\n  target_modules: [q]\n",
       "bad.yaml:4:6:", "'lora.r' must be in [1,"},
      {"bad choice", "checkpoint:\n  output_dir: x\n  save_strategy: sometimes\nlora:\n  target_modules: [q]\n",
       "bad.yaml:3:18:", "must be one of best, epoch, no, steps"},
      {"bad byte size", std::string(kGood) + "transfer:\n  chunk_bytes: lots\n",
       "bad.yaml:9:16:", "'transfer.chunk_bytes' must be a byte size"},
      {"byte size too small", std::string(kGood) + "transfer:\n  chunk_bytes: 32\n",
       "bad.yaml:9:16:", "'transfer.chunk_bytes' must be at least 64 bytes, not 32"},
      {"list expected", "checkpoint:\n  output_dir: x\nlora:\n  target_modules: {a: 1}\n",
       "bad.yaml:4:19:", "'lora.target_modules' must be a list"},
      {"YAML syntax", "checkpoint:\n  output_dir: [x\n", "bad.yaml:3:1:", "not valid YAML"},
      {"missing section", "checkpoint:\n  output_dir: x\n", "bad.yaml:1:1:", "needs a 'lora' section"},
      {"missing required key", "checkpoint:\n  save_steps: 5\nlora:\n  target_modules: [q]\n",
       "bad.yaml:2:3:", "'checkpoint' needs an output_dir"},
      {"rank_pattern value", std::string(kGood) + "  rank_pattern: {q_proj: -2}\n",
       "bad.yaml:8:26:", "'lora.rank_pattern.q_proj' must be a positive integer"},
      {"not a mapping", "- a\n- b\n",
       "bad.yaml:1:1:", "must be a mapping with the sections checkpoint, lora, transfer"},
      {"cross-field check", std::string(kGood) + "model:\n  n_head: 3\n  n_embd: 64\n",
       "bad.yaml:10:11:", "'model.n_embd' must be a multiple of n_head (3)", true},
      {"misspelled example key", std::string(kGood) + "training:\n  max_step: 5\n",
       "bad.yaml:9:3:", "unknown key 'training.max_step' (hint: did you mean 'training.max_steps'?)", true},
      {"misspelled example section", std::string(kGood) + "trainig:\n  max_steps: 5\n",
       "bad.yaml:8:1:", "unknown key 'trainig' (hint: did you mean 'training'?)", true},
      {"example range", std::string(kGood) + "data:\n  validation_fraction: 0.95\n",
       "bad.yaml:9:24:", "'data.validation_fraction' must be in [0.01, 0.9], not 0.95", true},
  };
  for (const Case& c : cases) {
    INFO(c.what << "\n" << c.text);
    // lorakeep's mistakes read the same with or without an application's sections.
    if (!c.example) {
      const Error e = test::capture_error([&] { parse_run_config(c.text, "bad.yaml"); });
      CHECK(e.code() == ErrorCode::kInvalidArgument);
      CHECK_THAT(e.what(), Contains(c.where) && Contains(c.phrase));
    }
    const Error e = test::capture_error([&] { char_lm::parse_config(c.text, "bad.yaml"); });
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK_THAT(e.what(), Contains(c.where) && Contains(c.phrase));
  }
  CHECK(test::capture_error([] { load_run_config("/no/such/config.yaml"); }).code() == ErrorCode::kNotFound);
}

TEST_CASE("an application's sections land in its own fields, each key checked as lorakeep's", "[config]") {
  const std::string full = std::string(kGood) + R"(optim:
  max_steps: 500
  warmup_steps: 20
  seed: 18446744073709551615
  learning_rate: 0.003
  amsgrad: true
  fused: false
  name: lion
  note: a note
  files: [a.txt, b.txt]
  buffer: 2KiB
  precision: bf16
  schedule: linear
eval:
  every: 50
)";
  App app;
  const RunConfig run = parse_run_config(full, "app.yaml", app.schema);
  CHECK(run.lora.r == 4);  // lorakeep's sections still land in RunConfig
  CHECK(app.optim.max_steps == 500);
  CHECK(app.optim.warmup_steps == 20);
  CHECK(app.optim.seed == 18446744073709551615ull);
  CHECK(app.optim.learning_rate == 0.003);
  CHECK(app.optim.amsgrad);
  CHECK(app.optim.fused == std::optional<bool>(false));
  CHECK(app.optim.name == "lion");
  CHECK(app.optim.note == std::optional<std::string>("a note"));
  CHECK(app.optim.files == std::vector<std::string>{"a.txt", "b.txt"});
  CHECK(app.optim.buffer == 2048);
  CHECK(app.optim.precision == "bf16");
  CHECK(app.optim.schedule == Optim::Schedule::kLinear);
  CHECK(app.eval_every == 50);
  CHECK(app.rule_runs == 1);

  // Keys left out keep the application's values; a section left out runs no rule.
  App sparse;
  parse_run_config(std::string(kGood) + "eval:\n  every: 2\n", "app.yaml", sparse.schema);
  CHECK(sparse.optim.max_steps == 100);
  CHECK_FALSE(sparse.optim.fused);
  CHECK(sparse.optim.precision == "fp32");
  CHECK(sparse.eval_every == 2);
  CHECK(sparse.rule_runs == 0);

  // The same file without the application's schema: its sections are unknown.
  CHECK_THAT(test::capture_error([&] { parse_run_config(full, "app.yaml"); }).what(),
             Contains("app.yaml:8:1: unknown key 'optim'"));
}

TEST_CASE("an application's mistakes name the file, line, key and a hint", "[config]") {
  struct Case {
    const char* what;
    std::string text;  // after kGood (7 lines)
    std::string where;
    std::string phrase;
  };
  const std::string eval = "eval:\n  every: 1\n";
  const std::vector<Case> cases = {
      {"misspelled key", eval + "optim:\n  max_step: 5\n",
       "app.yaml:11:3:", "unknown key 'optim.max_step' (hint: did you mean 'optim.max_steps'?)"},
      {"misspelled section", eval + "optimm:\n  max_steps: 5\n",
       "app.yaml:10:1:", "unknown key 'optimm' (hint: did you mean 'optim'?)"},
      {"section declared by no one", eval + "logging:\n  level: 2\n", "app.yaml:10:1:", "unknown key 'logging'"},
      {"out of range", eval + "optim:\n  max_steps: 0\n",
       "app.yaml:11:14:", "'optim.max_steps' must be in [1, 1000], not 0"},
      {"below the minimum", eval + "optim:\n  warmup_steps: -3\n",
       "app.yaml:11:17:", "'optim.warmup_steps' must be at least 0, not -3"},
      {"real out of range", eval + "optim:\n  learning_rate: 2\n",
       "app.yaml:11:18:", "'optim.learning_rate' must be in [0, 1], not 2"},
      {"wrong type", eval + "optim:\n  amsgrad: maybe\n",
       "app.yaml:11:12:", "'optim.amsgrad' must be true or false, not 'maybe'"},
      {"bad choice", eval + "optim:\n  schedule: step\n",
       "app.yaml:11:13:", "'optim.schedule' must be one of cosine, linear, not 'step'"},
      {"byte size below the minimum", eval + "optim:\n  buffer: 8\n",
       "app.yaml:11:11:", "'optim.buffer' must be at least 16 bytes, not 8"},
      {"the rule, at the key", eval + "optim:\n  max_steps: 10\n  warmup_steps: 50\n",
       "app.yaml:12:17:", "'optim.warmup_steps' must be at most max_steps (10)"},
      {"the rule, at the section", eval + "optim:\n  fused: true\n",
       "app.yaml:11:3:", "'optim' sets fused but not amsgrad"},
      {"required section missing", "", "app.yaml:1:1:", "needs a 'eval' section"},
      {"section not a mapping", eval + "optim: 5\n", "app.yaml:10:8:", "'optim' must be a mapping"},
  };
  for (const Case& c : cases) {
    INFO(c.what << "\n" << c.text);
    App app;
    const Error e = test::capture_error([&] { parse_run_config(std::string(kGood) + c.text, "app.yaml", app.schema); });
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK_THAT(e.what(), Contains(c.where) && Contains(c.phrase));
  }

  // The rule points at the section when the key it names is left out.
  App app;
  app.schema.section("limits").integer("n", &app.eval_every).check([](const SectionCheck& check) {
    check.fail("m", "is needed with n");
  });
  CHECK_THAT(test::capture_error([&] {
               parse_run_config(std::string(kGood) + eval + "limits:\n  n: 1\n", "app.yaml", app.schema);
             }).what(),
             Contains("app.yaml:11:3: 'limits.m' is needed with n"));
}

TEST_CASE("an application cannot declare lorakeep's sections or a key twice", "[config]") {
  ConfigSchema schema;
  int r = 0;
  schema.section("lora").integer("rank", &r);
  const Error e = test::capture_error([&] { parse_run_config(kGood, "app.yaml", schema); });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(e.what(), Contains("app.yaml") && Contains("'lora', which is lorakeep's own"));

  ConfigSchema twice;
  twice.section("optim").integer("n", &r);
  CHECK_THAT(test::capture_error([&] { twice.section("optim").integer("n", &r); }).what(),
             Contains("'optim.n' is declared twice"));
  CHECK(test::capture_error([&] { twice.section(""); }).code() == ErrorCode::kInvalidArgument);
}

}  // namespace lorakeep
