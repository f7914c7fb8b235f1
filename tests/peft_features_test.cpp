// The feature table against the peers' PEFT (peft 0.10 in the 1.13 pass,
// 0.21 in the 2.15 pass), one Python process for all of it
// (tests/python/peft_features.py): for each adapter feature lorakeep
// supports, an adapter trained here loads in PEFT with the same outputs,
// merge-lora's file equals PEFT's merge_and_unload(), and an adapter PEFT
// trained loads here with PEFT's outputs, and one training step from the
// same adapter and batch gives PEFT's tensors. A small model defined in both
// languages, its weights written by the test.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>
#include <torch/optim/sgd.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lora.h"
#include "lorakeep/merge_lora.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

// emb Embedding(12, 10) added to the input x, lin0 Linear(10, 20) plus conv
// Conv2d(1, 2, 3, padding 1) of x seen as 1x2x5 images, relu, lin1
// Linear(20, 16), relu, head Linear(16, 3): FeatureNet of peft_features.py.
struct FeatureNetImpl : torch::nn::Module {
  LoraEmbedding emb{nullptr};
  LoraConv2d conv{nullptr};
  LoraLinear lin0{nullptr}, lin1{nullptr}, head{nullptr};
  FeatureNetImpl() {
    emb = register_module("emb", LoraEmbedding(12, 10));
    conv = register_module("conv", LoraConv2d(torch::nn::Conv2dOptions(1, 2, 3).padding(1)));
    lin0 = register_module("lin0", LoraLinear(10, 20));
    lin1 = register_module("lin1", LoraLinear(20, 16));
    head = register_module("head", LoraLinear(16, 3));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& ids) {
    const torch::Tensor h = lin0(x + emb(ids)) + conv(x.view({-1, 1, 2, 5})).flatten(1);
    return head(torch::relu(lin1(torch::relu(h))));
  }
};
TORCH_MODULE(FeatureNet);

FeatureNet seeded_net() {
  torch::manual_seed(0);
  return FeatureNet();
}

NamedTensors named(torch::nn::Module& m) {
  NamedTensors out;
  for (const auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value().detach());
  return out;
}

// The rows of the table: each a configuration PEFT writes for the feature.
std::map<std::string, LoraConfig> features() {
  std::map<std::string, LoraConfig> out;
  LoraConfig plain;  // LoRA on both linears, the head trained whole
  plain.r = 4;
  plain.lora_alpha = 8;
  plain.target_modules = {"lin0", "lin1"};
  plain.modules_to_save = {"head"};
  out["lora"] = plain;
  LoraConfig patterns;  // rank and alpha per module, rsLoRA's scaling
  patterns.r = 4;
  patterns.lora_alpha = 8;
  patterns.use_rslora = true;
  patterns.target_modules = {"lin0", "lin1"};
  patterns.rank_pattern = {{"lin1", 2}};
  patterns.alpha_pattern = {{"lin0", 16}};
  out["patterns_rslora"] = patterns;
  LoraConfig dora = plain;  // DoRA on both linears, the head trained whole
  dora.use_dora = true;
  out["dora"] = dora;
  LoraConfig dora_patterns = patterns;  // DoRA with rank and alpha patterns and rsLoRA
  dora_patterns.use_dora = true;
  out["dora_patterns_rslora"] = dora_patterns;
  LoraConfig biased = plain;  // lora_B with a bias (PEFT 0.14 on)
  biased.lora_bias = true;
  out["lora_bias"] = biased;
  LoraConfig embedding = plain;  // LoRA on the embedding and a linear
  embedding.target_modules = {"emb", "lin0"};
  out["embedding"] = embedding;
  LoraConfig embedding_dora = embedding;  // DoRA on both (PEFT 0.12 on for the embedding)
  embedding_dora.use_dora = true;
  out["embedding_dora"] = embedding_dora;
  LoraConfig conv = plain;  // LoRA on the convolution and a linear
  conv.target_modules = {"conv", "lin0"};
  out["conv2d"] = conv;
  LoraConfig conv_dora = conv;  // DoRA on both
  conv_dora.use_dora = true;
  out["conv2d_dora"] = conv_dora;
  LoraConfig conv_bias = conv;  // lora_B's bias on the convolution
  conv_bias.lora_bias = true;
  out["conv2d_lora_bias"] = conv_bias;
  LoraConfig all_linear;  // PEFT's shorthand: every linear layer, the head too
  all_linear.r = 4;
  all_linear.lora_alpha = 8;
  all_linear.target_modules_regex = "all-linear";
  out["all_linear"] = all_linear;
  return out;
}

