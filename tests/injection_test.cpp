// Injection: PEFT's rules for which modules a config adapts, and what
// inject_lora says of targets it cannot adapt.
#include "lorakeep/lora.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

using test::Mlp;
using test::seeded_mlp;

}  // namespace

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

}  // namespace lorakeep
