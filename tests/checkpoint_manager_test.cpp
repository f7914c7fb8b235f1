// The checkpoint manager: the lock, the fallback to the next best,
// load-best-at-end and resume, and the CLI's best, finalize and verify.
#include <unistd.h>

#include <cstddef>
#include <string>
#include <vector>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>
#include <torch/optim/adam.h>

#include "lorakeep/adapter.h"
#include "lorakeep/checkpoint_manager.h"
#include "tensor_util.h"
#include "tensors/torch_compat.h"
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

}  // namespace lorakeep
