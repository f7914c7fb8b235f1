// Chained kills: one training run (the program of resume_program.h, run as
// resume_child) SIGKILLed at seeded random moments and resumed, again and
// again, ends with the bytes of the run that was never killed: the final
// adapter and optimizer state, the adapter of every save any incarnation
// began, and the kept checkpoints with their metrics history and best. One
// rank, and several ranks coordinated through a store hosted here (as
// torchrun's agent hosts it), with saves on and off the training thread;
// kills land during training, in synchronous saves, in save_async's snapshot
// and while a background write is in flight.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <boost/filesystem.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "child_process.h"
#include "test_util.h"

namespace lorakeep {
namespace {

constexpr int kTimeoutMs = 1500;  // the coordinator's: how long survivors wait for a dead rank

std::vector<std::string> child_command(const std::string& run_dir, std::int64_t max_steps, std::int64_t save_every) {
  return {LORAKEEP_RESUME_CHILD_PATH, run_dir, std::to_string(max_steps), std::to_string(save_every)};
}

// One incarnation of the job: `world` resume_child processes with
// torchrun's environment, on a fresh store hosted here (as torchrun's agent
// hosts it).
class Job {
 public:
  // `env`: more variables for every rank. Each rank's stderr comes with its
  // stdout if `with_stderr`.
  Job(int world, const std::string& run_dir, std::int64_t max_steps, std::int64_t save_every, bool async,
      const std::vector<std::string>& more_env = {}, bool with_stderr = false) {
    c10d::TCPStoreOptions o;
    o.port = 0;
    o.isServer = true;
    o.waitWorkers = false;
    if (world > 1) store_ = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> env = {"LK_ASYNC=" + std::string(async ? "1" : "0"),
                                      "LK_TIMEOUT_MS=" + std::to_string(kTimeoutMs)};
      env.insert(env.end(), more_env.begin(), more_env.end());
      if (world > 1) {
        env.insert(env.end(), {"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r),
                               "WORLD_SIZE=" + std::to_string(world), "LOCAL_WORLD_SIZE=" + std::to_string(world),
                               "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(store_->getPort()),
                               "TORCHELASTIC_USE_AGENT_STORE=True"});
      }
      ranks_.push_back(std::make_unique<test::ChildProcess>(child_command(run_dir, max_steps, save_every),
                                                            test::environment(env), "", with_stderr));
    }
  }

  int world() const { return static_cast<int>(ranks_.size()); }
  test::ChildProcess& rank(int r) { return *ranks_[static_cast<std::size_t>(r)]; }
  const test::ChildProcess& rank(int r) const { return *ranks_[static_cast<std::size_t>(r)]; }

  // Waits for every rank to end; their exit codes (-signal if killed).
  std::vector<int> finish() {
    std::vector<int> codes;
    for (auto& r : ranks_) codes.push_back(r->finish());
    return codes;
  }

 private:
  c10::intrusive_ptr<c10d::TCPStore> store_;
  std::vector<std::unique_ptr<test::ChildProcess>> ranks_;
};

std::vector<std::string> words(const std::string& line) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at < line.size()) {
    const std::size_t end = line.find(' ', at);
    out.push_back(line.substr(at, end == std::string::npos ? std::string::npos : end - at));
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return out;
}

// Adds the "begin STEP XXH3" lines of every rank to `adapters` (step ->
// hash); returns "" or the first line whose hash differs from the one there.
std::string collect_saves(const Job& job, std::map<std::int64_t, std::string>& adapters) {
  for (int r = 0; r < job.world(); ++r) {
    for (const std::string& line : job.rank(r).lines()) {
      const std::vector<std::string> w = words(line);
      if (w.size() != 3 || w[0] != "begin") continue;
      const auto [it, inserted] = adapters.emplace(std::stoll(w[1]), w[2]);
      if (!inserted && it->second != w[2]) {
        return "rank " + std::to_string(r) + " began the save of step " + w[1] + " with adapter " + w[2] +
               ", the uninterrupted run with " + it->second;
      }
    }
  }
  return "";
}

// The seed of the kill points: LK_KILL_SEED, else `fallback`.
std::uint32_t kill_seed(std::uint32_t fallback) {
  const char* s = std::getenv("LK_KILL_SEED");
  return s != nullptr && *s != '\0' ? static_cast<std::uint32_t>(std::strtoul(s, nullptr, 10)) : fallback;
}

