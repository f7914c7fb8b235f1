// Faults, for real: processes killed mid-save, files damaged byte by byte,
// disks that fill up, big and many tensors, readers racing a writer.
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <torch/optim/adam.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lora.h"
#include "lorakeep/memory.h"
#include "lorakeep/transfer.h"
#include "base/file_names.h"
#include "checkpoint/run_dir.h"
#include "crash_model.h"
#include "tensor_util.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;
constexpr std::int64_t kMiB = 1 << 20;

// The kept set of the rotation policy, computed independently of the
// library: the newest 2 and the best 1 (smallest metric, NaN worst, ties to
// the earlier step).
std::set<std::int64_t> keep(const std::map<std::int64_t, double>& metrics) {
  std::set<std::int64_t> out;
  for (auto it = metrics.rbegin(); it != metrics.rend() && out.size() < 2; ++it) out.insert(it->first);
  std::int64_t best = -1;
  for (const auto& [step, m] : metrics) {
    const double b = best < 0 ? 0 : metrics.at(best);
    const bool better = best < 0 || (std::isnan(b) && !std::isnan(m)) || (!std::isnan(m) && m < b);
    if (better) best = step;
  }
  if (best >= 0) out.insert(best);
  return out;
}

using Net = test::TestNet;

NamedTensors snapshot(Net& net) { return test::clone_all(adapter_tensors(*net, test::crash_lora())); }

Net fresh_net(std::uint64_t seed) { return test::armed_net(seed, test::crash_lora(), /*width=*/64); }

// Runs `trials` kill trials on one run directory; returns how many kills
// landed while a save was in flight.
int run_kill_trials(int trials, std::uint32_t seed, const char* mode = "loop") {
  test::TempDir dir;
  const std::string run = dir / "run";
  const std::string log = dir / "log";
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> delay_ms(0, 150);
  int mid_save = 0;
  // Saves committed by a child killed before it could log "done": found on
  // disk after that kill, and committed from then on.
  std::map<std::int64_t, double> committed_unlogged;
  std::set<std::int64_t> stale;  // on disk after a kill that came before rotation
  std::size_t dones_before = 0;
  auto ready_lines = [&] {
    std::ifstream in(log);
    std::size_t n = 0;
    for (std::string line; std::getline(in, line);) n += line.rfind("ready", 0) == 0;
    return n;
  };
  for (int trial = 0; trial < trials; ++trial) {
    const std::size_t ready_before = ready_lines();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::execl(LORAKEEP_CRASH_CHILD_PATH, LORAKEEP_CRASH_CHILD_PATH, mode, run.c_str(), log.c_str(), nullptr);
      ::_exit(127);
    }
    // Wait for this incarnation to announce itself, then kill it at a random moment.
    for (int i = 0; i < 3000 && ready_lines() == ready_before; ++i) ::usleep(2000);
    ::usleep(static_cast<useconds_t>(delay_ms(rng)) * 1000);
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFSIGNALED(status));

    // What the child said: committed steps (done) and the one in flight.
    std::map<std::int64_t, double> done = committed_unlogged;
    std::optional<std::pair<std::int64_t, double>> in_flight;
    std::size_t dones = 0;
    {
      std::ifstream in(log);
      std::map<std::int64_t, double> begun;
      for (std::string line; std::getline(in, line);) {
        std::istringstream ss(line);
        std::string word;
        ss >> word;
        if (word == "begin") {
          std::int64_t step;
          std::string m;
          ss >> step >> m;
          begun[step] = m == "nan" ? std::nan("") : std::stod(m);
          in_flight = std::make_pair(step, begun[step]);
        } else if (word == "ready") {
          in_flight.reset();  // a new incarnation: only its own save can be in flight
        } else if (word == "done") {
          std::int64_t step;
          ss >> step;
          done[step] = begun.at(step);
          in_flight.reset();
          ++dones;
        }
      }
    }
    INFO("trial " << trial << " (seed " << seed << "), " << done.size() << " saves committed");
    CheckpointManager ckpt(test::crash_options(run));  // the lock is free: the holder died
    for (const auto& e : fs::directory_iterator(run)) {
      CHECK_FALSE(detail::is_temp_checkpoint_dir_name(e.path().filename().string()));
    }
    const std::set<std::int64_t> on_disk = test::checkpoint_steps(run);
    std::set<std::int64_t> listed;
    for (const auto& c : ckpt.checkpoints()) listed.insert(c.step);
    CHECK(listed == on_disk);  // every directory there is complete
    for (std::int64_t step : on_disk) {
      const std::string path = run + "/" + detail::checkpoint_dir_name(step);
      CHECK_NOTHROW(detail::check_checkpoint_files(path, detail::read_manifest(path), /*full=*/true));
    }
    // Required: the kept set of every committed save (none lost). Allowed
    // besides: what rotation had yet to delete when the kill came (the kept
    // set before the in-flight save, and the previous trial's extras if no
    // save has completed since). Nothing else: no partial or stray checkpoint.
    std::set<std::int64_t> allowed = keep(done);
    if (in_flight) ++mid_save;
    if (in_flight && on_disk.count(in_flight->first)) {
      committed_unlogged[in_flight->first] = in_flight->second;
      done[in_flight->first] = in_flight->second;
    }
    const std::set<std::int64_t> required = keep(done);
    allowed.insert(required.begin(), required.end());
    if (dones == dones_before) allowed.insert(stale.begin(), stale.end());
    for (std::int64_t s : required) CHECK(on_disk.count(s) == 1);
    for (std::int64_t s : on_disk) CHECK(allowed.count(s) == 1);
    stale.clear();
    for (std::int64_t s : on_disk) {
      if (!required.count(s)) stale.insert(s);
    }
    dones_before = dones;
    if (auto best = ckpt.best()) {
      Net net = fresh_net(trial);
      CHECK_NOTHROW(ckpt.load_best_into(*net));
    }
  }
  return mid_save;
}

}  // namespace

