// Injection: PEFT's rules for which modules a config adapts, and what
// inject_lora says of targets it cannot adapt.
#include <algorithm>
#include <string>
#include <vector>

#include "lorakeep/lora.h"
#include "lora/injection.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;

using test::Mlp;
using test::seeded_mlp;

// Tokens in, a score out: an embedding, two blocks of two linears and a
// classifier, one of each kind lorakeep can arm, and a plain Embedding.
struct BlockImpl : torch::nn::Module {
  LoraLinear up{nullptr}, down{nullptr};
  BlockImpl() {
    up = register_module("up", LoraLinear(8, 16));
    down = register_module("down", LoraLinear(16, 8));
  }
};
TORCH_MODULE(Block);

struct TaggerImpl : torch::nn::Module {
  LoraEmbedding tokens{nullptr};
  torch::nn::Embedding positions{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  LoraLinear classifier{nullptr};
  TaggerImpl() {
    tokens = register_module("tokens", LoraEmbedding(30, 8));
    positions = register_module("positions", torch::nn::Embedding(5, 8));
    blocks = register_module("blocks", torch::nn::ModuleList(Block(), Block()));
    classifier = register_module("classifier", LoraLinear(8, 2));
  }
};
TORCH_MODULE(Tagger);

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

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

TEST_CASE("target_modules 'all-linear' resolves as PEFT's shorthand and is saved resolved", "[lora]") {
  Tagger model;
  LoraConfig c;
  c.target_modules_regex = "ALL-Linear";  // any case, as PEFT
  const std::vector<std::string> every = {"blocks.0.down", "blocks.0.up", "blocks.1.down", "blocks.1.up", "classifier"};
  CHECK(sorted(resolve_target_modules(*model, c).target_modules) == every);
  CHECK(resolve_target_modules(*model, c).target_modules_regex.empty());
  c.task_type = "SEQ_CLS";  // PEFT leaves the classification head out
  const std::vector<std::string> blocks(every.begin(), every.end() - 1);
  CHECK(sorted(resolve_target_modules(*model, c).target_modules) == blocks);
  c.task_type.reset();
  c.modules_to_save = {"classifier"};  // trained whole, never adapted
  c.exclude_modules = {"blocks.1.up"};
  CHECK(sorted(resolve_target_modules(*model, c).target_modules) ==
        std::vector<std::string>{"blocks.0.down", "blocks.0.up", "blocks.1.down"});
  c.exclude_modules.clear();
  inject_lora(*model, c);
  CHECK(detail::armed_layers(*model).size() == 4);
  // Armed, the layers' own lora_A / lora_B are not linear layers of the model's.
  CHECK(sorted(resolve_target_modules(*model, c).target_modules) == blocks);
  test::TempDir dir;
  save_adapter(dir / "adapter", *model, c);
  const LoraConfig saved = read_adapter_config(dir / "adapter");
  CHECK(sorted(saved.target_modules) == blocks);  // the list, as PEFT saves it
  CHECK(saved.target_modules_regex.empty());
  LoraConfig other = c;
  other.target_modules_regex = "regular.*";  // not the shorthand: unchanged
  CHECK(resolve_target_modules(*model, other).target_modules_regex == "regular.*");
}

TEST_CASE("inject_lora arms embeddings as linears, and explains a plain Embedding", "[lora]") {
  Tagger model;
  LoraConfig c;
  c.target_modules = {"tokens", "up"};
  c.use_dora = true;
  const std::vector<std::string> trainable = inject_lora(*model, c);
  CHECK(sorted(trainable) ==
        sorted({"tokens.lora_embedding_A", "tokens.lora_embedding_B", "tokens.lora_magnitude_vector",
                "blocks.0.up.lora_A.weight", "blocks.0.up.lora_B.weight", "blocks.0.up.lora_magnitude_vector",
                "blocks.1.up.lora_A.weight", "blocks.1.up.lora_B.weight", "blocks.1.up.lora_magnitude_vector"}));
  CHECK(model->tokens->use_dora());
  Tagger plain;
  c.target_modules = {"positions"};
  const Error e = test::capture_error([&] { inject_lora(*plain, c); });
  CHECK_THAT(e.what(), Contains("'positions' is a torch::nn::Embedding") && Contains("lorakeep::LoraEmbedding"));
  c.target_modules = {"tokens", "up"};
  c.use_dora = false;
  c.lora_bias = true;  // linears only: refused on the embedding, nothing armed
  const Error bias = test::capture_error([&] { inject_lora(*plain, c); });
  CHECK_THAT(bias.what(), Contains("'tokens' (embedding): lora_bias"));
  CHECK_FALSE(plain->blocks[0]->as<Block>()->up->has_adapter());
}

}  // namespace lorakeep