// The process id of torchrun's worker of LOCAL_RANK `local_rank`: a child of
// the agent `agent`. -1 if there is none.
pid_t torchrun_worker(pid_t agent, int local_rank) {
  for (const auto& e : boost::filesystem::directory_iterator("/proc")) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat, environ_text;
    try {
      stat = test::read_file("/proc/" + pid + "/stat");  // "PID (COMM) STATE PPID ..."
      environ_text = test::read_file("/proc/" + pid + "/environ");
    } catch (const std::exception&) {
      continue;  // gone meanwhile, or not ours
    }
    const std::vector<std::string> w = words(stat.substr(stat.rfind(')') + 2));
    if (w.size() < 2 || std::stol(w[1]) != agent) continue;
    const std::string want = std::string("LOCAL_RANK=") + std::to_string(local_rank) + '\0';
    if ((std::string(1, '\0') + environ_text).find(std::string(1, '\0') + want) != std::string::npos) {
      return std::stoi(pid);
    }
  }
  return -1;
}

// torchrun running `program` on 2 local ranks, restarting the group at most
// `restarts` times, watching its workers every 0.1 s. Explicit
// --redirects/--tee: Debian's torchrun 1.13 cannot parse their default under
// Python 3.11. Each worker's lines come as "[default<r>]:...".
std::vector<std::string> torchrun_command(int restarts, const std::string& log_dir,
                                          const std::vector<std::string>& program) {
  std::vector<std::string> command = {"torchrun",
                                      "--standalone",
                                      "--nproc_per_node=2",
                                      "--max_restarts=" + std::to_string(restarts),
                                      "--monitor_interval=0.1",
                                      "--no_python",
                                      "--redirects",
                                      "1",
                                      "--tee",
                                      "1",
                                      "--log_dir",
                                      log_dir};
  command.insert(command.end(), program.begin(), program.end());
  return command;
}

struct Chain {
  int world = 1;
  bool async = false;
  int kills = 10;
  std::uint32_t seed = 20261206;
};

// Where a kill landed, as the victim's output and the run directory tell.
struct Landed {
  int training = 0;  // between saves, nothing in flight
  int in_save = 0;   // after "begin": in save, or in save_async's snapshot
  int in_write = 0;  // save_async returned, its checkpoint not committed
};

