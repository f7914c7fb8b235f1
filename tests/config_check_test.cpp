// Saves and loads agree with the model (lora/config_check.h,
// lora/adapter_load.h): every save entry point refuses a LoraConfig that
// does not describe the armed layers, naming the layer, the field and both
// values, and writes nothing; a load into armed layers takes the file's
// scaling, and refuses another rank or merged layers with nothing changed.
#include <cmath>
#include <functional>
#include <set>
#include <utility>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <torch/optim/adam.h>

#include "lorakeep/adapter.h"
#include "lorakeep/callbacks.h"
#include "lorakeep/checkpoint_manager.h"
#include "tensor_util.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

// One way of being wrong: the config as changed, and what the error names.
struct Wrong {
  std::string what;
  std::function<void(LoraConfig&)> change;
  std::vector<std::string> named;  // each must appear in the message
};

std::vector<Wrong> wrong_configs() {
  return {
      {"r", [](LoraConfig& c) { c.r = 8; }, {"'q_proj' r", "the config says 8", "the layer has 4"}},
      {"rank_pattern",
       [](LoraConfig& c) {
         c.rank_pattern = {{"v_proj", 2}};
       },
       {"'v_proj' r", "says 2", "has 4"}},
      {"lora_alpha", [](LoraConfig& c) { c.lora_alpha = 64; }, {"'q_proj' lora_alpha", "says 64", "has 8"}},
      {"alpha_pattern",
       [](LoraConfig& c) {
         c.alpha_pattern = {{"q_proj", 32}};
       },
       {"'q_proj' lora_alpha", "says 32", "has 8"}},
      {"use_rslora", [](LoraConfig& c) { c.use_rslora = true; }, {"'q_proj' use_rslora", "says true", "has false"}},
      {"lora_dropout", [](LoraConfig& c) { c.lora_dropout = 0.1; }, {"'v_proj' lora_dropout", "says 0.1", "has 0"}},
      {"fan_in_fan_out",
       [](LoraConfig& c) { c.fan_in_fan_out = true; },
       {"'q_proj' fan_in_fan_out", "says true", "has false (its weight is stored [out, in])"}},
      {"a target too few",
       [](LoraConfig& c) { c.target_modules = {"q_proj"}; },
       {"'v_proj' is armed but the config's targets do not select it"}},
      {"a target too many",
       [](LoraConfig& c) {
         c.target_modules = {"q_proj", "v_proj", "head"};
       },
       {"'head' is selected by the config's targets but carries no adapter"}},
      {"modules_to_save",
       [](LoraConfig& c) { c.modules_to_save = {"classifier"}; },
       {"modules_to_save 'classifier' names no module"}},
  };
}

// What each save entry point does with a config: throws, or writes into `dir`.
struct EntryPoint {
  std::string name;
  std::function<void(const std::string& dir, test::TestNet& net, const LoraConfig& config)> save;
};

std::vector<EntryPoint> save_entry_points() {
  auto manager_options = [](const std::string& dir) {
    CheckpointOptions o;
    o.output_dir = dir;
    return o;
  };
  return {
      {"save_adapter", [](const std::string& dir, test::TestNet& net,
                          const LoraConfig& c) { save_adapter(dir + "/adapter", *net, c); }},
      {"CheckpointManager::save",
       [=](const std::string& dir, test::TestNet& net, const LoraConfig& c) {
         CheckpointManager ckpt(manager_options(dir));
         TrainingState state;
         state.global_step = 1;
         const TrainingState before = state;
         try {
           ckpt.save(*net, c, state);
         } catch (...) {
           CHECK(state.best_global_step == before.best_global_step);
           throw;
         }
       }},
      {"CheckpointManager::save_async",
       [=](const std::string& dir, test::TestNet& net, const LoraConfig& c) {
         CheckpointManager ckpt(manager_options(dir));
         TrainingState state;
         state.global_step = 1;
         ckpt.save_async(*net, c, state);  // the check runs on the calling thread
         ckpt.wait();
       }},
      {"CheckpointCallback",
       [=](const std::string& dir, test::TestNet& net, const LoraConfig& c) {
         CheckpointManager ckpt(manager_options(dir));
         CallbackOptions every_step;
         every_step.save_steps = 1;
         CallbackList callbacks;
         callbacks.add(std::make_shared<CheckpointCallback>(ckpt, *net, c, every_step));
         TrainingState state;
         callbacks.on_train_begin(state);
         ++state.global_step;
         callbacks.end_step(state, nullptr);
       }},
  };
}

