// The main job: a character-level transformer trained briefly on one real
// text, then LoRA-fine-tuned on another with lorakeep's checkpoints, early
// stopping and load-best-at-end; a run report at the end.
//
//   char_lm --config configs/char_lm_lora.yaml [--output-dir DIR] [--resume]
//
// A run resumes as checkpoint.resume_from_checkpoint says (auto, the default:
// from the newest checkpoint in the output directory, if any; none: a fresh
// start; or a checkpoint's path); --resume is resume_from_checkpoint: auto.
// The output directory is never cleared.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <thread>

#include <boost/filesystem.hpp>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "lorakeep/lorakeep.h"
#include "model.h"
#include "report.h"

namespace {

namespace fs = boost::filesystem;
using Clock = std::chrono::steady_clock;

std::string mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1 << 20));
  return buf;
}

// Records every committed checkpoint for the report.
class SaveTracker : public lorakeep::Callback {
 public:
  void on_save(lorakeep::TrainingState&, const lorakeep::CheckpointInfo& c) override { saved.push_back(c.step); }
  std::vector<std::int64_t> saved;
};

// One line per logging step: redrawn in place on a terminal, appended otherwise.
class Progress : public lorakeep::Callback {
 public:
  Progress(std::string key, std::int64_t every) : key_(std::move(key)), every_(every), tty_(::isatty(1)) {}
  void on_step_end(lorakeep::TrainingState& s) override {
    if (every_ > 0 && s.global_step % every_ == 0) print(s, false);
  }
  void on_evaluate(lorakeep::TrainingState& s, const lorakeep::Metrics& m) override {
    if (auto it = m.find(key_); it != m.end() && (!best_ || it->second < *best_)) {
      best_ = it->second;
      best_step_ = s.global_step;
    }
    print(s, true);
  }
  void on_train_end(lorakeep::TrainingState&) override {
    if (tty_) std::printf("\n");
  }

 private:
  void print(const lorakeep::TrainingState& s, bool evaluated) {
    double loss = NAN;
    for (auto it = s.log_history.rbegin(); it != s.log_history.rend(); ++it) {
      if (auto l = it->find("loss"); l != it->end()) {
        loss = l->second;
        break;
      }
    }
    char line[200];
    std::string eval = s.last_metrics.count(key_) ? std::to_string(s.last_metrics.at(key_)).substr(0, 6) : "-";
    const std::string best = best_ ? std::to_string(*best_).substr(0, 6) + " @" + std::to_string(best_step_) : "-";
    std::snprintf(line, sizeof line, "  step %5lld/%lld  loss %.4f  %s %s  best %s",
                  static_cast<long long>(s.global_step), static_cast<long long>(s.max_steps), loss, key_.c_str(),
                  eval.c_str(), best.c_str());
    if (tty_) {
      std::printf("\r%-90s", line);
      std::fflush(stdout);
    } else if (evaluated) {
      std::printf("%s\n", line);
    }
  }

  std::string key_;
  std::int64_t every_;
  bool tty_;
  std::optional<double> best_;  // best evaluation so far (smaller is better: a loss)
  std::int64_t best_step_ = 0;
};