// The adapter of a second name in the table: plain LoRA on the three layer
// kinds (lin1 shared with the default adapter), another rank and alpha.
LoraConfig named_second_config() {
  LoraConfig c;
  c.r = 2;
  c.lora_alpha = 6;
  c.target_modules = {"emb", "conv", "lin1"};
  return c;
}

// `steps` SGD steps (lr 0.1, loss mean(y^2)) on the trainable parameters.
void train_steps(FeatureNetImpl& net, const torch::Tensor& x, const torch::Tensor& ids, int steps) {
  std::vector<torch::Tensor> trainable;
  for (const torch::Tensor& p : net.parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::SGD sgd(trainable, torch::optim::SGDOptions(0.1));
  for (int step = 0; step < steps; ++step) {
    sgd.zero_grad();
    net.forward(x, ids).pow(2).mean().backward();
    sgd.step();
  }
}

}  // namespace

TEST_CASE("the feature table against the peers' PEFT: trained here, loaded there, merged alike, and back",
          "[lora][python][peers]") {
  test::TempDir dir;
  const torch::Tensor x = torch::arange(90, torch::kFloat).reshape({9, 10}) / 90;
  const torch::Tensor ids = torch::tensor({3, 0, 11, 5, 3, 7, 1, 9, 2}, torch::kLong);
  {
    FeatureNet base = seeded_net();
    save_safetensors(dir / "base.safetensors", named(*base));
    save_safetensors(dir / "input.safetensors", {{"x", x}, {"ids", ids}});
  }
  const std::map<std::string, LoraConfig> table = features();
  std::map<std::string, torch::Tensor> ours;  // each feature's output here
  for (const auto& [name, config] : table) {
    INFO(name);
    boost::filesystem::create_directories(dir / name);
    FeatureNet net = seeded_net();
    torch::manual_seed(1);
    inject_lora(*net, config);
    train_steps(*net, x, ids, 5);
    net->eval();
    save_adapter(dir / (name + "/lorakeep_adapter"), *net, config);
    torch::NoGradGuard no_grad;
    ours[name] = net->forward(x, ids);
    save_safetensors(dir / (name + "/lorakeep_output.safetensors"), {{"y", ours[name]}});
    merge_lora_files(dir / "base.safetensors", dir / (name + "/lorakeep_adapter"), dir / (name + "/lorakeep_merged"));
  }

  // Adapters for PEFT's hot swap: rank 8, then rank 4 with another alpha,
  // then rank 4 on lin0 only.
  boost::filesystem::create_directories(dir / "hotswap");
  for (const auto& [name, r, alpha] :
       {std::tuple("first", 8, 8.0), std::tuple("second", 4, 12.0), std::tuple("third", 4, 4.0)}) {
    LoraConfig config;
    config.r = r;
    config.lora_alpha = alpha;
    config.target_modules = {"lin0", "lin1"};
    if (std::string(name) == "third") config.target_modules = {"lin0"};
    FeatureNet net = seeded_net();
    torch::manual_seed(r);
    inject_lora(*net, config);
    test::perturb(*net, 0.05 * r);
    save_adapter(dir / (std::string("hotswap/") + name), *net, config);
  }

  // Two adapters in one model: the default on the linears, "second" on the
  // embedding, the convolution and lin1, each trained while active.
  LoraConfig first = table.at("lora");
  first.modules_to_save.clear();  // the head stays the base's, for both adapters
  const LoraConfig second = named_second_config();
  std::map<std::string, torch::Tensor> named_ours;
  {
    boost::filesystem::create_directories(dir / "named");
    FeatureNet net = seeded_net();
    torch::manual_seed(1);
    inject_lora(*net, first);
    train_steps(*net, x, ids, 5);
    inject_lora(*net, second, "second");
    set_adapter(*net, "second");
    train_steps(*net, x, ids, 5);
    net->eval();
    save_adapter(dir / "named/lorakeep_adapter", *net, first);
    save_adapter(dir / "named/lorakeep_adapter", *net, second, "second");  // into its folder second/
    {  // and a checkpoint, Trainer's layout, which holds both too
      CheckpointOptions options;
      options.output_dir = dir / "named/lorakeep_run";
      CheckpointManager manager(options);
      TrainingState state;
      state.global_step = 10;
      manager.save(*net, first, state);
    }
    torch::NoGradGuard no_grad;
    named_ours["second"] = net->forward(x, ids);
    set_adapter(*net, "default");
    named_ours["default"] = net->forward(x, ids);
    save_safetensors(dir / "named/lorakeep_output.safetensors",
                     {{"default", named_ours["default"]}, {"second", named_ours["second"]}});
    merge_lora_files(dir / "base.safetensors", dir / "named/lorakeep_adapter/second", dir / "named/lorakeep_merged");
  }

  const auto py = test::run_python("peft_features.py", {dir.path()});
  INFO(py.err);
  REQUIRE(py.exit_code == 0);
  std::istringstream lines(py.out);
  std::set<std::string> seen;
  bool seen_hotswap = false, seen_named = false;
  for (std::string line; std::getline(lines, line);) {
    const auto row = nlohmann::json::parse(line);
    const std::string name = row["feature"].get<std::string>();
    INFO("PEFT " << row["peft"].get<std::string>() << ", " << name << ": " << line);
    if (name == "hotswap") {  // lorakeep's hot swap (a padded rank) against PEFT's hotswap_adapter
      seen_hotswap = true;
      if (row.contains("skipped")) {
        std::printf("PEFT %s, hotswap: skipped: %s\n", row["peft"].get<std::string>().c_str(),
                    row["skipped"].get<std::string>().c_str());
        continue;
      }
      FeatureNet swapped = seeded_net();
      load_adapter(dir / "hotswap/first", *swapped);
      load_adapter(dir / "hotswap/second", *swapped);  // rank 4 into layers armed at 8
      CHECK(swapped->lin0->rank() == 4);
      swapped->eval();
      torch::NoGradGuard no_grad;
      const torch::Tensor want =
          SafetensorsFile::open(dir / "hotswap/peft_output.safetensors").tensor("y").to(torch::kDouble);
      const double diff = (swapped->forward(x, ids).to(torch::kDouble) - want).abs().max().item<double>();
      CHECK(diff <= 1e-4);
      load_adapter(dir / "hotswap/third", *swapped);  // lin0 only: lin1's tensors zeroed, as PEFT's
      const torch::Tensor want_third =
          SafetensorsFile::open(dir / "hotswap/peft_output_third.safetensors").tensor("y").to(torch::kDouble);
      const double third = (swapped->forward(x, ids).to(torch::kDouble) - want_third).abs().max().item<double>();
      CHECK(third <= 1e-4);
      std::printf("PEFT %s, hotswap: lorakeep's padded swap vs hotswap_adapter %.2g, of fewer layers %.2g (max abs "
                  "differences)\n",
                  row["peft"].get<std::string>().c_str(), diff, third);
      continue;
    }
    if (name == "named") {  // two adapters in one model, both ways
      seen_named = true;
      CHECK(row["load_max_diff"].get<double>() <= 1e-4);
      CHECK(row["merge_max_diff"].get<double>() <= 1e-5);
      // PEFT's layout: the named adapter in its folder, its keys without its name.
      const std::vector<std::string> keys = row["second_keys"].get<std::vector<std::string>>();
      CHECK(keys.size() == 6);  // A and B of emb, conv and lin1
      for (const std::string& key : keys) CHECK(key.find("second") == std::string::npos);
      FeatureNet both = seeded_net();
      load_adapter(dir / "named/peft_adapter", *both);
      AdapterLoadOptions by_name;
      by_name.adapter_name = "second";
      load_adapter(dir / "named/peft_adapter", *both, by_name);  // from its folder second/
      both->eval();
      const auto want = open_tensor_source(dir / "named/peft_output.safetensors");
      double back = 0;
      torch::NoGradGuard no_grad;
      for (const std::string adapter : {"default", "second"}) {
        set_adapter(*both, adapter);
        const torch::Tensor y = both->forward(x, ids).to(torch::kDouble);
        back = std::max(back, (y - want->tensor(adapter).to(torch::kDouble)).abs().max().item<double>());
      }
      CHECK(back <= 1e-4);
      std::printf("PEFT %s, named: lorakeep's two adapters (saved, and in a checkpoint) in PEFT %.2g, merge-lora of "
                  "the second vs "
                  "merge_and_unload %.2g, PEFT's two adapters here %.2g (max abs differences)\n",
                  row["peft"].get<std::string>().c_str(), row["load_max_diff"].get<double>(),
                  row["merge_max_diff"].get<double>(), back);
      continue;
    }
    REQUIRE(table.count(name) == 1);
    seen.insert(name);
    if (row.contains("skipped")) {  // a feature the peers' PEFT lacks: reported, nothing compared
      std::printf("PEFT %s, %s: skipped: %s\n", row["peft"].get<std::string>().c_str(), name.c_str(),
                  row["skipped"].get<std::string>().c_str());
      // Newer than peft 0.10: lora_bias, and DoRA on embeddings.
      CHECK((table.at(name).lora_bias || name == "embedding_dora"));
      continue;
    }
    if (name == "all_linear") {  // what lorakeep saved is what PEFT's shorthand selects
      const LoraConfig saved = read_adapter_config(dir / (name + "/lorakeep_adapter"));
      std::vector<std::string> targets = saved.target_modules;
      std::sort(targets.begin(), targets.end());
      CHECK(saved.target_modules_regex.empty());
      if (row.contains("all_linear_refused")) {  // peft 0.10: transformers' models only
        std::printf("PEFT %s refuses target_modules='all-linear' on FeatureNet: %s\n",
                    row["peft"].get<std::string>().c_str(), row["all_linear_refused"].get<std::string>().c_str());
      } else {
        CHECK(targets == row["all_linear"].get<std::vector<std::string>>());
      }
    }
    // lorakeep's adapter in PEFT, and merge-lora against merge_and_unload().
    CHECK(row["load_max_diff"].get<double>() <= 1e-4);
    CHECK(row["merge_max_diff"].get<double>() <= 1e-5);
    const SafetensorsFile merged = SafetensorsFile::open(dir / (name + "/lorakeep_merged/model.safetensors"));
    std::vector<std::string> names = merged.names();
    std::sort(names.begin(), names.end());
    CHECK(names == row["merge_names"].get<std::vector<std::string>>());
    // PEFT's adapter here.
    CHECK(row["peft_factors_trained"].get<bool>());
    FeatureNet fresh = seeded_net();
    load_adapter(dir / (name + "/peft_adapter"), *fresh);
    fresh->eval();
    double back = 0;
    {
      torch::NoGradGuard no_grad;
      const torch::Tensor want =
          SafetensorsFile::open(dir / (name + "/peft_output.safetensors")).tensor("y").to(torch::kDouble);
      back = (fresh->forward(x, ids).to(torch::kDouble) - want).abs().max().item<double>();
    }
    CHECK(back <= 1e-4);
    // One training step from PEFT's start, here: PEFT's step, every tensor
    // of the adapter (factors, magnitudes, the head).
    FeatureNet start = seeded_net();
    load_adapter(dir / (name + "/peft_start"), *start);
    std::vector<torch::Tensor> trainable;
    for (const torch::Tensor& p : start->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    torch::optim::SGD sgd(trainable, torch::optim::SGDOptions(0.1));
    start->forward(x, ids).pow(2).mean().backward();
    sgd.step();
    const auto before = open_tensor_source(dir / (name + "/peft_start/adapter_model.safetensors"));
    const auto after = open_tensor_source(dir / (name + "/peft_step/adapter_model.safetensors"));
    const NamedTensors stepped = adapter_tensors(*start, read_adapter_config(dir / (name + "/peft_start")));
    CHECK(stepped.size() == after->names().size());
    double step = 0, least_moved = 1;
    for (const auto& [key, t] : stepped) {
      INFO(key);
      REQUIRE(after->contains(key));
      const torch::Tensor want = after->tensor(key).to(torch::kDouble);
      step = std::max(step, (t.detach().to(torch::kDouble) - want).abs().max().item<double>());
      least_moved = std::min(least_moved, (want - before->tensor(key).to(torch::kDouble)).abs().max().item<double>());
    }
    CHECK(step <= 1e-5);
    CHECK(least_moved > 1e-4);  // the step moved every tensor
    std::printf("PEFT %s, %s: lorakeep's adapter in PEFT %.2g, merge-lora vs merge_and_unload %.2g, PEFT's adapter "
                "here %.2g, one training step %.2g (max abs differences)\n",
                row["peft"].get<std::string>().c_str(), name.c_str(), row["load_max_diff"].get<double>(),
                row["merge_max_diff"].get<double>(), back, step);
  }
  CHECK(seen.size() == table.size());
  CHECK(seen_hotswap);
  CHECK(seen_named);
}

}  // namespace lorakeep
