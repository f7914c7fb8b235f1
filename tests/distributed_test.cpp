// Several ranks on loopback: real processes (tests/dist_child.cpp), a real
// c10d TCPStore, real kills. The test process hosts the store on an
// ephemeral port, as torchrun's agent does (TORCHELASTIC_USE_AGENT_STORE),
// so that tests run side by side and a dead rank 0 does not take the store
// with it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/filesystem.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "lorakeep/distributed.h"
#include "lorakeep/lorakeep.h"
#include "base/file_names.h"
#include "checkpoint/coordination.h"
#include "dist_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using test::TempDir;

struct Rank {
  int exit_code = -1;
  std::vector<std::string> lines;  // stdout
  std::string err;

  // The lines starting with `word` (without it).
  std::vector<std::string> with(const std::string& word) const {
    std::vector<std::string> out;
    for (const std::string& l : lines) {
      if (l.rfind(word + " ", 0) == 0) out.push_back(l.substr(word.size() + 1));
    }
    return out;
  }
  std::string all() const {
    std::string out;
    for (const std::string& l : lines) out += l + "\n";
    return out + err;
  }
};

// A job of `world` processes running `command` (a shell command line) on a
// fresh store hosted here, with torchrun's environment. `env` is added to
// every rank's environment; `kill_rank` >= 0 is SIGKILLed `kill_after_ms`
// after it printed "ready".
// `wrapper` runs the job's script, given as "$0" (e.g. in a mount namespace).
std::vector<Rank> run_ranks(const TempDir& scratch, int world, const std::string& command, const std::string& env,
                            int kill_rank = -1, int kill_after_ms = 0, const std::string& wrapper = "") {
  c10d::TCPStoreOptions o;
  o.port = 0;
  o.isServer = true;
  o.waitWorkers = false;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  std::ostringstream script;
  script << "cd " << scratch.path() << " && rm -f out.* err.* rc.*\n";
  for (int r = 0; r < world; ++r) {
    script << "(RANK=" << r << " LOCAL_RANK=" << r << " WORLD_SIZE=" << world << " LOCAL_WORLD_SIZE=" << world
           << " MASTER_ADDR=127.0.0.1 MASTER_PORT=" << store->getPort() << " TORCHELASTIC_USE_AGENT_STORE=True " << env
           << " exec " << command << " > out." << r << " 2> err." << r << ") & pid" << r << "=$!\n";
  }
  if (kill_rank >= 0) {
    // The clock starts when the victim has resumed (start-up time varies with the load).
    script << "for i in $(seq 1200); do grep -q '^ready' out." << kill_rank
           << " 2>/dev/null && break; sleep 0.05; done\n";
    script << "sleep " << kill_after_ms / 1000.0 << "; kill -9 $pid" << kill_rank << "\n";
  }
  for (int r = 0; r < world; ++r) script << "wait $pid" << r << "; echo $? > rc." << r << "\n";
  test::write_file(scratch / "job.sh", script.str());
  const test::ProcessResult shell = test::run_shell((wrapper.empty() ? "bash" : wrapper) + " " + (scratch / "job.sh"));
  INFO(shell.out << shell.err);
  REQUIRE(shell.exit_code == 0);
  std::vector<Rank> ranks(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    Rank& rank = ranks[static_cast<std::size_t>(r)];
    rank.exit_code = std::stoi(test::read_file(scratch / ("rc." + std::to_string(r))));
    std::istringstream out(test::read_file(scratch / ("out." + std::to_string(r))));
    for (std::string line; std::getline(out, line);) rank.lines.push_back(line);
    rank.err = test::read_file(scratch / ("err." + std::to_string(r)));
  }
  return ranks;
}

