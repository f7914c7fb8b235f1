#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <set>
#include <thread>
#include <utility>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "lorakeep/distributed.h"
#include "lorakeep/error.h"
#include "base/logging.h"
#include "checkpoint/coordination.h"
#include "checkpoint/wire.h"

namespace lorakeep {
namespace {

// Every value starts with one marker byte, so that none is empty: LibTorch
// 1.13's TCPStore server answers a get with the value's length sent with
// MSG_MORE, then the value; for an empty value the length waits in the
// kernel for the cork timeout (200 ms on Linux), and a barrier took 208 ms.
std::vector<std::uint8_t> to_bytes(const std::string& s) {
  std::vector<std::uint8_t> v;
  v.reserve(s.size() + 1);
  v.push_back('L');
  v.insert(v.end(), s.begin(), s.end());
  return v;
}
std::string from_bytes(const std::vector<std::uint8_t>& v) {
  return v.empty() ? std::string() : std::string(v.begin() + 1, v.end());
}

std::string env_or_throw(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    throw Error(ErrorCode::kInvalidArgument, std::string("the environment variable ") + name +
                                                 " is not set (hint: start the job with torchrun, or set RANK, "
                                                 "WORLD_SIZE, MASTER_ADDR and MASTER_PORT)");
  }
  return v;
}

int env_int(const char* name, long lo, long hi) {
  const std::string text = env_or_throw(name);
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) {
    throw Error(ErrorCode::kInvalidArgument, std::string("the environment variable ") + name + "='" + text +
                                                 "' is not an integer in [" + std::to_string(lo) + ", " +
                                                 std::to_string(hi) + "]");
  }
  return static_cast<int>(v);
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) out += i + 1 == ranks.size() ? " and " : ", ";
    out += std::to_string(ranks[i]);
  }
  return (ranks.size() == 1 ? "rank " : "ranks ") + out;
}

}  // namespace

struct Coordinator::State {
  c10::intrusive_ptr<c10d::Store> user_store;  // as given (or made by from_env)
  c10::intrusive_ptr<c10d::Store> store;       // <prefix>/g<generation>/ of it
  int rank = 0;
  int world = 1;
  CoordinatorOptions options;
  std::int64_t seq = 0;                   // collectives so far, the same on every rank
  std::vector<std::string> pending_keys;  // this rank's keys others may still read
  std::atomic<std::int64_t> ops{0};
  bool hosts_store = false;  // from_env made the TCPStore server in this process

  // Every rank says it is done with the store; the rank whose process hosts
  // it keeps it up until all have (else a rank still reading the last
  // collective's values loses the store when rank 0 exits first), at most
  // min(timeout, 30 s). Never throws.
  ~State() {
    if (world == 1 || !store) return;
    try {
      store->add("exit", 1);
      if (!hosts_store) return;
      const auto patience = std::min<std::chrono::milliseconds>(options.timeout, std::chrono::seconds(30));
      const auto deadline = std::chrono::steady_clock::now() + patience;
      while (store->add("exit", 0) < world) {
        if (std::chrono::steady_clock::now() >= deadline) {
          detail::log_warn("rank {}: not every rank left the c10d store hosted here; closing it anyway", rank);
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    } catch (const std::exception&) {
      // a rank that cannot reach the store has nothing to wait for
    }
  }

  // Store calls, their failures (a lost connection: the store's host died)
  // as Error(kIOError) naming `what`.
  template <class F>
  auto call(const std::string& what, F&& f) -> decltype(f()) {
    ++ops;
    try {
      return f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      std::string why = e.what();
      why = why.substr(0, why.find('\n'));
      throw Error(ErrorCode::kIOError, "rank " + std::to_string(rank) + ": lost the c10d store during " + what + ": " +
                                           why +
                                           " (hint: the process hosting the store, rank 0 or torchrun's agent, "
                                           "may have died)");
    }
  }

  // Waits for `keys` (keys[i] set by ranks[i]); names the ranks whose key
  // is still missing after the timeout.
  void wait_for(const std::vector<std::string>& keys, const std::vector<int>& ranks, const std::string& what) {
    ++ops;
    try {
      store->wait(keys, options.timeout);
      return;
    } catch (const std::exception&) {
      // a timeout, or the connection lost: find out which
    }
    std::vector<int> missing;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (!call(what, [&] { return store->check({keys[i]}); })) missing.push_back(ranks[i]);
    }
    if (missing.empty()) return;  // arrived just after the timeout
    throw not_arrived(missing, what);
  }

  Error not_arrived(const std::vector<int>& missing, const std::string& what) const {
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%g", std::chrono::duration<double>(options.timeout).count());
    return Error(ErrorCode::kIOError, "rank " + std::to_string(rank) + ": " + rank_list(missing) +
                                          " did not arrive at the " + what + " within " + seconds +
                                          " s (hint: the rank died or stalls; see its log. The timeout is "
                                          "CoordinatorOptions::timeout)");
  }

  std::string key(const std::string& kind, int r) const {
    return std::to_string(seq) + "/" + kind + "/" + std::to_string(r);
  }

  // Once a gather completes, every rank has finished every collective
  // before it: this rank's keys of those can go. (A broadcast proves nothing
  // of the kind: its root does not wait.)
  void retire_after_gather(const std::string& gather_key) {
    for (const std::string& k : pending_keys) call("cleanup", [&] { return store->deleteKey(k); });
    pending_keys = {gather_key};
  }
};

Coordinator::Coordinator() : state_(std::make_shared<State>()) {}

Coordinator::Coordinator(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size, CoordinatorOptions options)
    : state_(std::make_shared<State>()) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw Error(ErrorCode::kInvalidArgument, "rank " + std::to_string(rank) + " of world size " +
                                                 std::to_string(world_size) + " (hint: 0 <= rank < world size)");
  }
  if (options.timeout.count() <= 0) {
    throw Error(ErrorCode::kInvalidArgument, "CoordinatorOptions::timeout must be positive");
  }
  if (options.local_rank >= world_size) {
    throw Error(ErrorCode::kInvalidArgument, "CoordinatorOptions::local_rank " + std::to_string(options.local_rank) +
                                                 " of world size " + std::to_string(world_size) +
                                                 " (hint: a rank's index among its node's ranks)");
  }
  State& s = *state_;
  s.rank = rank;
  s.world = world_size;
  s.options = std::move(options);
  if (world_size == 1) return;
  if (!store)
    throw Error(ErrorCode::kInvalidArgument, "a null c10d store for world size " + std::to_string(world_size));
  s.user_store = store;
  // A generation per Coordinator made, counted by each rank: a job restarted
  // on the same store (torchrun's agent outlives its workers) starts on
  // fresh keys, never on the last attempt's.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(s.options.prefix, store);
  s.store = prefixed;
  const std::int64_t generation = s.call("start-up",
                                         [&] { return prefixed->add("generation/" + std::to_string(rank), 1); });
  s.store = c10::make_intrusive<c10d::PrefixStore>("g" + std::to_string(generation), prefixed);
}