double clip(const std::vector<torch::Tensor>& params, double max_norm) {
  if (max_norm <= 0) return 0;
  return torch::nn::utils::clip_grad_norm_(params, max_norm);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"char_lm: a LoRA fine-tuning run with lorakeep checkpoints"};
  std::string config_path = "configs/char_lm_lora.yaml", output_dir;
  bool resume = false, verbose = false;
  app.add_option("--config", config_path, "YAML run configuration");
  app.add_flag("-v,--verbose", verbose, "show lorakeep's own log (every save, rotation and load)");
  app.add_option("--output-dir", output_dir, "overrides checkpoint.output_dir");
  app.add_flag("--resume", resume, "checkpoint.resume_from_checkpoint: auto (resume from the newest checkpoint)");
  CLI11_PARSE(app, argc, argv);

  try {
    lorakeep::set_log_level(verbose ? lorakeep::LogLevel::kInfo : lorakeep::LogLevel::kWarn);
    char_lm::Config config = char_lm::load_config(config_path);
    lorakeep::RunConfig& run = config.run;
    const char_lm::Settings& settings = config.settings;
    if (!output_dir.empty()) run.checkpoint.output_dir = output_dir;
    if (resume) run.checkpoint.resume_from_checkpoint = "auto";
    const bool may_resume = lorakeep::resume_from(run.checkpoint) != lorakeep::ResumeFrom::kNone;
    const std::string out = run.checkpoint.output_dir;
    const auto& t = settings.training;
    torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    torch::manual_seed(t.seed);
    fs::create_directories(out);

    const char_lm::Corpus base_text = char_lm::load_corpus(settings.data.base_texts, settings.data.validation_fraction);
    const char_lm::Corpus tune_text = char_lm::load_corpus(settings.data.finetune_texts,
                                                           settings.data.validation_fraction);
    char_lm::CharLM model(settings.model);
    const int block = settings.model.block_size;
    auto eval_on = [&](const torch::Tensor& data) {
      return char_lm::evaluate(model, data, t.eval_batches, t.batch_size, block);
    };

    // 1. The base model, trained from scratch on the base texts.
    std::int64_t n_params = 0;
    for (const auto& p : model->parameters()) n_params += p.numel();
    std::printf("== base model: %lld parameters, %d steps on %zu text(s), %s\n", static_cast<long long>(n_params),
                t.base_steps, settings.data.base_texts.size(), mib(static_cast<double>(base_text.bytes)).c_str());
    const std::string base_file = out + "/base_model.safetensors";
    const auto t0 = Clock::now();
    if (may_resume && fs::exists(base_file)) {
      lorakeep::load_into(*model, *lorakeep::open_tensor_source(base_file));
      std::printf("   loaded %s\n", base_file.c_str());
    } else {
      torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(t.base_learning_rate));
      model->train();
      for (int step = 1; step <= t.base_steps; ++step) {
        auto [x, y] = char_lm::random_batch(base_text.train, t.batch_size, block);
        opt.zero_grad();
        const torch::Tensor loss = torch::cross_entropy_loss(model->forward(x).view({-1, char_lm::kVocab}),
                                                             y.view({-1}));
        loss.backward();
        clip(model->parameters(), t.max_grad_norm);
        opt.step();
        if (step % 100 == 0 || step == t.base_steps) {
          std::printf("   step %4d/%d  loss %.4f\n", step, t.base_steps, loss.item<double>());
          std::fflush(stdout);
        }
      }
      lorakeep::NamedTensors weights;
      for (const auto& p : model->named_parameters()) weights.emplace_back(p.key(), p.value());
      lorakeep::save_safetensors(base_file, weights, {{"format", "pt"}});
    }
    const double base_on_base = eval_on(base_text.val);
    const double base_on_tune = eval_on(tune_text.val);
    std::printf("   base model eval loss: %.4f on its own text, %.4f on the fine-tuning text (%.0f s)\n", base_on_base,
                base_on_tune, std::chrono::duration<double>(Clock::now() - t0).count());

    // 2. LoRA fine-tuning on the other text, with lorakeep's callbacks.
    const std::vector<std::string> trainable_names = lorakeep::inject_lora(*model, run.lora);
    std::vector<torch::Tensor> trainable;
    std::int64_t n_trainable = 0;
    for (const auto& p : model->named_parameters()) {
      if (p.value().requires_grad()) {
        trainable.push_back(p.value());
        n_trainable += p.value().numel();
      }
    }
    std::printf("== LoRA r=%d alpha=%g on %zu tensors (%lld trainable parameters), %d steps on %zu text(s), %s\n",
                run.lora.r, run.lora.lora_alpha, trainable_names.size(), static_cast<long long>(n_trainable),
                t.max_steps, settings.data.finetune_texts.size(), mib(static_cast<double>(tune_text.bytes)).c_str());
    torch::optim::AdamW opt(trainable, torch::optim::AdamWOptions(t.learning_rate).weight_decay(t.weight_decay));
    const lorakeep::LinearWarmupSchedule schedule(lorakeep::learning_rates(opt), t.warmup_steps, t.max_steps);
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
    callbacks.add(std::make_shared<Progress>(ckpt.metric_key(), run.callbacks.logging_steps));
    auto load_best = std::make_shared<lorakeep::LoadBestAtEnd>(ckpt, *model, run.callbacks);
    callbacks.add(load_best);

    lorakeep::TrainingState state;
    state.max_steps = t.max_steps;
    state.train_batch_size = t.batch_size;
    const double tokens_per_epoch = static_cast<double>(tune_text.train.size(0));
    state.num_train_epochs = std::ceil(static_cast<double>(t.max_steps) * t.batch_size * block / tokens_per_epoch);
    if (auto from = ckpt.resume(*model, state, &opt))
      std::printf("   resumed at step %lld\n", static_cast<long long>(from->step));
    const auto t1 = Clock::now();
    callbacks.on_train_begin(state);
    while (state.global_step < state.max_steps) {
      model->train();
      schedule.apply(opt, state.global_step);
      auto [x, y] = char_lm::random_batch(tune_text.train, t.batch_size, block);
      opt.zero_grad();
      const torch::Tensor loss = torch::cross_entropy_loss(model->forward(x).view({-1, char_lm::kVocab}), y.view({-1}));
      loss.backward();
      const double grad_norm = clip(trainable, t.max_grad_norm);
      opt.step();
      ++state.global_step;
      state.epoch = static_cast<double>(state.global_step) * t.batch_size * block / tokens_per_epoch;
      state.num_input_tokens_seen += static_cast<std::int64_t>(t.batch_size) * block;
      if (run.callbacks.logging_steps > 0 && state.global_step % run.callbacks.logging_steps == 0) {
        state.log({{"loss", loss.item<double>()},
                   {"learning_rate", lorakeep::learning_rates(opt)[0]},
                   {"grad_norm", grad_norm}});
      }
      const bool go = callbacks.end_step(state, [&] {
        return lorakeep::Metrics{{ckpt.metric_key(), eval_on(tune_text.val)}};
      });
      if (!go) {
        std::printf("\n   early stopping after step %lld\n", static_cast<long long>(state.global_step));
        break;
      }
    }
    callbacks.on_train_end(state);
    const double train_seconds = std::chrono::duration<double>(Clock::now() - t1).count();

    // 3. What the user sees at the end.
    const auto best = load_best->loaded();
    const auto& report = load_best->report();
    if (!best || !report) throw lorakeep::Error(lorakeep::ErrorCode::kNotFound, "no best checkpoint was reloaded");
    const double live = eval_on(tune_text.val);
    const double recorded = *best->metric;
    std::printf("== fine-tuning took %.0f s, %lld steps\n", train_seconds, static_cast<long long>(state.global_step));
    std::printf("best checkpoint: %s, %s %.6f: the lowest of %zu evaluations (smaller is better for a loss)\n",
                best->path.c_str(), ckpt.metric_key().c_str(), recorded,
                static_cast<std::size_t>(
                    std::count_if(state.log_history.begin(), state.log_history.end(),
                                  [&](const lorakeep::Metrics& m) { return m.count(ckpt.metric_key()) != 0; })));
    std::printf("eval loss on the fine-tuning text: base model %.4f -> fine-tuned %.4f\n", base_on_tune, recorded);
    std::printf("reloaded at the end: %s read in %.2f ms; extra bytes on the parameters' allocator %lld "
                "(the naive full temporary copy: %s); extra process RSS %s\n",
                mib(static_cast<double>(report->bytes)).c_str(), report->seconds * 1000,
                static_cast<long long>(report->peak_device_bytes),
                mib(static_cast<double>(report->naive_device_bytes)).c_str(),
                mib(static_cast<double>(std::max<std::int64_t>(0, report->peak_rss_bytes))).c_str());
    const bool same = std::fabs(live - recorded) <= 1e-5;
    std::printf("live model after the reload: %s %.6f, recorded %.6f: %s\n", ckpt.metric_key().c_str(), live, recorded,
                same ? "equal" : "DIFFERENT");
    model->eval();
    torch::manual_seed(t.seed);
    const std::string sample = model->generate("\n", t.sample_chars, t.sample_temperature);
    std::printf("-- a sample from the fine-tuned model --\n%s\n--\n", sample.c_str());
    const std::string adapter_dir = out + "/final_adapter";
    if (fs::exists(adapter_dir)) fs::remove_all(adapter_dir);
    lorakeep::save_adapter(adapter_dir, *model, run.lora);
    std::printf("the best adapter, as a PEFT adapter directory: %s\n", adapter_dir.c_str());

    examples::ReportData data;
    data.title = "char_lm: LoRA fine-tuning with lorakeep";
    data.config_path = config_path;
    data.log_history = state.log_history;
    data.saved_steps = tracker->saved;
    for (const auto& c : ckpt.checkpoints()) data.kept_steps.insert(c.step);
    data.best_step = best->step;
    data.metric = ckpt.metric_key();
    data.greater_is_better = ckpt.greater_is_better();
    data.references = {{"base model eval_loss on the fine-tuning text", base_on_tune},
                       {"base model eval_loss on its own text", base_on_base},
                       {"live model after the reload", live}};
    char summary_text[256];
    std::snprintf(summary_text, sizeof summary_text,
                  "The base model scored %.4g on the fine-tuning text (%.4g on its own); after the reload the live "
                  "model scores %.6f (the checkpoint recorded %.6f).",
                  base_on_tune, base_on_base, live, recorded);
    data.summary = summary_text;
    data.reload_bytes = report->bytes;
    data.reload_seconds = report->seconds;
    data.reload_peak_device_bytes = report->peak_device_bytes;
    data.reload_peak_rss_bytes = report->peak_rss_bytes;
    data.naive_device_bytes = report->naive_device_bytes;
    data.sample = sample;
    examples::write_report(out + "/report.html", data);
    std::printf("run report: %s/report.html\n", out.c_str());

    nlohmann::json summary = {{"best_step", best->step},
                              {"best_metric", recorded},
                              {"live_metric_after_reload", live},
                              {"base_eval_loss_finetune_text", base_on_tune},
                              {"base_eval_loss_base_text", base_on_base},
                              {"steps", state.global_step},
                              {"saved_steps", tracker->saved},
                              {"kept_steps", std::vector<std::int64_t>(data.kept_steps.begin(), data.kept_steps.end())},
                              {"reload",
                               {{"bytes", report->bytes},
                                {"seconds", report->seconds},
                                {"peak_device_bytes", report->peak_device_bytes},
                                {"peak_rss_bytes", report->peak_rss_bytes},
                                {"naive_device_bytes", report->naive_device_bytes}}},
                              {"adapter", adapter_dir},
                              {"report", out + "/report.html"}};
    std::FILE* f = std::fopen((out + "/run_summary.json").c_str(), "w");
    if (f != nullptr) {
      const std::string text = summary.dump(2) + "\n";
      std::fwrite(text.data(), 1, text.size(), f);
      std::fclose(f);
    }
    return same ? 0 : 1;
  } catch (const lorakeep::Error& e) {
    std::fprintf(stderr, "char_lm: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "char_lm: failed: %s\n", e.what());
    return 1;
  }
}
