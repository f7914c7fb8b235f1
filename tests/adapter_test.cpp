// Adapters exchanged with PEFT: real PEFT adapters load and compute what
// PEFT computed, other adapter types and bad configs are refused, the digest,
// and a saved adapter that PEFT and the reference reader load.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/optim/sgd.h>

#include "lorakeep/logging.h"
#include "lorakeep/lora.h"
#include "lorakeep/merge_lora.h"
#include "lorakeep/safetensors.h"
#include "tensors/pickle.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

using test::fixed_input;
using test::Gpt2BlockImpl;
using test::Gpt2SeqCls;
using test::Mlp;
using test::seeded_mlp;

torch::Tensor peft_output(const std::string& adapter) {
  const c10::IValue v = detail::load_torch_archive(test::fixture("peft/regression_0.6.1/" + adapter + "/output.pt"));
  return v.toTensor();
}

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

TEST_CASE("PEFT 0.21's variants and options that change the tensors are refused naming the field", "[lora]") {
  // Each set as PEFT writes it when used; at its default (false, null, {})
  // each is accepted, as PEFT 0.21 writes every field.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("lora_bias":true,"use_dora":true)", "lora_bias with use_dora"},
      {R"("lora_bias":true,"init_lora_weights":"gaussian")", "lora_bias with init_lora_weights='gaussian'"},
      {R"("layer_replication":[[0,2]])", "layer_replication"},
      {R"("target_parameters":["experts.gate_up_proj"])", "target_parameters"},
      {R"("trainable_token_indices":[3,5])", "trainable_token_indices"},
      {R"("use_qalora":true)", "use_qalora"},
      {R"("alora_invocation_tokens":[101,102])", "alora_invocation_tokens"},
      {R"("velora_config":{"num_groups":32})", "velora_config"},
      {R"("monteclora_config":{"n_samples":4})", "monteclora_config"},
      {R"("use_bdlora":{"nblocks":2})", "use_bdlora"},
      {R"("arrow_config":{"top_k":3})", "arrow_config"},
      {R"("kasa_config":{"svd_rank":4})", "kasa_config"},
      {R"("ensure_weight_tying":true)", "ensure_weight_tying"},
      {R"("init_lora_weights":"pissa")", "rewrites the base weights"},
      {R"("init_lora_weights":"eva")", "leaves the base weights alone"},
      {R"("init_lora_weights":"mica")", "leaves the base weights alone"},
  };
  for (const auto& [field, name] : cases) {
    INFO(field);
    const Error e = test::capture_error(
        [&] { parse_adapter_config(R"({"peft_type":"LORA",)" + field + "}", "cfg/adapter_config.json"); });
    CHECK(e.code() == ErrorCode::kNotSupported);
    CHECK_THAT(e.what(), Contains("cfg/adapter_config.json") && Contains(name));
  }
  const LoraConfig c = parse_adapter_config(
      R"({"peft_type":"LORA","r":4,"use_dora":false,"lora_bias":false,"layer_replication":null,)"
      R"("target_parameters":null,"trainable_token_indices":null,"use_qalora":false,"qalora_group_size":16,)"
      R"("alora_invocation_tokens":null,"velora_config":null,"monteclora_config":null,"use_bdlora":null,)"
      R"("arrow_config":null,"kasa_config":null,"ensure_weight_tying":false,"lora_ga_config":null})",
      "cfg/adapter_config.json");
  CHECK(c.r == 4);
}

