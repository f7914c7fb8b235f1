// LoraConv2d: a plain Conv2d without an adapter; an adapter initialised as
// PEFT does, PEFT's forward written out with two convolutions, merged and
// unmerged with lora_bias; DoRA's magnitude [1, out, 1, 1], forward and
// merge; grouped convolutions (trained, not merged, as PEFT) and the
// refusals.
#include <string>
#include <vector>

#include <torch/nn/functional/conv.h>
#include <torch/nn/modules/conv.h>
#include <torch/utils.h>

#include "lorakeep/error.h"
#include "lorakeep/lora_conv2d.h"
#include "test_util.h"

namespace lorakeep {
namespace {

namespace F = torch::nn::functional;

std::vector<std::string> names_of(torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.key());
  return names;
}

}  // namespace

TEST_CASE("a LoraConv2d without an adapter is torch::nn::Conv2d in names and numbers", "[lora]") {
  const auto options = torch::nn::Conv2dOptions(3, 4, 3).stride(2).padding(1).padding_mode(torch::kReflect);
  torch::manual_seed(7);
  torch::nn::Conv2d plain(options);
  torch::manual_seed(7);
  LoraConv2d lora(options);
  CHECK(torch::equal(plain->weight, lora->weight));
  CHECK(torch::equal(plain->bias, lora->bias));
  CHECK(names_of(*lora) == std::vector<std::string>{"weight", "bias"});
  const torch::Tensor x = torch::randn({2, 3, 7, 6});
  CHECK(torch::equal(plain->forward(x), lora->forward(x)));
}

TEST_CASE("a conv adapter computes PEFT's two convolutions and merges both ways, with lora_bias", "[lora]") {
  torch::manual_seed(3);
  LoraConv2d layer(torch::nn::Conv2dOptions(3, 5, {3, 2}).stride({2, 1}).padding({1, 0}));
  LoraAdapterOptions o;
  o.r = 4;
  o.alpha = 8;
  o.lora_bias = true;
  layer->add_adapter(o);
  CHECK(layer->lora_A->weight.sizes() == torch::IntArrayRef{4, 3, 3, 2});
  CHECK(layer->lora_B->weight.sizes() == torch::IntArrayRef{5, 4, 1, 1});
  CHECK(layer->lora_B->weight.abs().sum().item<double>() == 0);
  CHECK(names_of(*layer) == std::vector<std::string>{"base_layer.weight", "base_layer.bias", "lora_A.weight",
                                                     "lora_B.weight", "lora_B.bias"});
  {
    torch::NoGradGuard no_grad;
    layer->lora_B->weight.normal_();
    layer->lora_B->bias.normal_();
  }
  const torch::Tensor x = torch::randn({2, 3, 8, 5});
  const auto base = F::Conv2dFuncOptions().bias(layer->bias).stride({2, 1}).padding(torch::IntArrayRef{1, 0});
  const auto a = F::Conv2dFuncOptions().stride({2, 1}).padding(torch::IntArrayRef{1, 0});
  const torch::Tensor want = F::conv2d(x, layer->weight, base) +
                             F::conv2d(F::conv2d(x, layer->lora_A->weight, a), layer->lora_B->weight,
                                       F::Conv2dFuncOptions().bias(layer->lora_B->bias)) *
                                 2.0;
  const torch::Tensor out = layer->forward(x);
  CHECK(torch::allclose(out, want, 1e-5, 1e-5));
  const torch::Tensor before = layer->weight.clone(), bias_before = layer->bias.clone();
  layer->merge(/*safe=*/true);
  CHECK(torch::allclose(layer->forward(x), out, 1e-5, 1e-5));  // the merged kernel alone gives the same
  CHECK(torch::allclose(layer->bias, bias_before + 2.0 * layer->lora_B->bias, 1e-6, 1e-6));
  layer->unmerge();
  CHECK(torch::allclose(layer->weight, before, 1e-6, 1e-6));
  CHECK(torch::allclose(layer->bias, bias_before, 1e-6, 1e-6));
}