// Default run: 25 kills (about 25 s); scripts/test.sh --slow adds the 200-kill
// run below. RELIABILITY.md records both.
TEST_CASE("saves killed at random moments never leave a partial checkpoint or lose a committed one",
          "[reliability][expensive]") {
  const int mid_save = run_kill_trials(25, 20261122);
  INFO("kills during a save: " << mid_save);
  CHECK(mid_save >= 1);
}

TEST_CASE("saves off the training thread killed at random moments never leave a partial checkpoint",
          "[reliability][expensive]") {
  const int mid_save = run_kill_trials(20, 20261202, "loop-async");
  INFO("kills during a save: " << mid_save);
  CHECK(mid_save >= 1);
}

TEST_CASE("two hundred random kills mid-save leave only complete checkpoints", "[reliability][slow]") {
  const int mid_save = run_kill_trials(200, 42);
  INFO("kills during a save: " << mid_save);
  CHECK(mid_save >= 20);
}

TEST_CASE("every file of a checkpoint damaged in every way is caught naming it and changes nothing", "[reliability]") {
  test::TempDir dir;
  const std::string pristine = dir / "pristine";
  {
    Net net = fresh_net(1);
    std::vector<torch::Tensor> trainable;
    for (auto& p : net->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    torch::optim::Adam adam(trainable, torch::optim::AdamOptions(1e-2));
    CheckpointOptions o = test::crash_options(pristine);
    o.save_total_limit = 0;
    CheckpointManager ckpt(o);
    TrainingState state;
    for (int step = 1; step <= 3; ++step) {
      adam.zero_grad();
      net->v_proj(net->q_proj(torch::ones({2, 64}))).sum().backward();
      adam.step();
      state.global_step = step;
      state.record_evaluation({{"eval_loss", step == 2 ? 0.5 : 1.0}});  // step 2 is the best
      ckpt.save(*net, test::crash_lora(), state, &adam);
    }
  }
  const std::vector<std::string> files = {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json",
                                          "lorakeep_manifest.json", "lorakeep_optimizer.pt"};
  const std::vector<std::string> damages = {"flip", "truncate", "delete", "empty"};
  int cases = 0;
  for (const std::string& file : files) {
    for (const std::string& damage : damages) {
      INFO(file << ": " << damage);
      const std::string run = dir / ("case-" + std::to_string(cases++));
      REQUIRE(test::run_shell("cp -a '" + pristine + "' '" + run + "'").exit_code == 0);
      CheckpointOptions o = test::crash_options(run);
      o.save_total_limit = 0;
      CheckpointManager before_damage(o);  // a long-running manager, opened before the damage
      const std::string target = run + "/checkpoint-2/" + file;
      const std::uint64_t size = fs::file_size(target);
      if (damage == "flip") {
        test::flip_byte(target, size / 2, 0x01);
      } else if (damage == "truncate") {
        fs::resize_file(target, size / 2);
      } else if (damage == "delete") {
        fs::remove(target);
      } else {
        fs::resize_file(target, 0);
      }
      const auto verify = test::run_process({test::cli_path(), "verify", run + "/checkpoint-2"});
      CHECK(verify.exit_code == 1);
      CHECK_THAT(verify.err, Contains(file));

      Net live = fresh_net(7);
      const NamedTensors untouched = snapshot(live);
      const Error e = test::capture_error([&] { before_damage.load_best_into(*live); });
      CHECK((e.code() == ErrorCode::kCorruption || e.code() == ErrorCode::kNotFound));
      CHECK_THAT(e.what(), Contains("checkpoint-2/" + file));
      CHECK(test::bitwise_equal(snapshot(live), untouched));
      if (file == "lorakeep_manifest.json") {
        // Without a valid manifest the directory does not count at all.
        std::set<std::int64_t> steps;
        const detail::RunDirScan scan = detail::scan_run_dir(run);
        for (const auto* c : scan.valid()) steps.insert(c->step);
        CHECK(steps == std::set<std::int64_t>{1, 3});
      }
    }
  }
  CHECK(cases == 20);
}

namespace {

struct SaveOutcome {
  int exit_code;
  std::string out;
};

// One save of `step` by a child process with the shell limits `limits`
// (e.g. "ulimit -f 4"); SIGXFSZ is ignored, as a daemon would.
SaveOutcome save_in_child(const std::string& run, std::int64_t step, const std::string& limits) {
  const auto r = test::run_shell("trap '' XFSZ; " + limits + "; exec '" + std::string(LORAKEEP_CRASH_CHILD_PATH) +
                                 "' save-once '" + run + "' " + std::to_string(step));
  return {r.exit_code, r.out + r.err};
}

// After a failed save: no temp directory, no new checkpoint, the earlier
// ones intact.
void check_nothing_partial(const std::string& run, const std::set<std::int64_t>& committed) {
  for (const auto& e : fs::directory_iterator(run)) {
    CHECK_FALSE(detail::is_temp_checkpoint_dir_name(e.path().filename().string()));
  }
  CHECK(test::checkpoint_steps(run) == committed);
  for (std::int64_t step : committed) {
    const std::string path = run + "/" + detail::checkpoint_dir_name(step);
    CHECK_NOTHROW(detail::check_checkpoint_files(path, detail::read_manifest(path), /*full=*/true));
  }
}

}  // namespace

TEST_CASE("saves that hit the file size limit fail with kIOError and leave earlier checkpoints intact",
          "[reliability]") {
  test::TempDir dir;
  const std::string run = dir / "run";
  REQUIRE(save_in_child(run, 1, "true").exit_code == 0);
  const std::set<std::int64_t> committed = {1};
  // The file size limit in KiB: below the adapter, below the optimizer state
  // (the largest file), and so on; every one must fail cleanly.
  int failures = 0;
  for (int kib : {0, 1, 4, 8, 12, 16}) {
    INFO("ulimit -f " << kib);
    const SaveOutcome o = save_in_child(run, 2, "ulimit -f " + std::to_string(kib));
    if (o.exit_code == 0) continue;  // everything fit
    ++failures;
    CHECK(o.exit_code == 1);
    CHECK_THAT(o.out, Contains("error io_error") && Contains("File too large") && Contains(".tmp-checkpoint-2-"));
    check_nothing_partial(run, committed);
  }
  CHECK(failures >= 4);
  REQUIRE(save_in_child(run, 2, "true").exit_code == 0);  // space is back: the next save succeeds
  CHECK(test::checkpoint_steps(run) == std::set<std::int64_t>{1, 2});
}

TEST_CASE("saves on a full tmpfs fail at every stage and the next save after space returns succeeds", "[reliability]") {
  test::TempDir dir;
  const std::string mnt = dir / "disk";
  fs::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    test::skip_unless_ci(std::string("cannot mount a tmpfs here (") + std::strerror(errno) + "): run as root");
    return;
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount(path.c_str()); }
  } unmount{mnt};
  const std::string run = mnt + "/run";
  REQUIRE(save_in_child(run, 1, "true").exit_code == 0);
  const std::uint64_t one_checkpoint = [&] {
    std::uint64_t total = 0;
    for (const auto& e : fs::recursive_directory_iterator(run + "/checkpoint-1")) {
      if (fs::is_regular_file(e.path())) total += fs::file_size(e.path());
    }
    return total;
  }();
  const std::set<std::int64_t> committed = {1};
  std::set<std::string> stages;  // which file each failure hit
  for (std::uint64_t free_bytes = 0; free_bytes < one_checkpoint + 16384; free_bytes += 4096) {
    // Fill the disk to leave `free_bytes`.
    const std::string filler = mnt + "/filler";
    const std::uint64_t room = fs::space(mnt).available;
    if (room > free_bytes) {
      REQUIRE(test::run_shell("fallocate -l " + std::to_string(room - free_bytes) + " '" + filler + "'").exit_code ==
              0);
    }
    const SaveOutcome o = save_in_child(run, 2, "true");
    fs::remove(filler);
    INFO("free " << free_bytes << " bytes: " << o.out);
    if (o.exit_code == 0) {
      fs::remove_all(run + "/checkpoint-2");
      continue;
    }
    CHECK_THAT(o.out, Contains("error io_error") && Contains("No space left on device"));
    for (const char* file : {"adapter_model.safetensors", "adapter_config.json", "lorakeep_optimizer.pt",
                             "lorakeep_rng.safetensors", "trainer_state.json", "lorakeep_manifest.json"}) {
      if (o.out.find(file) != std::string::npos) stages.insert(file);
    }
    check_nothing_partial(run, committed);
  }
  INFO("stages that ran out of space: " << stages.size());
  CHECK(stages.size() == 6);  // every file of a checkpoint ran out of space once
  REQUIRE(save_in_child(run, 2, "true").exit_code == 0);
  CHECK(test::checkpoint_steps(run) == std::set<std::int64_t>{1, 2});
}