TEST_CASE("a DoRA adapter saves its magnitudes under PEFT's keys, loads back exactly, and mismatches are refused",
          "[lora]") {
  test::TempDir dir;
  LoraConfig config;
  config.r = 4;
  config.target_modules = {"lin0"};
  config.use_dora = true;
  Mlp model = seeded_mlp();
  inject_lora(*model, config);
  {
    torch::NoGradGuard no_grad;
    model->lin0->lora_B->weight.normal_();
    model->lin0->lora_magnitude_vector.uniform_(0.5, 2.0);
  }
  save_adapter(dir / "dora", *model, config);
  const SafetensorsFile file = SafetensorsFile::open(dir / "dora/adapter_model.safetensors");
  CHECK(file.names() == std::vector<std::string>{"base_model.model.lin0.lora_A.weight",
                                                 "base_model.model.lin0.lora_B.weight",
                                                 "base_model.model.lin0.lora_magnitude_vector"});
  CHECK(file.info("base_model.model.lin0.lora_magnitude_vector").shape == std::vector<std::int64_t>{20});
  CHECK(read_adapter_config(dir / "dora").use_dora);
  Mlp fresh = seeded_mlp();
  load_adapter(dir / "dora", *fresh);
  CHECK(torch::equal(fresh->forward(fixed_input()), model->forward(fixed_input())));

  // Magnitudes the config does not announce, and a config that announces
  // them without them: refused naming the key, by a load and by merge-lora.
  LoraConfig plain = config;
  plain.use_dora = false;
  test::write_file(dir / "dora/adapter_config.json", format_adapter_config(plain));
  Mlp untouched = seeded_mlp();
  Error e = test::capture_error([&] { load_adapter(dir / "dora", *untouched); });
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Contains("base_model.model.lin0.lora_magnitude_vector") && Contains("use_dora is false"));
  CHECK_FALSE(untouched->lin0->has_adapter());
  save_safetensors(dir / "base.safetensors", {{"lin0.weight", model->lin0->weight.detach()}});
  e = test::capture_error([&] { merge_lora_files(dir / "base.safetensors", dir / "dora", dir / "merged"); });
  CHECK_THAT(e.what(), Contains("use_dora is false"));
  save_safetensors(dir / "dora/adapter_model.safetensors",
                   {{"base_model.model.lin0.lora_A.weight", file.tensor("base_model.model.lin0.lora_A.weight")},
                    {"base_model.model.lin0.lora_B.weight", file.tensor("base_model.model.lin0.lora_B.weight")}});
  test::write_file(dir / "dora/adapter_config.json", format_adapter_config(config));
  e = test::capture_error([&] { load_adapter(dir / "dora", *untouched); });
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Contains("lacks the DoRA magnitude") && Contains("lin0.lora_magnitude_vector"));

  // A DoRA adapter into layers armed as plain LoRA, and the reverse.
  save_adapter(dir / "dora2", *model, config);
  Mlp armed_plain = seeded_mlp();
  inject_lora(*armed_plain, plain);
  e = test::capture_error([&] { load_adapter(dir / "dora2", *armed_plain); });
  CHECK(e.code() == ErrorCode::kIncompatible);
  CHECK_THAT(e.what(), Contains("a DoRA adapter") && Contains("lin0") && Contains("hint"));
  e = test::capture_error([&] { save_adapter(dir / "mixed", *model, plain); });
  CHECK_THAT(e.what(), Contains("use_dora"));
}

TEST_CASE("every field of the peers' PEFT LoraConfig is understood or refused by name, and PEFT's own file loads",
          "[lora][python][peers]") {
  const auto py = test::run_python("lora_config_fields.py", {});
  INFO(py.err);
  REQUIRE(py.exit_code == 0);
  const auto peers = nlohmann::json::parse(py.out);
  std::vector<std::string> warnings;
  set_log_sink([&](LogLevel level, std::string_view message) {
    if (level >= LogLevel::kWarn) warnings.emplace_back(message);
  });
  // Each field of the class alone, at the value PEFT writes for a plain LoRA
  // (null for runtime_config, which PEFT never writes): accepted, or
  // refused naming it; never "unknown to lorakeep".
  const auto saved = nlohmann::json::parse(peers["saved"].get<std::string>());
  for (const auto& field : peers["fields"]) {
    const std::string name = field.get<std::string>();
    INFO("PEFT " << peers["peft"].get<std::string>() << ": field " << name);
    nlohmann::json one = {{"peft_type", "LORA"}};
    one[name] = saved.contains(name) ? saved[name] : nlohmann::json(nullptr);
    try {
      parse_adapter_config(one.dump(), "peft/adapter_config.json");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kNotSupported);
      CHECK_THAT(e.what(), Contains(name));
    }
    CHECK(warnings == std::vector<std::string>{});
    warnings.clear();
  }
  // The whole file PEFT wrote, as a plain LoRA.
  const LoraConfig c = parse_adapter_config(peers["saved"].get<std::string>(), "peft/adapter_config.json");
  set_log_sink({});
  CHECK(warnings == std::vector<std::string>{});
  CHECK(c.r == 4);
  CHECK(c.lora_alpha == 8);
  CHECK(c.target_modules == std::vector<std::string>{"lin0"});
  std::printf("PEFT %s: %zu LoraConfig fields, each understood or refused by name\n",
              peers["peft"].get<std::string>().c_str(), peers["fields"].size());
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

TEST_CASE("inject then train then save then load into a fresh model gives identical outputs", "[lora][python][peers]") {
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
  const auto peft = test::run_python("peft_check.py", {dir / "adapter"});
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
  const auto py = test::run_python("adapter_keys.py", {dir / "adapter/adapter_model.safetensors"});
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

}  // namespace lorakeep
