// One rank of a data-parallel job for the multi-rank tests, started N times
// with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_USE_AGENT_STORE).
//
//   dist_child RUN_DIR STEPS
//
// Resumes from RUN_DIR, then for each step up to STEPS: one training step on
// the same batch on every rank (so the replicas stay equal without gradient
// averaging), an evaluation of this rank's share (dist_metric) with rank + 1
// samples reduced across the ranks, a save. Then load_best_into. Prints, one
// per line:
//   ready STEP                     after the resume
//   saved STEP METRIC              the global metric recorded
//   save-error STEP CODE MESSAGE   a save that threw (the loop goes on)
//   trained XXH3                   the adapter at the end of training
//   best STEP                      every rank's best() at the end
//   state STEP BEST_STEP BEST_METRIC
//   reloaded XXH3 EXTRA_BYTES      the adapter after load_best_into, and the
//                                  CPU allocator's peak extra bytes during it
//   error CODE MESSAGE             anything else that threw (exit code 1)
//
// Faults, from the environment:
//   LK_TIMEOUT_MS=n                the coordinator's timeout
//   LK_FSIZE_STEP=s                rank 0 saves step s under a 4 KiB file-size limit
//   LK_FILL_STEP=s                 rank 0 saves step s on a full file system: before it, it
//                                  fills RUN_DIR's parent with a file (to ENOSPC), after it
//                                  removes the file
//   LK_DIVERGE_RANK=r, LK_DIVERGE_STEP=s   rank r's adapter moves before the save of step s
//   LK_BAD_LOAD_RANK=r             rank r reloads into a model of another shape
//   LK_ASYNC=1                     saves with save_async (wait() after the loop)
//   LK_PRIVATE_DIR=1               each rank uses RUN_DIR/rank<r> (a directory not shared)
//   LK_BARRIERS=n                  at the end, n barriers timed: prints "barrier MICROSECONDS"
//                                  (the mean) and "store-ops OPS" (this rank's store round trips)
#include <sys/resource.h>

#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "lorakeep/distributed.h"
#include "lorakeep/lorakeep.h"
#include "crash_model.h"
#include "dist_model.h"

namespace {

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atol(v) : fallback;
}

// Writes `path` until its file system has no space left.
void fill_file_system(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return;
  static const std::vector<char> block(1 << 20);
  while (std::fwrite(block.data(), 1, block.size(), f) == block.size() && std::fflush(f) == 0) {
  }
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: dist_child RUN_DIR STEPS\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::signal(SIGXFSZ, SIG_IGN);  // a write past the file-size limit fails with EFBIG
  lorakeep::set_log_level(lorakeep::LogLevel::kError);
  const std::int64_t steps = std::atoll(argv[2]);
  lorakeep::test::TestNet net = lorakeep::test::crash_net();
  std::vector<torch::Tensor> trainable;
  for (auto& p : net->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::Adam adam(trainable, torch::optim::AdamOptions(1e-2));
  try {
    lorakeep::CoordinatorOptions co;
    co.timeout = std::chrono::milliseconds(env_long("LK_TIMEOUT_MS", 60000));
    lorakeep::Coordinator coordinator = lorakeep::Coordinator::from_env(co);
    const int rank = coordinator.rank();
    std::string dir = argv[1];
    if (env_long("LK_PRIVATE_DIR", 0)) dir += "/rank" + std::to_string(rank);
    lorakeep::CheckpointManager ckpt(lorakeep::test::crash_options(dir), coordinator);
    lorakeep::TrainingState state;
    const bool async = env_long("LK_ASYNC", 0) != 0;
    const long fsize_step = env_long("LK_FSIZE_STEP", -1), fill_step = env_long("LK_FILL_STEP", -1);
    ckpt.resume(*net, state, &adam);
    std::printf("ready %" PRId64 "\n", state.global_step);
    while (state.global_step < steps) {
      ++state.global_step;
      const std::int64_t step = state.global_step;
      lorakeep::test::crash_train_step(net, adam, step);
      state.record_evaluation(
          coordinator.reduce_metrics({{"eval_loss", lorakeep::test::dist_metric(step, rank)}}, rank + 1));
      if (rank == env_long("LK_DIVERGE_RANK", -1) && step == env_long("LK_DIVERGE_STEP", -1)) {
        torch::NoGradGuard no_grad;
        net->q_proj->lora_B->weight.add_(1e-3);
      }
      const bool limited = rank == 0 && step == fsize_step;
      const bool full = rank == 0 && step == fill_step;
      const std::string filler = std::string(argv[1]) + "/../filler";
      if (full) fill_file_system(filler);
      rlimit old{};
      if (limited) {
        ::getrlimit(RLIMIT_FSIZE, &old);
        rlimit small = old;
        small.rlim_cur = 4096;
        ::setrlimit(RLIMIT_FSIZE, &small);
      }
      try {
        if (async) {
          ckpt.save_async(*net, lorakeep::test::crash_lora(), state, &adam);
        } else {
          ckpt.save(*net, lorakeep::test::crash_lora(), state, &adam);
        }
        std::printf("saved %" PRId64 " %.17g\n", step, state.last_metrics.at("eval_loss"));
      } catch (const lorakeep::Error& e) {
        std::printf("save-error %" PRId64 " %s %s\n", step, lorakeep::error_code_name(e.code()), e.what());
        if (step != fsize_step && step != fill_step) return 1;  // those failures are planned; the loop goes on
      }
      if (limited) ::setrlimit(RLIMIT_FSIZE, &old);
      if (full) std::remove(filler.c_str());
    }
    if (async) ckpt.wait();
    std::printf("trained %s\n", lorakeep::test::adapter_xxh3(*net).c_str());
    if (const auto best = ckpt.best()) std::printf("best %" PRId64 "\n", best->step);
    std::printf("state %" PRId64 " %" PRId64 " %.17g\n", state.global_step, state.best_global_step.value_or(-1),
                state.best_metric.value_or(-1.0));
    if (rank == env_long("LK_BAD_LOAD_RANK", -1)) {
      // Another shape on this rank only: its validation fails, so no rank loads.
      torch::nn::Module other;
      other.register_module("q_proj", lorakeep::LoraLinear(64, 32));
      other.register_module("v_proj", lorakeep::LoraLinear(64, 64));
      lorakeep::inject_lora(other, lorakeep::test::crash_lora());
      ckpt.load_best_into(other);
    } else {
      lorakeep::AllocationProbe probe;
      ckpt.load_best_into(*net);
      std::printf("reloaded %s %" PRId64 "\n", lorakeep::test::adapter_xxh3(*net).c_str(), probe.peak_bytes());
    }
    std::printf("store-ops %" PRId64 "\n", coordinator.store_operations());
    if (const long n = env_long("LK_BARRIERS", 0); n > 0) {
      const auto start = std::chrono::steady_clock::now();
      for (long i = 0; i < n; ++i) coordinator.barrier("timed barrier");
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      std::printf("barrier %.1f\n", us / static_cast<double>(n));
    }
  } catch (const lorakeep::Error& e) {
    std::printf("error %s %s\n", lorakeep::error_code_name(e.code()), e.what());
    std::printf("adapter %s\n", lorakeep::test::adapter_xxh3(*net).c_str());
    return 1;
  }
  return 0;
}
