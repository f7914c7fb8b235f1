// LoRA layers, PEFT's matching rules, and adapters exchanged with PEFT.
#include <array>
#include <cmath>
#include <cstring>
#include <set>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/optim/sgd.h>

#include <c10/core/CPUAllocator.h>
#include "lorakeep/lora.h"
#include "lorakeep/memory.h"
#include "lorakeep/merge_lora.h"
#include "lorakeep/tensor_source.h"
#include "lora/rank_update.h"
#include "tensors/pickle.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

// PEFT's regression-test MLP: lin0 Linear(10, 20), relu, lin1 Linear(20, 2),
// log_softmax; lin0 declared LoRA-capable.
struct MlpImpl : torch::nn::Module {
  LoraLinear lin0{nullptr};
  torch::nn::Linear lin1{nullptr};
  MlpImpl() {
    lin0 = register_module("lin0", LoraLinear(10, 20));
    lin1 = register_module("lin1", torch::nn::Linear(20, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::log_softmax(lin1(torch::relu(lin0(x))), -1); }
};
TORCH_MODULE(Mlp);

Mlp seeded_mlp() {
  torch::manual_seed(0);
  return Mlp();
}

torch::Tensor peft_output(const std::string& adapter) {
  const c10::IValue v = detail::load_torch_archive(test::fixture("peft/regression_0.6.1/" + adapter + "/output.pt"));
  return v.toTensor();
}

torch::Tensor fixed_input() { return torch::arange(90, torch::kFloat).reshape({9, 10}); }

// GPT-2's module tree, as far as the PEFT fixture needs it: 12 blocks whose
// attention has c_attn stored [768, 2304] (Conv1D), and a classifier "score".
struct Gpt2AttnImpl : torch::nn::Module {
  LoraLinear c_attn{nullptr};
  Gpt2AttnImpl() { c_attn = register_module("c_attn", LoraLinear(LoraLinearOptions(768, 2304).fan_in_fan_out(true))); }
};
TORCH_MODULE(Gpt2Attn);
struct Gpt2BlockImpl : torch::nn::Module {
  Gpt2Attn attn{nullptr};
  Gpt2BlockImpl() { attn = register_module("attn", Gpt2Attn()); }
};
TORCH_MODULE(Gpt2Block);
struct Gpt2TransformerImpl : torch::nn::Module {
  torch::nn::ModuleList h{nullptr};
  Gpt2TransformerImpl() {
    h = register_module("h", torch::nn::ModuleList());
    for (int i = 0; i < 12; ++i) h->push_back(Gpt2Block());
  }
};
TORCH_MODULE(Gpt2Transformer);
struct Gpt2SeqClsImpl : torch::nn::Module {
  Gpt2Transformer transformer{nullptr};
  torch::nn::Linear score{nullptr};
  Gpt2SeqClsImpl() {
    transformer = register_module("transformer", Gpt2Transformer());
    score = register_module("score", torch::nn::Linear(torch::nn::LinearOptions(768, 6).bias(false)));
  }
};
TORCH_MODULE(Gpt2SeqCls);

}  // namespace

TEST_CASE("real PEFT LoRA adapters load and reproduce the output PEFT computed", "[lora][peft]") {
  for (const std::string adapter : {"lora_mlp", "lora_mlp_modules_to_save"}) {
    INFO(adapter);
    Mlp model = seeded_mlp();
    const TransferReport r = load_adapter(test::fixture("peft/regression_0.6.1/" + adapter), *model);
    CHECK(r.tensors == (adapter == "lora_mlp" ? 2u : 4u));
    model->eval();
    const torch::Tensor out = model->forward(fixed_input());
    const torch::Tensor want = peft_output(adapter);
    INFO("max abs difference " << (out - want).abs().max().item<double>());
    CHECK(torch::allclose(out, want, /*rtol=*/0, /*atol=*/1e-4));
    // Without the adapter the output differs: the test can fail.
    CHECK_FALSE(torch::allclose(seeded_mlp()->forward(fixed_input()), want, 0, 1e-4));
  }
}

TEST_CASE("adapters of other PEFT types are refused naming their peft_type", "[lora][peft]") {
  for (const auto& [dir, type] : {std::pair<std::string, std::string>{"adalora_mlp", "ADALORA"}, {"ia3_mlp", "IA3"}}) {
    Mlp model = seeded_mlp();
    const Error e = test::capture_error([&] { load_adapter(test::fixture("peft/regression_0.6.1/" + dir), *model); });
    CHECK(e.code() == ErrorCode::kNotSupported);
    CHECK_THAT(e.what(), Contains("is a " + type + " adapter"));
  }
}

TEST_CASE("adapter_config.json integers past the range of int are refused naming the field", "[lora]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"peft_type":"LORA","r":1099511627776})", "'r'"},
      {R"({"peft_type":"LORA","r":18446744073709551615})", "'r'"},
      {R"({"peft_type":"LORA","rank_pattern":{"q":4294967297}})", "'rank_pattern'"},
      {R"({"peft_type":"LORA","layers_to_transform":[0,2147483648]})", "'layers_to_transform'"},
  };
  for (const auto& [text, field] : cases) {
    INFO(text);
    const Error e = test::capture_error([&] { parse_adapter_config(text, "cfg/adapter_config.json"); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("cfg/adapter_config.json") && Contains(field));
  }
}

