// A training process for the reliability tests, to be killed or starved.
//
//   crash_child loop RUN_DIR LOG      resume, then save checkpoints forever; before each save
//                                     append "begin STEP METRIC" to LOG, after it "done STEP"
//                                     (each line fsynced); "ready" once started
//   crash_child loop-async RUN_DIR LOG
//                                     the same with save_async: "begin", save_async, a
//                                     training step while the background thread writes,
//                                     wait, "done"
//   crash_child save-once RUN_DIR STEP
//                                     one save of step STEP; prints "ok" or
//                                     "error <code> <message>" and exits 0 or 1
//
// The model, its LoRA and checkpoint options and the metric of each step are
// in crash_model.h.
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include <torch/torch.h>

#include "lorakeep/lorakeep.h"
#include "crash_model.h"

namespace {

void append(int fd, const std::string& line) {
  const std::string text = line + "\n";
  if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::fsync(fd) != 0) {
    std::perror("crash_child: log");
    std::exit(3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: crash_child loop RUN_DIR LOG | save-once RUN_DIR STEP\n");
    return 2;
  }
  lorakeep::set_log_level(lorakeep::LogLevel::kError);
  const std::string mode = argv[1], dir = argv[2];
  lorakeep::test::TestNet net = lorakeep::test::crash_net();
  std::vector<torch::Tensor> trainable;
  for (auto& p : net->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::Adam adam(trainable, torch::optim::AdamOptions(1e-2));
  try {
    lorakeep::CheckpointManager ckpt(lorakeep::test::crash_options(dir));
    lorakeep::TrainingState state;
    if (mode == "save-once") {
      state.global_step = std::stoll(argv[3]);
      lorakeep::test::crash_train_step(net, adam, state.global_step);
      state.record_evaluation({{"eval_loss", lorakeep::test::crash_metric(state.global_step)}});
      ckpt.save(*net, lorakeep::test::crash_lora(), state, &adam);
      std::printf("ok\n");
      return 0;
    }
    const int log = ::open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) return 3;
    ckpt.resume(*net, state, &adam);
    append(log, "ready " + std::to_string(state.global_step));
    for (;;) {
      ++state.global_step;
      lorakeep::test::crash_train_step(net, adam, state.global_step);
      const double m = lorakeep::test::crash_metric(state.global_step);
      state.record_evaluation({{"eval_loss", m}});
      char line[96];
      std::snprintf(line, sizeof line, "begin %lld %.17g", static_cast<long long>(state.global_step), m);
      append(log, line);
      if (mode == "loop-async") {
        ckpt.save_async(*net, lorakeep::test::crash_lora(), state, &adam);
        lorakeep::test::crash_train_step(net, adam, state.global_step);  // while the snapshot is written
        ckpt.wait();
      } else {
        ckpt.save(*net, lorakeep::test::crash_lora(), state, &adam);
      }
      append(log, "done " + std::to_string(state.global_step));
    }
  } catch (const lorakeep::Error& e) {
    std::printf("error %s %s\n", lorakeep::error_code_name(e.code()), e.what());
    return 1;
  }
}