// The chain: the uninterrupted reference, then the run killed `kills` times
// and resumed each time, then run to the end; compares everything.
void run_chain(Chain chain) {
  chain.seed = kill_seed(chain.seed);
  const std::int64_t save_every = 4;
  const std::int64_t window = 6;  // a kill aims at most this many steps after the resumed one
  // Room for every kill to land: its delay may let the run go on past the
  // step it aimed at, to the next save and through it.
  const std::int64_t max_steps = (chain.kills * (window + 2 * save_every) / save_every + 2) * save_every;
  const std::string config = std::to_string(chain.world) + (chain.world == 1 ? " rank" : " ranks") +
                             (chain.async ? ", save_async" : ", save") + ", seed " + std::to_string(chain.seed);
  INFO(config << " (LK_KILL_SEED=" << chain.seed << " reproduces the kill points)");
  test::TempDir dir;
  std::map<std::int64_t, std::string> adapters;  // the reference's adapter at each save
  std::string final_line;
  {
    Job reference(chain.world, dir / "reference", max_steps, save_every, chain.async);
    final_line = reference.rank(0).read_until("final");
    const std::vector<int> codes = reference.finish();
    INFO("reference rank 0:\n" << reference.rank(0).all_lines());
    for (int code : codes) REQUIRE(code == 0);
    REQUIRE(collect_saves(reference, adapters) == "");
  }
  std::mt19937 rng(chain.seed);
  const auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  const int phases = chain.async ? 3 : 2;  // training, a save begun, (save_async) a write in flight
  Landed landed;
  std::string kill_points;
  for (int k = 0; k < chain.kills; ++k) {
    Job job(chain.world, dir / "run", max_steps, save_every, chain.async);
    const int phase = k % phases;
    // A save's fault is the writer's (rank 0); training can die on any rank.
    const int victim = phase == 0 ? static_cast<int>(uniform(0, chain.world - 1)) : 0;
    const std::string ready = job.rank(victim).read_until("ready");
    INFO("kill " << k << ": " << ready);
    REQUIRE(!ready.empty());
    const std::int64_t resumed = std::stoll(words(ready)[1]);
    std::string target;
    std::int64_t delay_us = 0;
    if (phase == 0) {
      target = "step " + std::to_string(uniform(resumed + 1, resumed + window));
      delay_us = uniform(0, 1000);
    } else {
      const std::int64_t save = (resumed / save_every + 1 + uniform(0, 1)) * save_every;
      target = (phase == 1 ? "begin " : "queued ") + std::to_string(save);
      delay_us = uniform(0, 300);
    }
    REQUIRE(job.rank(victim).read_until(target) != "");
    ::usleep(static_cast<useconds_t>(delay_us));
    job.rank(victim).kill();
    const std::vector<int> codes = job.finish();
    for (int r = 0; r < chain.world; ++r) {
      INFO("rank " << r << ":\n" << job.rank(r).all_lines());
      // The victim died of the kill; survivors fail when it does not arrive.
      CHECK(codes[static_cast<std::size_t>(r)] == (r == victim ? -SIGKILL : 1));
    }
    CHECK(collect_saves(job, adapters) == "");
    // The victim's last save event tells where the kill landed.
    std::string last_begin, last_queued, last_saved;
    for (const std::string& line : job.rank(victim).lines()) {
      const std::vector<std::string> w = words(line);
      if (w.size() < 2) continue;
      if (w[0] == "begin") last_begin = w[1];
      if (w[0] == "queued") last_queued = w[1];
      if (w[0] == "saved") last_saved = w[1];
    }
    const std::set<std::int64_t> on_disk = test::checkpoint_steps(dir / "run");
    std::string where = "training";
    if (!last_begin.empty() && last_begin != last_queued && last_begin != last_saved) {
      ++landed.in_save;
      where = chain.async ? "save_async's snapshot" : "a save";
    } else if (!last_queued.empty() && on_disk.count(std::stoll(last_queued)) == 0) {
      ++landed.in_write;
      where = "a write in flight";
    } else {
      ++landed.training;
    }
    kill_points += "\n  kill " + std::to_string(k) + ": rank " + std::to_string(victim) + " after '" + target + "' + " +
                   std::to_string(delay_us) + " us, resumed from " + std::to_string(resumed) + ", in " + where;
  }
  Job last(chain.world, dir / "run", max_steps, save_every, chain.async);
  std::vector<std::string> finals;
  for (int r = 0; r < chain.world; ++r) finals.push_back(last.rank(r).read_until("final"));
  const std::vector<int> codes = last.finish();
  INFO("kill points:" << kill_points);
  for (int r = 0; r < chain.world; ++r) {
    INFO("rank " << r << ":\n" << last.rank(r).all_lines());
    CHECK(codes[static_cast<std::size_t>(r)] == 0);
    CHECK(finals[static_cast<std::size_t>(r)] == final_line);  // adapter and optimizer state
  }
  CHECK(collect_saves(last, adapters) == "");
  CHECK(test::checkpoint_difference(dir / "run", dir / "reference") == "");
  CHECK(landed.in_save >= 1);
  if (chain.async) CHECK(landed.in_write >= 1);
  std::printf("chained kills, %s: %d kills, all resumed exactly (%d in training, %d in a save or snapshot, %d in a "
              "write in flight)%s\n",
              config.c_str(), chain.kills, landed.training, landed.in_save, landed.in_write, kill_points.c_str());
}

}  // namespace

TEST_CASE("one rank killed ten times in a row resumes to the uninterrupted run's bytes", "[resume][expensive]") {
  SECTION("save") { run_chain({1, false}); }
  SECTION("save_async") { run_chain({1, true}); }
}

TEST_CASE("two ranks with one killed ten times in a row resume to the uninterrupted run's bytes",
          "[resume][distributed][expensive]") {
  SECTION("save") { run_chain({2, false}); }
  SECTION("save_async") { run_chain({2, true}); }
}

TEST_CASE("three ranks with one killed twenty times in a row resume to the uninterrupted run's bytes",
          "[resume][distributed][slow]") {
  SECTION("save") { run_chain({3, false, 20}); }
  SECTION("save_async") { run_chain({3, true, 20}); }
}