TEST_CASE("the GPT-2 PEFT adapter loads into the GPT-2 module tree and merges as base + scaling (BA)^T",
          "[lora][peft]") {
  torch::manual_seed(0);
  Gpt2SeqCls model;
  std::vector<torch::Tensor> base;
  for (int i = 0; i < 12; ++i) {
    base.push_back(model->transformer->h->ptr<Gpt2BlockImpl>(i)->attn->c_attn->weight.detach().clone());
  }
  const std::string dir = test::fixture("peft/gpt2_lora_seqcls");
  const TransferReport r = load_adapter(dir, *model);
  CHECK(r.tensors == 25);
  const auto file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  CHECK(torch::equal(model->score->weight, file.tensor("base_model.model.score.weight")));
  std::map<std::string, torch::Tensor> params;
  for (const auto& p : model->named_parameters()) params[p.key()] = p.value();
  CHECK(params.count("transformer.h.11.attn.c_attn.base_layer.weight") == 1);
  CHECK(params.at("transformer.h.3.attn.c_attn.base_layer.weight").sizes() == torch::IntArrayRef({768, 2304}));
  CHECK(torch::equal(params.at("transformer.h.3.attn.c_attn.lora_B.weight"),
                     file.tensor("base_model.model.transformer.h.3.attn.c_attn.lora_B.weight")));

  CHECK(merge_lora(*model) == 12);
  for (int i = 0; i < 12; ++i) {
    const std::string key = "base_model.model.transformer.h." + std::to_string(i) + ".attn.c_attn.";
    const torch::Tensor A = file.tensor(key + "lora_A.weight"), B = file.tensor(key + "lora_B.weight");
    const double scaling = 8.0 / 8.0;  // lora_alpha / r of the fixture's config
    const torch::Tensor want = base[i] + scaling * B.matmul(A).t();
    const torch::Tensor got = model->transformer->h->ptr<Gpt2BlockImpl>(i)->attn->c_attn->weight;
    CHECK(torch::allclose(got, want, 0, 1e-6));
  }
  CHECK(unmerge_lora(*model) == 12);
  CHECK(torch::allclose(model->transformer->h->ptr<Gpt2BlockImpl>(5)->attn->c_attn->weight, base[5], 0, 1e-6));
}

TEST_CASE("adapter_digest is equal for equal adapters and changes with any byte, name or dtype", "[lora]") {
  LoraConfig config;
  config.r = 4;
  config.target_modules = {"lin0"};
  config.modules_to_save = {"lin1"};
  auto armed = [&] {
    Mlp m = seeded_mlp();
    torch::manual_seed(1);
    inject_lora(*m, config);
    return m;
  };
  Mlp a = armed(), b = armed();
  const std::uint64_t digest = adapter_digest(*a, config);
  CHECK(adapter_digest(*b, config) == digest);
  {
    torch::NoGradGuard no_grad;
    b->lin0->lora_B->weight[3][1] += 1e-6;  // one value
  }
  CHECK(adapter_digest(*b, config) != digest);
  LoraConfig without_head = config;  // the same bytes less lin1's: other names
  without_head.modules_to_save.clear();
  CHECK(adapter_digest(*a, without_head) != digest);
  Mlp c = armed();
  c->to(torch::kDouble);  // the same values in another dtype
  CHECK(adapter_digest(*c, config) != digest);
}

