// save_on_each_node, first in this process (4 ranks as threads, 2 per
// "node", each node's output_dir its own directory), then on two nodes as
// torchrun makes them: two agents
// (--nnodes=2, --node_rank 0 and 1, static rendezvous on loopback), 2 ranks
// each, every agent in a mount namespace of its own in which the run
// directory is that node's own (a bind mount of nodes/<n>, or a private
// tmpfs), so that the local ranks come from torchrun and the ranks of one
// node cannot see the other's files. The program is the exact-resume one
// (resume_child, LK_EACH_NODE=1). Each fault ends with every rank resuming
// from the newest step both nodes hold intact, and the run with the
// uninterrupted run's bytes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
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
#include "child_process.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

constexpr int kMaxSteps = 12, kSaveEvery = 4;

// A port nothing listens on now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t n = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(fd);
  return ntohs(a.sin_port);
}

// The uninterrupted run's "final" line: one process (every rank of a job
// trains the same batches from the same seed, so a job ends with the same
// bytes).
std::string reference_final(const test::TempDir& dir) {
  const test::ProcessResult r = test::run_process(
      {LORAKEEP_RESUME_CHILD_PATH, dir / "reference", std::to_string(kMaxSteps), std::to_string(kSaveEvery)});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const std::size_t at = r.out.find("final ");
  REQUIRE(at != std::string::npos);
  return r.out.substr(at, r.out.find('\n', at) - at);
}

// The "ready STEP PID" lines of one phase: STEP is what every rank resumed from.
std::set<std::string> resumed_steps(const std::vector<std::string>& ready_lines) {
  std::set<std::string> out;
  for (const std::string& l : ready_lines) out.insert(l.substr(6, l.find(' ', 6) - 6));
  return out;
}

// What one node runs in its namespace: `setup` (a shell line that makes
// run/ the node's own), then each phase: a torchrun launch with the phase's
// environment, and the shell line `after` it.
struct NodeScript {
  std::string setup;
  std::vector<std::string> env;    // by phase: "NAME=value ..." or ""
  std::vector<std::string> after;  // by phase
};

// Both nodes' agents through the phases of a job. Each node's output comes
// line by line: "agent PID" when a phase's torchrun starts, its workers'
// lines as "[default<local rank>]:...", "phase P exit CODE" when it ends.
// A phase after the first starts on both nodes once go(P) was called.
class TwoNodes {
 public:
  TwoNodes(const test::TempDir& dir, const std::array<NodeScript, 2>& nodes) : dir_(dir) {
    const std::size_t phases = nodes[0].env.size();
    std::vector<int> ports;
    for (std::size_t p = 0; p < phases; ++p) ports.push_back(free_port());
    for (int n = 0; n < 2; ++n) {
      const NodeScript& node = nodes[static_cast<std::size_t>(n)];
      std::string s = "set -u\ncd " + dir.path() + "\n" + node.setup + " || exit 1\n";
      for (std::size_t p = 0; p < phases; ++p) {
        const std::string phase = std::to_string(p + 1);
        if (p > 0) s += "while [ ! -e go" + phase + " ]; do sleep 0.05; done\n";
        s += "env " + node.env[p] +
             " LK_EACH_NODE=1 LK_TIMEOUT_MS=4000 LK_STEP_DELAY_MS=30 torchrun --nnodes=2 --node_rank=" +
             std::to_string(n) +
             " --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=" + std::to_string(ports[p]) +
             " --max_restarts=0 --monitor_interval=0.1 --no_python --redirects 1 --tee 1 --log_dir logs-" +
             std::to_string(n) + "-" + phase + " " + LORAKEEP_RESUME_CHILD_PATH + " run " + std::to_string(kMaxSteps) +
             " " + std::to_string(kSaveEvery) + " &\n";
        s += "echo agent $!\nwait $!\necho phase " + phase + " exit $?\n" + node.after[p] + "\n";
      }
      const std::string script = dir / ("node" + std::to_string(n) + ".sh");
      test::write_file(script, s);
      nodes_[static_cast<std::size_t>(n)] = std::make_unique<test::ChildProcess>(
          std::vector<std::string>{"unshare", "-m", "--propagation", "private", "bash", script}, test::environment({}),
          "", /*with_stderr=*/true);
    }
  }

  test::ChildProcess& node(int n) { return *nodes_[static_cast<std::size_t>(n)]; }

