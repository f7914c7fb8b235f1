// The BERT example's model (examples/bert/model.h) and data (data.h) without
// Python: a small random BERT written here in Hugging Face's layout (BertModel
// names, config.json), loaded through lorakeep's loader with the prefix
// mapping; the loader's refusals; PEFT's adapter keys. The comparison with
// transformers and PEFT is tests/python/bert_interop.py.
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "lorakeep/lorakeep.h"
#include "bert/data.h"
#include "model.h"
#include "test_util.h"

namespace {

using lorakeep::ErrorCode;
using lorakeep::test::capture_error;
using lorakeep::test::TempDir;
using nlohmann::json;

json small_config() {
  return {{"model_type", "bert"},          {"vocab_size", 50},           {"hidden_size", 24},
          {"num_hidden_layers", 2},        {"num_attention_heads", 3},   {"intermediate_size", 40},
          {"max_position_embeddings", 32}, {"type_vocab_size", 2},       {"hidden_act", "gelu"},
          {"layer_norm_eps", 1e-12},       {"hidden_dropout_prob", 0.1}, {"attention_probs_dropout_prob", 0.1}};
}

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  REQUIRE(f.good());
}

// A Hugging Face BertModel directory: config.json and model.safetensors with
// BertModel's names (no "bert." prefix), random weights; position_ids only
// if asked (transformers >= 4.31 no longer saves it).
lorakeep::NamedTensors write_bert_dir(const std::string& dir, const json& config, bool position_ids,
                                      const std::string& skip = "") {
  write(dir + "/config.json", config.dump(2));
  bert::BertModel m(bert::read_config(dir + "/config.json"));
  torch::manual_seed(7);
  lorakeep::NamedTensors tensors;
  for (const auto& p : m->named_parameters()) {
    if (p.key() == skip) continue;
    tensors.emplace_back(p.key(), torch::randn_like(p.value()));
  }
  if (position_ids) tensors.emplace_back("embeddings.position_ids", m->embeddings->position_ids.clone());
  lorakeep::save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  return tensors;
}

torch::Tensor live(bert::BertForSequenceClassification& model, const std::string& name) {
  for (const auto& p : model->named_parameters()) {
    if (p.key() == name) return p.value();
  }
  for (const auto& b : model->named_buffers()) {
    if (b.key() == name) return b.value();
  }
  FAIL("no tensor " << name);
  return {};
}

}  // namespace

TEST_CASE("bert model: a BertModel file of any size loads through the prefix mapping, every tensor bitwise") {
  TempDir dir;
  for (bool position_ids : {true, false}) {
    const lorakeep::NamedTensors file = write_bert_dir(dir.path(), small_config(), position_ids);
    bert::BertForSequenceClassification model(bert::read_config(dir / "config.json"), 3);
    const torch::Tensor head_before = model->classifier->weight.clone();
    const bert::PretrainedLoad loaded = bert::load_pretrained(model, dir.path());
    CHECK_FALSE(loaded.bert_prefix_in_file);
    CHECK_FALSE(loaded.classifier_loaded);
    CHECK(loaded.report.tensors == file.size());
    for (const auto& [name, t] : file) CHECK(torch::equal(live(model, "bert." + name), t));
    CHECK(torch::equal(model->classifier->weight, head_before));  // no head in a BertModel file
    CHECK(model->bert->encoder->layer->size() == 2);
    model->eval();
    const torch::Tensor ids = torch::tensor({{2, 7, 9, 3, 0}, {2, 11, 3, 0, 0}});
    const torch::Tensor mask = ids.ne(0).to(torch::kLong);
    const torch::Tensor logits = model(ids, mask, torch::zeros_like(ids));
    CHECK(logits.sizes() == torch::IntArrayRef({2, 3}));
    // Padding changes nothing for the texts' own tokens.
    const torch::Tensor alone = model(ids.narrow(1, 0, 4).narrow(0, 0, 1), mask.narrow(1, 0, 4).narrow(0, 0, 1),
                                      torch::zeros({1, 4}, torch::kLong));
    CHECK(torch::allclose(alone, logits.narrow(0, 0, 1), 1e-5, 1e-6));
  }
}

TEST_CASE("bert model: PEFT's keys for query and value, and a merged file (bert.*, classifier.*) loads whole") {
  TempDir dir;
  write_bert_dir(dir.path(), small_config(), true);
  bert::BertForSequenceClassification model(bert::read_config(dir / "config.json"), 4);
  bert::load_pretrained(model, dir.path());
  lorakeep::LoraConfig lora;
  lora.target_modules = {"query", "value"};
  lora.modules_to_save = {"classifier"};
  lorakeep::inject_lora(*model, lora);
  std::vector<std::string> keys;
  for (const auto& [name, t] : lorakeep::adapter_tensors(*model, lora)) keys.push_back(name);
  CHECK(keys.size() == 2 * 2 * 2 + 2);
  CHECK(
      std::count(keys.begin(), keys.end(), "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"));
  CHECK(
      std::count(keys.begin(), keys.end(), "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"));
  CHECK(std::count(keys.begin(), keys.end(), "base_model.model.classifier.weight"));

  // A file of the whole model (what merge-lora --base-prefix bert. writes): head included.
  TempDir merged;
  write(merged / "config.json", small_config().dump());
  bert::BertForSequenceClassification plain(bert::read_config(merged / "config.json"), 4);
  lorakeep::NamedTensors whole;
  for (const auto& p : plain->named_parameters()) whole.emplace_back(p.key(), torch::randn_like(p.value()));
  lorakeep::save_safetensors(merged / "model.safetensors", whole, {{"format", "pt"}});
  bert::BertForSequenceClassification other(bert::read_config(merged / "config.json"), 4);
  const bert::PretrainedLoad loaded = bert::load_pretrained(other, merged.path());
  CHECK(loaded.bert_prefix_in_file);
  CHECK(loaded.classifier_loaded);
  for (const auto& [name, t] : whole) CHECK(torch::equal(live(other, name), t));
}