TEST_CASE("ten thousand adapter tensors load within the memory bounds", "[reliability]") {
  test::TempDir dir;
  NamedTensors file, live;
  for (int i = 0; i < 10000; ++i) {
    file.emplace_back("t." + std::to_string(i), at::full({8, 16}, static_cast<double>(i)));
    live.emplace_back("t." + std::to_string(i), at::zeros({8, 16}));
  }
  const SaveReport saved = save_safetensors(dir / "many.safetensors", file);
  LoadOptions options;
  for (std::size_t i = 0; i < saved.tensors.size(); ++i)
    options.checksums[saved.tensors[i].name] = saved.tensor_checksums[i];
  AllocationProbe probe;
  RssProbe rss;
  const TransferReport r = load_into(live, *open_tensor_source(dir / "many.safetensors"), options);
  INFO(r.summary());
  CHECK(r.tensors == 10000);
  CHECK(probe.peak_bytes() == 0);
  if (!test::kUnderSanitizer) CHECK(rss.peak_extra_bytes() <= 64 * kMiB);
  CHECK(at::equal(live[9999].second, file[9999].second));
}

TEST_CASE("a single tensor of more than 1 GiB loads within the memory bounds", "[reliability][large]") {
  test::TempDir dir;
  const std::int64_t rows = 16384 + 16, cols = 16384;  // 1 GiB + 1 MiB of F32
  {
    const NamedTensors big = {{"w", at::full({rows, cols}, 0.25)}};
    save_safetensors(dir / "big.safetensors", big);
  }
  const NamedTensors live = {{"w", at::zeros({rows, cols})}};
  {
    AllocationProbe probe;
    RssProbe rss;
    const TransferReport r = load_into(live, *open_tensor_source(dir / "big.safetensors"));
    INFO(r.summary());
    CHECK(probe.peak_bytes() == 0);
    if (!test::kUnderSanitizer) CHECK(rss.peak_extra_bytes() <= 64 * kMiB);
  }
  CHECK(live[0].second[rows - 1][cols - 1].item<float>() == 0.25f);
  // Into BF16 parameters: a conversion per piece, staging bounded by one chunk.
  const NamedTensors half = {{"w", at::zeros({rows, cols}, at::kBFloat16)}};
  AllocationProbe probe;
  load_into(half, *open_tensor_source(dir / "big.safetensors"));
  CHECK(probe.peak_bytes() <= 64 * kMiB);
  CHECK(half[0].second[rows - 1][cols - 1].item<float>() == 0.25f);
}