  // Both nodes' exit codes of phase `p`, once both ended it.
  std::array<int, 2> wait_phase(int p) {
    std::array<int, 2> codes{};
    for (int n = 0; n < 2; ++n) {
      const std::string line = node(n).read_until("phase " + std::to_string(p) + " exit ");
      INFO("node " << n << ":\n" << node(n).all_lines());
      REQUIRE(!line.empty());
      codes[static_cast<std::size_t>(n)] = std::stoi(line.substr(line.rfind(' ') + 1));
    }
    return codes;
  }

  void go(int p) { test::write_file(dir_ / ("go" + std::to_string(p)), ""); }

  // Every worker line of both nodes that says `event` (e.g. "ready"), from
  // the start, without the prefix.
  std::vector<std::string> worker_lines(const std::string& event) const {
    std::vector<std::string> out;
    for (const auto& node : nodes_) {
      for (const std::string& line : node->lines()) {
        const std::size_t at = line.find("]:" + event + " ");
        if (line.rfind("[default", 0) == 0 && at != std::string::npos) out.push_back(line.substr(at + 2));
      }
    }
    return out;
  }

  std::string all() const { return "node 0:\n" + nodes_[0]->all_lines() + "\nnode 1:\n" + nodes_[1]->all_lines(); }

  // Runs phase 2 to the end on both nodes: every rank must resume from
  // `step` and end with `final_line`, as every "final" line so far must
  // (`finals` of them, both phases). Returns the phase's ready lines.
  std::vector<std::string> resume_to_end(const std::string& step, const std::string& final_line, std::size_t finals) {
    go(2);
    CHECK(wait_phase(2) == std::array<int, 2>{0, 0});
    finish();
    INFO(all());
    const std::vector<std::string> ready = worker_lines("ready");
    REQUIRE(ready.size() == 8);
    // Each node's lines in order: its two ranks' ready lines of phase 1, then of phase 2.
    CHECK(resumed_steps({ready[2], ready[3], ready[6], ready[7]}) == std::set<std::string>{step});
    for (const std::string& f : worker_lines("final")) CHECK(f == final_line);
    CHECK(worker_lines("final").size() == finals);
    return ready;
  }

  void finish() {
    for (auto& node : nodes_) REQUIRE(node->finish(120) == 0);
  }

 private:
  const test::TempDir& dir_;
  std::array<std::unique_ptr<test::ChildProcess>, 2> nodes_;
};

std::string bind(int node) {
  return "mkdir -p nodes/" + std::to_string(node) + " run && mount --bind nodes/" + std::to_string(node) + " run";
}

// Waits (up to 60 s) until local rank 0's first attempt, as torchrun logs
// it under `log_dir`, wrote a line starting with `prefix`: read from its
// log file every millisecond, not from the agent's --tee, which comes later.
bool wait_for_worker_line(const std::string& log_dir, const std::string& prefix) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    boost::system::error_code ec;
    for (boost::filesystem::recursive_directory_iterator it(log_dir, ec), end; !ec && it != end; it.increment(ec)) {
      const boost::filesystem::path p = it->path();
      if (p.filename() != "stdout.log" || p.parent_path().filename() != "0" ||
          p.parent_path().parent_path().filename() != "attempt_0") {
        continue;
      }
      std::istringstream lines(test::read_file(p.string()));
      for (std::string line; std::getline(lines, line);) {
        if (line.rfind(prefix, 0) == 0) return true;
      }
    }
    ::usleep(1000);
  }
  return false;
}

// Whether process `pid` (not a child of this one: its parent reaps it) ended
// within 60 s.
bool wait_gone(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (::kill(pid, 0) == 0 || errno != ESRCH) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    ::usleep(10000);
  }
  return true;
}

bool can_run() { return test::have_torchrun() && test::can_unshare_mounts(); }

// The steps both copies hold (a checkpoint directory is whole or absent: it
// appears in one rename).
std::int64_t newest_common(const std::string& a, const std::string& b) {
  std::int64_t newest = 0;
  const std::set<std::int64_t> in_b = test::checkpoint_steps(b);
  for (const std::int64_t step : test::checkpoint_steps(a)) {
    if (in_b.count(step)) newest = step;
  }
  return newest;
}

