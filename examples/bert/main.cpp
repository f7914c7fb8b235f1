// The main job: all-MiniLM-L6-v2 (or any Hugging Face BERT directory)
// LoRA-fine-tuned in LibTorch to tell Debian's fortunes files apart, with
// lorakeep's checkpoints, rotation, early stopping on eval_accuracy and
// load-best-at-end; then the PEFT adapter exported.
//
//   bert_lora train --config configs/bert_fortunes.yaml [--model-dir DIR] [--output-dir DIR] [--max-steps N]
//   bert_lora predict --model-dir DIR [--weights W] [--adapter DIR] --num-labels K --texts T.jsonl --out L.safetensors
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include <boost/filesystem.hpp>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "lorakeep/lorakeep.h"
#include "data.h"
#include "model.h"
#include "report.h"
#include "settings.h"
#include "tokenizer.h"

namespace {

namespace fs = boost::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string fixed4(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

std::string mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1 << 20));
  return buf;
}

struct Inputs {
  torch::Tensor ids, mask, types;
};

Inputs to_tensors(const bert::Batch& b) {
  const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(b.batch_size),
                                           static_cast<std::int64_t>(b.seq_len)};
  return {torch::tensor(b.input_ids).view(shape), torch::tensor(b.attention_mask).view(shape),
          torch::tensor(b.token_type_ids).view(shape)};
}

// The texts of a set, tokenized once in fixed batches.
std::vector<Inputs> tokenize_batches(const bert::Tokenizer& tok, const std::vector<std::string>& texts, int batch) {
  std::vector<Inputs> out;
  for (std::size_t i = 0; i < texts.size(); i += batch) {
    const std::vector<std::string> part(texts.begin() + i, texts.begin() + std::min(texts.size(), i + batch));
    out.push_back(to_tensors(tok.encode_batch(part)));
  }
  return out;
}

// [N, num_labels] logits in eval mode, without autograd.
torch::Tensor logits_of(bert::BertForSequenceClassification& model, const std::vector<Inputs>& batches) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<torch::Tensor> parts;
  for (const Inputs& b : batches) parts.push_back(model(b.ids, b.mask, b.types));
  return torch::cat(parts);
}

// What the frozen base model gives for a set: the pooled output the
// classifier reads, and the sentence embedding all-MiniLM-L6-v2 is trained
// for (the mean of the last hidden states over the tokens, L2-normalised).
struct Features {
  torch::Tensor pooled, mean;
};

Features features_of(bert::BertForSequenceClassification& model, const std::vector<Inputs>& batches) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<torch::Tensor> pooled, mean;
  for (const Inputs& b : batches) {
    const bert::Encoded e = model->bert(b.ids, b.mask, b.types);
    const torch::Tensor m = b.mask.unsqueeze(-1).to(e.last_hidden_state.scalar_type());
    pooled.push_back(e.pooled);
    mean.push_back(torch::nn::functional::normalize((e.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1),
                                                    torch::nn::functional::NormalizeFuncOptions().dim(1)));
  }
  return {torch::cat(pooled), torch::cat(mean)};
}

// The classifier trained alone on the frozen base's pooled outputs (full
// batch, a fixed number of AdamW steps): the base model's own accuracy as a
// classifier, and the head the LoRA run starts from.
void train_head(torch::nn::Linear& head, const torch::Tensor& pooled, const torch::Tensor& labels, int steps,
                double lr) {
  torch::optim::AdamW opt(head->parameters(), torch::optim::AdamWOptions(lr).weight_decay(0));
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    torch::cross_entropy_loss(head(pooled), labels).backward();
    opt.step();
  }
}

double accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
}

torch::Tensor labels_of(const std::vector<bert::Example>& set) {
  std::vector<std::int64_t> v;
  for (const auto& e : set) v.push_back(e.label);
  return torch::tensor(v);
}

std::vector<std::string> texts_of(const std::vector<bert::Example>& set) {
  std::vector<std::string> v;
  for (const auto& e : set) v.push_back(e.text);
  return v;
}