// A job of `world` dist_child ranks (see run_ranks). `launcher` goes before
// the child's command line (which it gets as "$0" "$@").
std::vector<Rank> run_job(const TempDir& scratch, const std::string& run_dir, int world, int steps,
                          const std::string& env = "", int kill_rank = -1, int kill_after_ms = 0,
                          const std::string& launcher = "") {
  return run_ranks(scratch, world,
                   launcher + " " + LORAKEEP_DIST_CHILD_PATH + " " + run_dir + " " + std::to_string(steps), env,
                   kill_rank, kill_after_ms);
}

// `command` (a program and its arguments) on 2 ranks under torchrun, in
// `scratch`. The workers' stdout goes to files and to torchrun's
// ("[default<r>]:line"). Explicit --redirects/--tee: Debian's torchrun 1.13
// cannot parse their default "0" under Python 3.11 (enum.Flag no longer
// lists its zero member).
test::ProcessResult torchrun(const TempDir& scratch, const std::string& command) {
  return test::run_shell("cd " + scratch.path() +
                         " && torchrun --standalone --nproc_per_node=2 --no_python --redirects 1 --tee 1 "
                         "--log_dir logs " +
                         command);
}

double global_metric(std::int64_t step, int world) {
  std::vector<std::pair<std::int64_t, Metrics>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back({r + 1, {{"eval_loss", test::dist_metric(step, r)}}});
  return detail::weighted_mean(ranks).at("eval_loss");
}

void require_verified(const std::string& run_dir) {
  const test::ProcessResult verify = test::run_process({test::cli_path(), "verify", run_dir});
  INFO(verify.out << verify.err);
  REQUIRE(verify.exit_code == 0);
}

}  // namespace

