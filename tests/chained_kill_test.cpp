// Chained kills: one training run (the program of resume_program.h, run as
// resume_child) SIGKILLed at seeded random moments and resumed, again and
// again, ends with the bytes of the run that was never killed: the final
// adapter and optimizer state, the adapter of every save any incarnation
// began, and the kept checkpoints with their metrics history and best. One
// rank, and several ranks coordinated through a store hosted here (as
// torchrun's agent hosts it), with saves on and off the training thread;
// kills land during training, in synchronous saves, in save_async's snapshot
// and while a background write is in flight.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "test_util.h"

extern char** environ;

namespace lorakeep {
namespace {

constexpr int kTimeoutMs = 1500;  // the coordinator's: how long survivors wait for a dead rank

// One incarnation of the job: `world` resume_child processes on a fresh
// store, their stdout read line by line through pipes.
class Job {
 public:
  Job(int world, const std::string& run_dir, std::int64_t max_steps, std::int64_t save_every, bool async)
      : ranks_(static_cast<std::size_t>(world)) {
    c10d::TCPStoreOptions o;
    o.port = 0;
    o.isServer = true;
    o.waitWorkers = false;
    if (world > 1) store_ = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> env;
      for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
      env.push_back("LK_ASYNC=" + std::string(async ? "1" : "0"));
      env.push_back("LK_TIMEOUT_MS=" + std::to_string(kTimeoutMs));
      if (world > 1) {
        for (const std::string& v :
             {"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(world),
              "LOCAL_WORLD_SIZE=" + std::to_string(world), std::string("MASTER_ADDR=127.0.0.1"),
              "MASTER_PORT=" + std::to_string(store_->getPort()), std::string("TORCHELASTIC_USE_AGENT_STORE=True")}) {
          env.push_back(v);
        }
      }
      const std::vector<std::string> argv = {LORAKEEP_RESUME_CHILD_PATH, run_dir, std::to_string(max_steps),
                                             std::to_string(save_every)};
      start(ranks_[static_cast<std::size_t>(r)], argv, env);
    }
  }
  ~Job() {
    for (Rank& r : ranks_) {
      if (r.pid > 0) {
        ::kill(r.pid, SIGKILL);
        ::waitpid(r.pid, nullptr, 0);
      }
      if (r.fd >= 0) ::close(r.fd);
    }
  }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  int world() const { return static_cast<int>(ranks_.size()); }

  // Reads `rank`'s output until a line starts with `prefix` and returns it;
  // "" if the rank ended first or nothing came for 60 s.
  std::string read_until(int rank, const std::string& prefix) {
    Rank& r = ranks_[static_cast<std::size_t>(rank)];
    for (;;) {
      while (r.parsed < r.lines.size()) {
        const std::string& line = r.lines[r.parsed++];
        if (line.rfind(prefix, 0) == 0) return line;
      }
      if (read_some(r, 60000) != Read::kData) return "";
    }
  }

  void kill(int rank) { ::kill(ranks_[static_cast<std::size_t>(rank)].pid, SIGKILL); }

  // Waits for every rank to end (each within 60 s, else it is killed) and
  // reads the rest of its output. Returns each rank's exit code, -signal if
  // a signal ended it.
  std::vector<int> finish() {
    std::vector<int> codes;
    for (Rank& r : ranks_) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (std::chrono::steady_clock::now() < deadline && read_some(r, 1000) != Read::kEnd) {
      }
      int status = 0;
      if (::waitpid(r.pid, &status, WNOHANG) == 0) {
        ::kill(r.pid, SIGKILL);
        ::waitpid(r.pid, &status, 0);
      }
      r.pid = -1;
      codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    }
    return codes;
  }

  const std::vector<std::string>& lines(int rank) const { return ranks_[static_cast<std::size_t>(rank)].lines; }

 private:
  struct Rank {
    pid_t pid = -1;
    int fd = -1;  // the read end of its stdout
    std::string partial;
    std::vector<std::string> lines;
    std::size_t parsed = 0;  // lines read_until has looked at
  };