TEST_CASE("inject then train then save then load into a fresh model gives identical outputs",
          "[lora][python][expensive]") {
  test::TempDir dir;
  LoraConfig config;
  config.r = 4;
  config.lora_alpha = 16;
  config.target_modules = {"lin0"};
  config.modules_to_save = {"lin1"};
  Mlp model = seeded_mlp();
  const auto trainable = inject_lora(*model, config);
  CHECK(trainable == std::vector<std::string>{"lin0.lora_A.weight", "lin0.lora_B.weight", "lin1.weight", "lin1.bias"});
  CHECK_FALSE(model->lin0->weight.requires_grad());
  // The untrained adapter is the identity: B starts at zero.
  CHECK(torch::equal(model->forward(fixed_input()), seeded_mlp()->forward(fixed_input())));
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.01));
  for (int step = 0; step < 5; ++step) {
    sgd.zero_grad();
    model->forward(fixed_input() / 90).sum().backward();
    sgd.step();
  }
  CHECK(model->lin0->lora_B->weight.abs().sum().item<double>() > 0);
  const AdapterSaveReport saved = save_adapter(dir / "adapter", *model, config);
  CHECK(saved.weights.tensors.size() == 4);

  Mlp fresh = seeded_mlp();
  load_adapter(dir / "adapter", *fresh);
  CHECK(torch::equal(fresh->forward(fixed_input()), model->forward(fixed_input())));

  // PEFT loads the directory as its own adapter and computes the same output.
  const auto peft = test::run_process({test::python_path(), test::python_script("peft_check.py"), dir / "adapter"});
  INFO(peft.err);
  REQUIRE(peft.exit_code == 0);
  const auto loaded = nlohmann::json::parse(peft.out);
  CHECK(loaded["peft_type"] == "LORA");
  CHECK(loaded["r"] == 4);
  CHECK(loaded["modules_to_save"] == nlohmann::json({"lin1"}));
  const auto rows = loaded["output"].get<std::vector<std::vector<float>>>();
  const torch::Tensor expected = model->forward(fixed_input() / 90);
  REQUIRE(rows.size() == 9);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t j = 0; j < 2; ++j) CHECK(rows[i][j] == Approx(expected[i][j].item<float>()).margin(1e-5));
  }

  // The reference reader sees PEFT's key names and shapes.
  const auto py = test::run_process(
      {test::python_path(), test::python_script("adapter_keys.py"), dir / "adapter/adapter_model.safetensors"});
  INFO(py.err);
  REQUIRE(py.exit_code == 0);
  const auto keys = nlohmann::json::parse(py.out);
  CHECK(keys["metadata"] == nlohmann::json({{"format", "pt"}}));
  CHECK(keys["tensors"] == nlohmann::json({{"base_model.model.lin0.lora_A.weight", {4, 10}},
                                           {"base_model.model.lin0.lora_B.weight", {20, 4}},
                                           {"base_model.model.lin1.weight", {2, 20}},
                                           {"base_model.model.lin1.bias", {2}}}));
  // adapter_config.json carries every field PEFT writes (the key set of the
  // real PEFT file in the fixtures), with our values.
  const auto ours = nlohmann::json::parse(test::read_file(dir / "adapter/adapter_config.json"));
  const auto written = nlohmann::json::parse(
      test::read_file(test::fixture("peft/gpt2_lora_seqcls/adapter_config.json")));
  std::set<std::string> our_keys, peft_keys;
  for (auto it = ours.begin(); it != ours.end(); ++it) our_keys.insert(it.key());
  for (auto it = written.begin(); it != written.end(); ++it) peft_keys.insert(it.key());
  CHECK(our_keys == peft_keys);
  CHECK(ours["peft_type"] == "LORA");
  CHECK(ours["r"] == 4);
  CHECK(ours["lora_alpha"] == 16);
  CHECK(ours["target_modules"] == nlohmann::json({"lin0"}));
  CHECK(ours["modules_to_save"] == nlohmann::json({"lin1"}));
  CHECK(ours["inference_mode"] == true);
  CHECK(ours["task_type"].is_null());  // a plain module: PEFT's PeftModel, no task wrapper
}