TEST_CASE("bert model: a file that does not fit is refused by name, the model unchanged") {
  TempDir dir;
  write_bert_dir(dir.path(), small_config(), true, "encoder.layer.1.attention.self.key.weight");
  bert::BertForSequenceClassification model(bert::read_config(dir / "config.json"), 2);
  const torch::Tensor before = model->bert->embeddings->word_embeddings->weight.clone();
  const auto e = capture_error([&] { bert::load_pretrained(model, dir.path()); });
  CHECK(e.code() == ErrorCode::kIncompatible);
  CHECK_THAT(e.what(), Catch::Contains("bert.encoder.layer.1.attention.self.key.weight"));
  CHECK(torch::equal(model->bert->embeddings->word_embeddings->weight, before));

  // Another hidden size than the config says.
  json bigger = small_config();
  bigger["hidden_size"] = 30;
  write_bert_dir(dir.path(), bigger, true);
  write(dir / "config.json", small_config().dump());
  const auto s = capture_error([&] { bert::load_pretrained(model, dir.path()); });
  CHECK(s.code() == ErrorCode::kIncompatible);
  CHECK_THAT(s.what(), Catch::Contains("bert.embeddings.word_embeddings.weight"));
  CHECK(torch::equal(model->bert->embeddings->word_embeddings->weight, before));
}

TEST_CASE("bert model: config.json is checked, naming the file and the key") {
  TempDir dir;
  auto refused = [&](json config) {
    write(dir / "config.json", config.dump());
    return capture_error([&] { bert::read_config(dir / "config.json"); });
  };
  json c = small_config();
  c["model_type"] = "roberta";
  auto e = refused(c);
  CHECK(e.code() == ErrorCode::kNotSupported);
  CHECK_THAT(e.what(), Catch::Contains("model_type") && Catch::Contains(dir / "config.json"));
  c = small_config();
  c.erase("hidden_size");
  e = refused(c);
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(), Catch::Contains("hidden_size") && Catch::Contains("missing"));
  c = small_config();
  c["num_attention_heads"] = 5;
  e = refused(c);
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(e.what(), Catch::Contains("not a multiple of num_attention_heads"));
  c = small_config();
  c["position_embedding_type"] = "relative_key";
  CHECK(refused(c).code() == ErrorCode::kNotSupported);
  c = small_config();
  c["hidden_act"] = "swish";
  CHECK(refused(c).code() == ErrorCode::kNotSupported);
  CHECK(capture_error([&] { bert::read_config(dir / "nothing.json"); }).code() == ErrorCode::kNotFound);
}

TEST_CASE("bert data: the classes are balanced, the split is fixed by the seed and disjoint") {
  TempDir dir;
  std::vector<std::string> files;
  for (int c = 0; c < 3; ++c) {
    std::string text;
    for (int i = 0; i < 10 + 5 * c; ++i) text += "class " + std::to_string(c) + " text " + std::to_string(i) + "\n%\n";
    files.push_back(dir / ("c" + std::to_string(c)));
    write(files.back(), "\n%\n" + text);  // an empty fortune first: left out
  }
  CHECK(bert::read_fortunes(files[0]).size() == 10);
  const bert::Dataset a = bert::make_dataset(files, 3, 0, 42);
  CHECK(a.class_names == std::vector<std::string>{"c0", "c1", "c2"});
  CHECK(a.eval.size() == 9);
  CHECK(a.train.size() == 21);  // 10 - 3 per class: the smallest class decides
  std::vector<int> per_class(3);
  for (const auto& e : a.train) ++per_class[e.label];
  CHECK(per_class == std::vector<int>{7, 7, 7});
  std::set<std::string> seen;
  for (const auto& e : a.train) seen.insert(e.text);
  for (const auto& e : a.eval) CHECK(seen.insert(e.text).second);  // disjoint
  const bert::Dataset b = bert::make_dataset(files, 3, 0, 42);
  CHECK(b.eval.front().text == a.eval.front().text);
  CHECK(b.train.front().text == a.train.front().text);
  const bert::Dataset other = bert::make_dataset(files, 3, 0, 43);
  bool differs = false;
  for (std::size_t i = 0; i < a.train.size(); ++i) differs |= a.train[i].text != other.train[i].text;
  CHECK(differs);
  const auto e = capture_error([&] { bert::make_dataset(files, 3, 8, 42); });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(e.what(), Catch::Contains("train_per_class"));
  CHECK(capture_error([&] { bert::make_dataset({dir / "none"}, 1, 0, 1); }).code() == ErrorCode::kNotFound);
}
