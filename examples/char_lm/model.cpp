#include "model.h"

#include <fstream>
#include <sstream>

#include "lorakeep/error.h"

namespace char_lm {

AttentionImpl::AttentionImpl(int n_embd, int n_head_, double dropout) : n_head(n_head_) {
  q_proj = register_module("q_proj", lorakeep::LoraLinear(n_embd, n_embd));
  k_proj = register_module("k_proj", lorakeep::LoraLinear(n_embd, n_embd));
  v_proj = register_module("v_proj", lorakeep::LoraLinear(n_embd, n_embd));
  o_proj = register_module("o_proj", lorakeep::LoraLinear(n_embd, n_embd));
  drop = register_module("drop", torch::nn::Dropout(dropout));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x) {
  const auto B = x.size(0), T = x.size(1), C = x.size(2);
  const auto D = C / n_head;
  auto split = [&](const torch::Tensor& t) { return t.view({B, T, n_head, D}).transpose(1, 2); };
  const torch::Tensor q = split(q_proj(x)), k = split(k_proj(x)), v = split(v_proj(x));
  torch::Tensor att = q.matmul(k.transpose(-2, -1)) / std::sqrt(static_cast<double>(D));
  const torch::Tensor causal = torch::ones({T, T}, torch::kBool).triu(1);
  att = torch::softmax(att.masked_fill(causal, -std::numeric_limits<float>::infinity()), -1);
  const torch::Tensor y = drop(att).matmul(v).transpose(1, 2).contiguous().view({B, T, C});
  return drop(o_proj(y));
}

BlockImpl::BlockImpl(int n_embd, int n_head, double dropout) {
  ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  attn = register_module("attn", Attention(n_embd, n_head, dropout));
  ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  fc = register_module("fc", torch::nn::Linear(n_embd, 4 * n_embd));
  proj = register_module("proj", torch::nn::Linear(4 * n_embd, n_embd));
  drop = register_module("drop", torch::nn::Dropout(dropout));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + attn(ln1(x));
  return h + drop(proj(torch::gelu(fc(ln2(h)))));
}

CharLMImpl::CharLMImpl(const ModelSettings& s) : settings(s) {
  tok_emb = register_module("tok_emb", torch::nn::Embedding(kVocab, s.n_embd));
  pos_emb = register_module("pos_emb", torch::nn::Embedding(s.block_size, s.n_embd));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < s.n_layer; ++i) blocks->push_back(Block(s.n_embd, s.n_head, s.dropout));
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({s.n_embd})));
  lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(s.n_embd, kVocab).bias(false)));
}

torch::Tensor CharLMImpl::forward(const torch::Tensor& idx) {
  const auto T = idx.size(1);
  torch::Tensor x = tok_emb(idx) + pos_emb(torch::arange(T, torch::kLong));
  for (const auto& block : *blocks) x = block->as<BlockImpl>()->forward(x);
  return lm_head(ln_f(x));
}

std::string CharLMImpl::generate(const std::string& prompt, int count, double temperature) {
  torch::NoGradGuard no_grad;
  std::vector<std::int64_t> ids(prompt.begin(), prompt.end());
  for (auto& id : ids) id &= 0xFF;
  std::string out;
  for (int i = 0; i < count; ++i) {
    const std::size_t start = ids.size() > static_cast<std::size_t>(settings.block_size)
                                  ? ids.size() - static_cast<std::size_t>(settings.block_size)
                                  : 0;
    const torch::Tensor ctx = torch::tensor(std::vector<std::int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(start),
                                                                      ids.end()))
                                  .unsqueeze(0);
    const torch::Tensor logits = forward(ctx).select(1, ctx.size(1) - 1).squeeze(0) / temperature;
    const std::int64_t next = torch::multinomial(torch::softmax(logits, -1), 1).item<std::int64_t>();
    ids.push_back(next);
    out.push_back(static_cast<char>(next));
  }
  return out;
}

Corpus load_corpus(const std::vector<std::string>& paths, double validation_fraction) {
  std::string train, val;
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      throw lorakeep::Error(lorakeep::ErrorCode::kNotFound,
                            "cannot read text '" + path +
                                "' (hint: scripts/install-deps.sh installs the 'fortunes' "
                                "package that provides it)");
    }
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const std::size_t split = text.size() -
                              static_cast<std::size_t>(static_cast<double>(text.size()) * validation_fraction);
    train += text.substr(0, split);
    val += text.substr(split);
  }
  auto to_tensor = [](const std::string& s) {
    return torch::from_blob(const_cast<char*>(s.data()), {static_cast<std::int64_t>(s.size())}, torch::kUInt8)
        .to(torch::kLong);
  };
  Corpus c;
  c.train = to_tensor(train);
  c.val = to_tensor(val);
  c.bytes = static_cast<std::int64_t>(train.size() + val.size());
  return c;
}

std::pair<torch::Tensor, torch::Tensor> random_batch(const torch::Tensor& data, int batch, int block) {
  const torch::Tensor starts = torch::randint(data.size(0) - block - 1, {batch}, torch::kLong);
  const torch::Tensor offsets = torch::arange(block, torch::kLong);
  const torch::Tensor idx = starts.unsqueeze(1) + offsets.unsqueeze(0);
  return {data.index_select(0, idx.view({-1})).view({batch, block}),
          data.index_select(0, (idx + 1).view({-1})).view({batch, block})};
}

double evaluate(CharLM& model, const torch::Tensor& data, int batches, int batch, int block) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const std::int64_t windows = static_cast<std::int64_t>(batches) * batch;
  const std::int64_t stride = std::max<std::int64_t>(1, (data.size(0) - block - 1) / windows);
  const torch::Tensor starts = torch::arange(windows, torch::kLong) * stride;
  const torch::Tensor offsets = torch::arange(block, torch::kLong);
  double total = 0;
  for (int b = 0; b < batches; ++b) {
    const torch::Tensor s = starts.narrow(0, static_cast<std::int64_t>(b) * batch, batch);
    const torch::Tensor idx = s.unsqueeze(1) + offsets.unsqueeze(0);
    const torch::Tensor x = data.index_select(0, idx.view({-1})).view({batch, block});
    const torch::Tensor y = data.index_select(0, (idx + 1).view({-1})).view({batch, block});
    total += torch::cross_entropy_loss(model->forward(x).view({-1, kVocab}), y.view({-1})).item<double>();
  }
  if (was_training) model->train();
  return total / batches;
}

}  // namespace char_lm
