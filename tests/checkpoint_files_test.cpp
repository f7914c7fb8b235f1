// The checkpoint directory format, writer and reader: directory names,
// trainer_state.json as Trainer writes it, the self-checking manifest, and
// what a reader makes of leftovers, damage and a failed save.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "lorakeep/checkpoint_manager.h"
#include "base/file_names.h"
#include "checkpoint/manifest.h"
#include "checkpoint/run_dir.h"
#include "checkpoint/trainer_state.h"
#include "tensor_util.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

using Net = test::TestNet;
using test::adapter_snapshot;
using test::lora_config;
using test::lora_net;
using test::options_for;
using test::perturb;

}  // namespace

TEST_CASE("checkpoint names are built and parsed in one canonical form", "[checkpoint]") {
  struct Row {
    std::string name;
    std::optional<std::int64_t> step;
  };
  const std::vector<Row> rows = {
      {"checkpoint-0", 0},     {"checkpoint-400", 400},     {"checkpoint-1000000", 1000000},
      {"checkpoint-0400", {}}, {"checkpoint--1", {}},       {"checkpoint-", {}},
      {"checkpoint-4x", {}},   {"checkpoint-+4", {}},       {"Checkpoint-4", {}},
      {"checkpoint-4 ", {}},   {".tmp-checkpoint-4-1", {}}, {"checkpoint-99999999999999999999", {}},
  };
  for (const Row& r : rows) {
    INFO(r.name);
    CHECK(detail::parse_checkpoint_dir_name(r.name) == r.step);
    if (r.step) CHECK(detail::checkpoint_dir_name(*r.step) == r.name);
  }
  CHECK(detail::temp_checkpoint_dir_name(400, 4242) == ".tmp-checkpoint-400-4242");
  CHECK(detail::is_temp_checkpoint_dir_name(".tmp-checkpoint-400-4242"));
  CHECK_FALSE(detail::is_temp_checkpoint_dir_name("checkpoint-400"));
}

TEST_CASE("trainer_state.json has exactly the keys of Trainer and agrees with the manifests", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  CheckpointManager ckpt(options_for(dir.path()));
  TrainingState state;
  state.max_steps = 100;
  state.num_train_epochs = 1;
  state.train_batch_size = 8;
  for (int i = 1; i <= 3; ++i) {
    state.global_step = 10 * i;
    state.epoch = 0.1 * i;
    state.log({{"loss", 3.0 - i}, {"learning_rate", 1e-3}});
    state.record_evaluation({{"eval_loss", i == 2 ? 0.5 : 1.0 + i}});
    ckpt.save(*net, lora_config(), state);
  }
  const std::string last = dir / "checkpoint-30";
  const auto j = nlohmann::json::parse(test::read_file(last + "/trainer_state.json"));
  std::set<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.insert(it.key());
  // TrainerState's fields in every transformers from 4.38 to 5.x (its
  // load_from_json refuses any other key).
  CHECK(keys == std::set<std::string>{"best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step",
                                      "is_hyper_param_search", "is_local_process_zero", "is_world_process_zero",
                                      "log_history", "logging_steps", "max_steps", "num_input_tokens_seen",
                                      "num_train_epochs", "save_steps", "total_flos", "train_batch_size", "trial_name",
                                      "trial_params"});
  const detail::Manifest m = detail::read_manifest(last);
  CHECK(j["global_step"] == m.step);
  CHECK(j["epoch"].get<double>() == Approx(m.epoch));
  CHECK(j["best_metric"].get<double>() == detail::read_manifest(dir / "checkpoint-20").metrics.at("eval_loss"));
  CHECK(j["best_model_checkpoint"] == dir / "checkpoint-20");
  CHECK(j["max_steps"] == 100);
  CHECK(j["train_batch_size"] == 8);
  // Log history as Trainer writes it: integral steps, training and evaluation entries.
  const auto& history = j["log_history"];
  REQUIRE(history.size() == 6);
  CHECK(history[4]["step"].is_number_integer());
  CHECK(history[4]["loss"] == 0.0);
  CHECK(history[5]["eval_loss"].get<double>() == m.metrics.at("eval_loss"));
  CHECK_FALSE(m.early_stopping.has_value());
  // Every file of the checkpoint is in the manifest with its checksum.
  std::set<std::string> listed;
  for (const auto& [name, entry] : m.files) listed.insert(name);
  CHECK(listed == std::set<std::string>{"adapter_model.safetensors", "adapter_config.json", "trainer_state.json",
                                        "lorakeep_rng.safetensors"});
  CHECK(m.tensors.size() == 4);
  detail::check_checkpoint_files(last, m, /*full=*/true);
}

