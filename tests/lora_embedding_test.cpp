// LoraEmbedding: a plain Embedding without an adapter; an adapter
// initialised as PEFT does, PEFT's forward written out by hand, merged into
// the table and unmerged; DoRA's magnitude (one per embedding dimension),
// forward and merge; the refusals.
#include <string>
#include <vector>

#include <torch/nn/modules/embedding.h>
#include <torch/utils.h>

#include "lorakeep/error.h"
#include "lorakeep/lora_embedding.h"
#include "test_util.h"

namespace lorakeep {

TEST_CASE("a LoraEmbedding without an adapter is torch::nn::Embedding in names and numbers", "[lora]") {
  const auto options = torch::nn::EmbeddingOptions(11, 6).padding_idx(-2);
  torch::manual_seed(7);
  torch::nn::Embedding plain(options);
  torch::manual_seed(7);
  LoraEmbedding lora(options);
  CHECK(torch::equal(plain->weight, lora->weight));
  CHECK(lora->options().padding_idx() == 9);  // made non-negative, as Embedding does
  CHECK(lora->weight[9].abs().sum().item<double>() == 0);
  std::vector<std::string> names;
  for (const auto& p : lora->named_parameters()) names.push_back(p.key());
  CHECK(names == std::vector<std::string>{"weight"});
  const torch::Tensor ids = torch::tensor({{1, 9, 10}, {0, 3, 3}}, torch::kLong);
  CHECK(torch::equal(plain->forward(ids), lora->forward(ids)));
}

TEST_CASE("an embedding adapter initialises as PEFT's, computes its forward and merges both ways", "[lora]") {
  torch::manual_seed(3);
  LoraEmbedding layer(11, 6);
  LoraAdapterOptions o;
  o.r = 3;
  o.alpha = 6;
  layer->add_adapter(o);
  CHECK(layer->scaling() == 2.0);
  CHECK(layer->lora_embedding_A.sizes() == torch::IntArrayRef{3, 11});
  CHECK(layer->lora_embedding_B.sizes() == torch::IntArrayRef{6, 3});
  CHECK(layer->lora_embedding_A.abs().sum().item<double>() == 0);  // A zero, B normal: PEFT's embedding init
  CHECK(layer->lora_embedding_B.abs().sum().item<double>() > 0);
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key() + (p.value().requires_grad() ? "+" : ""));
  // LibTorch lists a module's own parameters before its children's.
  CHECK(names == std::vector<std::string>{"lora_embedding_A+", "lora_embedding_B+", "base_layer.weight"});
  {
    torch::NoGradGuard no_grad;
    layer->lora_embedding_A.normal_();
  }
  const torch::Tensor ids = torch::tensor({{1, 4, 10}, {0, 4, 7}}, torch::kLong);
  // PEFT: base(ids) + embed(ids, A^T) @ B^T * scaling.
  const torch::Tensor want = layer->weight.index({ids}) +
                             layer->lora_embedding_A.t().index({ids}).matmul(layer->lora_embedding_B.t()) * 2.0;
  const torch::Tensor out = layer->forward(ids);
  CHECK(torch::allclose(out, want, 1e-6, 1e-6));
  const torch::Tensor before = layer->weight.clone();
  layer->merge(/*safe=*/true);
  CHECK(layer->merged());
  CHECK(torch::allclose(layer->weight, before + (layer->lora_embedding_B.matmul(layer->lora_embedding_A) * 2.0).t(),
                        1e-6, 1e-6));
  CHECK(torch::allclose(layer->forward(ids), out, 1e-5, 1e-5));  // the merged table alone gives the same
  CHECK_THROWS_AS(layer->set_scaling(1, false, 0), Error);       // merged: the old scaling is in the table
  layer->unmerge();
  CHECK(torch::allclose(layer->weight, before, 1e-5, 1e-5));
}

TEST_CASE("DoRA on an embedding: a magnitude per dimension, PEFT's forward, merged per column", "[lora]") {
  torch::manual_seed(4);
  LoraEmbedding layer(9, 5);
  LoraAdapterOptions o;
  o.r = 2;
  o.alpha = 4;
  o.use_dora = true;
  o.init = "false";  // both factors non-zero
  layer->add_adapter(o);
  const torch::Tensor adapted = layer->weight + (layer->lora_embedding_B.matmul(layer->lora_embedding_A) * 2.0).t();
  const torch::Tensor norms = adapted.norm(2, {0});  // one per embedding dimension
  CHECK(layer->lora_magnitude_vector.sizes() == torch::IntArrayRef{5});
  CHECK(torch::allclose(layer->lora_magnitude_vector, norms, 1e-6, 1e-6));
  {
    torch::NoGradGuard no_grad;
    layer->lora_magnitude_vector.mul_(torch::linspace(0.5, 1.5, 5));
  }
  const torch::Tensor ids = torch::tensor({2, 8, 0, 2}, torch::kLong);
  // PEFT: k * base(ids) + k * embed(ids, A^T) @ B^T * scaling, k = m / norms.
  const torch::Tensor k = layer->lora_magnitude_vector.detach() / norms;
  const torch::Tensor want = k * adapted.index({ids});
  const torch::Tensor out = layer->forward(ids);
  CHECK(torch::allclose(out, want, 1e-5, 1e-5));
  // The norms are constants to the gradient: the magnitude's gradient is
  // sum over the batch of adapted[ids] / norms, B's goes through k only.
  out.sum().backward();
  CHECK(torch::allclose(layer->lora_magnitude_vector.grad(), adapted.index({ids}).sum(0) / norms, 1e-5, 1e-5));
  const torch::Tensor before = layer->weight.clone();
  layer->merge(/*safe=*/true);
  CHECK(torch::allclose(layer->weight, k * adapted, 1e-5, 1e-5));
  CHECK(torch::allclose(layer->forward(ids), out, 1e-5, 1e-5));
  layer->unmerge();
  CHECK(torch::allclose(layer->weight, before, 1e-5, 1e-5));
}

TEST_CASE("an embedding refuses lora_bias and max_norm, naming them, and stays unarmed", "[lora]") {
  LoraEmbedding layer(9, 5);
  LoraAdapterOptions biased;
  biased.lora_bias = true;
  CHECK_THROWS_WITH(layer->add_adapter(biased), Catch::Contains("lora_bias") && Catch::Contains("embedding"));
  CHECK(!layer->has_adapter());
  LoraEmbedding renormed(torch::nn::EmbeddingOptions(9, 5).max_norm(1.0));
  CHECK_THROWS_WITH(renormed->add_adapter(LoraAdapterOptions{}), Catch::Contains("max_norm"));
  CHECK(!renormed->has_adapter());
  CHECK_THROWS_AS(layer->merge(), Error);  // no adapter
}

}  // namespace lorakeep