TEST_CASE("the metrics of the ranks reduce to their sample-weighted mean, NaN if any is NaN", "[distributed]") {
  const Metrics m = detail::weighted_mean(
      {{1, {{"eval_loss", 1.0}, {"acc", 0.5}}}, {3, {{"eval_loss", 2.0}, {"acc", 1.0}}}});
  CHECK(m.at("eval_loss") == Approx(1.75));
  CHECK(m.at("acc") == Approx(0.875));
  CHECK(std::isnan(detail::weighted_mean({{1, {{"x", 1.0}}}, {1, {{"x", std::nan("")}}}}).at("x")));
  const Error e = test::capture_error([] { detail::weighted_mean({{1, {{"x", 1.0}}}, {1, {{"y", 1.0}}}}); });
  CHECK(e.code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(e.what(), Catch::Contains("'y' of rank 1"));
  // One process: no store, the values as they are.
  Coordinator alone;
  CHECK(alone.world_size() == 1);
  CHECK(alone.reduce_metrics({{"x", 2.0}}, 5).at("x") == 2.0);
  CHECK(alone.all_gather("x", "abc") == std::vector<std::string>{"abc"});
}

TEST_CASE("a coordinator names the rank that does not arrive within its timeout", "[distributed]") {
  c10d::TCPStoreOptions o;
  o.port = 0;
  o.isServer = true;
  o.waitWorkers = false;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  CoordinatorOptions co;
  co.timeout = std::chrono::milliseconds(2000);  // rank 1's thread arrives well within it, even on a loaded machine
  // Each rank with a connection of its own, as ranks have (a TCPStore client
  // serializes its calls: a blocking wait of one would hold up the others).
  c10d::TCPStoreOptions client;
  client.port = store->getPort();
  client.waitWorkers = false;
  Coordinator rank0(store, 0, 3, co);
  Coordinator rank1(c10::make_intrusive<c10d::TCPStore>("127.0.0.1", client), 1, 3, co);
  Coordinator rank2(c10::make_intrusive<c10d::TCPStore>("127.0.0.1", client), 2, 3, co);
  std::string error1;
  std::thread t([&] {
    try {
      rank1.all_gather("test", "one");
    } catch (const Error& e) {
      error1 = e.what();
    }
  });
  const Error e = test::capture_error([&] { rank0.all_gather("gather of the test", "zero"); });
  t.join();
  (void)rank2;
  CHECK(e.code() == ErrorCode::kIOError);
  CHECK_THAT(e.what(), Catch::Contains("rank 2 did not arrive at the gather of the test"));
  CHECK_THAT(e.what(), !Catch::Contains("rank 1 did"));
  CHECK_THAT(error1, Catch::Contains("rank 2 did not arrive at the test within 2 s"));
  // A bad rank or world size is refused.
  CHECK(test::capture_error([&] { Coordinator(store, 3, 3); }).code() == ErrorCode::kInvalidArgument);
}

TEST_CASE("N ranks save into one run directory and agree on every checkpoint, metric and best",
          "[distributed][expensive]") {
  for (const int world : {2, 3, 4}) {
    DYNAMIC_SECTION("world size " << world) {
      TempDir scratch;
      const std::string run_dir = scratch / "run";
      const int steps = world == 2 ? 14 : 6;  // 13 has a NaN metric
      const std::vector<Rank> ranks = run_job(scratch, run_dir, world, steps);
      for (const Rank& r : ranks) {
        INFO(r.all());
        REQUIRE(r.exit_code == 0);
        CHECK(r.with("saved").size() == static_cast<std::size_t>(steps));
        CHECK(r.with("saved") == ranks[0].with("saved"));
        CHECK(r.with("best") == ranks[0].with("best"));
        CHECK(r.with("state") == ranks[0].with("state"));
        CHECK(r.with("reloaded") == ranks[0].with("reloaded"));
      }
      // Each save recorded the sample-weighted mean of the ranks' values.
      for (const std::string& line : ranks[0].with("saved")) {
        std::istringstream in(line);
        std::int64_t step = 0;
        std::string value;
        in >> step >> value;
        const double expected = global_metric(step, world);
        if (std::isnan(expected)) {
          CHECK(value == "nan");
        } else {
          CHECK(std::stod(value) == Approx(expected).epsilon(1e-12));
        }
      }
      // The reload wrote into the live parameters: no allocation on the way.
      const std::string reloaded = ranks[0].with("reloaded").at(0);
      CHECK(reloaded.substr(reloaded.find(' ') + 1) == "0");
      // One directory per kept checkpoint, each with every rank's RNG file.
      const std::set<std::int64_t> kept = test::checkpoint_steps(run_dir);
      CHECK(kept.size() >= 2);
      CHECK(kept.count(steps));
      for (const std::int64_t s : kept) {
        for (int r = 0; r < world; ++r) {
          CHECK(
              ::access((run_dir + "/" + detail::checkpoint_dir_name(s) + "/" + detail::rng_file_name(r, world)).c_str(),
                       F_OK) == 0);
        }
      }
      require_verified(run_dir);

      // A restarted job resumes on every rank from the newest checkpoint.
      const std::vector<Rank> again = run_job(scratch, run_dir, world, steps + 1);
      for (const Rank& r : again) {
        INFO(r.all());
        REQUIRE(r.exit_code == 0);
        CHECK(r.with("ready") == std::vector<std::string>{std::to_string(steps)});
        CHECK(r.with("saved").size() == 1);
      }
    }
  }
}

TEST_CASE("saves off the training thread: every rank agrees, rank 0 writes in the background",
          "[distributed][async][expensive]") {
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  const std::vector<Rank> ranks = run_job(scratch, run_dir, 3, 6, "LK_ASYNC=1");
  for (const Rank& r : ranks) {
    INFO(r.all());
    REQUIRE(r.exit_code == 0);
    CHECK(r.with("saved").size() == 6);
    CHECK(r.with("saved") == ranks[0].with("saved"));
    CHECK(r.with("best") == ranks[0].with("best"));
    CHECK(r.with("state") == ranks[0].with("state"));
    CHECK(r.with("reloaded") == ranks[0].with("reloaded"));
    CHECK(r.with("reloaded") != std::vector<std::string>{});
  }
  CHECK(test::checkpoint_steps(run_dir).count(6) == 1);
  require_verified(run_dir);
  const std::vector<Rank> again = run_job(scratch, run_dir, 3, 7, "LK_ASYNC=1");
  for (const Rank& r : again) {
    INFO(r.all());
    REQUIRE(r.exit_code == 0);
    CHECK(r.with("ready") == std::vector<std::string>{"6"});
  }
}

TEST_CASE("rank 0's failed save fails on every rank, keeps what was committed, and the next save works",
          "[distributed][expensive]") {
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  const std::vector<Rank> ranks = run_job(scratch, run_dir, 3, 5, "LK_FSIZE_STEP=3");
  for (const Rank& r : ranks) {
    INFO(r.all());
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.with("save-error").size() == 1);
    CHECK_THAT(r.with("save-error")[0], Catch::StartsWith("3 io_error rank 0: "));
    CHECK(r.with("saved").size() == 4);  // 1, 2, 4, 5
    CHECK(r.with("state") == ranks[0].with("state"));
  }
  CHECK(test::checkpoint_steps(run_dir).count(3) == 0);
  CHECK(test::checkpoint_steps(run_dir).count(5) == 1);
  require_verified(run_dir);
}

