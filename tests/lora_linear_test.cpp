// LoraLinear: a plain Linear without an adapter; an adapter initialised as
// PEFT does, merged in F32 into a BF16 base and unmerged; DoRA's magnitude,
// forward and merge in both weight layouts.
#include <cmath>
#include <string>
#include <vector>

#include <torch/nn/functional/linear.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

#include "lorakeep/error.h"
#include "lorakeep/lora_linear.h"
#include "test_util.h"

namespace lorakeep {

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

TEST_CASE("DoRA starts as the base, merges each output row to its magnitude and unmerges, in both layouts", "[lora]") {
  for (const bool fan_in_fan_out : {false, true}) {
    INFO("fan_in_fan_out " << fan_in_fan_out);
    torch::manual_seed(3);
    LoraLinear layer(LoraLinearOptions(12, 7).fan_in_fan_out(fan_in_fan_out));
    const torch::Tensor base = layer->weight.clone();
    const torch::Tensor as_rows = fan_in_fan_out ? base.t() : base;  // [out, in]
    const torch::Tensor x = torch::randn({5, 12});
    const torch::Tensor base_out = layer->forward(x).detach();
    LoraAdapterOptions o;
    o.r = 3;
    o.alpha = 6;
    o.use_dora = true;
    layer->add_adapter(o);
    // The magnitude starts at the rows' norms (B is zero): the layer is its base.
    CHECK(layer->lora_magnitude_vector.sizes() == torch::IntArrayRef{7});
    CHECK(torch::allclose(layer->lora_magnitude_vector, as_rows.norm(2, 1), 0, 1e-6));
    CHECK(torch::equal(layer->forward(x), base_out));
    std::vector<std::string> names;
    for (const auto& p : layer->named_parameters()) names.push_back(p.key());
    // The layer's own parameter first, then its children's (LibTorch's order).
    CHECK(names == std::vector<std::string>{"lora_magnitude_vector", "base_layer.weight", "base_layer.bias",
                                            "lora_A.weight", "lora_B.weight"});
    {
      torch::NoGradGuard no_grad;
      layer->lora_B->weight.normal_();
      layer->lora_magnitude_vector.uniform_(0.5, 2.0);
    }
    // The magnitude learns; the norms are constants to the gradient.
    layer->forward(x).sum().backward();
    CHECK(layer->lora_magnitude_vector.grad().defined());
    CHECK(layer->lora_A->weight.grad().abs().sum().item<double>() > 0);
    torch::NoGradGuard no_grad;
    const torch::Tensor out = layer->forward(x);
    const torch::Tensor adapted = as_rows + layer->lora_B->weight.matmul(layer->lora_A->weight) * layer->scaling();
    const torch::Tensor k = layer->lora_magnitude_vector / adapted.norm(2, 1);
    CHECK(torch::allclose(out, torch::nn::functional::linear(x, adapted * k.unsqueeze(1), layer->bias), 0, 1e-5));
    layer->merge(/*safe=*/true);
    const torch::Tensor merged_rows = fan_in_fan_out ? layer->weight.t() : layer->weight;
    CHECK(torch::allclose(merged_rows.norm(2, 1), layer->lora_magnitude_vector, 0, 1e-5));
    CHECK(torch::allclose(layer->forward(x), out, 0, 1e-5));
    layer->unmerge();
    CHECK(torch::allclose(layer->weight, base, 0, 1e-5));
    CHECK(torch::allclose(layer->forward(x), out, 0, 1e-5));
  }
}

TEST_CASE("lora_bias adds a scaled bias to the LoRA path and merges it into the base's bias", "[lora]") {
  torch::manual_seed(4);
  LoraLinear layer(9, 5);
  const torch::Tensor x = torch::randn({3, 9});
  const torch::Tensor base_out = layer->forward(x).detach();
  const torch::Tensor base_weight = layer->weight.clone(), base_bias = layer->bias.clone();
  LoraAdapterOptions o;
  o.r = 2;
  o.alpha = 6;
  o.lora_bias = true;
  layer->add_adapter(o);
  CHECK(torch::equal(layer->lora_B->bias, torch::zeros({5})));  // zero, as B, at "true"
  CHECK(torch::equal(layer->forward(x), base_out));
  {
    torch::NoGradGuard no_grad;
    layer->lora_B->weight.normal_();
    layer->lora_B->bias.normal_();
  }
  const torch::Tensor out = layer->forward(x).detach();
  const torch::Tensor lora =
      (x.matmul(layer->lora_A->weight.t()).matmul(layer->lora_B->weight.t()) + layer->lora_B->bias) * layer->scaling();
  CHECK(torch::allclose(out, base_out + lora, 0, 1e-5));
  layer->merge(/*safe=*/true);
  CHECK(torch::allclose(layer->bias, base_bias + layer->lora_B->bias * layer->scaling(), 0, 1e-6));
  CHECK(torch::allclose(layer->forward(x), out, 0, 1e-5));
  layer->unmerge();
  CHECK(torch::allclose(layer->bias, base_bias, 0, 1e-6));
  CHECK(torch::allclose(layer->weight, base_weight, 0, 1e-6));

  // A base without bias: armed (as PEFT, which only warns), but a merge is
  // refused with nothing changed; DoRA with lora_bias is refused.
  LoraLinear unbiased(LoraLinearOptions(9, 5).bias(false));
  unbiased->add_adapter(o);
  const torch::Tensor w = unbiased->weight.clone();
  const Error e = test::capture_error([&] { unbiased->merge(); });
  CHECK_THAT(e.what(), Catch::Contains("no bias"));
  CHECK_FALSE(unbiased->merged());
  CHECK(torch::equal(unbiased->weight, w));
  o.use_dora = true;
  CHECK_THROWS_AS(LoraLinear(9, 5)->add_adapter(o), Error);
}

}  // namespace lorakeep
