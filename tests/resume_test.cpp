// Resume: what comes from the checkpoint (progress, history, best) and what
// stays the new run's (its arguments), as Trainer splits them.
#include <nlohmann/json.hpp>
#include <torch/optim/adam.h>

#include "lorakeep/adapter.h"
#include "lorakeep/callbacks.h"
#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/logging.h"
#include "tensor_util.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

CheckpointOptions options_for(const std::string& dir) {
  CheckpointOptions o;
  o.output_dir = dir;
  o.metric_for_best_model = "loss";
  return o;
}

// A training program: `max_steps` in all, resuming from `dir` first,
// evaluating and saving every 10 steps. Returns the steps it trained.
std::int64_t train(const std::string& dir, std::int64_t max_steps, TrainingState& state) {
  test::TestNet net = test::armed_net(0);
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  CheckpointManager ckpt(options_for(dir));
  CallbackOptions every10;
  every10.save_steps = 10;
  every10.eval_strategy = EvalStrategy::kSteps;
  every10.eval_steps = 10;
  every10.logging_steps = 5;
  CallbackList callbacks;
  callbacks.add(std::make_shared<CheckpointCallback>(ckpt, *net, test::test_lora(), every10, &adam));
  state.max_steps = max_steps;
  state.train_batch_size = 4;
  state.num_train_epochs = static_cast<double>(max_steps) / 10;
  ckpt.resume(*net, state, &adam);
  callbacks.on_train_begin(state);
  std::int64_t trained = 0;
  while (state.global_step < state.max_steps) {
    adam.zero_grad();
    net->forward(at::ones({4, 16})).pow(2).sum().backward();
    adam.step();
    ++state.global_step;
    ++trained;
    state.epoch = static_cast<double>(state.global_step) / 10;
    if (!callbacks.end_step(state, [&] {
          return Metrics{{"eval_loss", 1.0 / static_cast<double>(state.global_step)}};
        })) {
      break;
    }
  }
  callbacks.on_train_end(state);
  return trained;
}

}  // namespace

TEST_CASE("resume keeps the new run's max_steps: a run of 20 steps extended to 40 trains 20 more",
          "[checkpoint][resume]") {
  test::TempDir dir;
  TrainingState first;
  CHECK(train(dir.path(), 20, first) == 20);
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{10, 20});

  TrainingState second;
  CHECK(train(dir.path(), 40, second) == 20);
  CHECK(second.global_step == 40);
  CHECK(second.max_steps == 40);
  CHECK(second.num_train_epochs == 4);
  CHECK(test::checkpoint_steps(dir.path()) == std::set<std::int64_t>{10, 20, 30, 40});
  // The checkpoint's progress came along: the history of the first run, then the second's.
  REQUIRE(second.log_history.size() == 4);  // one evaluation per 10 steps
  CHECK(second.log_history.front().at("step") == 10);
  CHECK(second.best_global_step == 40);  // 1 / step: the newest is the best
  const auto j = nlohmann::json::parse(test::read_file(dir / "checkpoint-40/trainer_state.json"));
  CHECK(j["max_steps"] == 40);
  CHECK(j["num_train_epochs"] == 4);
  CHECK(j["logging_steps"] == 5);
  CHECK(j["eval_steps"] == 10);
  CHECK(j["save_steps"] == 10);
  CHECK(j["log_history"].size() == 4);

  // The same run resumed as it was planned: nothing left to train.
  TrainingState third;
  CHECK(train(dir.path(), 40, third) == 0);
  CHECK(third.global_step == 40);
}

TEST_CASE("resume_from takes progress, history and best from the checkpoint and the arguments from the caller",
          "[checkpoint][resume]") {
  TrainingState saved;
  saved.global_step = 20;
  saved.epoch = 2;
  saved.max_steps = 20;
  saved.num_train_epochs = 2;
  saved.train_batch_size = 8;
  saved.logging_steps = 1;
  saved.num_input_tokens_seen = 640;
  saved.total_flos = 1e9;
  saved.log_history = {{{"loss", 1.0}, {"step", 20}}};
  saved.best_metric = 0.5;
  saved.best_global_step = 10;
  saved.best_model_checkpoint = "runs/x/checkpoint-10";
  saved.early_stopping = TrainingState::EarlyStoppingState{3, 0.0, 1};
  saved.should_stop = true;

  TrainingState run;
  run.max_steps = 40;
  run.num_train_epochs = 4;
  run.train_batch_size = 16;
  run.logging_steps = 5;
  run.resume_from(saved);
  CHECK(run.max_steps == 40);
  CHECK(run.num_train_epochs == 4);
  CHECK(run.train_batch_size == 16);
  CHECK(run.logging_steps == 5);
  CHECK(run.global_step == 20);
  CHECK(run.epoch == 2);
  CHECK(run.num_input_tokens_seen == 640);
  CHECK(run.total_flos == 1e9);
  CHECK(run.log_history == saved.log_history);
  CHECK(run.best_global_step == 10);
  CHECK(run.best_metric == 0.5);
  CHECK(run.best_model_checkpoint == "runs/x/checkpoint-10");
  CHECK(run.early_stopping->counter == 1);
  CHECK_FALSE(run.should_stop);  // a control flag of the old run does not stop the new one
}

