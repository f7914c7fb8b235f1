// Several adapters in one model (PEFT's adapter_name): each layer kind holds
// a named adapter beside its own, the active one is computed and trained,
// merges take the active one, and saves and loads use PEFT's per-name
// layout ("<dir>/<name>/", keys without the name).
#include <map>
#include <set>
#include <string>
#include <vector>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/optim/sgd.h>

#include "lorakeep/adapter.h"
#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/error.h"
#include "lorakeep/lora_conv2d.h"
#include "lorakeep/lora_embedding.h"
#include "lorakeep/lora_linear.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

// emb Embedding(6, 4), conv Conv2d(1, 1, 3, padding 1) of each embedding
// seen as a 2x2 image, lin Linear(4, 3) of their sum: one layer of each kind.
struct KindsImpl : torch::nn::Module {
  LoraEmbedding emb{nullptr};
  LoraConv2d conv{nullptr};
  LoraLinear lin{nullptr};
  KindsImpl() {
    emb = register_module("emb", LoraEmbedding(6, 4));
    conv = register_module("conv", LoraConv2d(torch::nn::Conv2dOptions(1, 1, 3).padding(1)));
    lin = register_module("lin", LoraLinear(4, 3));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    const torch::Tensor h = emb(ids);
    return lin(h + conv(h.view({-1, 1, 2, 2})).flatten(1));
  }
};
TORCH_MODULE(Kinds);

Kinds seeded() {
  torch::manual_seed(0);
  return Kinds();
}

LoraConfig first_config() {
  LoraConfig c;
  c.r = 2;
  c.lora_alpha = 4;
  c.target_modules = {"emb", "conv", "lin"};
  return c;
}

// Another rank and alpha, DoRA, and the convolution left out.
LoraConfig second_config() {
  LoraConfig c;
  c.r = 3;
  c.lora_alpha = 6;
  c.use_dora = true;
  c.target_modules = {"emb", "lin"};
  return c;
}

// Moves every tensor of adapter `name` away from its initialisation.
void perturb_adapter(torch::nn::Module& m, const std::string& infix, double by) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) {
    const std::string& key = p.key();
    const bool named = key.find(".lora_adapters.") != std::string::npos;
    if (key.find("lora_") == std::string::npos || key.find("base_layer") != std::string::npos) continue;
    if ((infix.empty() && !named) || (!infix.empty() && key.find(infix) != std::string::npos)) {
      p.value().add_(torch::randn_like(p.value()) * by);
    }
  }
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace

