// merge-lora: the rank-r update kernels, adapters folded into base files
// (Linear and GPT-2's Conv1D, base_prefix for a model with a head), and the
// CLI against the library.
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/lora.h"
#include "lorakeep/merge_lora.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "lorakeep/transfer.h"
#include "lora/rank_update.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

using test::fixed_input;
using test::Gpt2BlockImpl;
using test::Gpt2SeqCls;
using test::Mlp;
using test::seeded_mlp;

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

// GPT-2's 12 c_attn weights, under their names.
NamedTensors c_attn_weights(Gpt2SeqCls& model) {
  NamedTensors out;
  for (int i = 0; i < 12; ++i) {
    out.emplace_back("transformer.h." + std::to_string(i) + ".attn.c_attn.weight",
                     model->transformer->h->ptr<Gpt2BlockImpl>(i)->attn->c_attn->weight);
  }
  return out;
}

}  // namespace

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

TEST_CASE("merge-lora output equals the in-memory merged weights, for LoRA, lora_bias and DoRA", "[lora][merge]") {
  for (const std::string kind : {"lora", "lora_bias", "dora"}) {
    INFO(kind);
    test::TempDir dir;
    LoraConfig config;
    config.r = 4;
    config.lora_alpha = 12;
    config.use_rslora = true;
    config.target_modules = {"lin0"};
    config.modules_to_save = {"lin1"};
    config.alpha_pattern = {{"lin0", 6.0}};
    config.lora_bias = kind == "lora_bias";
    config.use_dora = kind == "dora";
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
      if (config.lora_bias) model->lin0->lora_B->bias.normal_();
      if (config.use_dora) model->lin0->lora_magnitude_vector.uniform_(0.5, 2.0);
      model->lin1->weight.add_(1.0);
    }
    save_adapter(dir / "adapter", *model, config);
    const auto r = test::run_process({test::cli_path(), "merge-lora", "--base", dir / "base.safetensors", "--adapter",
                                      dir / "adapter", "--out", dir / "merged"});
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    const torch::Tensor x = fixed_input() / 90;
    const torch::Tensor adapted = model->forward(x).detach();
    const torch::Tensor base_bias = model->lin0->bias.clone();
    merge_lora(*model);
    CHECK(model->lin0->scaling() == Approx(6.0 / 2.0));  // alpha_pattern's 6 over sqrt(4)
    const auto merged = open_tensor_source(dir / "merged");
    CHECK(torch::allclose(merged->tensor("lin0.weight"), model->lin0->weight, 0, 1e-6));
    CHECK(torch::allclose(merged->tensor("lin0.bias"), model->lin0->bias, 0, 1e-6));
    CHECK(torch::equal(model->lin0->bias, base_bias) == !config.lora_bias);   // lora_bias moves the base's bias
    CHECK(torch::equal(merged->tensor("lin1.weight"), model->lin1->weight));  // modules_to_save replace the base's
    // And the merged file is the fine-tuned model: a plain MLP loaded from it
    // computes what the adapted model computed.
    torch::manual_seed(0);
    struct Plain : torch::nn::Module {
      torch::nn::Linear lin0{nullptr}, lin1{nullptr};
      Plain() {
        lin0 = register_module("lin0", torch::nn::Linear(10, 20));
        lin1 = register_module("lin1", torch::nn::Linear(20, 2));
      }
    } plain;
    load_into(plain, *merged);
    CHECK(torch::allclose(torch::log_softmax(plain.lin1(torch::relu(plain.lin0(x))), -1), adapted, 0, 1e-5));
  }
}

TEST_CASE("merge-lora merges DoRA on Conv1D weights: column norms summed over many row blocks", "[lora][merge]") {
  // GPT-2's c_attn is stored [768, 2304]: DoRA's outputs are its columns,
  // and a piece holds 28 of its rows, so each norm is summed over 28 blocks.
  test::TempDir dir;
  torch::manual_seed(0);
  Gpt2SeqCls model;
  save_safetensors(dir / "gpt2.safetensors", c_attn_weights(model));
  LoraConfig config = read_adapter_config(test::fixture("peft/gpt2_lora_seqcls"));
  config.use_dora = true;
  config.modules_to_save.clear();
  inject_lora(*model, config);
  for (int i = 0; i < 12; ++i) {
    torch::NoGradGuard no_grad;
    LoraLinearImpl& layer = *model->transformer->h->ptr<Gpt2BlockImpl>(i)->attn->c_attn;
    layer.lora_B->weight.normal_(0, 0.1);
    layer.lora_magnitude_vector.mul_(torch::rand({2304}) + 0.5);
  }
  save_adapter(dir / "adapter", *model, config);
  merge_lora_files(dir / "gpt2.safetensors", dir / "adapter", dir / "merged");
  merge_lora(*model);
  const auto merged = open_tensor_source(dir / "merged");
  for (int i = 0; i < 12; ++i) {
    const std::string name = "transformer.h." + std::to_string(i) + ".attn.c_attn.weight";
    INFO(name);
    CHECK(torch::allclose(merged->tensor(name), c_attn_weights(model)[i].second, 0, 1e-5));
  }
}

TEST_CASE("merge-lora folds the GPT-2 adapter into Conv1D weights and refuses a mismatched base", "[lora][merge]") {
  test::TempDir dir;
  torch::manual_seed(0);
  Gpt2SeqCls model;
  save_safetensors(dir / "gpt2.safetensors", c_attn_weights(model));
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

}  // namespace lorakeep
