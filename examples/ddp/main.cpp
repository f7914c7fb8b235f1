// A data-parallel LoRA run: N processes (torchrun's, or any launcher that
// sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT) fine-tune replicas of
// the char_lm model, each on its own batches, with gradients averaged every
// step, and share one run directory through a lorakeep::Coordinator: rank 0
// writes the checkpoints, every rank records the same metrics and best, and at
// the end every rank reloads the best adapter CPU-first into its own model.
//
//   torchrun --nproc_per_node=2 --no_python ddp_lora --config configs/char_lm_ddp.yaml
//
// Gradients are averaged with c10d's ProcessGroupGloo where the build has
// gloo's headers (Debian's LibTorch with libgloo-dev); otherwise, or with
// --grad-sync store, through the coordinator's c10d store (every rank sums
// every rank's gradients in rank order, so the sums are bitwise equal). Either
// way the replicas must stay equal, and every save checks that they do:
// --grad-sync none (no averaging) makes the first save fail on every rank,
// naming the ranks whose adapter differs from rank 0's.
//
// A run resumes as checkpoint.resume_from_checkpoint says (auto: from the
// newest checkpoint every rank validates, so a job that torchrun restarts
// after a rank died goes on where it was; none: a fresh start); the run
// directory is never cleared. What the run draws comes from each rank's
// generator (restored by resume), the learning rate from the step
// (LinearWarmupSchedule): a resumed run ends with the uninterrupted run's
// bytes.
//
// Prints one line per rank, "rank R: reloaded adapter xxh3 HEX", then the run
// directory's path on the last line.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <boost/filesystem.hpp>
#include <CLI/CLI.hpp>

#ifdef LORAKEEP_EXAMPLE_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include "lorakeep/distributed.h"
#include "lorakeep/lorakeep.h"
#include "model.h"

namespace {

namespace fs = boost::filesystem;

// Averages gradients over the ranks, in place, leaving the same bytes on
// every rank.
class GradientSync {
 public:
  GradientSync(lorakeep::Coordinator& coordinator, const std::string& how)
      : coordinator_(coordinator), none_(how == "none") {
    const bool use_gloo = how == "gloo";
#ifdef LORAKEEP_EXAMPLE_GLOO
    if (use_gloo && coordinator.world_size() > 1) {
      auto options = c10d::ProcessGroupGloo::Options::create();
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      options->devices.push_back(ifname != nullptr ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                                   : c10d::ProcessGroupGloo::createDefaultDevice());
      options->timeout = coordinator.options().timeout;
      gloo_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>("ddp_lora/gloo", coordinator.store()), coordinator.rank(),
          coordinator.world_size(), options);
    }
#else
    if (use_gloo)
      throw lorakeep::Error(lorakeep::ErrorCode::kInvalidArgument,
                            "--grad-sync gloo: this build has no gloo headers (hint: --grad-sync store)");
#endif
  }

  const char* name() const {
    return none_   ? "nothing (--grad-sync none: the replicas drift apart)"
           : gloo_ ? "c10d ProcessGroupGloo all-reduce"
                   : "the c10d store (all-gather)";
  }

  void average(const std::vector<torch::Tensor>& params) {
    const int world = coordinator_.world_size();
    if (world == 1 || none_) return;
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) grads.push_back(p.grad().reshape({-1}));
    torch::Tensor flat = torch::cat(grads);
    if (gloo_) {
#ifdef LORAKEEP_EXAMPLE_GLOO
      std::vector<at::Tensor> buffers{flat};
      gloo_->allreduce(buffers)->wait();
#endif
    } else {
      const std::string mine(static_cast<const char*>(flat.data_ptr()), flat.nbytes());
      const std::vector<std::string> all = coordinator_.all_gather("gradients", mine);
      flat.zero_();
      for (const std::string& bytes : all) {  // rank order: the same sums on every rank
        flat += torch::from_blob(const_cast<char*>(bytes.data()), flat.sizes(), flat.options());
      }
    }
    flat.div_(world);
    std::int64_t offset = 0;
    for (const auto& p : params) {
      const std::int64_t n = p.grad().numel();
      p.grad().copy_(flat.narrow(0, offset, n).view_as(p.grad()));
      offset += n;
    }
  }

 private:
  lorakeep::Coordinator& coordinator_;
  bool none_;
#ifdef LORAKEEP_EXAMPLE_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
#else
  bool gloo_ = false;
#endif
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ddp_lora: data-parallel LoRA fine-tuning, one run directory for every rank"};
  std::string config_path = "configs/char_lm_ddp.yaml", output_dir;