bert::Tokenizer load_tokenizer(const std::string& model_dir, int max_length) {
  bert::Tokenizer tok = bert::Tokenizer::from_file(model_dir + "/tokenizer.json");
  tok.set_max_length(static_cast<std::size_t>(max_length));
  tok.set_padding(bert::Padding{});  // to the longest text of each batch
  return tok;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  if (!f.flush()) throw lorakeep::Error(lorakeep::ErrorCode::kIOError, "cannot write '" + path + "'");
}

// One line per evaluation.
class Progress : public lorakeep::Callback {
 public:
  Progress(std::string key, bool greater) : key_(std::move(key)), greater_(greater), start_(Clock::now()) {}
  void on_evaluate(lorakeep::TrainingState& s, const lorakeep::Metrics& m) override {
    if (auto it = m.find(key_); it != m.end() && (!best_ || (greater_ ? it->second > *best_ : it->second < *best_))) {
      best_ = it->second;
      best_step_ = s.global_step;
    }
    double loss = NAN;
    for (auto it = s.log_history.rbegin(); it != s.log_history.rend(); ++it) {
      if (auto l = it->find("loss"); l != it->end()) {
        loss = l->second;
        break;
      }
    }
    std::printf("  step %3lld/%lld  train loss %.4f  eval_loss %.4f  %s %.4f  best %.4f @%lld  [%.0f s]\n",
                static_cast<long long>(s.global_step), static_cast<long long>(s.max_steps), loss,
                m.count("eval_loss") ? m.at("eval_loss") : NAN, key_.c_str(), m.count(key_) ? m.at(key_) : NAN,
                best_.value_or(NAN), static_cast<long long>(best_step_), seconds_since(start_));
    std::fflush(stdout);
  }

 private:
  std::string key_;
  bool greater_;
  std::optional<double> best_;  // the best evaluation so far
  std::int64_t best_step_ = 0;
  Clock::time_point start_;
};

class SaveTracker : public lorakeep::Callback {
 public:
  void on_save(lorakeep::TrainingState&, const lorakeep::CheckpointInfo& c) override { saved.push_back(c.step); }
  std::vector<std::int64_t> saved;
};