TEST_CASE("a run resumed by another number of ranks goes on, saying why it is not exact",
          "[resume][distributed][expensive]") {
  // The checkpoint has one RNG file per rank of the job that saved it: a job
  // of another size restores everything else and says the generators are
  // not restored. Both ways: 2 ranks resumed by 1 process, 1 by 2.
  for (const auto& [first, then] : {std::pair<int, int>{2, 1}, {1, 2}}) {
    INFO(first << " ranks, then " << then);
    test::TempDir dir;
    {
      Job job(first, dir / "run", 8, 4, false);
      for (int code : job.finish()) REQUIRE(code == 0);
    }
    Job job(then, dir / "run", 12, 4, false, {"LK_LOG=warn"}, /*with_stderr=*/true);
    for (int r = 0; r < then; ++r) CHECK(job.rank(r).read_until("ready").rfind("ready 8 ", 0) == 0);
    const std::vector<int> codes = job.finish();
    for (int r = 0; r < then; ++r) {
      INFO(job.rank(r).all_lines());
      CHECK(codes[static_cast<std::size_t>(r)] == 0);
      CHECK_THAT(job.rank(r).all_lines(), Catch::Contains("saved by another number of ranks): the random generators "
                                                          "are not restored"));
      CHECK(!job.rank(r).read_until("final").empty());
    }
    CHECK(test::checkpoint_steps(dir / "run").count(12) == 1);
  }
}

// torchrun restarts the whole group when a worker dies (--max_restarts):
// every rank of the new group resumes from the newest checkpoint all of
// them validate. Two seeded SIGKILLs of rank processes, each at a random
// moment after its group resumed.
TEST_CASE("under torchrun --max_restarts=2 two rank processes killed: the job ends with the uninterrupted run's bytes",
          "[resume][distributed][expensive]") {
  if (!test::have_torchrun()) return;
  const std::uint32_t seed = kill_seed(20261207);
  INFO("seed " << seed << " (LK_KILL_SEED=" << seed << " reproduces the kill points)");
  const std::int64_t max_steps = 40, save_every = 4;
  test::TempDir dir;
  std::string final_line;
  {
    Job reference(2, dir / "reference", max_steps, save_every, false);
    final_line = reference.rank(0).read_until("final");
    for (int code : reference.finish()) REQUIRE(code == 0);
  }
  const std::vector<std::string> command = torchrun_command(2, dir / "logs",
                                                            child_command(dir / "run", max_steps, save_every));
  const auto started = std::chrono::steady_clock::now();
  test::ChildProcess agent(command, test::environment({"LK_STEP_DELAY_MS=25"}));
  std::mt19937 rng(seed);
  std::string kills;
  const auto is_ready = [](const std::string& line) { return line.find("]:ready ") != std::string::npos; };
  std::string ready = agent.read_until(is_ready);
  for (int k = 0; k < 2; ++k) {
    // This group's ready lines: one per rank.
    std::vector<std::string> group = {ready, agent.read_until(is_ready)};
    INFO(agent.all_lines());
    REQUIRE(!group[1].empty());
    const int victim = std::uniform_int_distribution<int>(0, 1)(rng);
    const int after_ms = std::uniform_int_distribution<int>(0, 600)(rng);
    std::string line;
    for (const std::string& g : group) {
      if (g.rfind("[default" + std::to_string(victim) + "]:", 0) == 0) line = g;
    }
    REQUIRE(!line.empty());
    const std::vector<std::string> w = words(line.substr(line.find(':') + 1));
    ::usleep(static_cast<useconds_t>(after_ms) * 1000);
    REQUIRE(::kill(static_cast<pid_t>(std::stol(w[2])), SIGKILL) == 0);
    const auto killed = std::chrono::steady_clock::now();
    ready = agent.read_until(is_ready);  // the restarted group
    REQUIRE(!ready.empty());
    const double restart_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    char text[160];
    std::snprintf(
        text, sizeof text,
        "\n  kill %d: rank %d, %d ms after it resumed at step %s; %.2f s to the next group's first resume (%s)", k,
        victim, after_ms, w[1].c_str(), restart_s, ready.c_str());
    kills += text;
  }
  const int code = agent.finish(180);
  INFO(agent.all_lines() << "kills:" << kills);
  CHECK(code == 0);
  int finals = 0;
  for (const std::string& line : agent.lines()) {
    const std::size_t at = line.find("]:final ");
    if (at == std::string::npos) continue;
    ++finals;
    CHECK(line.substr(at + 2) == final_line);
  }
  CHECK(finals == 2);
  CHECK(test::checkpoint_difference(dir / "run", dir / "reference") == "");
  std::printf("torchrun --max_restarts=2, seed %u: the job ended in %.1f s with the uninterrupted run's bytes%s\n",
              seed, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), kills.c_str());
}

