// LoraLinear: a plain Linear without an adapter; an adapter initialised as
// PEFT does, merged in F32 into a BF16 base and unmerged.
#include <cmath>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

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

}  // namespace lorakeep