// Every entry under `dir`, recursively, as relative paths.
std::set<std::string> tree(const std::string& dir) {
  std::set<std::string> out;
  for (fs::recursive_directory_iterator it(dir), end; it != end; ++it) {
    out.insert(fs::relative(it->path(), dir).string());
  }
  return out;
}

NamedTensors everything(torch::nn::Module& module) {
  NamedTensors all;
  for (const auto& p : module.named_parameters()) all.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers()) all.emplace_back(b.key(), b.value());
  return test::clone_all(all);
}

}  // namespace

TEST_CASE("every save entry point refuses a config that does not describe the armed layers, writing nothing",
          "[lora][checkpoint][config_check]") {
  for (const EntryPoint& entry : save_entry_points()) {
    // The config that describes the model saves.
    {
      test::TempDir dir;
      test::TestNet net = test::armed_net();
      CHECK_NOTHROW(entry.save(dir.path(), net, test::test_lora()));
      CHECK((fs::exists(dir / "adapter/adapter_model.safetensors") ||
             fs::exists(dir / "checkpoint-1/adapter_model.safetensors")));
    }
    for (const Wrong& wrong : wrong_configs()) {
      INFO(entry.name << ", " << wrong.what);
      test::TempDir dir;
      test::TestNet net = test::armed_net();
      LoraConfig config = test::test_lora();
      wrong.change(config);
      const Error e = test::capture_error([&] { entry.save(dir.path(), net, config); });
      CHECK(e.code() == ErrorCode::kInvalidArgument);
      CHECK_THAT(e.what(), Contains("does not describe the model's adapter") && Contains("nothing was written"));
      for (const std::string& part : wrong.named) CHECK_THAT(e.what(), Contains(part));
      // Nothing written: no adapter directory, no checkpoint, no temporary.
      for (const std::string& entry_name : tree(dir.path())) {
        CHECK(entry_name == ".lock");
      }
    }
  }
}

TEST_CASE("a GPT-2-layout layer cannot be armed or saved with fan_in_fan_out false", "[lora][config_check]") {
  struct Conv1dNetImpl : torch::nn::Module {
    LoraLinear c_attn{nullptr};
    Conv1dNetImpl() { c_attn = register_module("c_attn", LoraLinear(LoraLinearOptions(16, 16).fan_in_fan_out(true))); }
  };
  LoraConfig config;
  config.r = 2;
  config.target_modules = {"c_attn"};
  auto net = std::make_shared<Conv1dNetImpl>();
  // Square: shapes cannot tell the layouts apart, so the flag must.
  const Error e = test::capture_error([&] { inject_lora(*net, config); });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(e.what(), Contains("'c_attn' stores its weight as [in, out]") && Contains("fan_in_fan_out is false") &&
                           Contains("nothing was armed"));
  CHECK_FALSE(net->c_attn->has_adapter());
  config.fan_in_fan_out = true;
  inject_lora(*net, config);
  test::TempDir dir;
  save_adapter(dir / "ok", *net, config);
  CHECK(read_adapter_config(dir / "ok").fan_in_fan_out);
  config.fan_in_fan_out = false;
  CHECK_THAT(test::capture_error([&] { save_adapter(dir / "wrong", *net, config); }).what(),
             Contains("'c_attn' fan_in_fan_out: the config says false, the layer has true"));
  CHECK_FALSE(fs::exists(dir / "wrong"));
}

