// The checkpoint manager: atomic commits, best tracking and rotation, the
// lock, resume, load-best-at-end, and the files Trainer reads.
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>
#include <torch/optim/adam.h>

#include "lorakeep/callbacks.h"
#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lora.h"
#include "base/file_names.h"
#include "checkpoint/manifest.h"
#include "checkpoint/policy.h"
#include "checkpoint/run_dir.h"
#include "checkpoint/trainer_state.h"
#include "tensor_util.h"
#include "tensors/torch_compat.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

using Net = test::TestNet;
using test::armed_net;

LoraConfig lora_config() { return test::test_lora(); }

Net lora_net(std::uint64_t seed = 0) { return armed_net(seed); }

void perturb(Net& net, double amount) { test::perturb(*net, amount); }

NamedTensors adapter_snapshot(Net& net) { return test::clone_all(adapter_tensors(*net, lora_config())); }

CheckpointOptions options_for(const std::string& dir) {
  CheckpointOptions o;
  o.output_dir = dir;
  o.save_total_limit = 2;
  o.keep_best = 1;
  o.metric_for_best_model = "loss";
  return o;
}

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

TEST_CASE("the best is chosen by metric then step and NaN is worst", "[checkpoint]") {
  using detail::CheckpointRecord;
  const std::vector<CheckpointRecord> records = {{1000, 1.5},         {200, 1.5}, {300, std::nan("")},
                                                 {400, std::nullopt}, {500, 2.0}, {600, 1.2}};
  CHECK(detail::rank_by_metric(records, false) == std::vector<std::int64_t>{600, 200, 1000, 500, 300});
  CHECK(detail::rank_by_metric(records, true) == std::vector<std::int64_t>{500, 200, 1000, 600, 300});
  // Rotation: newest 2 and the best 1.
  CHECK(detail::steps_to_delete(records, 2, 1, false) == std::vector<std::int64_t>{200, 300, 400, 500});
  CHECK(detail::steps_to_delete(records, 2, 2, false) == std::vector<std::int64_t>{300, 400, 500});
  CHECK(detail::steps_to_delete(records, 0, 1, false).empty());
  CHECK(detail::steps_to_delete({{1, std::nan("")}, {2, std::nan("")}, {3, std::nan("")}}, 1, 1, false) ==
        std::vector<std::int64_t>{2});  // all NaN: the earliest counts as best
}

TEST_CASE("a simulated run keeps exactly the newest 2 and the best and a restart keeps its best", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  TrainingState state;
  // Noisy losses: the best (0.61) comes early and must survive all rotations.
  const std::vector<double> losses = {1.9, 1.4, 0.61, 1.2, 0.9, 1.1, std::nan(""), 0.8, 0.95, 0.7, 0.75, 0.66};
  std::vector<detail::CheckpointRecord> expected;
  auto run_steps = [&](CheckpointManager& ckpt, std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; ++i) {
      perturb(net, 0.01);
      state.global_step = static_cast<std::int64_t>(10 * (i + 1));
      state.epoch = 0.1 * static_cast<double>(i + 1);
      state.log({{"loss", 2.0}});
      state.record_evaluation({{"eval_loss", losses[i]}});
      ckpt.save(*net, lora_config(), state);
      expected.push_back({state.global_step, losses[i]});
      // Independently: the newest two and the best one.
      std::set<std::int64_t> want;
      for (std::size_t k = expected.size() >= 2 ? expected.size() - 2 : 0; k < expected.size(); ++k) {
        want.insert(expected[k].step);
      }
      std::int64_t best = -1;
      double best_value = 0;
      for (const auto& r : expected) {
        if (!std::isnan(*r.metric) && (best < 0 || *r.metric < best_value)) best = r.step, best_value = *r.metric;
      }
      want.insert(best);
      INFO("after saving step " << state.global_step);
      CHECK(test::checkpoint_steps(dir.path()) == want);
      REQUIRE(ckpt.best().has_value());
      CHECK(ckpt.best()->step == best);
      CHECK(state.best_global_step == best);
    }
  };
  {
    CheckpointManager ckpt(options_for(dir.path()));
    run_steps(ckpt, 0, 6);
  }
  // A restart: the best comes back from the manifests.
  CheckpointManager again(options_for(dir.path()));
  REQUIRE(again.best().has_value());
  CHECK(again.best()->step == 30);
  CHECK(*again.best()->metric == 0.61);
  TrainingState resumed;
  Net fresh = lora_net(99);
  const auto from = again.resume(*fresh, resumed);
  REQUIRE(from.has_value());
  CHECK(from->step == 60);
  CHECK(resumed.global_step == 60);
  CHECK(resumed.best_global_step == 30);
  CHECK(test::bitwise_equal(adapter_snapshot(fresh), adapter_snapshot(net)));
  state = resumed;
  run_steps(again, 6, losses.size());
  CHECK(again.best()->step == 30);
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{30, 110, 120});
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
  CHECK(keys == std::set<std::string>{"best_global_step",
                                      "best_metric",
                                      "best_model_checkpoint",
                                      "epoch",
                                      "eval_steps",
                                      "global_step",
                                      "is_hyper_param_search",
                                      "is_local_process_zero",
                                      "is_world_process_zero",
                                      "log_history",
                                      "logging_steps",
                                      "max_steps",
                                      "num_input_tokens_seen",
                                      "num_train_epochs",
                                      "save_steps",
                                      "stateful_callbacks",
                                      "total_flos",
                                      "train_batch_size",
                                      "trial_name",
                                      "trial_params"});
  const detail::Manifest m = detail::read_manifest(last);
  CHECK(j["global_step"] == m.step);
  CHECK(j["epoch"].get<double>() == Approx(m.epoch));
  CHECK(j["best_global_step"] == 20);
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
  CHECK(j["stateful_callbacks"]["TrainerControl"]["args"].contains("should_training_stop"));
  // Every file of the checkpoint is in the manifest with its checksum.
  std::set<std::string> listed;
  for (const auto& [name, entry] : m.files) listed.insert(name);
  CHECK(listed == std::set<std::string>{"adapter_model.safetensors", "adapter_config.json", "trainer_state.json",
                                        "lorakeep_rng.safetensors"});
  CHECK(m.tensors.size() == 4);
  detail::check_checkpoint_files(last, m, /*full=*/true);
}