TEST_CASE("a named adapter beside the default one: its own names, computed when active, trained alone",
          "[lora][named]") {
  const torch::Tensor ids = torch::tensor({0, 5, 2, 3, 1}, torch::kLong);
  Kinds net = seeded();
  const std::set<std::string> base_names = [&] {
    std::set<std::string> out;
    for (const auto& p : net->named_parameters()) out.insert(p.key());
    return out;
  }();
  torch::Tensor y_base;
  {
    torch::NoGradGuard no_grad;
    y_base = net->forward(ids);
  }
  inject_lora(*net, first_config());
  perturb_adapter(*net, "", 0.3);
  const std::vector<std::string> second = inject_lora(*net, second_config(), "second");
  perturb_adapter(*net, ".lora_adapters.second.", 0.3);

  CHECK(adapter_names(*net) == std::vector<std::string>{"default", "second"});
  CHECK(net->lin->adapter_names() == std::vector<std::string>{"default", "second"});
  CHECK(net->conv->adapter_names() == std::vector<std::string>{"default"});
  // The default adapter keeps its names; the named one's are under
  // lora_adapters.<name>; the base is listed once.
  std::set<std::string> names;
  for (const auto& p : net->named_parameters()) names.insert(p.key());
  CHECK(names.count("lin.lora_A.weight") == 1);
  CHECK(names.count("lin.base_layer.weight") == 1);
  CHECK(names.count("lin.lora_adapters.second.lora_A.weight") == 1);
  CHECK(names.count("lin.lora_adapters.second.lora_magnitude_vector") == 1);
  CHECK(names.count("emb.lora_adapters.second.lora_embedding_A") == 1);
  for (const std::string& n : names) CHECK(n.find("lora_adapters.second.base_layer") == std::string::npos);
  // The base's tensors once (moved under base_layer), the default's two
  // factors in each of three layers, the named one's factors and magnitude
  // in two.
  CHECK(names.size() == base_names.size() + 6 + 6);
  for (const std::string& n : second) CHECK(names.count(n) == 1);
  CHECK(second.size() == 6);  // emb A, B, magnitude; lin A, B, magnitude

  // As PEFT's add_adapter: the new adapter is inactive and frozen.
  auto grads = [&](const std::string& infix) {
    int on = 0, off = 0;
    for (const auto& p : net->named_parameters()) {
      const bool named = p.key().find(".lora_adapters.") != std::string::npos;
      const bool in = infix.empty() ? (!named && p.key().find("lora_") != std::string::npos &&
                                       p.key().find("base_layer") == std::string::npos)
                                    : p.key().find(infix) != std::string::npos;
      if (in) (p.value().requires_grad() ? on : off)++;
    }
    return std::pair(on, off);
  };
  CHECK(grads("") == std::pair(6, 0));
  CHECK(grads(".lora_adapters.second.") == std::pair(0, 6));
  torch::Tensor y_first, y_second;
  {
    torch::NoGradGuard no_grad;
    y_first = net->forward(ids);
    set_adapter(*net, "second");
    y_second = net->forward(ids);
  }
  CHECK(net->lin->active_adapter() == "second");
  CHECK(grads("") == std::pair(0, 6));
  CHECK(grads(".lora_adapters.second.") == std::pair(6, 0));
  CHECK(max_diff(y_first, y_base) > 1e-3);
  CHECK(max_diff(y_second, y_base) > 1e-3);
  CHECK(max_diff(y_second, y_first) > 1e-3);

  // Saved in PEFT's layout: the default in the directory, the named one in
  // its folder, under the same keys.
  test::TempDir dir;
  save_adapter(dir / "adapter", *net, first_config());
  save_adapter(dir / "adapter", *net, second_config(), "second");
  REQUIRE(boost::filesystem::exists(dir / "adapter/second/adapter_model.safetensors"));
  {
    const auto first_file = open_tensor_source(dir / "adapter/adapter_model.safetensors");
    const auto second_file = open_tensor_source(dir / "adapter/second/adapter_model.safetensors");
    CHECK(first_file->contains("base_model.model.lin.lora_A.weight"));
    CHECK(second_file->contains("base_model.model.lin.lora_A.weight"));
    CHECK(second_file->contains("base_model.model.lin.lora_magnitude_vector"));
    CHECK(!second_file->contains("base_model.model.conv.lora_A.weight"));
    CHECK(second_file->info("base_model.model.lin.lora_A.weight").shape == std::vector<std::int64_t>{3, 4});
  }
  CHECK(read_adapter_config(dir / "adapter/second").use_dora);
  // lorakeep inspect lists it.
  const auto shown = test::run_process({test::cli_path(), "inspect", dir / "adapter"});
  CHECK(shown.exit_code == 0);
  CHECK_THAT(shown.out, Contains("named adapters") && Contains("second: r=3, lora_alpha=6, 6 tensors") &&
                            Contains("targets emb, lin"));
  const auto listed = test::run_process({test::cli_path(), "inspect", "--json", dir / "adapter"});
  REQUIRE(listed.exit_code == 0);
  const auto as_json = nlohmann::json::parse(listed.out);
  REQUIRE(as_json["named_adapters"].size() == 1);
  CHECK(as_json["named_adapters"][0]["name"] == "second");
  CHECK(as_json["named_adapters"][0]["r"] == 3);

  // The named adapter's file is an adapter of its own: loaded as the
  // default of a fresh model, it computes what the named one computed.
  {
    Kinds alone = seeded();
    load_adapter(dir / "adapter/second", *alone);
    torch::NoGradGuard no_grad;
    CHECK(max_diff(alone->forward(ids), y_second) == 0);
  }
  // Both loaded back by name (the named one found in its folder).
  Kinds back = seeded();
  load_adapter(dir / "adapter", *back);
  AdapterLoadOptions by_name;
  by_name.adapter_name = "second";
  load_adapter(dir / "adapter", *back, by_name);
  CHECK(adapter_names(*back) == std::vector<std::string>{"default", "second"});
  {
    torch::NoGradGuard no_grad;
    CHECK(back->lin->active_adapter() == "default");
    CHECK(max_diff(back->forward(ids), y_first) == 0);
    set_adapter(*back, "second");
    CHECK(max_diff(back->forward(ids), y_second) == 0);
  }
  // A second load by name is a hot swap of that adapter only.
  load_adapter(dir / "adapter/second", *back, by_name);
  {
    torch::NoGradGuard no_grad;
    CHECK(max_diff(back->forward(ids), y_second) == 0);
  }

  // One training step moves the active adapter only.
  const NamedTensors before = [&] {
    NamedTensors out;
    for (const auto& p : net->named_parameters()) out.emplace_back(p.key(), p.value().detach().clone());
    return out;
  }();
  {
    std::vector<torch::Tensor> trainable;
    for (const auto& p : net->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    torch::optim::SGD sgd(trainable, torch::optim::SGDOptions(0.1));
    net->forward(ids).pow(2).mean().backward();
    sgd.step();
  }
  const auto now = net->named_parameters();
  for (const auto& [key, was] : before) {
    INFO(key);
    const bool moved = max_diff(now[key], was) > 0;
    CHECK(moved == (key.find(".lora_adapters.second.") != std::string::npos));
  }

  // Merging takes the active adapter; another cannot become active over it.
  torch::Tensor y_trained;
  {
    torch::NoGradGuard no_grad;
    y_trained = net->forward(ids);
    CHECK(merge_lora(*net) == 2);  // the convolution lacks "second"
    CHECK(max_diff(net->forward(ids), y_trained) < 1e-5);
  }
  CHECK(net->lin->adapter("second")->merged());
  CHECK_THROWS_WITH(set_adapter(*net, "default"), Contains("lin") && Contains("unmerge_lora"));
  CHECK_THROWS_WITH(inject_lora(*net, first_config(), "third"), Contains("merged adapter"));
  CHECK(unmerge_lora(*net) == 2);
  set_adapter(*net, "default");
  {
    torch::NoGradGuard no_grad;
    CHECK(max_diff(net->forward(ids), y_first) < 1e-5);
  }
}

TEST_CASE("named adapters: what is refused, with the name and a hint, changing nothing", "[lora][named]") {
  Kinds net = seeded();
  inject_lora(*net, first_config());
  const auto names_now = [&] {
    std::vector<std::string> out;
    for (const auto& p : net->named_parameters()) out.push_back(p.key());
    return out;
  };
  const std::vector<std::string> armed = names_now();
  CHECK_THROWS_WITH(inject_lora(*net, first_config()), Contains("'lin' already has an adapter"));
  inject_lora(*net, second_config(), "b");
  CHECK_THROWS_WITH(inject_lora(*net, second_config(), "b"), Contains("already has an adapter named 'b'"));
  for (const char* bad : {"a.b", "", "x/y", "a b"}) {
    INFO(bad);
    CHECK_THROWS_WITH(inject_lora(*net, second_config(), bad), Contains("is not a run of letters"));
  }
  CHECK_THROWS_WITH(set_adapter(*net, "c"),
                    Contains("no layer carries an adapter named 'c'") && Contains("default, b"));
  LoraConfig whole = second_config();
  whole.modules_to_save = {"conv"};
  CHECK_THROWS_WITH(inject_lora(*net, whole, "c"), Contains("modules_to_save with a named adapter"));
  test::TempDir dir;
  CHECK_THROWS_WITH(save_adapter(dir / "a", *net, second_config(), "c"),
                    Contains("no layer of the model carries an adapter named 'c'"));
  CHECK_THROWS_WITH(save_adapter(dir / "a", *net, first_config(), "b"), Contains("'lin' r: the config says 2"));
  CHECK(!boost::filesystem::exists(dir / "a"));
  // A file with modules_to_save is not loaded as a named adapter.
  Kinds other = seeded();
  LoraConfig with_head = first_config();
  with_head.target_modules = {"emb"};
  with_head.modules_to_save = {"lin"};
  inject_lora(*other, with_head);
  save_adapter(dir / "head", *other, with_head);
  AdapterLoadOptions as_b;
  as_b.adapter_name = "b";
  CHECK_THROWS_WITH(load_adapter(dir / "head", *net, as_b), Contains("modules_to_save") && Contains("'b'"));
  std::vector<std::string> after = names_now();
  CHECK(after.size() == armed.size() + 6);  // only "b" was added
}

namespace {

// Every parameter of `m`, cloned, with its requires_grad.
std::map<std::string, std::pair<torch::Tensor, bool>> parameters_of(torch::nn::Module& m) {
  std::map<std::string, std::pair<torch::Tensor, bool>> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = {p.value().detach().clone(), p.value().requires_grad()};
  return out;
}

void check_same_parameters(torch::nn::Module& m, const std::map<std::string, std::pair<torch::Tensor, bool>>& want) {
  const auto have = parameters_of(m);
  CHECK(have.size() == want.size());
  for (const auto& [key, value] : want) {
    INFO(key);
    const auto it = have.find(key);
    REQUIRE(it != have.end());
    CHECK(torch::equal(it->second.first, value.first));
    CHECK(it->second.second == value.second);
  }
}

}  // namespace

TEST_CASE("a checkpoint holds every named adapter in its folder; resume and the best's reload restore them all",
          "[lora][named][checkpoint]") {
  const torch::Tensor ids = torch::tensor({0, 5, 2, 3, 1}, torch::kLong);
  Kinds net = seeded();
  inject_lora(*net, first_config());
  perturb_adapter(*net, "", 0.3);
  inject_lora(*net, second_config(), "second");
  perturb_adapter(*net, ".lora_adapters.second.", 0.3);
  set_adapter(*net, "second");  // the one trained, as a run that set_adapter'd to it
  std::vector<torch::Tensor> trainable;
  for (const auto& p : net->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::SGD sgd(trainable, torch::optim::SGDOptions(0.1).momentum(0.9));
  net->forward(ids).pow(2).mean().backward();
  sgd.step();
  const auto saved = parameters_of(*net);
  torch::Tensor y_saved;
  {
    torch::NoGradGuard no_grad;
    y_saved = net->forward(ids);
  }

  test::TempDir dir;
  CheckpointOptions options;
  options.output_dir = dir / "run";
  TrainingState state;
  state.global_step = 1;
  state.last_metrics = {{"eval_loss", 0.5}};
  state.last_metrics_step = 1;
  {
    CheckpointManager manager(options);
    manager.save(*net, first_config(), state, &sgd);
  }
  // PEFT's and Trainer's layout: the default adapter in the checkpoint, the
  // named one in its folder; the manifest lists and checks both.
  const std::string checkpoint = dir / "run/checkpoint-1";
  CHECK(read_adapter_config(checkpoint).r == 2);
  CHECK(read_adapter_config(checkpoint + "/second").use_dora);
  CHECK(open_tensor_source(checkpoint + "/second/adapter_model.safetensors")
            ->contains("base_model.model.lin.lora_magnitude_vector"));
  const std::string manifest = test::read_file(checkpoint + "/lorakeep_manifest.json");
  CHECK_THAT(manifest, Contains("\"second/adapter_model.safetensors\"") &&
                           Contains("\"second/base_model.model.lin.lora_A.weight\"") &&
                           Contains("\"active_adapter\": \"second\""));
  const auto verified = test::run_process({test::cli_path(), "verify", dir / "run"});
  CHECK(verified.exit_code == 0);

  // Resumed into a model not armed yet: both adapters armed and filled, the
  // checkpoint's active adapter active and alone trainable.
  {
    Kinds back = seeded();
    CheckpointManager manager(options);
    TrainingState resumed;
    REQUIRE(manager.resume(*back, resumed));
    CHECK(resumed.global_step == 1);
    CHECK(adapter_names(*back) == std::vector<std::string>{"default", "second"});
    CHECK(back->lin->active_adapter() == "second");
    check_same_parameters(*back, saved);
    torch::NoGradGuard no_grad;
    CHECK(torch::equal(back->forward(ids), y_saved));
  }
  // Into a model armed with both, the default active: a hot swap of each,
  // then the checkpoint's active adapter, the optimizer too.
  {
    Kinds back = seeded();
    inject_lora(*back, first_config());
    inject_lora(*back, second_config(), "second");
    std::vector<torch::Tensor> params;
    for (const auto& p : back->parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    torch::optim::SGD back_sgd(params, torch::optim::SGDOptions(0.1).momentum(0.9));
    CheckpointManager manager(options);
    TrainingState resumed;
    REQUIRE(manager.resume(*back, resumed, &back_sgd));
    CHECK(back->lin->active_adapter() == "second");
    check_same_parameters(*back, saved);
    // The best's reload at the end of training takes both too.
    perturb_adapter(*back, "", 0.1);
    perturb_adapter(*back, ".lora_adapters.second.", 0.1);
    set_adapter(*back, "default");
    manager.load_best_into(*back);
    check_same_parameters(*back, saved);
    // A save off the training thread copies the named adapter too.
    resumed.global_step = 2;
    manager.save_async(*back, first_config(), resumed, &back_sgd);
    manager.wait();
    CHECK(test::read_file(dir / "run/checkpoint-2/second/adapter_model.safetensors") ==
          test::read_file(dir / "run/checkpoint-1/second/adapter_model.safetensors"));
  }
  // The export of the best (lorakeep finalize) is PEFT's layout too.
  const auto finalized = test::run_process({test::cli_path(), "finalize", dir / "run"});
  CHECK(finalized.exit_code == 0);
  CHECK(boost::filesystem::exists(dir / "run/best_adapter/second/adapter_model.safetensors"));
  CHECK(read_adapter_config(dir / "run/best_adapter/second").use_dora);

  // A damaged named adapter fails the resume, naming its file, and changes
  // nothing: not even the default adapter is armed.
  const std::string second_file = checkpoint + "/second/adapter_model.safetensors";
  test::flip_byte(second_file, boost::filesystem::file_size(second_file) - 3);
  {
    Kinds back = seeded();
    const auto before = parameters_of(*back);
    CheckpointOptions named = options;
    named.resume_from_checkpoint = checkpoint;
    CheckpointManager manager(named);
    TrainingState resumed;
    CHECK_THROWS_WITH(manager.resume(*back, resumed), Contains("second/adapter_model.safetensors"));
    CHECK(adapter_names(*back).empty());
    check_same_parameters(*back, before);
  }
}

TEST_CASE("a model of named adapters only is checkpointed as PEFT saves it: no adapter in the root",
          "[lora][named][checkpoint]") {
  Kinds net = seeded();
  inject_lora(*net, second_config(), "only");  // the model's first adapter: active and trained
  perturb_adapter(*net, ".lora_adapters.only.", 0.3);
  const auto saved = parameters_of(*net);
  test::TempDir dir;
  CheckpointOptions options;
  options.output_dir = dir / "run";
  TrainingState state;
  state.global_step = 4;
  {
    CheckpointManager manager(options);
    manager.save(*net, first_config(), state);  // the default adapter's config: unused
  }
  CHECK(!boost::filesystem::exists(dir / "run/checkpoint-4/adapter_config.json"));
  CHECK(read_adapter_config(dir / "run/checkpoint-4/only").use_dora);
  Kinds back = seeded();
  CheckpointManager manager(options);
  TrainingState resumed;
  REQUIRE(manager.resume(*back, resumed));
  CHECK(adapter_names(*back) == std::vector<std::string>{"only"});
  CHECK(back->lin->active_adapter() == "only");
  check_same_parameters(*back, saved);
}

}  // namespace lorakeep