int train(const std::string& config_path, const std::string& model_dir_override, const std::string& output_dir,
          int max_steps_override) {
  const auto t_start = Clock::now();
  bert::Config config = bert::load_config(config_path);
  lorakeep::RunConfig& run = config.run;
  bert::Settings& settings = config.settings;
  if (!model_dir_override.empty()) settings.model.dir = model_dir_override;
  if (!output_dir.empty()) run.checkpoint.output_dir = output_dir;
  if (max_steps_override > 0) settings.training.max_steps = max_steps_override;
  const auto& t = settings.training;
  const std::string out = run.checkpoint.output_dir;
  const std::string& model_dir = settings.model.dir;
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  torch::manual_seed(t.seed);
  fs::create_directories(out);  // never cleared: a run resumes from it (checkpoint.resume_from_checkpoint)

  // The data.
  const bert::Dataset data = bert::make_dataset(settings.data.classes, settings.data.eval_per_class,
                                                settings.data.train_per_class, settings.data.seed);
  const auto k = static_cast<std::int64_t>(data.class_names.size());
  std::printf("== data: %lld classes from Debian's fortunes, %zu train / %zu eval texts (balanced by sampling)\n",
              static_cast<long long>(k), data.train.size(), data.eval.size());
  for (std::size_t c = 0; c < data.class_names.size(); ++c) {
    std::printf("   %d %-10s %4zu fortunes\n", static_cast<int>(c), data.class_names[c].c_str(), data.class_sizes[c]);
  }
  const bert::Tokenizer tok = load_tokenizer(model_dir, settings.model.max_length);
  const std::vector<Inputs> eval_batches = tokenize_batches(tok, texts_of(data.eval), t.eval_batch_size);
  const torch::Tensor eval_labels = labels_of(data.eval);

  // The model, loaded CPU-first through lorakeep.
  const bert::BertConfig bc = bert::read_config(model_dir + "/config.json");
  bert::BertForSequenceClassification model(bc, k);
  const bert::PretrainedLoad loaded = bert::load_pretrained(model, model_dir, run.checkpoint.chunk_bytes);
  std::printf("== model: %s (BERT, %lld layers, hidden %lld, %lld heads, vocabulary %lld)\n   %s\n", model_dir.c_str(),
              static_cast<long long>(bc.num_hidden_layers), static_cast<long long>(bc.hidden_size),
              static_cast<long long>(bc.num_attention_heads), static_cast<long long>(bc.vocab_size),
              loaded.report.summary().c_str());

  // Three accuracies on the same eval set: the majority class of the train
  // set, the base model (nearest class mean of its sentence embeddings), the
  // fine-tuned model.
  const torch::Tensor train_labels = labels_of(data.train);
  const std::int64_t majority = torch::bincount(train_labels, {}, k).argmax().item<std::int64_t>();
  const double majority_acc = eval_labels.eq(majority).to(torch::kDouble).mean().item<double>();
  const auto t_base = Clock::now();
  const Features train_f = features_of(model, tokenize_batches(tok, texts_of(data.train), t.eval_batch_size));
  const Features eval_f = features_of(model, eval_batches);
  train_head(model->classifier, train_f.pooled, train_labels, t.head_steps, t.head_learning_rate);
  double base_acc = 0;
  {
    torch::NoGradGuard no_grad;
    base_acc = accuracy(model->classifier(eval_f.pooled), eval_labels);
  }
  torch::Tensor means = torch::zeros({k, train_f.mean.size(1)});
  means.index_add_(0, train_labels, train_f.mean);
  const double ncm_acc = accuracy(torch::matmul(eval_f.mean, means.t()), eval_labels);
  std::printf("== accuracy on the %zu eval texts before fine-tuning (%.0f s)\n"
              "   majority class (%s): %.4f\n"
              "   base model, its classifier trained alone on the frozen pooled output: %.4f\n"
              "   (for reference: nearest class mean of its mean-pooled sentence embeddings: %.4f)\n",
              data.eval.size(), seconds_since(t_base), data.class_names[majority].c_str(), majority_acc, base_acc,
              ncm_acc);

  // LoRA on query and value, the classifier trained whole.
  const std::vector<std::string> trainable_names = lorakeep::inject_lora(*model, run.lora);
  std::vector<torch::Tensor> trainable;
  std::int64_t n_trainable = 0, n_all = 0;
  for (const auto& p : model->parameters()) {
    n_all += p.numel();
    if (p.requires_grad()) {
      trainable.push_back(p);
      n_trainable += p.numel();
    }
  }
  std::printf("== LoRA r=%d alpha=%g on %zu tensors + modules_to_save: %lld trainable of %lld parameters; "
              "%d steps of %d texts\n",
              run.lora.r, run.lora.lora_alpha, trainable_names.size(), static_cast<long long>(n_trainable),
              static_cast<long long>(n_all), t.max_steps, t.batch_size);
  torch::optim::AdamW opt(trainable, torch::optim::AdamWOptions(t.learning_rate).weight_decay(t.weight_decay));
  lorakeep::CheckpointManager ckpt(run.checkpoint);
  lorakeep::CallbackList callbacks;
  callbacks.add(std::make_shared<lorakeep::CheckpointCallback>(ckpt, *model, run.lora, run.callbacks, &opt));
  if (t.early_stopping_patience > 0) {
    callbacks.add(
        std::make_shared<lorakeep::EarlyStopping>(ckpt, t.early_stopping_patience, t.early_stopping_threshold));
  }
  callbacks.add(std::make_shared<lorakeep::MetricsLogger>(out + "/metrics.jsonl"));
  auto tracker = std::make_shared<SaveTracker>();
  callbacks.add(tracker);
  callbacks.add(std::make_shared<Progress>(ckpt.metric_key(), ckpt.greater_is_better()));
  auto load_best = std::make_shared<lorakeep::LoadBestAtEnd>(ckpt, *model, run.callbacks);
  callbacks.add(load_best);

  lorakeep::TrainingState state;
  state.max_steps = t.max_steps;
  state.train_batch_size = t.batch_size;
  const double per_epoch = static_cast<double>(data.train.size());
  state.num_train_epochs = std::ceil(t.max_steps * t.batch_size / per_epoch);
  auto evaluate = [&] {
    const torch::Tensor logits = logits_of(model, eval_batches);
    return lorakeep::Metrics{{"eval_accuracy", accuracy(logits, eval_labels)},
                             {"eval_loss", torch::cross_entropy_loss(logits, eval_labels).item<double>()}};
  };
  if (const auto from = ckpt.resume(*model, state, &opt)) {
    std::printf("   resumed at step %lld\n", static_cast<long long>(from->step));
  }
  // Each epoch's order is the next permutation drawn from one generator
  // seeded with `seed`; a resumed run finds its place from global_step alone
  // (batches run on across epochs, as the data position of Trainer's sampler
  // does) by drawing again the permutations of the epochs before its own.
  const std::size_t n_train = data.train.size();
  const std::uint64_t position = static_cast<std::uint64_t>(state.global_step) * t.batch_size;
  std::size_t next = position % n_train;
  std::mt19937_64 gen(t.seed);
  std::vector<std::size_t> order = bert::permutation(n_train, gen);
  for (std::uint64_t e = 0; e < position / n_train; ++e) order = bert::permutation(n_train, gen);
  const auto t_train = Clock::now();
  callbacks.on_train_begin(state);
  while (state.global_step < state.max_steps) {
    std::vector<std::string> texts;
    std::vector<std::int64_t> labels;
    while (static_cast<int>(texts.size()) < t.batch_size) {
      if (next == n_train) {  // a new epoch, freshly shuffled
        order = bert::permutation(n_train, gen);
        next = 0;
      }
      texts.push_back(data.train[order[next]].text);
      labels.push_back(data.train[order[next]].label);
      ++next;
    }
    const Inputs in = to_tensors(tok.encode_batch(texts));
    model->train();
    opt.zero_grad();
    const torch::Tensor loss = torch::cross_entropy_loss(model(in.ids, in.mask, in.types), torch::tensor(labels));
    loss.backward();
    const double grad_norm = t.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(trainable, t.max_grad_norm) : 0.0;
    opt.step();
    ++state.global_step;
    state.epoch = state.global_step * t.batch_size / per_epoch;
    if (run.callbacks.logging_steps > 0 && state.global_step % run.callbacks.logging_steps == 0) {
      state.log({{"loss", loss.item<double>()}, {"learning_rate", t.learning_rate}, {"grad_norm", grad_norm}});
    }
    if (!callbacks.end_step(state, evaluate)) {
      std::printf("   early stopping after step %lld\n", static_cast<long long>(state.global_step));
      break;
    }
  }
  callbacks.on_train_end(state);
  const double train_seconds = seconds_since(t_train);

  // What the user sees at the end.
  const auto best = load_best->loaded();
  const auto& report = load_best->report();
  if (!best || !report) throw lorakeep::Error(lorakeep::ErrorCode::kNotFound, "no best checkpoint was reloaded");
  const torch::Tensor live_logits = logits_of(model, eval_batches);
  const double live = accuracy(live_logits, eval_labels);
  const double recorded = *best->metric;
  const std::size_t n_evals = std::count_if(state.log_history.begin(), state.log_history.end(),
                                            [&](const lorakeep::Metrics& m) { return m.count(ckpt.metric_key()); });
  std::printf("== fine-tuning took %.0f s, %lld steps\n", train_seconds, static_cast<long long>(state.global_step));
  std::printf("best checkpoint: %s, %s %.4f: the highest of %zu evaluations (greater is better for accuracy)\n",
              best->path.c_str(), ckpt.metric_key().c_str(), recorded, n_evals);
  std::printf("reloaded at the end: %s read in %.1f ms; extra bytes on the parameters' allocator %lld "
              "(a full temporary copy: %s); extra process RSS %s\n",
              mib(static_cast<double>(report->bytes)).c_str(), report->seconds * 1000,
              static_cast<long long>(report->peak_device_bytes),
              mib(static_cast<double>(report->naive_device_bytes)).c_str(),
              mib(static_cast<double>(std::max<std::int64_t>(0, report->peak_rss_bytes))).c_str());
  const bool same = std::fabs(live - recorded) <= 1e-9;
  std::printf("live model after the reload: %s %.4f, recorded %.4f: %s\n", ckpt.metric_key().c_str(), live, recorded,
              same ? "equal" : "DIFFERENT");
  std::printf("== eval accuracy: majority class %.4f < base model %.4f < fine-tuned %.4f%s\n", majority_acc, base_acc,
              live, (majority_acc < base_acc && base_acc < live) ? "" : "  (NOT in this order)");

  examples::ReportData page;
  page.title = "bert_lora: LoRA fine-tuning of " + fs::path(model_dir).filename().string() + " with lorakeep";
  page.config_path = config_path;
  page.log_history = state.log_history;
  page.saved_steps = tracker->saved;
  for (const auto& c : ckpt.checkpoints()) page.kept_steps.insert(c.step);
  page.best_step = best->step;
  page.metric = ckpt.metric_key();
  page.greater_is_better = ckpt.greater_is_better();
  page.references = {{"majority class accuracy", majority_acc},
                     {"base model accuracy (head trained alone)", base_acc},
                     {"fine-tuned accuracy after the reload", live}};
  page.summary = "Eval accuracy on " + std::to_string(data.eval.size()) + " texts of " + std::to_string(k) +
                 " balanced classes: the majority class " + fixed4(majority_acc) +
                 ", the base model with its classifier trained alone on the frozen pooled output " + fixed4(base_acc) +
                 " (nearest class mean of its sentence embeddings: " + fixed4(ncm_acc) + "), fine-tuned with LoRA " +
                 fixed4(live) + ".";
  page.reload_bytes = report->bytes;
  page.reload_seconds = report->seconds;
  page.reload_peak_device_bytes = report->peak_device_bytes;
  page.reload_peak_rss_bytes = report->peak_rss_bytes;
  page.naive_device_bytes = report->naive_device_bytes;
  examples::write_report(out + "/report.html", page);

  const std::string adapter_dir = out + "/final_adapter";
  lorakeep::save_adapter(adapter_dir, *model, run.lora);
  // The eval set and the live model's logits on it, for the PEFT comparison.
  std::string lines;
  for (const auto& e : data.eval) lines += json{{"text", e.text}, {"label", e.label}}.dump() + "\n";
  write_text(out + "/eval_set.jsonl", lines);
  lorakeep::save_safetensors(out + "/eval_logits.safetensors", {{"logits", live_logits.contiguous()}},
                             {{"format", "pt"}});
  json summary = {{"classes", data.class_names},
                  {"train_texts", data.train.size()},
                  {"eval_texts", data.eval.size()},
                  {"majority_accuracy", majority_acc},
                  {"base_accuracy_head_alone", base_acc},
                  {"base_accuracy_nearest_class_mean", ncm_acc},
                  {"finetuned_accuracy", live},
                  {"best_step", best->step},
                  {"best_metric", recorded},
                  {"steps", state.global_step},
                  {"train_seconds", train_seconds},
                  {"saved_steps", tracker->saved},
                  {"reload",
                   {{"bytes", report->bytes},
                    {"seconds", report->seconds},
                    {"peak_device_bytes", report->peak_device_bytes},
                    {"peak_rss_bytes", report->peak_rss_bytes},
                    {"naive_device_bytes", report->naive_device_bytes}}},
                  {"adapter", adapter_dir},
                  {"report", out + "/report.html"},
                  {"seconds", seconds_since(t_start)}};
  write_text(out + "/run_summary.json", summary.dump(2) + "\n");
  std::printf("the best adapter, as a PEFT adapter directory: %s\n", adapter_dir.c_str());
  std::printf("run report: %s/report.html\n", out.c_str());
  std::printf("the whole run took %.0f s\n", seconds_since(t_start));
  return same ? 0 : 1;
}