TEST_CASE("leftovers and damaged manifests are never loaded and a corrupt best fails loud", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  TrainingState state;
  {
    CheckpointOptions o = options_for(dir.path());
    o.save_total_limit = 0;
    CheckpointManager ckpt(o);
    const std::vector<double> losses = {1.0, 0.5, 0.7};
    for (std::size_t i = 0; i < losses.size(); ++i) {
      perturb(net, 0.1);
      state.global_step = static_cast<std::int64_t>(i + 1);
      state.record_evaluation({{"eval_loss", losses[i]}});
      ckpt.save(*net, lora_config(), state);
    }
  }
  // A save that died before its rename, and a checkpoint whose manifest broke.
  fs::create_directory(dir / ".tmp-checkpoint-4-99999");
  test::write_file(dir / ".tmp-checkpoint-4-99999/adapter_model.safetensors", "partial");
  test::write_file(dir / "checkpoint-3/lorakeep_manifest.json", "{\"format\": \"lorakeep-checkpoint\"");
  CheckpointOptions o = options_for(dir.path());
  o.save_total_limit = 0;
  CheckpointManager ckpt(o);
  CHECK_FALSE(fs::exists(dir / ".tmp-checkpoint-4-99999"));
  std::vector<std::int64_t> steps;
  for (const auto& c : ckpt.checkpoints()) steps.push_back(c.step);
  CHECK(steps == std::vector<std::int64_t>{1, 2});
  CHECK(ckpt.latest()->step == 2);

  // Corrupt one byte of the best adapter's tensor data.
  Net live = lora_net(5);
  const NamedTensors before = adapter_snapshot(live);
  const std::string weights = dir / "checkpoint-2/adapter_model.safetensors";
  test::flip_byte(weights, fs::file_size(weights) - 5);
  const Error e = test::capture_error([&] { ckpt.load_best_into(*live); });
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Contains("checkpoint-2/adapter_model.safetensors"));
  CHECK(test::bitwise_equal(adapter_snapshot(live), before));
}

TEST_CASE("a trainer state with numbers past int64 reads and writes back without overflow", "[checkpoint]") {
  // Found by fuzzing: these were cast to int64 when written back (undefined behaviour).
  TrainingState s;
  detail::parse_trainer_state(R"({"num_train_epochs": 1e53, "log_history": [{"step": 1e300, "loss": 1}]})",
                              "trainer_state.json", &s);
  const auto j = nlohmann::json::parse(detail::format_trainer_state(s));
  CHECK(j["num_train_epochs"].get<double>() == 1e53);
  CHECK(j["log_history"][0]["step"].get<double>() == 1e300);
  const Error e = test::capture_error(
      [&] { detail::parse_trainer_state(R"({"global_step": 18446744073709551615})", "trainer_state.json", &s); });
  CHECK_THAT(e.what(), Contains("'global_step' must be a 64-bit integer"));
}

TEST_CASE("a manifest checks itself: an edited metric is caught and a resealed one parses", "[checkpoint]") {
  detail::Manifest m;
  m.step = 7;
  m.metric_for_best_model = "eval_loss";
  m.metrics = {{"eval_loss", 0.25}};
  m.files["adapter_model.safetensors"] = {1234, 0xabcdefull};
  m.created = "2026-11-22T08:00:00Z";
  const std::string text = detail::format_manifest(m);
  CHECK(detail::parse_manifest(text, "m.json").metric() == 0.25);

  // Someone "improves" the metric by hand: the manifest no longer matches itself.
  std::string edited = text;
  const std::size_t at = edited.find("0.25");
  REQUIRE(at != std::string::npos);
  edited.replace(at, 4, "0.01");
  const Error e = test::capture_error([&] { detail::parse_manifest(edited, "dir/lorakeep_manifest.json"); });
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Contains("dir/lorakeep_manifest.json") && Contains("fails its own checksum"));
  CHECK(detail::parse_manifest(detail::seal_manifest(edited), "m.json").metric() == 0.01);

  std::string unsealed = text;
  unsealed.erase(unsealed.find("\"manifest_xxh3\""), 1);
  CHECK_THAT(test::capture_error([&] { detail::parse_manifest(unsealed, "m.json"); }).what(),
             Contains("no self-checksum"));
}