TEST_CASE("DoRA on a convolution: a magnitude per output channel, PEFT's forward and merge", "[lora]") {
  torch::manual_seed(4);
  LoraConv2d layer(torch::nn::Conv2dOptions(2, 3, 3).padding(1));
  LoraAdapterOptions o;
  o.r = 2;
  o.alpha = 2;
  o.use_dora = true;
  o.init = "false";
  layer->add_adapter(o);
  const torch::Tensor delta =
      layer->lora_B->weight.reshape({3, 2}).matmul(layer->lora_A->weight.reshape({2, -1})).view({3, 2, 3, 3});
  const torch::Tensor adapted = layer->weight + delta;
  const torch::Tensor norms = adapted.reshape({3, -1}).norm(2, {1});
  CHECK(layer->lora_magnitude_vector.sizes() == torch::IntArrayRef{1, 3, 1, 1});  // PEFT's shape
  CHECK(torch::allclose(layer->lora_magnitude_vector.view({-1}), norms, 1e-6, 1e-6));
  {
    torch::NoGradGuard no_grad;
    layer->lora_magnitude_vector.mul_(torch::tensor({0.5, 1.0, 2.0}).view({1, 3, 1, 1}));
  }
  const torch::Tensor x = torch::randn({2, 2, 5, 4});
  // PEFT: k * conv(x, W + delta) + b, k = m / norms per output channel.
  const torch::Tensor k = layer->lora_magnitude_vector.detach() / norms.view({1, 3, 1, 1});
  const torch::Tensor want = k * F::conv2d(x, adapted, F::Conv2dFuncOptions().padding(1)) +
                             layer->bias.view({1, 3, 1, 1});
  const torch::Tensor out = layer->forward(x);
  CHECK(torch::allclose(out, want, 1e-5, 1e-5));
  const torch::Tensor before = layer->weight.clone();
  layer->merge(/*safe=*/true);
  CHECK(torch::allclose(layer->weight, k.view({3, 1, 1, 1}) * adapted, 1e-5, 1e-5));
  CHECK(torch::allclose(layer->forward(x), out, 1e-5, 1e-5));
  layer->unmerge();
  CHECK(torch::allclose(layer->weight, before, 1e-5, 1e-5));
}

TEST_CASE("grouped convolutions train as PEFT's and are not merged; what PEFT cannot do is refused", "[lora]") {
  torch::manual_seed(5);
  LoraConv2d grouped(torch::nn::Conv2dOptions(4, 6, 3).groups(2));
  LoraAdapterOptions o;
  o.r = 3;  // not a multiple of the groups
  CHECK_THROWS_WITH(grouped->add_adapter(o), Catch::Contains("multiple of the convolution's groups"));
  o.r = 2;
  o.use_dora = true;
  CHECK_THROWS_WITH(grouped->add_adapter(o), Catch::Contains("DoRA on a grouped convolution"));
  CHECK(!grouped->has_adapter());
  o.use_dora = false;
  grouped->add_adapter(o);
  CHECK(grouped->lora_B->weight.sizes() == torch::IntArrayRef{6, 1, 1, 1});  // [out, r / groups, 1, 1]
  const torch::Tensor x = torch::randn({1, 4, 5, 5});
  CHECK(grouped->forward(x).sizes() == torch::IntArrayRef{1, 6, 3, 3});
  const torch::Tensor before = grouped->weight.clone();
  CHECK_THROWS_WITH(grouped->merge(), Catch::Contains("grouped convolution cannot be merged"));
  CHECK(!grouped->merged());
  CHECK(torch::equal(grouped->weight, before));
  LoraConv2d dilated(torch::nn::Conv2dOptions(2, 2, 3).dilation(2));
  CHECK_THROWS_WITH(dilated->add_adapter(LoraAdapterOptions{}), Catch::Contains("dilated"));
  LoraConv2d reflected(torch::nn::Conv2dOptions(2, 2, 3).padding(1).padding_mode(torch::kReflect));
  CHECK_THROWS_WITH(reflected->add_adapter(LoraAdapterOptions{}), Catch::Contains("pads other than with zeros"));
  CHECK(!reflected->has_adapter());
}

}  // namespace lorakeep