TEST_CASE("a load into armed layers applies the file's scaling, with the file's factors", "[lora][config_check]") {
  test::TempDir dir;
  LoraConfig saved = test::test_lora(/*r=*/4, /*alpha=*/16);
  saved.use_rslora = true;
  saved.lora_dropout = 0.25;
  saved.alpha_pattern = {{"v_proj", 2}};
  test::TestNet source = test::armed_net(1, saved);
  test::perturb(*source, 0.05);  // B nonzero: the scaling shows in the output
  save_adapter(dir / "adapter", *source, saved);

  // The same base weights (the same seed), armed with another alpha.
  test::TestNet live = test::armed_net(1, test::test_lora(/*r=*/4, /*alpha=*/64));
  CHECK(live->q_proj->scaling() == 16.0);
  load_adapter(dir / "adapter", *live);
  CHECK(live->q_proj->scaling() == 16.0 / 2.0);  // lora_alpha / sqrt(r), the file's
  CHECK(live->v_proj->scaling() == 2.0 / 2.0);   // its alpha_pattern
  CHECK(live->q_proj->adapter_options().dropout == 0.25);
  live->eval();
  source->eval();
  const at::Tensor x = at::randn({3, 16});
  CHECK(at::equal(live->forward(x), source->forward(x)));
  // And the model saves as the file's config now says, not as it was armed.
  CHECK_NOTHROW(save_adapter(dir / "again", *live, saved));
  CHECK_THROWS_AS(save_adapter(dir / "old", *live, test::test_lora(4, 64)), Error);
}

TEST_CASE("a load into armed layers of another rank or into merged layers changes nothing", "[lora][config_check]") {
  test::TempDir dir;
  test::TestNet source = test::armed_net(1, test::test_lora(/*r=*/8));
  save_adapter(dir / "rank8", *source, test::test_lora(8));

  SECTION("another rank: refused with a hint") {
    test::TestNet live = test::armed_net(2, test::test_lora(/*r=*/4));
    const NamedTensors before = everything(*live);
    const Error e = test::capture_error([&] { load_adapter(dir / "rank8", *live); });
    CHECK(e.code() == ErrorCode::kIncompatible);
    CHECK_THAT(e.what(),
               Contains("'q_proj' (8 in the file, 4 armed)") && Contains("hint") && Contains("nothing was changed"));
    CHECK(test::bitwise_equal(everything(*live), before));
    CHECK(live->q_proj->scaling() == 2.0);
  }
  SECTION("merged layers: refused with a hint to unmerge") {
    test::TestNet live = test::armed_net(2, test::test_lora(/*r=*/8));
    test::perturb(*live, 0.1);
    CHECK(merge_lora(*live) == 2);
    const NamedTensors before = everything(*live);
    const Error e = test::capture_error([&] { load_adapter(dir / "rank8", *live); });
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK_THAT(e.what(), Contains("merged layers: q_proj, v_proj") && Contains("unmerge_lora") &&
                             Contains("nothing was changed"));
    CHECK(test::bitwise_equal(everything(*live), before));
    unmerge_lora(*live);
    CHECK_NOTHROW(load_adapter(dir / "rank8", *live));
  }
}