  static void start(Rank& rank, const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::vector<char*> args, envp;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      ::close(fds[1]);
      ::execve(args[0], args.data(), envp.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    rank.pid = pid;
    rank.fd = fds[0];
  }

  enum class Read { kData, kEnd, kNothing };

  // Reads what `rank` writes within `timeout_ms` into whole lines.
  static Read read_some(Rank& rank, int timeout_ms) {
    pollfd p{rank.fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return Read::kNothing;
    char buffer[4096];
    const ssize_t n = ::read(rank.fd, buffer, sizeof buffer);
    if (n <= 0) return Read::kEnd;
    rank.partial.append(buffer, static_cast<std::size_t>(n));
    for (std::size_t end; (end = rank.partial.find('\n')) != std::string::npos;) {
      rank.lines.push_back(rank.partial.substr(0, end));
      rank.partial.erase(0, end + 1);
    }
    return Read::kData;
  }

  c10::intrusive_ptr<c10d::TCPStore> store_;
  std::vector<Rank> ranks_;
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
    for (const std::string& line : job.lines(r)) {
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

std::string all_lines(const Job& job, int rank) {
  std::string out;
  for (const std::string& l : job.lines(rank)) out += l + "\n";
  return out;
}

struct Chain {
  int world = 1;
  bool async = false;
  int kills = 10;
  std::uint32_t seed = 20261206;
};

// Where a kill landed, as the victim's output and the run directory tell.
struct Landed {
  int training = 0;   // between saves, nothing in flight
  int in_save = 0;    // after "begin": in save, or in save_async's snapshot
  int in_write = 0;   // save_async returned, its checkpoint not committed
};

// The chain: the uninterrupted reference, then the run killed `kills` times
// and resumed each time, then run to the end; compares everything.
void run_chain(Chain chain) {
  if (const char* s = std::getenv("LK_KILL_SEED")) chain.seed = static_cast<std::uint32_t>(std::strtoul(s, nullptr, 10));
  const std::int64_t save_every = 4;
  const std::int64_t window = 6;  // a kill comes within this many steps after the resumed one
  const std::int64_t max_steps = (chain.kills * window / save_every + 2) * save_every;
  const std::string config = std::to_string(chain.world) + (chain.world == 1 ? " rank" : " ranks") +
                             (chain.async ? ", save_async" : ", save") + ", seed " + std::to_string(chain.seed);
  INFO(config << " (LK_KILL_SEED=" << chain.seed << " reproduces the kill points)");
  test::TempDir dir;
  std::map<std::int64_t, std::string> adapters;  // the reference's adapter at each save
  std::string final_line;
  {
    Job reference(chain.world, dir / "reference", max_steps, save_every, chain.async);
    final_line = reference.read_until(0, "final");
    const std::vector<int> codes = reference.finish();
    INFO("reference rank 0:\n" << all_lines(reference, 0));
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
    const std::string ready = job.read_until(victim, "ready");
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
    REQUIRE(job.read_until(victim, target) != "");
    ::usleep(static_cast<useconds_t>(delay_us));
    job.kill(victim);
    const std::vector<int> codes = job.finish();
    for (int r = 0; r < chain.world; ++r) {
      INFO("rank " << r << ":\n" << all_lines(job, r));
      // The victim died of the kill; survivors fail when it does not arrive.
      CHECK(codes[static_cast<std::size_t>(r)] == (r == victim ? -SIGKILL : 1));
    }
    CHECK(collect_saves(job, adapters) == "");
    // The victim's last save event tells where the kill landed.
    std::string last_begin, last_queued, last_saved;
    for (const std::string& line : job.lines(victim)) {
      const std::vector<std::string> w = words(line);
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
    kill_points += "\n  kill " + std::to_string(k) + ": rank " + std::to_string(victim) + " after '" + target +
                   "' + " + std::to_string(delay_us) + " us, resumed from " + std::to_string(resumed) + ", in " +
                   where;
  }
  Job last(chain.world, dir / "run", max_steps, save_every, chain.async);
  std::vector<std::string> finals;
  for (int r = 0; r < chain.world; ++r) finals.push_back(last.read_until(r, "final"));
  const std::vector<int> codes = last.finish();
  INFO("kill points:" << kill_points);
  for (int r = 0; r < chain.world; ++r) {
    INFO("rank " << r << ":\n" << all_lines(last, r));
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

}  // namespace lorakeep