TEST_CASE("resume without an optimizer restores the model and the state from a run directory with checkpoints",
          "[checkpoint][resume]") {
  // Before its state became a reference, resume(module, &optimizer, nullptr)
  // on such a directory dereferenced the null state.
  test::TempDir dir;
  TrainingState state;
  train(dir.path(), 20, state);
  CheckpointManager ckpt(options_for(dir.path()));
  test::TestNet fresh = test::armed_net(7);
  TrainingState resumed;
  resumed.max_steps = 25;
  const auto from = ckpt.resume(*fresh, resumed);
  REQUIRE(from.has_value());
  CHECK(from->step == 20);
  CHECK(resumed.global_step == 20);
  CHECK(resumed.max_steps == 25);
  test::TestNet reference = test::armed_net(8);
  load_adapter(dir / "checkpoint-20", *reference);
  CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*fresh, test::test_lora())),
                            test::clone_all(adapter_tensors(*reference, test::test_lora()))));
}

TEST_CASE("resume_from_checkpoint: none starts afresh, a path resumes from exactly that checkpoint",
          "[checkpoint][resume]") {
  test::TempDir dir;
  TrainingState first;
  train(dir / "a", 30, first);  // checkpoints 10, 20, 30
  const LoraConfig config = test::test_lora();
  auto adapter_of = [&](const std::string& checkpoint) {
    test::TestNet net = test::armed_net(5);
    load_adapter(checkpoint, *net);
    return test::clone_all(adapter_tensors(*net, config));
  };
  test::TestNet net = test::armed_net(7);
  const NamedTensors untouched = test::clone_all(adapter_tensors(*net, config));
  CheckpointOptions options = options_for(dir / "a");
  SECTION("none") {
    options.resume_from_checkpoint = "none";
    TrainingState state;
    CHECK_FALSE(CheckpointManager(options).resume(*net, state).has_value());
    CHECK(state.global_step == 0);
    CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, config)), untouched));
  }
  SECTION("a checkpoint of the run directory, not the newest") {
    options.resume_from_checkpoint = dir / "a/checkpoint-20";
    TrainingState state;
    const auto info = CheckpointManager(options).resume(*net, state);
    REQUIRE(info.has_value());
    CHECK(info->step == 20);
    CHECK(state.global_step == 20);
    CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, config)), adapter_of(dir / "a/checkpoint-20")));
  }
  SECTION("another run's checkpoint, into a new run directory") {
    options.output_dir = dir / "b";
    options.resume_from_checkpoint = dir / "a/checkpoint-30";
    TrainingState state;
    CheckpointManager ckpt(options);
    REQUIRE(ckpt.resume(*net, state).has_value());
    CHECK(state.global_step == 30);
    CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, config)), adapter_of(dir / "a/checkpoint-30")));
    ++state.global_step;
    ckpt.save(*net, config, state);
    CHECK(test::checkpoint_steps(dir / "b") == std::set<std::int64_t>{31});
  }
  SECTION("a named checkpoint that is damaged or missing fails, and changes nothing") {
    test::flip_byte(dir / "a/checkpoint-20/adapter_model.safetensors", 200);
    for (const std::string& named : {dir / "a/checkpoint-20", dir / "a/checkpoint-25"}) {
      INFO(named);
      options.resume_from_checkpoint = named;
      TrainingState state;
      const Error e = test::capture_error([&] { CheckpointManager(options).resume(*net, state); });
      CHECK((e.code() == ErrorCode::kCorruption || e.code() == ErrorCode::kNotFound));
      CHECK_THAT(e.what(), Catch::Matchers::Contains(named));
      CHECK(state.global_step == 0);
      CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, config)), untouched));
    }
  }
}

TEST_CASE("a resume with another batch size goes on and says it is not exact", "[checkpoint][resume]") {
  test::TempDir dir;
  TrainingState first;
  train(dir.path(), 10, first);  // train_batch_size 4
  std::vector<std::string> warnings;
  set_log_sink([&](LogLevel level, std::string_view message) {
    if (level == LogLevel::kWarn) warnings.emplace_back(message);
  });
  test::TestNet net = test::armed_net(0);
  TrainingState state;
  state.train_batch_size = 8;
  const auto info = CheckpointManager(options_for(dir.path())).resume(*net, state);
  set_log_sink(nullptr);
  REQUIRE(info.has_value());
  CHECK(state.global_step == 10);
  CHECK(state.train_batch_size == 8);  // the new run's argument
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0],
             Catch::Matchers::Contains("train_batch_size 4") && Catch::Matchers::Contains("into one of 8"));
}

}  // namespace lorakeep
