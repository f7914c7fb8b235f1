// A training run for the chained-kill tests: the program of resume_program.h
// as a process of its own, to be killed at any moment and started again.
//
//   resume_child RUN_DIR MAX_STEPS SAVE_EVERY
//
// One process, or one rank of a job given torchrun's environment (RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE).
// LK_ASYNC=1 saves with save_async; LK_EACH_NODE=1 sets save_on_each_node;
// LK_FILL_BEFORE=s: before the save of step s, local rank 0 fills RUN_DIR's
// file system with RUN_DIR/filler (to ENOSPC); LK_TIMEOUT_MS is the coordinator's
// timeout; LK_STEP_DELAY_MS=n sleeps n ms after each step (a slower run, the
// same bytes); LK_LOG=warn shows lorakeep's warnings (else errors only).
// Prints, one per line, as it happens:
//   ready STEP PID        resumed at STEP (0: a fresh start); this process's id
//   step STEP             optimizer step STEP done
//   begin STEP XXH3       the save of STEP begins, with the adapter XXH3
//   queued STEP           save_async returned (the write goes on)
//   saved STEP            the save of STEP is committed
//   final XXH3 OPT_XXH3   the run is done: its adapter and optimizer state
//   error CODE MESSAGE    a lorakeep::Error (exit code 1)
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <xxhash.h>

#include "lorakeep/lorakeep.h"
#include "dist_model.h"
#include "resume_program.h"
#include "tensor_util.h"

namespace {

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atol(v) : fallback;
}

std::string optimizer_xxh3(torch::optim::Optimizer& optimizer) {
  std::string all;
  for (const std::string& bytes : lorakeep::test::optimizer_state_bytes(optimizer)) {
    all += std::to_string(bytes.size()) + ":" + bytes;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016" PRIx64, static_cast<std::uint64_t>(XXH3_64bits(all.data(), all.size())));
  return hex;
}

// Writes `path` until its file system is full.
void fill_file_system(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return;
  const std::string chunk(1 << 20, 'x');
  while (std::fwrite(chunk.data(), 1, chunk.size(), f) == chunk.size() && std::fflush(f) == 0) {
  }
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: resume_child RUN_DIR MAX_STEPS SAVE_EVERY\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const char* log = std::getenv("LK_LOG");
  lorakeep::set_log_level(log != nullptr && std::string(log) == "warn" ? lorakeep::LogLevel::kWarn
                                                                       : lorakeep::LogLevel::kError);
  try {
    lorakeep::CoordinatorOptions co;
    co.timeout = std::chrono::milliseconds(env_long("LK_TIMEOUT_MS", 60000));
    lorakeep::Coordinator coordinator = lorakeep::Coordinator::from_env(co);
    lorakeep::test::ResumeRun run;
    run.dir = argv[1];
    run.max_steps = run.stop_at = std::atoll(argv[2]);
    run.save_every = std::atoll(argv[3]);
    run.async = env_long("LK_ASYNC", 0) != 0;
    run.each_node = env_long("LK_EACH_NODE", 0) != 0;
    const long fill_before = coordinator.local_rank() == 0 ? env_long("LK_FILL_BEFORE", -1) : -1;
    if (coordinator.world_size() > 1) run.coordinator = &coordinator;
    const long delay_ms = env_long("LK_STEP_DELAY_MS", 0);
    run.on_event = [&](const char* event, std::int64_t step, torch::nn::Module& module) {
      const std::string e = event;
      if (e == "begin" && step == fill_before) fill_file_system(run.dir + "/filler");
      if (e == "begin") {
        std::printf("begin %" PRId64 " %s\n", step, lorakeep::test::adapter_xxh3(module).c_str());
      } else if (e == "ready") {
        std::printf("ready %" PRId64 " %d\n", step, static_cast<int>(::getpid()));
      } else {
        std::printf("%s %" PRId64 "\n", event, step);
      }
      if (e == "step" && delay_ms > 0) ::usleep(static_cast<useconds_t>(delay_ms) * 1000);
    };
    lorakeep::test::ResumeOutcome out = lorakeep::test::run_resume_program(run);
    std::printf("final %s %s\n", lorakeep::test::adapter_xxh3(*out.net).c_str(),
                optimizer_xxh3(*out.optimizer).c_str());
  } catch (const lorakeep::Error& e) {
    std::printf("error %s %s\n", lorakeep::error_code_name(e.code()), e.what());
    return 1;
  }
  return 0;
}