TEST_CASE("a second CheckpointManager on a locked directory fails with kLocked", "[checkpoint]") {
  test::TempDir dir;
  CheckpointManager first(options_for(dir.path()));
  const Error e = test::capture_error([&] { CheckpointManager second(options_for(dir.path())); });
  CHECK(e.code() == ErrorCode::kLocked);
  CHECK_THAT(e.what(), Contains("locked by process " + std::to_string(::getpid())));
  // And from another process.
  const auto r = test::run_process({test::cli_path(), "best", dir.path()});
  CHECK(r.exit_code == 1);  // no checkpoint yet, but reading a locked directory is fine
  CHECK_THAT(r.err, Contains("no committed checkpoint"));
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

TEST_CASE("fallback_to_next_best loads the next best when the best is damaged", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  TrainingState state;
  CheckpointOptions o = options_for(dir.path());
  o.save_total_limit = 0;
  o.fallback_to_next_best = true;
  NamedTensors second_best;
  {
    CheckpointManager ckpt(o);
    const std::vector<double> losses = {1.0, 0.5, 0.7};
    for (std::size_t i = 0; i < losses.size(); ++i) {
      perturb(net, 0.1);
      state.global_step = static_cast<std::int64_t>(i + 1);
      state.record_evaluation({{"eval_loss", losses[i]}});
      ckpt.save(*net, lora_config(), state);
      if (i == 2) second_best = adapter_snapshot(net);
    }
  }
  fs::remove(dir / "checkpoint-2/adapter_config.json");
  CheckpointManager ckpt(o);
  Net live = lora_net(5);
  ckpt.load_best_into(*live);
  CHECK(test::bitwise_equal(adapter_snapshot(live), second_best));
}

TEST_CASE("load_best_into restores the best adapter and resume restores the optimizer and the RNG", "[checkpoint]") {
  test::TempDir dir;
  Net net = lora_net();
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  TrainingState state;
  CheckpointManager ckpt(options_for(dir.path()));
  NamedTensors best;
  const torch::Tensor x = torch::randn({4, 16});
  for (int i = 1; i <= 4; ++i) {
    adam.zero_grad();
    net->forward(x).pow(2).sum().backward();
    adam.step();
    state.global_step = i;
    state.record_evaluation({{"eval_loss", i == 2 ? 0.1 : 1.0}});
    ckpt.save(*net, lora_config(), state, &adam);
    if (i == 2) best = adapter_snapshot(net);
  }
  const torch::Tensor next_draw = torch::rand({3});  // the RNG right after the last save
  const TransferReport r = ckpt.load_best_into(*net);
  CHECK(test::bitwise_equal(adapter_snapshot(net), best));
  CHECK(r.tensors == 4);
  CHECK(r.peak_device_bytes == 0);

  Net fresh = lora_net(3);
  torch::optim::Adam adam2(fresh->parameters(), torch::optim::AdamOptions(1e-2));
  TrainingState resumed;
  const auto from = ckpt.resume(*fresh, resumed, &adam2);
  REQUIRE(from.has_value());
  CHECK(from->step == 4);
  CHECK(resumed.global_step == 4);
  CHECK(resumed.best_global_step == 2);
  CHECK(torch::equal(torch::rand({3}), next_draw));  // the RNG continues where the save left it
  // The Adam moments of every trainable parameter came back.
  const auto& saved_params = adam.param_groups()[0].params();
  const auto& restored_params = adam2.param_groups()[0].params();
  int compared = 0;
  for (std::size_t k = 0; k < saved_params.size(); ++k) {
    auto a = adam.state().find(detail::optimizer_state_key(adam, saved_params[k]));
    auto b = adam2.state().find(detail::optimizer_state_key(adam2, restored_params[k]));
    if (a == adam.state().end()) continue;
    REQUIRE(b != adam2.state().end());
    const auto& sa = static_cast<const torch::optim::AdamParamState&>(*a->second);
    const auto& sb = static_cast<const torch::optim::AdamParamState&>(*b->second);
    CHECK(sa.step() == sb.step());
    CHECK(torch::equal(sa.exp_avg(), sb.exp_avg()));
    CHECK(torch::equal(sa.exp_avg_sq(), sb.exp_avg_sq()));
    ++compared;
  }
  CHECK(compared == 4);
}

TEST_CASE("CallbackList runs evaluation saving early stopping and the reload at the end", "[checkpoint][callbacks]") {
  test::TempDir dir;
  Net net = lora_net();
  CheckpointManager ckpt(options_for(dir.path()));
  CallbackOptions o;
  o.eval_strategy = EvalStrategy::kSteps;
  o.eval_steps = 2;
  o.save_strategy = SaveStrategy::kSteps;
  o.save_steps = 2;
  o.load_best_model_at_end = true;
  CallbackList callbacks;
  callbacks.add(std::make_shared<CheckpointCallback>(ckpt, *net, lora_config(), o));
  callbacks.add(std::make_shared<EarlyStopping>(ckpt, 2));
  auto logger = std::make_shared<MetricsLogger>(dir / "metrics.jsonl");
  callbacks.add(logger);
  auto reload = std::make_shared<LoadBestAtEnd>(ckpt, *net, o);
  callbacks.add(reload);
  TrainingState state;
  state.max_steps = 100;
  const std::vector<double> eval = {1.0, 0.4, 0.6, 0.5, 0.45, 0.3};  // best 0.4 at step 4; stops after 2 misses
  std::size_t evals = 0;
  NamedTensors at_best;
  callbacks.on_train_begin(state);
  while (state.global_step < state.max_steps) {
    perturb(net, 0.01);
    ++state.global_step;
    state.log({{"loss", 1.0}});
    const bool go = callbacks.end_step(state, [&] { return Metrics{{"eval_loss", eval.at(evals++)}}; });
    if (state.global_step == 4) at_best = adapter_snapshot(net);
    if (!go) break;
  }
  callbacks.on_train_end(state);
  CHECK(state.global_step == 8);  // evaluations at 2, 4, 6, 8: no improvement at 6 and 8
  CHECK(evals == 4);
  REQUIRE(reload->loaded().has_value());
  CHECK(reload->loaded()->step == 4);
  CHECK(test::bitwise_equal(adapter_snapshot(net), at_best));
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{4, 6, 8});
  const std::string log = test::read_file(dir / "metrics.jsonl");
  CHECK_THAT(log, Contains("\"eval_loss\":0.4") && Contains("\"event\":\"save\""));
  CHECK(state.early_stopping->counter == 2);
  const auto saved = nlohmann::json::parse(test::read_file(dir / "checkpoint-8/trainer_state.json"));
  CHECK(saved["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] == 2);
}

TEST_CASE("lorakeep finalize exports the bytes that load_best_into loads and lorakeep best names it",
          "[checkpoint][cli]") {
  test::TempDir dir;
  Net net = lora_net();
  TrainingState state;
  {
    CheckpointManager ckpt(options_for(dir.path()));
    for (int i = 1; i <= 3; ++i) {
      perturb(net, 0.1);
      state.global_step = 100 * i;
      state.record_evaluation({{"eval_loss", i == 1 ? 0.2 : 1.0}});
      ckpt.save(*net, lora_config(), state);
    }
  }
  const auto best = test::run_process({test::cli_path(), "best", dir.path(), "--json"});
  INFO(best.err);
  REQUIRE(best.exit_code == 0);
  const auto j = nlohmann::json::parse(best.out);
  CHECK(j["best"]["step"] == 100);
  CHECK(j["metric"] == "eval_loss");
  const auto fin = test::run_process({test::cli_path(), "finalize", dir.path(), "--export", dir / "final"});
  INFO(fin.err);
  REQUIRE(fin.exit_code == 0);
  CHECK(test::read_file(dir / "final/adapter_model.safetensors") ==
        test::read_file(dir / "checkpoint-100/adapter_model.safetensors"));
  Net a = lora_net(1), b = lora_net(2);
  load_adapter(dir / "final", *a);
  CheckpointManager ckpt(options_for(dir.path()));
  ckpt.load_best_into(*b);
  CHECK(test::bitwise_equal(adapter_snapshot(a), adapter_snapshot(b)));
  const auto verify = test::run_process({test::cli_path(), "verify", dir.path()});
  CHECK(verify.exit_code == 0);
  CHECK_THAT(verify.out, Contains("checkpoint-100") && Contains("checksums verified"));
  test::flip_byte(dir / "checkpoint-100/trainer_state.json", 10);
  const auto bad = test::run_process({test::cli_path(), "verify", dir.path()});
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Contains("checkpoint-100/trainer_state.json") && Contains("checksum"));
  const auto fin2 = test::run_process({test::cli_path(), "finalize", dir.path()});
  CHECK(fin2.exit_code == 1);
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

}  // namespace lorakeep