TEST_CASE("the PEFT target matching rules select the same modules", "[lora]") {
  LoraConfig c;
  c.target_modules = {"q_proj", "layers.1.mlp.fc"};
  CHECK(is_lora_target(c, "q_proj"));
  CHECK(is_lora_target(c, "model.layers.3.attn.q_proj"));
  CHECK_FALSE(is_lora_target(c, "model.layers.3.attn.xq_proj"));
  CHECK_FALSE(is_lora_target(c, "model.layers.3.attn.q_proj.lora_A"));
  CHECK(is_lora_target(c, "model.layers.1.mlp.fc"));
  c.exclude_modules = {"layers.2.attn.q_proj"};
  CHECK_FALSE(is_lora_target(c, "model.layers.2.attn.q_proj"));
  c.exclude_modules.clear();
  c.layers_to_transform = {0, 2};
  CHECK(is_lora_target(c, "model.layers.2.attn.q_proj"));
  CHECK_FALSE(is_lora_target(c, "model.layers.3.attn.q_proj"));
  CHECK_FALSE(is_lora_target(c, "layers.2.attn.q_proj"));  // as PEFT: the index must follow "<something>.<list>."
  c.layers_pattern = {"blocks"};
  CHECK_FALSE(is_lora_target(c, "model.layers.2.attn.q_proj"));
  CHECK(is_lora_target(c, "model.blocks.2.attn.q_proj"));
  c = LoraConfig();
  c.target_modules_regex = R"(.*\.(q|v)_proj)";
  CHECK(is_lora_target(c, "model.layers.0.attn.v_proj"));
  CHECK_FALSE(is_lora_target(c, "v_proj"));  // a full match, as re.fullmatch
  c.modules_to_save = {"attn"};
  CHECK_FALSE(is_lora_target(c, "model.layers.0.attn.v_proj"));  // never inside a module trained whole
  CHECK(is_module_to_save(c, "model.layers.0.attn"));
  c = LoraConfig();
  c.r = 8;
  c.rank_pattern = {{"layers.0.attn.q_proj", 4}, {"q_proj", 16}};
  c.alpha_pattern = {{"v_proj", 32.0}};
  CHECK(rank_for(c, "model.layers.0.attn.q_proj") == 4);
  CHECK(rank_for(c, "model.layers.1.attn.q_proj") == 16);
  CHECK(rank_for(c, "model.layers.1.attn.k_proj") == 8);
  CHECK(alpha_for(c, "model.layers.1.attn.v_proj") == 32.0);
  CHECK(alpha_for(c, "model.layers.1.attn.q_proj") == 8.0);
}

TEST_CASE("inject_lora explains targets it cannot adapt", "[lora]") {
  Mlp model = seeded_mlp();
  LoraConfig c;
  c.target_modules = {"lin1"};  // a plain torch::nn::Linear
  const Error plain = test::capture_error([&] { inject_lora(*model, c); });
  CHECK(plain.code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(plain.what(), Contains("'lin1' is a torch::nn::Linear") && Contains("lorakeep::LoraLinear"));
  c.target_modules = {"q_proj"};
  const Error none = test::capture_error([&] { inject_lora(*model, c); });
  CHECK_THAT(none.what(), Contains("select no module") && Contains("lin0") && Contains("lin1"));
}

TEST_CASE("a LoraLinear without an adapter is torch::nn::Linear in names and numbers", "[lora]") {
  torch::manual_seed(7);
  torch::nn::Linear plain(6, 5);
  torch::manual_seed(7);
  LoraLinear lora(6, 5);
  CHECK(torch::equal(plain->weight, lora->weight));
  CHECK(torch::equal(plain->bias, lora->bias));
  std::vector<std::string> names;
  for (const auto& p : lora->named_parameters()) names.push_back(p.key());
  CHECK(names == std::vector<std::string>{"weight", "bias"});
  const torch::Tensor x = torch::randn({3, 6});
  CHECK(torch::equal(plain->forward(x), lora->forward(x)));
}

TEST_CASE("an adapter initialises as in PEFT and merges in F32 into a BF16 base", "[lora]") {
  torch::manual_seed(1);
  LoraLinear layer(64, 32);
  layer->to(torch::kBFloat16);
  LoraAdapterOptions o;
  o.r = 8;
  o.alpha = 16;
  o.use_rslora = true;
  layer->add_adapter(o);
  CHECK(layer->scaling() == Approx(16.0 / std::sqrt(8.0)));
  CHECK(layer->lora_A->weight.scalar_type() == torch::kFloat);
  CHECK(layer->lora_B->weight.abs().sum().item<double>() == 0);
  const double bound = 1.0 / std::sqrt(64.0);  // kaiming_uniform(a=sqrt(5)) on fan_in 64
  CHECK(layer->lora_A->weight.abs().max().item<double>() <= bound);
  CHECK(layer->lora_A->weight.abs().max().item<double>() > bound / 2);
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key());
  CHECK(names == std::vector<std::string>{"base_layer.weight", "base_layer.bias", "lora_A.weight", "lora_B.weight"});
  {
    torch::NoGradGuard no_grad;
    layer->lora_B->weight.normal_();
  }
  const torch::Tensor before = layer->weight.clone();
  const torch::Tensor x = torch::randn({4, 64}).to(torch::kBFloat16);
  const torch::Tensor unmerged_out = layer->forward(x);
  layer->merge(/*safe=*/true);
  CHECK(layer->merged());
  // The merged weight is the F32 sum rounded once to BF16.
  const torch::Tensor exact = (before.to(torch::kFloat) +
                               layer->lora_B->weight.matmul(layer->lora_A->weight) * layer->scaling())
                                  .to(torch::kBFloat16);
  CHECK(torch::equal(layer->weight, exact));
  CHECK(torch::allclose(layer->forward(x).to(torch::kFloat), unmerged_out.to(torch::kFloat), 0.05, 0.1));
  layer->unmerge();
  CHECK_FALSE(layer->merged());
  CHECK(torch::allclose(layer->weight.to(torch::kFloat), before.to(torch::kFloat), 0, 0.05));
}

}  // namespace lorakeep

