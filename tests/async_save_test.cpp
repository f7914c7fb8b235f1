// Saves off the training thread (CheckpointManager::save_async): what is
// written is the snapshot taken at the call, errors of the background write
// come back at the next call, nothing is abandoned.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <set>
#include <string>

#include <torch/torch.h>

#include "lorakeep/lorakeep.h"
#include "base/file_names.h"
#include "checkpoint/run_dir.h"
#include "crash_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

struct Run {
  test::TestNet net = test::armed_net(/*seed=*/1, test::crash_lora(), /*width=*/64);
  std::unique_ptr<torch::optim::Adam> adam;
  TrainingState state;

  Run() {
    std::vector<at::Tensor> trainable;
    for (auto& p : net->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    adam = std::make_unique<torch::optim::Adam>(trainable, torch::optim::AdamOptions(1e-2));
  }
  void step() {
    adam->zero_grad();
    net->v_proj(torch::relu(net->q_proj(torch::ones({2, 64})))).pow(2).sum().backward();
    adam->step();
    ++state.global_step;
    state.record_evaluation({{"eval_loss", 1.0 / static_cast<double>(state.global_step)}});
  }
};

NamedTensors copies(const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(name, t.detach().clone());
  return out;
}

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<std::uint64_t>(st.st_size);
}

// A file-size limit for this process while it lives (writes past it fail
// with EFBIG instead of raising SIGXFSZ).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    old_signal_ = ::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old_);
    rlimit small = old_;
    small.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &small);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_signal_);
  }

 private:
  rlimit old_{};
  sighandler_t old_signal_;
};

}  // namespace

TEST_CASE("save_async writes the snapshot taken at the call while training changes the model", "[checkpoint][async]") {
  test::TempDir dir;
  Run run;
  CheckpointManager ckpt(test::crash_options(dir / "run"));
  run.step();
  const NamedTensors at_call = copies(adapter_tensors(*run.net, test::crash_lora()));
  const auto called = std::chrono::steady_clock::now();
  const AsyncSave ticket = ckpt.save_async(*run.net, test::crash_lora(), run.state, run.adam.get());
  const double call_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - called).count();
  CHECK(ticket.checkpoint.step == 1);
  CHECK(run.state.best_global_step == 1);  // the best as it will be
  run.step();                              // training goes on while it is written
  run.step();
  const auto committed = ckpt.wait();
  REQUIRE(committed);
  CHECK(committed->step == 1);
  const std::string path = dir / "run/checkpoint-1";
  CHECK_NOTHROW(detail::check_checkpoint_files(path, detail::read_manifest(path), /*full=*/true));

  // The file holds the values of the call, not the ones training made since.
  test::TestNet fresh(64);
  load_adapter(path, *fresh);
  const NamedTensors loaded = adapter_tensors(*fresh, test::crash_lora());
  REQUIRE(loaded.size() == at_call.size());
  std::uint64_t adapter_bytes = 0;
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    CHECK(loaded[i].first == at_call[i].first);
    CHECK(torch::equal(loaded[i].second, at_call[i].second));
    adapter_bytes += at_call[i].second.nbytes();
  }
  CHECK_FALSE(torch::equal(adapter_tensors(*run.net, test::crash_lora())[1].second, at_call[1].second));

  // Host memory held: exactly one snapshot of what was saved.
  const SafetensorsFile rng = SafetensorsFile::open(path + "/" + detail::kRngFile);
  std::uint64_t rng_bytes = 0;
  for (const std::string& name : rng.names()) rng_bytes += rng.info(name).byte_size();
  CHECK(ticket.snapshot_bytes == adapter_bytes + file_size(path + "/" + detail::kOptimizerFile) + rng_bytes);
  // The time the call kept the caller: measured within the call, not the write's.
  CHECK(ticket.blocking_seconds > 0);
  CHECK(ticket.blocking_seconds <= call_seconds);

  // Resuming from it restores what a synchronous save would have.
  Run resumed;
  REQUIRE(ckpt.resume(*resumed.net, resumed.state, resumed.adam.get()));
  CHECK(resumed.state.global_step == 1);
}