// Logits of the texts of a JSON-lines file ({"text": ...} per line) with the
// model of `model_dir`, optionally other weights (a merged model) and a PEFT
// adapter, written as "logits" [N, K] F32 into a safetensors file.
int predict(const std::string& model_dir, const std::string& weights, const std::string& adapter, int num_labels,
            const std::string& texts_path, const std::string& out, int max_length, int batch) {
  std::ifstream in(texts_path);
  if (!in) throw lorakeep::Error(lorakeep::ErrorCode::kNotFound, "cannot open '" + texts_path + "'");
  std::vector<std::string> texts;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) texts.push_back(json::parse(line).at("text").get<std::string>());
  }
  const bert::Tokenizer tok = load_tokenizer(model_dir, max_length);
  bert::BertForSequenceClassification model(bert::read_config(model_dir + "/config.json"), num_labels);
  const bert::PretrainedLoad loaded = bert::load_pretrained(model, weights.empty() ? model_dir : weights);
  if (!adapter.empty()) {
    std::printf("%s\n", lorakeep::load_adapter(adapter, *model).summary().c_str());
  } else if (!loaded.classifier_loaded) {
    std::printf("warning: no adapter and no classifier in the weights: the head is random\n");
  }
  const torch::Tensor logits = logits_of(model, tokenize_batches(tok, texts, batch));
  lorakeep::save_safetensors(out, {{"logits", logits.contiguous()}}, {{"format", "pt"}});
  std::printf("wrote the logits of %zu texts to %s\n", texts.size(), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bert_lora: LoRA fine-tuning of a Hugging Face BERT in LibTorch with lorakeep checkpoints"};
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "show lorakeep's own log (every save, rotation and load)");

  std::string config_path = "configs/bert_fortunes.yaml", model_dir, output_dir;
  int max_steps = 0;
  auto* tr = app.add_subcommand("train", "the fine-tuning job of a YAML config");
  tr->add_option("--config", config_path, "YAML run configuration");
  tr->add_option("--model-dir", model_dir, "overrides model.dir");
  tr->add_option("--output-dir", output_dir, "overrides checkpoint.output_dir");
  tr->add_option("--max-steps", max_steps, "overrides training.max_steps");

  std::string weights, adapter, texts, out;
  int num_labels = 0, max_length = 64, batch = 32;
  auto* pr = app.add_subcommand("predict", "logits of texts, for comparisons with Hugging Face");
  pr->add_option("--model-dir", model_dir, "config.json, tokenizer.json, and the weights unless --weights")->required();
  pr->add_option("--weights", weights, "other weights: a file, sharded index or directory (a merged model)");
  pr->add_option("--adapter", adapter, "a PEFT adapter directory to load");
  pr->add_option("--num-labels", num_labels, "classes")->required();
  pr->add_option("--texts", texts, "JSON lines, {\"text\": ...} each")->required();
  pr->add_option("--out", out, "safetensors file for the logits")->required();
  pr->add_option("--max-length", max_length, "tokens per text");
  CLI11_PARSE(app, argc, argv);

  try {
    lorakeep::set_log_level(verbose ? lorakeep::LogLevel::kInfo : lorakeep::LogLevel::kWarn);
    if (tr->parsed()) return train(config_path, model_dir, output_dir, max_steps);
    return predict(model_dir, weights, adapter, num_labels, texts, out, max_length, batch);
  } catch (const lorakeep::Error& e) {
    std::fprintf(stderr, "bert_lora: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bert_lora: failed: %s\n", e.what());
    return 1;
  }
}