namespace lorakeep {

TEST_CASE("merge-lora's rank-r update equals a GEMM in every instruction set this CPU runs", "[lora][merge]") {
  // Shapes that reach every path: pairs of rows and a last single row,
  // whole column blocks (AVX-512: 128 floats, 64 doubles; narrower sets
  // less) and a tail, ranks from 1 up.
  const std::vector<std::array<std::int64_t, 3>> shapes = {{5, 4096, 16}, {1, 300, 1}, {7, 129, 7}, {2, 64, 64}};
  const std::vector<detail::RankUpdateIsa> isas = detail::rank_update_isas();
  REQUIRE(isas.back() == detail::RankUpdateIsa::kGeneric);
  at::manual_seed(11);
  for (const at::ScalarType type : {at::kFloat, at::kDouble}) {
    for (const auto& [rows, cols, r] : shapes) {
      const at::Tensor w = at::randn({rows, cols}, type);
      const at::Tensor c = at::randn({rows, r}, type) * 0.1;
      const at::Tensor v = at::randn({r, cols}, type);
      // The exact sum, rounded once into w's dtype.
      const at::Tensor want = (w.to(at::kDouble) + at::mm(c.to(at::kDouble), v.to(at::kDouble))).to(type);
      for (const detail::RankUpdateIsa isa : isas) {
        INFO("type " << type << ", isa " << static_cast<int>(isa) << ", " << rows << " x " << cols << " rank " << r);
        at::Tensor got = w.clone();
        if (type == at::kFloat) {
          detail::rank_update(isa, got.data_ptr<float>(), rows, cols, c.data_ptr<float>(), v.data_ptr<float>(), r);
        } else {
          detail::rank_update(isa, got.data_ptr<double>(), rows, cols, c.data_ptr<double>(), v.data_ptr<double>(), r);
        }
        // Summed in the dtype: a few units in the last place of the sum.
        const double tolerance = (type == at::kFloat ? 1e-6 : 1e-14) * (1 + std::sqrt(static_cast<double>(r)));
        CHECK(at::allclose(got, want, tolerance, tolerance));
        CHECK_FALSE(at::equal(got, w));  // it did write
      }
    }
  }
}

TEST_CASE("merge-lora output equals the in-memory merged weights", "[lora][merge]") {
  test::TempDir dir;
  LoraConfig config;
  config.r = 4;
  config.lora_alpha = 12;
  config.use_rslora = true;
  config.target_modules = {"lin0"};
  config.modules_to_save = {"lin1"};
  config.alpha_pattern = {{"lin0", 6.0}};
  Mlp model = seeded_mlp();
  // The base file, with the base model's own names.
  save_safetensors(dir / "base.safetensors", {{"lin0.weight", model->lin0->weight},
                                              {"lin0.bias", model->lin0->bias},
                                              {"lin1.weight", model->lin1->weight},
                                              {"lin1.bias", model->lin1->bias}});
  inject_lora(*model, config);
  {
    torch::NoGradGuard no_grad;
    model->lin0->lora_B->weight.normal_();
    model->lin1->weight.add_(1.0);
  }
  save_adapter(dir / "adapter", *model, config);
  const auto r = test::run_process({test::cli_path(), "merge-lora", "--base", dir / "base.safetensors", "--adapter",
                                    dir / "adapter", "--out", dir / "merged"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  merge_lora(*model);
  CHECK(model->lin0->scaling() == Approx(6.0 / 2.0));  // alpha_pattern's 6 over sqrt(4)
  const auto merged = open_tensor_source(dir / "merged");
  CHECK(torch::allclose(merged->tensor("lin0.weight"), model->lin0->weight, 0, 1e-6));
  CHECK(torch::equal(merged->tensor("lin0.bias"), model->lin0->bias));
  CHECK(torch::equal(merged->tensor("lin1.weight"), model->lin1->weight));  // modules_to_save replace the base's
  // And the merged file is the fine-tuned model: a plain MLP loaded from it
  // computes what the adapted model computes.
  torch::manual_seed(0);
  struct Plain : torch::nn::Module {
    torch::nn::Linear lin0{nullptr}, lin1{nullptr};
    Plain() {
      lin0 = register_module("lin0", torch::nn::Linear(10, 20));
      lin1 = register_module("lin1", torch::nn::Linear(20, 2));
    }
  } plain;
  load_into(plain, *merged);
  const torch::Tensor x = fixed_input() / 90;
  CHECK(torch::allclose(torch::log_softmax(plain.lin1(torch::relu(plain.lin0(x))), -1), model->forward(x), 0, 1e-5));
}

TEST_CASE("merge-lora folds the GPT-2 adapter into Conv1D weights and refuses a mismatched base", "[lora][merge]") {
  test::TempDir dir;
  torch::manual_seed(0);
  Gpt2SeqCls model;
  NamedTensors base;
  for (int i = 0; i < 12; ++i) {
    base.emplace_back("transformer.h." + std::to_string(i) + ".attn.c_attn.weight",
                      model->transformer->h->ptr<Gpt2BlockImpl>(i)->attn->c_attn->weight);
  }
  save_safetensors(dir / "gpt2.safetensors", base);
  const std::string adapter = test::fixture("peft/gpt2_lora_seqcls");
  const MergeReport report = merge_lora_files(dir / "gpt2.safetensors", adapter, dir / "merged");
  CHECK(report.tensors == 13);  // 12 merged weights and the classifier head, which the base lacks
  load_adapter(adapter, *model);
  merge_lora(*model);
  const auto merged = open_tensor_source(dir / "merged");
  for (int i = 0; i < 12; ++i) {
    const std::string name = "transformer.h." + std::to_string(i) + ".attn.c_attn.weight";
    CHECK(torch::allclose(merged->tensor(name), model->transformer->h->ptr<Gpt2BlockImpl>(i)->attn->c_attn->weight, 0,
                          1e-6));
  }
  CHECK(torch::equal(merged->tensor("score.weight"), model->score->weight));
  // A base stored [out, in] (fan_in_fan_out ignored) is refused, naming it.
  save_safetensors(dir / "wrong.safetensors", {{"transformer.h.0.attn.c_attn.weight", torch::zeros({2304, 768})}});
  const Error e = test::capture_error([&] { merge_lora_files(dir / "wrong.safetensors", adapter, dir / "m2"); });
  CHECK(e.code() == ErrorCode::kIncompatible);
  CHECK_THAT(e.what(), Contains("'transformer.h.0.attn.c_attn.weight' is [2304, 768] in the base") &&
                           Contains("has no 'transformer.h.1.attn.c_attn.weight'"));
}

namespace {

// BertForSequenceClassification's names, tiny (hidden size 8): bert.* (the
// BertModel: embeddings with an I64 position_ids buffer, one encoder layer
// whose query and value are LoRA-capable, the pooler) plus the classifier
// head. Built from plain modules; the same seed gives the same weights.
struct TinyBertSeqCls {
  std::shared_ptr<torch::nn::Module> model = std::make_shared<torch::nn::Module>();
  LoraLinear query{nullptr}, value{nullptr};
  torch::nn::Linear dense{nullptr}, classifier{nullptr};

  TinyBertSeqCls() {
    torch::manual_seed(3);
    auto node = [](torch::nn::Module& parent, const std::string& name) {
      return parent.register_module(name, std::make_shared<torch::nn::Module>());
    };
    auto bert = node(*model, "bert");
    auto embeddings = node(*bert, "embeddings");
    node(*embeddings, "word_embeddings")->register_parameter("weight", torch::randn({30, 8}));
    embeddings->register_buffer("position_ids", torch::arange(16, torch::kLong).unsqueeze(0));
    auto self = node(*node(*node(*node(*node(*bert, "encoder"), "layer"), "0"), "attention"), "self");
    query = self->register_module("query", LoraLinear(8, 8));
    self->register_module("key", torch::nn::Linear(8, 8));
    value = self->register_module("value", LoraLinear(8, 8));
    dense = node(*bert, "pooler")->register_module("dense", torch::nn::Linear(8, 8));
    classifier = model->register_module("classifier", torch::nn::Linear(8, 3));
  }

  // Every parameter and buffer, by name (before inject_lora: plain names).
  NamedTensors state() const {
    NamedTensors all;
    for (const auto& p : model->named_parameters()) all.emplace_back(p.key(), p.value().detach().clone());
    for (const auto& b : model->named_buffers()) all.emplace_back(b.key(), b.value().clone());
    return all;
  }
};

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), static_cast<std::size_t>(x.numel()) * x.element_size()) == 0;
}

// dir/base.safetensors: TinyBertSeqCls's bert.* under BertModel's names
// (without "bert."), as Hugging Face saves a BertModel; dir/adapter: a PEFT
// adapter of rank 4, alpha 8 on query and value, with the classifier and the
// pooler's dense layer as modules_to_save, trained (B random, the whole
// modules shifted). Returns the base tensors.
NamedTensors write_bert_base_and_adapter(const test::TempDir& dir) {
  TinyBertSeqCls bert;
  NamedTensors base;
  for (const auto& [name, t] : bert.state()) {
    if (name.rfind("bert.", 0) == 0) base.emplace_back(name.substr(5), t);
  }
  save_safetensors(dir / "base.safetensors", base);
  LoraConfig config;
  config.r = 4;
  config.lora_alpha = 8;
  config.target_modules = {"query", "value"};
  config.modules_to_save = {"classifier", "pooler.dense"};
  inject_lora(*bert.model, config);
  {
    torch::NoGradGuard no_grad;
    bert.query->lora_B->weight.normal_(0, 0.1);
    bert.value->lora_B->weight.normal_(0, 0.1);
    bert.classifier->weight.add_(1.0);
    bert.dense->weight.add_(1.0);
    bert.dense->bias.add_(1.0);
  }
  save_adapter(dir / "adapter", *bert.model, config);
  return base;
}

}  // namespace