TEST_CASE("rank 0's save on a full file system fails on every rank, and the next save works",
          "[distributed][expensive]") {
  if (!test::can_unshare_mounts()) return;
  // The run directory on a 16 MiB tmpfs that every rank sees (one mount
  // namespace for the whole job); rank 0 fills it before the save of step 3.
  TempDir scratch;
  const std::string small = scratch / "small";
  const std::string run_dir = small + "/run";
  test::run_shell("mkdir -p " + small);
  const std::vector<Rank> ranks = run_ranks(
      scratch, 3, std::string(LORAKEEP_DIST_CHILD_PATH) + " " + run_dir + " 5", "LK_FILL_STEP=3", -1, 0,
      "unshare -m --propagation private bash -c 'mount -t tmpfs -o size=16m tmpfs " + small +
          " && bash \"$0\" && cp -a " + run_dir + " " + (scratch / "kept") + "'");
  for (const Rank& r : ranks) {
    INFO(r.all());
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.with("save-error").size() == 1);
    CHECK_THAT(r.with("save-error")[0], Catch::StartsWith("3 io_error rank 0: "));
    CHECK_THAT(r.with("save-error")[0], Catch::Contains("No space left on device"));
    CHECK(r.with("saved").size() == 4);  // 1, 2, 4, 5
    CHECK(r.with("state") == ranks[0].with("state"));
  }
  // What the tmpfs held at the end, copied out before it went away.
  const std::string kept = scratch / "kept";
  CHECK(test::checkpoint_steps(kept).count(3) == 0);
  CHECK(test::checkpoint_steps(kept).count(5) == 1);
  require_verified(kept);
}

TEST_CASE("replicas that differ fail the save on every rank, naming the rank", "[distributed][expensive]") {
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  const std::vector<Rank> ranks = run_job(scratch, run_dir, 3, 4, "LK_DIVERGE_RANK=2 LK_DIVERGE_STEP=2");
  for (const Rank& r : ranks) {
    INFO(r.all());
    CHECK(r.exit_code == 1);
    REQUIRE(r.with("save-error").size() == 1);
    CHECK_THAT(r.with("save-error")[0], Catch::StartsWith("2 incompatible "));
    CHECK_THAT(r.with("save-error")[0], Catch::Contains("the adapter of rank 2 is not rank 0's"));
  }
  CHECK(test::checkpoint_steps(run_dir) == std::set<std::int64_t>{1});
}

TEST_CASE("a reload that fails validation on one rank changes no rank", "[distributed][expensive]") {
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  const std::vector<Rank> ranks = run_job(scratch, run_dir, 3, 3, "LK_BAD_LOAD_RANK=1");
  for (const Rank& r : ranks) {
    INFO(r.all());
    CHECK(r.exit_code == 1);
    REQUIRE(r.with("error").size() == 1);
    CHECK_THAT(r.with("error")[0], Catch::StartsWith("incompatible rank 1: "));
    CHECK(r.with("trained") == r.with("adapter"));  // unchanged
  }
}