TEST_CASE("hot swap: a smaller rank pads into layers armed larger, computes its own adapter, saves at its rank",
          "[lora][config_check]") {
  test::TempDir dir;
  LoraConfig small = test::test_lora(/*r=*/2, /*alpha=*/6);
  small.use_rslora = true;
  test::TestNet source = test::armed_net(1, small);
  test::perturb(*source, 0.3);
  save_adapter(dir / "rank2", *source, small);
  // Armed at rank 8 (the largest of the adapters to swap), trained a little.
  test::TestNet live = test::armed_net(2, test::test_lora(/*r=*/8));
  test::perturb(*live, 0.1);
  load_adapter(dir / "rank2", *live);
  CHECK(live->q_proj->rank() == 2);
  CHECK(live->q_proj->adapter_options().r == 8);
  CHECK(live->q_proj->scaling() == Approx(6.0 / std::sqrt(2.0)));  // the file's rsLoRA scaling at its rank
  CHECK(live->q_proj->lora_A->weight.narrow(0, 2, 6).abs().sum().item<double>() == 0);  // past rank 2: zeros
  CHECK(live->q_proj->lora_B->weight.narrow(1, 2, 6).abs().sum().item<double>() == 0);
  // It computes what the source computes (the two nets share no base: load
  // the source's base first).
  {
    torch::NoGradGuard no_grad;
    for (const auto& [to, from] : {std::pair(live->q_proj, source->q_proj), std::pair(live->v_proj, source->v_proj)}) {
      to->weight.copy_(from->weight);
      to->bias.copy_(from->bias);
    }
    live->head->weight.copy_(source->head->weight);
    live->head->bias.copy_(source->head->bias);
  }
  const torch::Tensor x = torch::randn({5, 16});
  CHECK(torch::allclose(live->forward(x), source->forward(x), 1e-6, 1e-6));
  // A training step leaves the zeros be, and the save writes rank 2.
  live->forward(x).pow(2).sum().backward();
  CHECK(live->q_proj->lora_A->weight.grad().narrow(0, 2, 6).abs().sum().item<double>() == 0);
  save_adapter(dir / "again", *live, small);
  const auto again = open_tensor_source(dir / "again/adapter_model.safetensors");
  CHECK(again->info("base_model.model.q_proj.lora_A.weight").shape == std::vector<std::int64_t>{2, 16});
  // Swapped back to a full rank-8 adapter, the layer holds rank 8 again.
  save_adapter(dir / "rank8", *test::armed_net(3, test::test_lora(8)), test::test_lora(8));
  load_adapter(dir / "rank8", *live);
  CHECK(live->q_proj->rank() == 8);
  CHECK(live->q_proj->scaling() == 1.0);
}

TEST_CASE("hot swap of an adapter of fewer layers zeroes the others, as PEFT's, and refuses it over DoRA ones",
          "[lora][config_check]") {
  test::TempDir dir;
  LoraConfig only_q = test::test_lora(4);
  only_q.target_modules = {"q_proj"};
  test::TestNet source = test::armed_net(1, only_q);
  test::perturb(*source, 0.3);
  save_adapter(dir / "q", *source, only_q);
  test::TestNet live = test::armed_net(2, test::test_lora(4));
  test::perturb(*live, 0.1);
  load_adapter(dir / "q", *live);
  // q_proj holds the file's factors; v_proj, which the file leaves out, zeros.
  for (const auto& [name, t] : live->v_proj->lora_tensors()) CHECK(t.abs().sum().item<double>() == 0);
  CHECK(torch::equal(live->q_proj->lora_A->weight, source->q_proj->lora_A->weight));
  CHECK(torch::equal(live->q_proj->lora_B->weight, source->q_proj->lora_B->weight));

  LoraConfig dora = test::test_lora(4);
  dora.use_dora = true;
  LoraConfig dora_q = dora;
  dora_q.target_modules = {"q_proj"};
  save_adapter(dir / "dora_q", *test::armed_net(3, dora_q), dora_q);
  test::TestNet dora_live = test::armed_net(4, dora);
  test::perturb(*dora_live, 0.1);
  const NamedTensors before = test::clone_all(adapter_tensors(*dora_live, dora));
  CHECK_THROWS_WITH(load_adapter(dir / "dora_q", *dora_live),
                    Contains("leaves out DoRA layers the model has armed: v_proj") && Contains("nothing was changed"));
  CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*dora_live, dora)), before));
}

}  // namespace lorakeep