// The data-parallel example (examples/ddp, ddp_lora) as scripts/demo-ddp.sh
// runs it: under torchrun with restarts and resume_from_checkpoint: auto.
// Killing either rank's process during its LoRA training, twice, still ends
// with the adapter an uninterrupted run reloads, on both ranks.
TEST_CASE(
    "the data-parallel example under torchrun with restarts: two rank processes killed, the same adapter reloaded",
    "[resume][distributed][expensive]") {
  if (!test::have_torchrun()) return;
  const std::uint32_t seed = kill_seed(20261208);
  INFO("seed " << seed << " (LK_KILL_SEED=" << seed << " reproduces the kill points)");
  test::TempDir dir;
  const std::string config = test::ddp_example_config(dir.path(), /*max_steps=*/100);
  const auto torchrun = [&](const std::string& out, int restarts) {
    return torchrun_command(restarts, out + "-logs", {LORAKEEP_DDP_LORA_PATH, "--config", config, "--output-dir", out});
  };

  std::map<int, std::string> reference;
  {
    test::ChildProcess job(torchrun(dir / "reference", 0), test::environment({}));
    REQUIRE(job.finish(300) == 0);
    reference = test::reloaded_adapters(job.all_lines());
    REQUIRE(reference.size() == 2);
  }
  test::ChildProcess agent(torchrun(dir / "run", 2), test::environment({}));
  std::mt19937 rng(seed);
  std::string kills;
  std::size_t lines_before_last_group = 0;
  const auto has = [](const char* text) {
    return [text](const std::string& line) { return line.find(text) != std::string::npos; };
  };
  for (int k = 0; k < 2; ++k) {
    // Each group: rank 0 says where it resumed, then evaluates every 25
    // steps (just before each save). The kill comes after the first
    // evaluation, in its save or in the steps after it.
    const std::string lora = agent.read_until(has("]:== LoRA"));
    const std::string eval = agent.read_until(has("eval_loss"));
    INFO(agent.all_lines());
    REQUIRE(!eval.empty());
    const int victim = std::uniform_int_distribution<int>(0, 1)(rng);
    const int after_ms = std::uniform_int_distribution<int>(0, 1500)(rng);
    ::usleep(static_cast<useconds_t>(after_ms) * 1000);
    const pid_t pid = torchrun_worker(agent.pid(), victim);
    REQUIRE(pid > 0);
    REQUIRE(::kill(pid, SIGKILL) == 0);
    kills += "\n  kill " + std::to_string(k) + ": rank " + std::to_string(victim) + ", " + std::to_string(after_ms) +
             " ms after '" + eval.substr(eval.find("step")) + "' (" + lora.substr(lora.find("== ")) + ")";
    lines_before_last_group = agent.lines().size();
  }
  const std::string last_lora = agent.read_until(has("]:== LoRA"));
  kills += "\n  then: " + last_lora.substr(last_lora.find("== ") == std::string::npos ? 0 : last_lora.find("== "));
  const int code = agent.finish(300);
  INFO(agent.all_lines() << "kills:" << kills);
  REQUIRE(code == 0);
  std::string last_group;
  for (std::size_t i = lines_before_last_group; i < agent.lines().size(); ++i) last_group += agent.lines()[i] + "\n";
  CHECK(test::reloaded_adapters(last_group) == reference);
  CHECK(last_lora.find("resumed at step") != std::string::npos);  // from a checkpoint of the killed groups
  CHECK(test::checkpoint_difference(dir / "run", dir / "reference") == "");
  std::printf(
      "ddp_lora under torchrun, seed %u: two kills, the job resumed and reloaded the uninterrupted run's adapter"
      "%s\n",
      seed, kills.c_str());
}

}  // namespace lorakeep