TEST_CASE("merge-lora maps an adapter of a model with a head onto its base model's file with base_prefix",
          "[lora][merge]") {
  test::TempDir dir;
  const NamedTensors base = write_bert_base_and_adapter(dir);
  REQUIRE(base.size() == 10);  // embeddings (2, one I64), query, key, value, pooler (2 each)
  const auto adapter = open_tensor_source(dir / "adapter/adapter_model.safetensors");
  REQUIRE(adapter->contains("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"));
  REQUIRE(adapter->contains("base_model.model.classifier.weight"));

  SECTION("without base_prefix the adapted weights are missing, with a hint at the prefix") {
    const Error e = test::capture_error(
        [&] { merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "out"); });
    CHECK(e.code() == ErrorCode::kIncompatible);
    CHECK_THAT(e.what(), Contains("2 problems (nothing was written)") &&
                             Contains("the base has no 'bert.encoder.layer.0.attention.self.query.weight'; hint: the "
                                      "base's names lack the prefix 'bert.': set base_prefix (--base-prefix bert.)") &&
                             Contains("the base has no 'bert.encoder.layer.0.attention.self.value.weight'"));
    CHECK_FALSE(fs::exists(dir / "out"));
  }

  SECTION("with base_prefix \"bert.\" the output is the whole model with its head, under its names") {
    MergeLoraOptions o;
    o.base_prefix = "bert.";
    const MergeReport report = merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "out", o);
    CHECK(report.tensors == 12);
    const auto merged = open_tensor_source(dir / "out");
    std::set<std::string> want = {"classifier.weight", "classifier.bias"};
    for (const auto& [name, t] : base) want.insert("bert." + name);
    CHECK(std::set<std::string>(merged->names().begin(), merged->names().end()) == want);
    for (const auto& [name, t] : base) {
      INFO(name);
      const at::Tensor got = merged->tensor("bert." + name);
      const std::string layer = name.substr(0, name.size() - std::string(".weight").size());
      if (name == "encoder.layer.0.attention.self.query.weight" ||
          name == "encoder.layer.0.attention.self.value.weight") {
        const at::Tensor A = adapter->tensor("base_model.model.bert." + layer + ".lora_A.weight");
        const at::Tensor B = adapter->tensor("base_model.model.bert." + layer + ".lora_B.weight");
        const at::Tensor expected = t + at::mm(B, A) * (8.0 / 4.0);  // scaling alpha / r
        CHECK(got.scalar_type() == at::kFloat);
        CHECK((got - expected).abs().max().item<double>() <= 1e-6);
        CHECK_FALSE(at::equal(got, t));  // the update was not zero
      } else if (name.rfind("pooler.dense.", 0) == 0) {
        // modules_to_save under the prefix replace the base's tensor.
        CHECK(same_bits(got, adapter->tensor("base_model.model.bert." + name)));
        CHECK_FALSE(at::equal(got, t));
      } else {
        CHECK(same_bits(got, t));  // passed through, embeddings.position_ids (I64) included
      }
    }
    CHECK(merged->tensor("bert.embeddings.position_ids").scalar_type() == at::kLong);
    CHECK(same_bits(merged->tensor("classifier.weight"), adapter->tensor("base_model.model.classifier.weight")));
    CHECK(same_bits(merged->tensor("classifier.bias"), adapter->tensor("base_model.model.classifier.bias")));
    // The file is a full checkpoint of the model with its head: a strict load
    // into a fresh (unadapted) BertForSequenceClassification tree fills every
    // parameter and buffer.
    TinyBertSeqCls fresh;
    const TransferReport loaded = load_into(*fresh.model, *merged);
    CHECK(loaded.tensors == 12);
    CHECK(same_bits(fresh.query->weight, merged->tensor("bert.encoder.layer.0.attention.self.query.weight")));
    CHECK(same_bits(fresh.classifier->weight, merged->tensor("classifier.weight")));

    // The merged file already carries the prefix: merging into it again with
    // base_prefix says so.
    const Error e = test::capture_error([&] { merge_lora_files(dir / "out", dir / "adapter", dir / "out2", o); });
    CHECK(e.code() == ErrorCode::kIncompatible);
    CHECK_THAT(e.what(), Contains("already carry the prefix 'bert.': leave base_prefix empty"));
  }

  SECTION("a base_prefix that is not a module path (no final '.') is refused") {
    MergeLoraOptions o;
    o.base_prefix = "bert";
    const Error e = test::capture_error(
        [&] { merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "out", o); });
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK_THAT(e.what(), Contains("'bert' does not end in '.'") && Contains("'bert.'"));
    CHECK_FALSE(fs::exists(dir / "out"));
  }

  SECTION("adapted layers outside base_prefix are reported, all of them") {
    MergeLoraOptions o;
    o.base_prefix = "roberta.";
    const Error e = test::capture_error(
        [&] { merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "out", o); });
    CHECK(e.code() == ErrorCode::kIncompatible);
    CHECK_THAT(e.what(),
               Contains("2 problems") &&
                   Contains("'bert.encoder.layer.0.attention.self.query' does not start with base_prefix 'roberta.'") &&
                   Contains("'bert.encoder.layer.0.attention.self.value' does not start with base_prefix 'roberta.'"));
    CHECK_FALSE(fs::exists(dir / "out"));
  }
}