Coordinator Coordinator::from_env(CoordinatorOptions options) {
  if (std::getenv("WORLD_SIZE") == nullptr) return Coordinator();
  const int world = env_int("WORLD_SIZE", 1, 1 << 20);
  const int rank = env_int("RANK", 0, world - 1);
  if (world == 1) return Coordinator();
  if (options.node_rank < 0 && std::getenv("GROUP_RANK") != nullptr) {
    options.node_rank = env_int("GROUP_RANK", 0, world - 1);
  }
  if (options.local_rank < 0 && std::getenv("LOCAL_RANK") != nullptr) {
    options.local_rank = env_int("LOCAL_RANK", 0, world - 1);
  }
  const std::string host = env_or_throw("MASTER_ADDR");
  const int port = env_int("MASTER_PORT", 1, 65535);
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  const bool agent_store = agent != nullptr && std::string(agent) == "True";
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(port);
  o.isServer = rank == 0 && !agent_store;
  o.numWorkers = static_cast<std::size_t>(world);
  o.waitWorkers = false;
  o.timeout = options.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(host, o);
  } catch (const std::exception& e) {
    std::string why = e.what();
    throw Error(ErrorCode::kIOError, "rank " + std::to_string(rank) + ": cannot " +
                                         (o.isServer ? "host" : "connect to") + " the c10d TCPStore at " + host + ":" +
                                         std::to_string(port) + ": " + why.substr(0, why.find('\n')) +
                                         (o.isServer ? " (hint: is the port in use?)" : ""));
  }
  detail::log_info("rank {} of {}: c10d store at {}:{}{}", rank, world, host, port,
                   agent_store ? " (torchrun's agent)" : (o.isServer ? " (hosted here)" : ""));
  Coordinator coordinator(store, rank, world, std::move(options));
  coordinator.state_->hosts_store = o.isServer;
  return coordinator;
}

int Coordinator::rank() const { return state_->rank; }
int Coordinator::world_size() const { return state_->world; }
int Coordinator::node_rank() const { return std::max(state_->options.node_rank, 0); }
int Coordinator::local_rank() const {
  return state_->options.local_rank >= 0 ? state_->options.local_rank : state_->rank;
}
const CoordinatorOptions& Coordinator::options() const { return state_->options; }
c10::intrusive_ptr<c10d::Store> Coordinator::store() const { return state_->user_store; }
std::int64_t Coordinator::store_operations() const { return state_->ops; }