TEST_CASE("a run directory that the ranks do not share is refused on every rank", "[distributed][expensive]") {
  TempDir scratch;
  const std::vector<Rank> ranks = run_job(scratch, scratch / "run", 2, 1, "LK_PRIVATE_DIR=1");
  for (const Rank& r : ranks) {
    INFO(r.all());
    CHECK(r.exit_code == 1);
    REQUIRE(r.with("error").size() == 1);
    CHECK_THAT(r.with("error")[0], Catch::StartsWith("invalid_argument rank 1: run directory"));
    CHECK_THAT(r.with("error")[0], Catch::Contains("is not shared between the ranks"));
  }
}

TEST_CASE("a run directory on a private mount of each rank is refused on every rank", "[distributed][expensive]") {
  // Each rank in its own mount namespace with a tmpfs of its own at the same
  // path: what a node-local directory looks like to a job on several nodes.
  if (!test::can_unshare_mounts()) return;
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  test::run_shell("mkdir -p " + run_dir);
  const std::vector<Rank> ranks = run_job(
      scratch, run_dir, 2, 1, "", -1, 0,
      "unshare -m --propagation private bash -c 'mount -t tmpfs tmpfs " + run_dir + " && exec \"$0\" \"$@\"'");
  for (const Rank& r : ranks) {
    INFO(r.all());
    CHECK(r.exit_code == 1);
    REQUIRE(r.with("error").size() == 1);
    CHECK_THAT(r.with("error")[0], Catch::StartsWith("invalid_argument rank 1: run directory"));
    CHECK_THAT(r.with("error")[0], Catch::Contains("is not shared between the ranks"));
  }
  CHECK(test::checkpoint_steps(run_dir).empty());
}

TEST_CASE("a rank killed at a random moment: the others fail naming it, only complete checkpoints stay, "
          "and the job resumes on every rank",
          "[distributed][expensive]") {
  std::mt19937 rng(20261202);
  const int trials = 20;
  int after_a_commit = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const int victim = trial % 3 == 0 ? 0 : 2;  // rank 0 (the writer) every third trial
    const int after_ms = std::uniform_int_distribution<int>(0, 1500)(rng);
    INFO("trial " << trial << ": rank " << victim << " killed after " << after_ms << " ms");
    TempDir scratch;
    const std::string run_dir = scratch / "run";
    const std::vector<Rank> ranks = run_job(scratch, run_dir, 3, 100000, "LK_TIMEOUT_MS=1500", victim, after_ms);
    for (int r = 0; r < 3; ++r) {
      const Rank& rank = ranks[static_cast<std::size_t>(r)];
      INFO("rank " << r << ":\n" << rank.all());
      if (r == victim) continue;
      CHECK(rank.exit_code == 1);
      const std::string failure = rank.with("save-error").empty()
                                      ? (rank.with("error").empty() ? "" : rank.with("error")[0])
                                      : rank.with("save-error")[0];
      CHECK_THAT(failure, Catch::Contains("rank " + std::to_string(victim) + " did not arrive") ||
                              Catch::Contains("did not arrive at the outcome"));
    }
    const std::set<std::int64_t> kept = test::checkpoint_steps(run_dir);
    if (kept.empty()) continue;  // killed before the first commit
    ++after_a_commit;
    require_verified(run_dir);
    const std::vector<Rank> again = run_job(scratch, run_dir, 3, *kept.rbegin() + 1);
    for (const Rank& r : again) {
      INFO(r.all());
      REQUIRE(r.exit_code == 0);
      CHECK(r.with("ready") == std::vector<std::string>{std::to_string(*kept.rbegin())});
    }
  }
  INFO("trials killed after a commit: " << after_a_commit);
  CHECK(after_a_commit >= trials / 2);
}