TEST_CASE("lorakeep merge-lora --base-prefix writes what merge_lora_files writes", "[lora][merge]") {
  test::TempDir dir;
  write_bert_base_and_adapter(dir);
  const auto help = test::run_process({test::cli_path(), "merge-lora", "--help"});
  CHECK_THAT(help.out, Contains("--base-prefix"));
  const auto r = test::run_process({test::cli_path(), "merge-lora", "--base", dir / "base.safetensors", "--adapter",
                                    dir / "adapter", "--out", dir / "cli", "--base-prefix", "bert."});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  MergeLoraOptions o;
  o.base_prefix = "bert.";
  merge_lora_files(dir / "base.safetensors", dir / "adapter", dir / "lib", o);
  const auto cli = open_tensor_source(dir / "cli"), lib = open_tensor_source(dir / "lib");
  CHECK(cli->names() == lib->names());
  for (const std::string& name : lib->names()) {
    INFO(name);
    CHECK(same_bits(cli->tensor(name), lib->tensor(name)));
  }
  // Without it, the CLI fails (exit 1) with the hint.
  const auto bad = test::run_process({test::cli_path(), "merge-lora", "--base", dir / "base.safetensors", "--adapter",
                                      dir / "adapter", "--out", dir / "cli2"});
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Contains("--base-prefix bert."));
}

TEST_CASE("an allocation probe leaves the raw allocation users of LibTorch working", "[lora][memory]") {
  AllocationProbe probe;  // installs the counting CPU allocator
  void* raw = c10::GetCPUAllocator()->raw_allocate(1000);
  c10::GetCPUAllocator()->raw_deallocate(raw);
  const torch::Tensor a = torch::randn({64, 64}).to(torch::kBFloat16);
  CHECK(a.matmul(a).sizes() == torch::IntArrayRef({64, 64}));  // oneDNN's BF16 path allocates raw
  CHECK(probe.peak_bytes() >= 64 * 64 * 2);
}

}  // namespace lorakeep