#ifdef LORAKEEP_EXAMPLE_GLOO
  std::string grad_sync = "gloo";
#else
  std::string grad_sync = "store";
#endif
  app.add_option("--config", config_path, "YAML run configuration (char_lm's sections)");
  app.add_option("--output-dir", output_dir, "overrides checkpoint.output_dir");
  app.add_option("--grad-sync", grad_sync,
                 "how gradients are averaged: gloo, store, or none (to see the replica check fail)")
      ->check(CLI::IsMember({"gloo", "store", "none"}));
  double timeout_s = 600;
  app.add_option("--timeout", timeout_s, "seconds a rank waits for the others before it fails naming them");
  CLI11_PARSE(app, argc, argv);

  int rank = env_int("RANK", 0);
  try {
    lorakeep::set_log_level(lorakeep::LogLevel::kWarn);
    lorakeep::CoordinatorOptions coordination;
    coordination.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
    lorakeep::Coordinator coordinator = lorakeep::Coordinator::from_env(coordination);
    rank = coordinator.rank();
    const int world = coordinator.world_size();
    const bool main_rank = coordinator.is_main();
    char_lm::Config config = char_lm::load_config(config_path);
    lorakeep::RunConfig& run = config.run;
    const auto& t = config.settings.training;
    if (!output_dir.empty()) run.checkpoint.output_dir = output_dir;
    const std::string out = fs::absolute(run.checkpoint.output_dir).string();
    run.checkpoint.output_dir = out;
    if (t.batch_size % world != 0) {
      throw lorakeep::Error(lorakeep::ErrorCode::kInvalidArgument,
                            config_path + ": training.batch_size " + std::to_string(t.batch_size) +
                                " is not a multiple of the " + std::to_string(world) + " ranks");
    }
    const int batch = t.batch_size / world;  // each rank's share of the global batch
    const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    const int threads = std::max(1, cores / env_int("LOCAL_WORLD_SIZE", world));  // the cores, shared
    GradientSync sync(coordinator, grad_sync);

    const bool may_resume = lorakeep::resume_from(run.checkpoint) != lorakeep::ResumeFrom::kNone;
    if (main_rank) fs::create_directories(out);

    const char_lm::Corpus base_text = char_lm::load_corpus(config.settings.data.base_texts,
                                                           config.settings.data.validation_fraction);
    const char_lm::Corpus tune_text = char_lm::load_corpus(config.settings.data.finetune_texts,
                                                           config.settings.data.validation_fraction);
    const int block = config.settings.model.block_size;
    torch::manual_seed(t.seed);
    char_lm::CharLM model(config.settings.model);

    // 1. The base model: rank 0 trains it briefly on every core, unless a run
    //    that may resume finds it saved; every other rank loads it.
    const std::string base_file = out + "/base_model.safetensors";
    const bool train_base = main_rank && !(may_resume && fs::exists(base_file));
    if (train_base) {
      torch::set_num_threads(cores);
      std::printf("== %d ranks; gradients averaged through %s\n", world, sync.name());
      std::printf("== base model: %d steps on rank 0\n", t.base_steps);
      std::fflush(stdout);
      torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(t.base_learning_rate));
      model->train();
      for (int step = 1; step <= t.base_steps; ++step) {
        auto [x, y] = char_lm::random_batch(base_text.train, t.batch_size, block);
        opt.zero_grad();
        torch::cross_entropy_loss(model->forward(x).view({-1, char_lm::kVocab}), y.view({-1})).backward();
        torch::nn::utils::clip_grad_norm_(model->parameters(), t.max_grad_norm);
        opt.step();
      }
      lorakeep::NamedTensors weights;
      for (const auto& p : model->named_parameters()) weights.emplace_back(p.key(), p.value());
      lorakeep::save_safetensors(base_file, weights, {{"format", "pt"}});  // atomic: whole or absent
    }
    coordinator.barrier("the base model");
    if (!train_base) lorakeep::load_into(*model, *lorakeep::open_tensor_source(base_file));
    torch::set_num_threads(threads);

    // 2. LoRA, the same initial values on every rank (same seed); then each
    //    rank draws its own batches.
    torch::manual_seed(t.seed);
    const std::size_t adapted = lorakeep::inject_lora(*model, run.lora).size() / 2;  // lora_A and lora_B each
    std::vector<torch::Tensor> trainable;
    for (const auto& p : model->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    torch::manual_seed(t.seed + 1 + static_cast<std::uint64_t>(rank));
    torch::optim::AdamW opt(trainable, torch::optim::AdamWOptions(t.learning_rate).weight_decay(t.weight_decay));
    const lorakeep::LinearWarmupSchedule schedule(lorakeep::learning_rates(opt), t.warmup_steps, t.max_steps);
    lorakeep::CheckpointManager ckpt(run.checkpoint, coordinator);
    lorakeep::CallbackList callbacks;
    callbacks.add(std::make_shared<lorakeep::CheckpointCallback>(ckpt, *model, run.lora, run.callbacks, &opt));
    if (t.early_stopping_patience > 0) {
      callbacks.add(
          std::make_shared<lorakeep::EarlyStopping>(ckpt, t.early_stopping_patience, t.early_stopping_threshold));
    }
    if (main_rank) callbacks.add(std::make_shared<lorakeep::MetricsLogger>(out + "/metrics.jsonl"));
    callbacks.add(std::make_shared<lorakeep::LoadBestAtEnd>(ckpt, *model, run.callbacks));

    // Each rank evaluates its own slice of the validation text; the metrics
    // are reduced (sample-weighted) before any callback sees them, so every
    // rank's early stopping and best agree.
    const std::int64_t slice = tune_text.val.size(0) / world;
    const torch::Tensor my_val = tune_text.val.narrow(0, rank * slice, slice);
    const int eval_batches = std::max(1, t.eval_batches / world);
    lorakeep::TrainingState state;
    state.max_steps = t.max_steps;
    state.train_batch_size = t.batch_size;
    const double tokens_per_epoch = static_cast<double>(tune_text.train.size(0));
    const auto resumed = ckpt.resume(*model, state, &opt);  // adapter, optimizer, each rank's RNG, progress
    if (main_rank) {
      std::printf("== LoRA r=%d on %zu layers, %d steps of %d x %d windows", run.lora.r, adapted, t.max_steps, world,
                  batch);
      if (resumed) std::printf("; resumed at step %lld", static_cast<long long>(resumed->step));
      std::printf("\n");
      std::fflush(stdout);
    }
    callbacks.on_train_begin(state);
    while (state.global_step < state.max_steps) {
      model->train();
      schedule.apply(opt, state.global_step);
      auto [x, y] = char_lm::random_batch(tune_text.train, batch, block);
      opt.zero_grad();
      const torch::Tensor loss = torch::cross_entropy_loss(model->forward(x).view({-1, char_lm::kVocab}), y.view({-1}));
      loss.backward();
      sync.average(trainable);
      torch::nn::utils::clip_grad_norm_(trainable, t.max_grad_norm);
      opt.step();
      ++state.global_step;
      state.epoch = static_cast<double>(state.global_step) * t.batch_size * block / tokens_per_epoch;
      state.num_input_tokens_seen += static_cast<std::int64_t>(t.batch_size) * block;
      const bool go = callbacks.end_step(state, [&] {
        const double local = char_lm::evaluate(model, my_val, eval_batches, batch, block);
        lorakeep::Metrics global = coordinator.reduce_metrics({{ckpt.metric_key(), local}},
                                                              static_cast<std::int64_t>(eval_batches) * batch);
        if (main_rank) {
          std::printf("   step %4lld  %s %.4f (rank 0's slice %.4f)\n", static_cast<long long>(state.global_step),
                      ckpt.metric_key().c_str(), global.at(ckpt.metric_key()), local);
          std::fflush(stdout);
        }
        return global;
      });
      if (!go) break;
    }
    callbacks.on_train_end(state);  // every rank reloads the best adapter
    if (main_rank) {
      const auto best = ckpt.best();
      std::printf("== best: %s, %s %.4f; every rank reloaded it CPU-first\n", best ? best->path.c_str() : "-",
                  ckpt.metric_key().c_str(), best && best->metric ? *best->metric : NAN);
      lorakeep::save_adapter(out + "/final_adapter", *model, run.lora);
    }

    // One line per rank, in rank order, then the run directory.
    // lorakeep::adapter_digest: what every save compares across the ranks.
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016" PRIx64, lorakeep::adapter_digest(*model, run.lora));
    for (int r = 0; r < world; ++r) {
      if (r == rank) {
        std::printf("rank %d: reloaded adapter xxh3 %s\n", rank, hex);
        std::fflush(stdout);
      }
      coordinator.barrier("printing rank " + std::to_string(r));
    }
    if (main_rank) std::printf("%s\n", out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddp_lora: rank %d: error: %s\n", rank, e.what());
    return 1;
  }
}