TEST_CASE("two ranks under torchrun's own launcher save, agree and reload", "[distributed][expensive]") {
  if (!test::have_torchrun()) return;
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  const test::ProcessResult run = torchrun(scratch, std::string(LORAKEEP_DIST_CHILD_PATH) + " " + run_dir + " 3");
  INFO(run.out << run.err);
  REQUIRE(run.exit_code == 0);
  std::istringstream in(run.out);
  std::vector<std::string> reloaded;
  for (std::string line; std::getline(in, line);) {
    if (line.find("]:reloaded ") != std::string::npos) reloaded.push_back(line.substr(line.find("]:") + 2));
  }
  REQUIRE(reloaded.size() == 2);
  CHECK(reloaded[0] == reloaded[1]);                                       // both ranks, the same adapter
  CHECK(test::checkpoint_steps(run_dir) == std::set<std::int64_t>{2, 3});  // the newest 2, the best among them
  require_verified(run_dir);
}

TEST_CASE("the data-parallel example under torchrun: one run directory, the same adapter reloaded on both ranks",
          "[distributed][expensive]") {
  if (!test::have_torchrun()) return;
  TempDir scratch;
  const std::string run_dir = scratch / "run";
  const test::ProcessResult run = torchrun(scratch, std::string(LORAKEEP_DDP_LORA_PATH) + " --config " +
                                                        test::ddp_example_config(scratch.path()) + " --output-dir " +
                                                        run_dir);
  INFO(run.out << run.err);
  REQUIRE(run.exit_code == 0);
  const std::map<int, std::string> reloaded = test::reloaded_adapters(run.out);
  REQUIRE(reloaded.size() == 2);
  CHECK(reloaded.at(0) == reloaded.at(1));
  // Rank 0's last line is the run directory.
  std::string last;
  std::istringstream in(run.out);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("[default0]:", 0) == 0) last = line.substr(11);
  }
  CHECK(last == run_dir);
  CHECK(test::checkpoint_steps(run_dir) == std::set<std::int64_t>{25, 50});
  for (const std::int64_t step : {25, 50}) {
    for (int r = 0; r < 2; ++r) {
      CHECK(boost::filesystem::exists(run_dir + "/checkpoint-" + std::to_string(step) + "/" +
                                      detail::rng_file_name(r, 2)));
    }
  }
  require_verified(run_dir);
}

TEST_CASE("the example's replicas stay equal with gradients averaged through the store, and fail the save without",
          "[distributed][expensive]") {
  TempDir scratch;
  const std::string config = test::ddp_example_config(scratch.path());
  const std::string example = std::string(LORAKEEP_DDP_LORA_PATH) + " --config " + config + " --output-dir ";
  SECTION("averaged through the c10d store, as a build without gloo does") {
    const std::vector<Rank> ranks = run_ranks(scratch, 2, example + (scratch / "store") + " --grad-sync store", "");
    std::set<std::string> hexes;
    for (const Rank& r : ranks) {
      INFO(r.all());
      REQUIRE(r.exit_code == 0);
      const std::map<int, std::string> reloaded = test::reloaded_adapters(r.all());
      REQUIRE(reloaded.size() == 1);
      hexes.insert(reloaded.begin()->second);
    }
    CHECK(hexes.size() == 1);
    require_verified(scratch / "store");
  }
  SECTION("not averaged: the first save fails on both ranks, naming rank 1") {
    const std::vector<Rank> ranks = run_ranks(scratch, 2, example + (scratch / "none") + " --grad-sync none", "");
    for (const Rank& r : ranks) {
      INFO(r.all());
      CHECK(r.exit_code == 1);
      CHECK_THAT(r.err, Catch::Contains("the replicas differ at the save of step 25: the adapter of rank 1 is not "
                                        "rank 0's"));
    }
    CHECK(test::checkpoint_steps(scratch / "none").empty());
  }
}

}  // namespace lorakeep