TEST_CASE("a failed background write is raised by the next call and loses nothing", "[checkpoint][async]") {
  test::TempDir dir;
  Run run;
  CheckpointManager ckpt(test::crash_options(dir / "run"));
  run.step();
  ckpt.save(*run.net, test::crash_lora(), run.state, run.adam.get());
  run.step();
  {
    FileSizeLimit limit(4096);  // below the adapter file
    ckpt.save_async(*run.net, test::crash_lora(), run.state, run.adam.get());
    CHECK(ckpt.latest()->step == 1);  // waits for it, raises nothing
  }
  SECTION("at the next save_async") {
    run.step();
    const Error e = test::capture_error(
        [&] { ckpt.save_async(*run.net, test::crash_lora(), run.state, run.adam.get()); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Catch::Contains(".tmp-checkpoint-2-"));
    CHECK(run.state.best_global_step == 1);  // set from what was committed
    // Raised once: the next save works.
    ckpt.save_async(*run.net, test::crash_lora(), run.state, run.adam.get());
    CHECK(ckpt.wait()->step == 3);
  }
  SECTION("at wait") {
    CHECK(test::capture_error([&] { ckpt.wait(); }).code() == ErrorCode::kIOError);
    CHECK_NOTHROW(ckpt.wait());
  }
  CHECK(test::checkpoint_steps(dir / "run").count(2) == 0);
  const std::string path = dir / "run/checkpoint-1";
  CHECK_NOTHROW(detail::check_checkpoint_files(path, detail::read_manifest(path), /*full=*/true));
}

TEST_CASE("a manager destroyed with a save in flight finishes it first", "[checkpoint][async]") {
  test::TempDir dir;
  Run run;
  run.step();
  {
    CheckpointManager ckpt(test::crash_options(dir / "run"));
    ckpt.save_async(*run.net, test::crash_lora(), run.state, run.adam.get());
  }
  CHECK(test::checkpoint_steps(dir / "run") == std::set<std::int64_t>{1});
  const std::string path = dir / "run/checkpoint-1";
  CHECK_NOTHROW(detail::check_checkpoint_files(path, detail::read_manifest(path), /*full=*/true));
}

TEST_CASE("CheckpointCallback with save_async saves off the training thread, and on_train_end raises a failed write",
          "[checkpoint][async]") {
  test::TempDir dir;
  Run run;
  CheckpointManager ckpt(test::crash_options(dir / "run"));
  CallbackOptions options;
  options.save_strategy = SaveStrategy::kSteps;
  options.save_steps = 1;
  options.save_async = true;
  struct Saves : Callback {
    void on_save(TrainingState&, const CheckpointInfo& c) override { seen.push_back(c); }
    std::vector<CheckpointInfo> seen;
  };
  auto saves = std::make_shared<Saves>();
  CallbackList callbacks;
  callbacks.add(std::make_shared<CheckpointCallback>(ckpt, *run.net, test::crash_lora(), options, run.adam.get()));
  callbacks.add(saves);
  callbacks.on_train_begin(run.state);
  run.step();
  REQUIRE(callbacks.end_step(run.state, nullptr));
  REQUIRE(saves->seen.size() == 1);  // the checkpoint being written, as save would report it
  CHECK(saves->seen[0].step == 1);
  CHECK(saves->seen[0].path == dir / "run/checkpoint-1");
  CHECK(saves->seen[0].metric == 1.0);
  run.step();
  SECTION("a write that works: on_train_end waits for it") {
    REQUIRE(callbacks.end_step(run.state, nullptr));
    callbacks.on_train_end(run.state);
    CHECK(test::checkpoint_steps(dir / "run") == std::set<std::int64_t>{1, 2});
  }
  SECTION("a write that fails: on_train_end raises it, the first checkpoint intact") {
    REQUIRE(ckpt.wait()->step == 1);  // step 1's write done before the limit
    FileSizeLimit limit(4096);
    REQUIRE(callbacks.end_step(run.state, nullptr));  // step 2's write starts, and fails
    CHECK(test::capture_error([&] { callbacks.on_train_end(run.state); }).code() == ErrorCode::kIOError);
    CHECK(test::checkpoint_steps(dir / "run") == std::set<std::int64_t>{1});
    CHECK(run.state.best_global_step == 1);
  }
}

}  // namespace lorakeep