// 2 nodes of 2 ranks in this process, one thread per rank with its own
// store connection: rank r is local rank r % 2 of node r / 2, its
// output_dir dir_of(r).
class ThreadNodes {
 public:
  explicit ThreadNodes(std::function<std::string(int rank)> dir_of, bool each_node = true)
      : dir_of_(std::move(dir_of)), each_node_(each_node) {
    c10d::TCPStoreOptions o;
    o.port = 0;
    o.isServer = true;
    o.waitWorkers = false;
    server_ = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  }

  // Runs body(rank, manager, net, coordinator) on every rank (the managers
  // made there, with save_on_each_node unless constructed without); returns each rank's Error message, "" if none.
  std::vector<std::string> run(const std::function<void(int, CheckpointManager&, test::TestNet&, Coordinator&)>& body) {
    std::vector<std::string> errors(4);
    std::vector<test::TestNet> nets;  // drawn here: the threads share torch's generator
    for (int r = 0; r < 4; ++r) nets.push_back(test::armed_net(0));
    std::vector<std::thread> threads;
    for (int r = 0; r < 4; ++r) {
      threads.emplace_back([&, r] {
        try {
          c10d::TCPStoreOptions o;
          o.port = server_->getPort();
          o.waitWorkers = false;
          CoordinatorOptions co;
          co.timeout = std::chrono::seconds(20);
          co.node_rank = r / 2;
          co.local_rank = r % 2;
          Coordinator coordinator(c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o), r, 4, co);
          CheckpointOptions options = test::options_for(dir_of_(r));
          options.save_on_each_node = each_node_;
          CheckpointManager ckpt(options, coordinator);
          body(r, ckpt, nets[static_cast<std::size_t>(r)], coordinator);
        } catch (const Error& e) {
          errors[static_cast<std::size_t>(r)] = e.what();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    return errors;
  }

 private:
  std::function<std::string(int)> dir_of_;
  bool each_node_;
  c10::intrusive_ptr<c10d::TCPStore> server_;
};

// Saves steps from..to on every rank, each with an evaluation; async with save_async.
void save_steps(CheckpointManager& ckpt, test::TestNet& net, TrainingState& state, std::int64_t from, std::int64_t to,
                bool async) {
  for (std::int64_t step = from; step <= to; ++step) {
    test::perturb(net, 0.01);
    state.global_step = step;
    state.record_evaluation({{"eval_loss", 1.0 / static_cast<double>(step % 3 + 1)}});
    if (async) {
      ckpt.save_async(*net, test::test_lora(), state);
    } else {
      ckpt.save(*net, test::test_lora(), state);
    }
  }
  ckpt.wait(state);
}

}  // namespace

TEST_CASE("save_on_each_node in one process: each node's copy whole and alike, a step some copy lacks ignored, a "
          "save failing on one node while staging or publishing fails on all",
          "[distributed]") {
  test::TempDir dir;
  const auto node_dir = [&](int node) { return dir / ("node" + std::to_string(node)); };
  ThreadNodes nodes([&](int rank) { return node_dir(rank / 2); });
  for (const bool async : {false, true}) {
    INFO((async ? "save_async" : "save"));
    boost::filesystem::remove_all(node_dir(0));
    boost::filesystem::remove_all(node_dir(1));
    std::vector<std::string> best(4), steps(4);
    const std::vector<std::string> errors = nodes.run(
        [&](int r, CheckpointManager& ckpt, test::TestNet& net, Coordinator&) {
          TrainingState state;
          save_steps(ckpt, net, state, 1, 5, async);
          best[static_cast<std::size_t>(r)] = ckpt.best()->path;
          for (const CheckpointInfo& c : ckpt.checkpoints())
            steps[static_cast<std::size_t>(r)] += std::to_string(c.step) + " ";
        });
    CHECK(errors == std::vector<std::string>(4));
    CHECK(steps == std::vector<std::string>(4, "2 4 5 "));  // newest 2, and the best (eval_loss 1/3 at 2)
    CHECK(best[0] == node_dir(0) + "/checkpoint-2");
    CHECK(best[3] == node_dir(1) + "/checkpoint-2");
    CHECK(test::checkpoint_steps(node_dir(1)) == std::set<std::int64_t>{2, 4, 5});
    CHECK(test::checkpoint_difference(node_dir(0), node_dir(1)) == "");
  }

  // Node 1 lost step 5 (its disk, or it died before its rename): every rank
  // resumes from step 4, the step both copies hold.
  boost::filesystem::remove_all(node_dir(1) + "/checkpoint-5");
  std::vector<std::int64_t> resumed(4, -1);
  std::vector<std::string> known(4);
  CHECK(nodes.run([&](int r, CheckpointManager& ckpt, test::TestNet& net, Coordinator&) {
    for (const CheckpointInfo& c : ckpt.checkpoints())
      known[static_cast<std::size_t>(r)] += std::to_string(c.step) + " ";
    TrainingState state;
    ckpt.resume(*net, state);
    resumed[static_cast<std::size_t>(r)] = state.global_step;
  }) == std::vector<std::string>(4));
  CHECK(known == std::vector<std::string>(4, "2 4 "));  // what rotation and best count on every node
  CHECK(resumed == std::vector<std::int64_t>(4, 4));
  CHECK(test::checkpoint_steps(node_dir(0)).count(5) == 1);  // ignored, left on disk

  // The save of step 6 cannot be staged on node 1 (its temporary directory's
  // name is taken): it fails on every rank and node 0 keeps nothing of it.
  // Again, staged everywhere but not published on node 1 (a file where its
  // checkpoint-6 goes): node 0, which published it, withdraws it, and it
  // fails on every rank. The next save works.
  std::vector<std::string> not_staged(4), not_published(4);
  const auto save_6 = [&](CheckpointManager& ckpt, test::TestNet& net, TrainingState& state, std::string& error) {
    try {
      save_steps(ckpt, net, state, 6, 6, false);
    } catch (const Error& e) {
      error = e.what();
    }
  };
  const std::string blocker = node_dir(1) + "/" + detail::temp_checkpoint_dir_name(6, ::getpid());
  const std::vector<std::string> failed = nodes.run(
      [&](int r, CheckpointManager& ckpt, test::TestNet& net, Coordinator&) {
        const auto rank = static_cast<std::size_t>(r);
        TrainingState state;
        ckpt.resume(*net, state);
        save_steps(ckpt, net, state, 5, 5, false);
        if (r == 2) test::write_file(blocker, "in the way");
        save_6(ckpt, net, state, not_staged[rank]);
        if (r == 2) {
          ::unlink(blocker.c_str());
          test::write_file(node_dir(1) + "/checkpoint-6", "in the way");
        }
        save_6(ckpt, net, state, not_published[rank]);
        if (r == 2) ::unlink((node_dir(1) + "/checkpoint-6").c_str());
        save_steps(ckpt, net, state, 7, 7, false);
      });
  CHECK(failed == std::vector<std::string>(4));
  for (const std::string& e : not_staged) CHECK_THAT(e, Catch::StartsWith("rank 2: "));
  for (const std::string& e : not_published) {
    CHECK_THAT(e, Catch::StartsWith("rank 2: ") && Catch::Contains("checkpoint-6"));
  }
  CHECK(test::checkpoint_steps(node_dir(0)).count(6) == 0);
  CHECK(test::checkpoint_steps(node_dir(0)) == test::checkpoint_steps(node_dir(1)));
  CHECK(test::checkpoint_difference(node_dir(0), node_dir(1)) == "");
}

TEST_CASE(
    "save_on_each_node takes one more round of messages per save than a shared directory: store round trips counted",
    "[distributed]") {
  test::TempDir dir;
  // Store round trips of one steady-state save (the third of three), by rank.
  const auto count = [&](bool each_node) {
    std::vector<std::int64_t> ops(4);
    const std::string run = each_node ? "nodes" : "shared";
    const std::vector<std::string> errors =
        ThreadNodes([&](int rank) { return dir / (each_node ? run + "/" + std::to_string(rank / 2) : run); }, each_node)
            .run([&](int r, CheckpointManager& ckpt, test::TestNet& net, Coordinator& coordinator) {
              TrainingState state;
              save_steps(ckpt, net, state, 1, 2, false);
              const std::int64_t before = coordinator.store_operations();
              save_steps(ckpt, net, state, 3, 3, false);
              ops[static_cast<std::size_t>(r)] = coordinator.store_operations() - before;
            });
    CHECK(errors == std::vector<std::string>(4));
    return ops;
  };
  const std::vector<std::int64_t> shared = count(false), each_node = count(true);
  std::printf("store round trips per save with 4 ranks, by rank: shared directory %lld %lld %lld %lld, "
              "save_on_each_node (2 nodes) %lld %lld %lld %lld\n",
              static_cast<long long>(shared[0]), static_cast<long long>(shared[1]), static_cast<long long>(shared[2]),
              static_cast<long long>(shared[3]), static_cast<long long>(each_node[0]),
              static_cast<long long>(each_node[1]), static_cast<long long>(each_node[2]),
              static_cast<long long>(each_node[3]));
  // docs/ARCHITECTURE.md's figures, N = 4: a gather is a set, a wait, N - 1
  // gets and a deletion; a save is a gather and rank 0's outcome in a shared
  // directory, three gathers with save_on_each_node.
  const std::int64_t n = 4;
  for (int r = 0; r < 4; ++r) {
    CHECK(shared[static_cast<std::size_t>(r)] <= n + 4);
    CHECK(each_node[static_cast<std::size_t>(r)] <= 3 * (n + 2));
  }
}

TEST_CASE("save_on_each_node refuses one directory for two nodes, and a rank that cannot see its node's copy",
          "[distributed]") {
  test::TempDir dir;
  const auto nothing = [](int, CheckpointManager&, test::TestNet&, Coordinator&) {};
  // Both nodes' writers on one directory: the second cannot lock it.
  const std::vector<std::string> shared = ThreadNodes([&](int) { return dir / "shared"; }).run(nothing);
  for (const std::string& e : shared) {
    CHECK_THAT(e, Catch::Contains("lock"));
    CHECK(e == shared[0]);
  }
  // Rank 3 (node 1, local rank 1) has another directory than its writer's.
  const std::vector<std::string> apart = ThreadNodes([&](int rank) {
                                           return dir / (rank == 3 ? "elsewhere" : "node" + std::to_string(rank / 2));
                                         }).run(nothing);
  for (const std::string& e : apart) {
    CHECK_THAT(
        e, Catch::StartsWith("rank 3: ") && Catch::Contains("is not the directory of this rank's node writer, rank 2"));
  }
}

TEST_CASE(
    "save_on_each_node on two nodes: both copies alike, and one node's copy corrupted makes every rank resume from "
    "the newest step intact on both",
    "[distributed][expensive]") {
  if (!can_run()) return;
  test::TempDir dir;
  const std::string final_line = reference_final(dir);
  // Phase 1 runs to the end; then the newest checkpoint's adapter is damaged
  // on node 1 only; phase 2 (the same run again) finds it and goes back.
  const std::string damage = "f=nodes/1/checkpoint-12/adapter_model.safetensors; printf '\\x5a\\x5a\\x5a\\x5a' | dd "
                             "of=$f bs=1 seek=$(( $(stat -c %s $f) - 4 )) conv=notrunc 2>/dev/null";
  TwoNodes job(dir, {NodeScript{bind(0), {"", ""}, {"", ""}}, NodeScript{bind(1), {"", ""}, {"", ""}}});
  CHECK(job.wait_phase(1) == std::array<int, 2>{0, 0});
  INFO(job.all());
  CHECK(test::checkpoint_difference(dir / "nodes/0", dir / "nodes/1") == "");
  CHECK(test::checkpoint_steps(dir / "nodes/0") == std::set<std::int64_t>{8, 12});
  for (const std::string& f : job.worker_lines("final")) CHECK(f == final_line);
  CHECK(job.worker_lines("final").size() == 4);
  REQUIRE(test::run_shell("cd " + dir.path() + " && " + damage).exit_code == 0);
  const std::vector<std::string> ready = job.resume_to_end("8", final_line, 8);
  CHECK(resumed_steps({ready[0], ready[1], ready[4], ready[5]}) == std::set<std::string>{"0"});
  CHECK(test::checkpoint_difference(dir / "nodes/0", dir / "nodes/1") == "");
}

TEST_CASE(
    "save_on_each_node: one node's disk full fails the save on every rank and the job resumes from the newest step "
    "on both nodes",
    "[distributed][expensive]") {
  if (!can_run()) return;
  test::TempDir dir;
  const std::string final_line = reference_final(dir);
  // Node 1's copy on a 16 MiB tmpfs of its own, filled before the save of
  // step 8; freed after the job failed.
  const std::string tmpfs = "mkdir -p run && mount -t tmpfs -o size=16m tmpfs run";
  TwoNodes job(dir, {NodeScript{bind(0), {"", ""}, {"", ""}},
                     NodeScript{tmpfs, {"LK_FILL_BEFORE=8", ""}, {"rm -f run/filler", "cp -a run kept1"}}});
  const std::array<int, 2> failed = job.wait_phase(1);
  INFO(job.all());
  CHECK(failed[0] != 0);
  CHECK(failed[1] != 0);
  const std::vector<std::string> errors = job.worker_lines("error");
  CHECK(errors.size() == 4);
  for (const std::string& e : errors) CHECK_THAT(e, Catch::Contains("No space left on device"));
  CHECK(test::checkpoint_steps(dir / "nodes/0") == std::set<std::int64_t>{4});
  job.resume_to_end("4", final_line, 4);
  CHECK(test::checkpoint_difference(dir / "nodes/0", dir / "kept1") == "");
}

TEST_CASE("save_on_each_node: a node killed during a save, and every rank resumes from the newest step on both nodes",
          "[distributed][expensive]") {
  if (!can_run()) return;
  const char* s = std::getenv("LK_KILL_SEED");
  const std::uint32_t seed = s != nullptr && *s != '\0' ? static_cast<std::uint32_t>(std::stoul(s)) : 20261206u;
  INFO("seed " << seed << " (LK_KILL_SEED=" << seed << " reproduces the kill point)");
  test::TempDir dir;
  const std::string final_line = reference_final(dir);
  TwoNodes job(dir, {NodeScript{bind(0), {"", ""}, {"", ""}}, NodeScript{bind(1), {"", ""}, {"", ""}}});
  // Node 1 dies: its agent and both workers, SIGKILLed a seeded moment after
  // its rank 2 began the save of step 8 (staging, publishing or past it).
  // A node's agent and its two workers, from their first lines.
  const auto processes = [&](int n) {
    const std::string agent = job.node(n).read_until("agent ");
    std::vector<pid_t> pids = {static_cast<pid_t>(std::stol(agent.substr(6)))};
    for (int r = 0; r < 2; ++r) {
      const std::string ready = job.node(n).read_until(
          [](const std::string& l) { return l.find("]:ready ") != std::string::npos; });
      REQUIRE(!ready.empty());
      pids.push_back(static_cast<pid_t>(std::stol(ready.substr(ready.rfind(' ') + 1))));
    }
    return pids;
  };
  const std::vector<pid_t> victims = processes(1);
  REQUIRE(wait_for_worker_line(dir / "logs-1-1", "begin 8 "));
  std::mt19937 rng(seed);
  const int after_us = std::uniform_int_distribution<int>(0, 20000)(rng);
  ::usleep(static_cast<useconds_t>(after_us));
  for (const pid_t pid : victims) ::kill(pid, SIGKILL);
  // Node 0's ranks fail within the coordinator's timeout: the first to fail
  // prints its error, and its agent then stops the other (which may not have
  // printed its own yet). The agent would then wait torchrun's exit barrier
  // (300 s) for the dead node's agent: the test ends it once node 0's
  // workers are gone, as a job scheduler would.
  const std::vector<pid_t> node0 = processes(0);
  REQUIRE(
      !job.node(0).read_until([](const std::string& l) { return l.find("]:error ") != std::string::npos; }).empty());
  REQUIRE(wait_gone(node0[1]));
  REQUIRE(wait_gone(node0[2]));
  ::kill(node0[0], SIGKILL);
  const std::array<int, 2> codes = job.wait_phase(1);
  INFO(job.all());
  CHECK(codes[0] != 0);
  CHECK(codes[1] != 0);
  const std::int64_t expected = newest_common(dir / "nodes/0", dir / "nodes/1");
  const std::set<std::int64_t> on0 = test::checkpoint_steps(dir / "nodes/0"),
                               on1 = test::checkpoint_steps(dir / "nodes/1");
  job.resume_to_end(std::to_string(expected), final_line, 4);
  CHECK(test::checkpoint_difference(dir / "nodes/0", dir / "nodes/1") == "");
  std::printf("save_on_each_node, seed %u: node 1 killed %d us after it began the save of step 8; node 0 then held "
              "step 8: %s, node 1: %s; every rank resumed from step %lld\n",
              seed, after_us, on0.count(8) ? "yes" : "no", on1.count(8) ? "yes" : "no",
              static_cast<long long>(expected));
}

}  // namespace lorakeep