TEST_CASE("readers of a run directory never see a partial checkpoint while a writer saves", "[reliability]") {
  test::TempDir dir;
  const std::string run = dir / "run";
  std::atomic<bool> stop{false};
  std::atomic<int> checked{0}, problems{0};
  std::string problem;
  std::mutex mu;
  std::thread writer([&] {
    Net net = fresh_net(3);
    CheckpointManager ckpt(test::crash_options(run));
    TrainingState state;
    for (int step = 1; step <= 60; ++step) {
      {
        torch::NoGradGuard no_grad;
        for (auto& p : net->parameters()) {
          if (p.requires_grad()) p.add_(0.01);
        }
      }
      state.global_step = step;
      state.record_evaluation({{"eval_loss", 1.0 + std::sin(step)}});
      ckpt.save(*net, test::crash_lora(), state);
    }
    stop = true;
  });
  auto reader = [&] {
    while (!stop) {
      if (!fs::exists(run)) continue;
      const detail::RunDirScan scan = detail::scan_run_dir(run);
      for (const auto& c : scan.checkpoints) {
        try {
          if (!c.manifest) throw Error(c.problem_code, c.problem);
          detail::check_checkpoint_files(c.path, *c.manifest, /*full=*/true);
          ++checked;
        } catch (const Error& e) {
          // Rotation may delete a checkpoint under a reader: fine. A
          // directory still there that fails is a partial checkpoint.
          if (fs::exists(c.path)) {
            ++problems;
            std::lock_guard<std::mutex> lock(mu);
            problem = e.what();
          }
        }
      }
    }
  };
  std::thread r1(reader), r2(reader);
  // And a reader in another process, as a shell pipeline would be.
  int cli_runs = 0, cli_failures = 0;
  while (!stop) {
    const auto r = test::run_process({test::cli_path(), "best", run, "--json"});
    ++cli_runs;
    if (r.exit_code != 0 && r.err.find("no committed checkpoint") == std::string::npos &&
        r.err.find("does not exist") == std::string::npos && r.err.find("was evaluated") == std::string::npos) {
      ++cli_failures;
    }
  }
  writer.join();
  r1.join();
  r2.join();
  INFO(problem);
  CHECK(problems == 0);
  CHECK(checked > 20);
  CHECK(cli_runs >= 1);
  CHECK(cli_failures == 0);
}

}  // namespace lorakeep