std::vector<std::string> Coordinator::all_gather(const std::string& what, const std::string& bytes) {
  State& s = *state_;
  if (s.world == 1) return {bytes};
  ++s.seq;
  const std::string mine = s.key("gather", s.rank);
  s.call(what, [&] { s.store->set(mine, to_bytes(bytes)); });
  std::vector<std::string> keys;
  std::vector<int> ranks;
  for (int r = 0; r < s.world; ++r) {
    keys.push_back(s.key("gather", r));
    ranks.push_back(r);
  }
  s.wait_for(keys, ranks, what);
  std::vector<std::string> out(static_cast<std::size_t>(s.world));
  for (int r = 0; r < s.world; ++r) {
    out[static_cast<std::size_t>(r)] = r == s.rank ? bytes
                                                   : from_bytes(s.call(what, [&] { return s.store->get(keys[r]); }));
  }
  s.retire_after_gather(mine);
  return out;
}

std::string Coordinator::broadcast(const std::string& what, const std::string& bytes) {
  State& s = *state_;
  if (s.world == 1) return bytes;
  ++s.seq;
  const std::string k = s.key("broadcast", 0);
  if (s.rank == 0) {
    s.call(what, [&] { s.store->set(k, to_bytes(bytes)); });
    s.pending_keys.push_back(k);
    return bytes;
  }
  s.wait_for({k}, {0}, what);
  return from_bytes(s.call(what, [&] { return s.store->get(k); }));
}

void Coordinator::post(const std::string& key, const std::string& bytes) {
  State& s = *state_;
  if (s.world == 1) return;
  s.call(key, [&] { s.store->set("p/" + key, to_bytes(bytes)); });
}

std::string Coordinator::await(const std::string& key, int from_rank, const std::string& what) {
  State& s = *state_;
  if (s.world == 1) {
    throw Error(ErrorCode::kInvalidArgument, "Coordinator::await with one process (hint: nothing posts '" + key + "')");
  }
  const std::string k = "p/" + key;
  const auto deadline = std::chrono::steady_clock::now() + s.options.timeout;
  auto pause = std::chrono::microseconds(200);
  while (!s.call(what, [&] { return s.store->check({k}); })) {
    if (std::chrono::steady_clock::now() >= deadline) throw s.not_arrived({from_rank}, what);
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
  }
  return from_bytes(s.call(what, [&] { return s.store->get(k); }));
}

void Coordinator::erase(const std::string& key) {
  State& s = *state_;
  if (s.world == 1) return;
  s.call("cleanup", [&] { return s.store->deleteKey("p/" + key); });
}

void Coordinator::barrier(const std::string& what) { all_gather(what, std::string()); }

Metrics Coordinator::reduce_metrics(const Metrics& local, std::int64_t samples) {
  if (samples <= 0) {
    throw Error(ErrorCode::kInvalidArgument, "reduce_metrics: " + std::to_string(samples) +
                                                 " samples (hint: the number of evaluation samples behind this "
                                                 "rank's values, > 0)");
  }
  if (state_->world == 1) return local;
  detail::WireWriter w;
  w.i64(samples).metrics(local);
  const std::vector<std::string> parts = all_gather("reduction of the metrics", w.bytes());
  std::vector<std::pair<std::int64_t, Metrics>> ranks;
  for (const std::string& p : parts) {
    detail::WireReader r(p, "reduction of the metrics");
    std::pair<std::int64_t, Metrics> m;
    m.first = r.i64();
    m.second = r.metrics();
    r.end();
    ranks.push_back(std::move(m));
  }
  return detail::weighted_mean(ranks);
}

namespace detail {

Metrics weighted_mean(const std::vector<std::pair<std::int64_t, Metrics>>& ranks) {
  const Metrics& first = ranks.front().second;
  for (std::size_t r = 1; r < ranks.size(); ++r) {
    for (const auto& [k, v] : ranks[r].second) {
      if (!first.count(k)) {
        throw Error(ErrorCode::kInvalidArgument, "the metric '" + k + "' of rank " + std::to_string(r) +
                                                     " is missing on rank 0 (hint: every rank evaluates the same "
                                                     "metrics)");
      }
    }
    for (const auto& [k, v] : first) {
      if (!ranks[r].second.count(k)) {
        throw Error(ErrorCode::kInvalidArgument, "the metric '" + k + "' of rank 0 is missing on rank " +
                                                     std::to_string(r) +
                                                     " (hint: every rank evaluates the same metrics)");
      }
    }
  }
  double total = 0;
  for (const auto& rank : ranks) total += static_cast<double>(rank.first);
  Metrics out;
  for (const auto& [k, unused] : first) {
    double sum = 0;
    bool nan = false;
    for (const auto& rank : ranks) {
      const double v = rank.second.at(k);
      nan = nan || std::isnan(v);
      sum += v * static_cast<double>(rank.first);
    }
    out[k] = nan ? std::numeric_limits<double>::quiet_NaN() : sum / total;
  }
  return out;
}

}  // namespace detail
}  // namespace lorakeep