TEST_CASE("a manifest lists a named adapter's folder, and no path that leaves the checkpoint", "[checkpoint]") {
  detail::Manifest m;
  m.step = 3;
  m.files["adapter_config.json"] = {10, 1};
  m.files["task_b/adapter_config.json"] = {11, 2};
  m.files["task_b/adapter_model.safetensors"] = {12, 3};
  m.tensors["task_b/base_model.model.lin.lora_A.weight"] = 4;
  m.active_adapter = "task_b";
  m.created = "2026-12-07T12:00:00Z";
  const detail::Manifest back = detail::parse_manifest(detail::format_manifest(m), "m.json");
  CHECK(back.files.size() == 3);
  CHECK(back.named_adapters() == std::vector<std::string>{"task_b"});
  CHECK(back.active_adapter == "task_b");
  CHECK(back.tensors.at("task_b/base_model.model.lin.lora_A.weight") == 4);
  for (const char* bad : {"../x", "a/../b", "a/b/c", "/x", "x/", "..", "a/..", "lorakeep_manifest.json"}) {
    INFO(bad);
    detail::Manifest wrong = m;
    wrong.files[bad] = {1, 1};
    const Error e = test::capture_error([&] { detail::parse_manifest(detail::format_manifest(wrong), "m.json"); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("not a file of the checkpoint"));
  }
}

TEST_CASE("a failed save leaves no partial checkpoint and the earlier ones intact", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  TrainingState state;
  CheckpointManager ckpt(options_for(dir.path()));
  state.global_step = 1;
  state.record_evaluation({{"eval_loss", 1.0}});
  ckpt.save(*net, lora_config(), state);
  // A config that cannot be written (no target layer is armed in this model).
  Net bare;
  state.global_step = 2;
  state.record_evaluation({{"eval_loss", 0.1}});
  const TrainingState before = state;
  CHECK(test::capture_error([&] { ckpt.save(*bare, lora_config(), state); }).code() == ErrorCode::kInvalidArgument);
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{1});
  CHECK(state.best_global_step == before.best_global_step);
  for (const auto& e : fs::directory_iterator(dir.path())) {
    CHECK_FALSE(detail::is_temp_checkpoint_dir_name(e.path().filename().string()));
  }
  CHECK(ckpt.best()->step == 1);
  detail::check_checkpoint_files(dir / "checkpoint-1", detail::read_manifest(dir / "checkpoint-1"), true);
}

TEST_CASE("a trainer_state.json of Trainer 5 reads, early stopping's state included", "[checkpoint]") {
  const std::string text = R"({"best_global_step": 20, "best_metric": 0.5, "epoch": 1.5, "global_step": 30,
    "log_history": [{"eval_loss": 0.5, "step": 20}], "max_steps": 40,
    "stateful_callbacks": {"EarlyStoppingCallback": {"args": {"early_stopping_patience": 3,
        "early_stopping_threshold": 0.01}, "attributes": {"early_stopping_patience_counter": 1}},
      "TrainerControl": {"args": {"should_save": true}, "attributes": {}}}})";
  TrainingState state;
  detail::parse_trainer_state(text, "trainer_state.json", &state);
  CHECK(state.global_step == 30);
  CHECK(state.best_global_step == 20);
  REQUIRE(state.early_stopping.has_value());
  CHECK(state.early_stopping->patience == 3);
  CHECK(state.early_stopping->threshold == 0.01);
  CHECK(state.early_stopping->counter == 1);
  // lorakeep's own file leaves both keys out; its manifest keeps early stopping.
  const std::string ours = detail::format_trainer_state(state);
  CHECK(ours.find("stateful_callbacks") == std::string::npos);
  CHECK(ours.find("best_global_step") == std::string::npos);
}

TEST_CASE("transformers' TrainerState.load_from_json reads lorakeep's trainer_state.json",
          "[checkpoint][python][peers]") {
  test::TempDir dir;
  Net net = lora_net();
  CheckpointManager ckpt(options_for(dir.path()));
  TrainingState state;
  state.max_steps = 40;
  state.early_stopping = TrainingState::EarlyStoppingState{3, 0.0, 1};
  for (int i = 1; i <= 2; ++i) {
    state.global_step = 10 * i;
    state.epoch = 0.25 * i;
    state.log({{"loss", 2.0 / i}});
    state.record_evaluation({{"eval_loss", i == 1 ? 0.5 : 0.7}});
    ckpt.save(*net, lora_config(), state);
  }
  const auto read = test::run_python("trainer_state_check.py", {dir / "checkpoint-20/trainer_state.json"});
  INFO(read.out << read.err);
  REQUIRE(read.exit_code == 0);
  const auto j = nlohmann::json::parse(read.out.substr(0, read.out.find('\n')));
  CHECK(j["global_step"] == 20);
  CHECK(j["epoch"] == 0.5);
  CHECK(j["max_steps"] == 40);
  CHECK(j["best_metric"] == 0.5);
  CHECK(j["best_model_checkpoint"] == dir / "checkpoint-10");
  CHECK(j["log_history"] == 4);
}

}  // namespace lorakeep
