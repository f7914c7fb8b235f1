#include "checkpoint/collective.h"

#include <exception>

#include "checkpoint/wire.h"

namespace lorakeep::detail {

std::string RankOutcome::run(const std::function<std::string()>& local) {
  WireWriter w;
  try {
    const std::string payload = local();
    w.i64(1).str(payload);
  } catch (const Error& e) {
    w = WireWriter();
    w.i64(0).i64(static_cast<std::int64_t>(e.code())).str(e.what());
  } catch (const std::exception& e) {
    w = WireWriter();
    w.i64(0).i64(static_cast<std::int64_t>(ErrorCode::kIOError)).str(e.what());
  }
  return w.bytes();
}

RankOutcome RankOutcome::decode(const std::string& bytes, int rank, const std::string& what) {
  WireReader in(bytes, what);
  RankOutcome outcome;
  outcome.rank = rank;
  const std::int64_t ok = in.i64();
  if (ok == 1) {
    outcome.payload = in.str();
  } else {
    outcome.ok = false;
    const std::int64_t code = in.i64();
    if (ok != 0 || code < 0 || code > static_cast<std::int64_t>(ErrorCode::kOutOfMemory)) {
      throw Error(ErrorCode::kCorruption, "a malformed message from rank " + std::to_string(rank) + " (" + what +
                                              ") (hint: are all ranks running the same lorakeep version?)");
    }
    outcome.code = static_cast<ErrorCode>(code);
    outcome.message = in.str();
  }
  in.end();
  return outcome;
}

void RankOutcome::raise(int world_size) const {
  if (world_size == 1) throw Error(code, message);
  throw Error(code, "rank " + std::to_string(rank) + ": " + message);
}

std::vector<RankOutcome> gather_outcomes(Coordinator& coordinator, const std::string& what,
                                         const std::function<std::string()>& local) {
  std::vector<RankOutcome> out;
  if (coordinator.world_size() == 1) {
    out.push_back(RankOutcome::decode(RankOutcome::run(local), 0, what));
    return out;
  }
  const std::vector<std::string> parts = coordinator.all_gather(what, RankOutcome::run(local));
  for (std::size_t r = 0; r < parts.size(); ++r)
    out.push_back(RankOutcome::decode(parts[r], static_cast<int>(r), what));
  return out;
}

std::vector<const RankOutcome*> failures(const std::vector<RankOutcome>& outcomes) {
  std::vector<const RankOutcome*> out;
  for (const RankOutcome& o : outcomes) {
    if (!o.ok) out.push_back(&o);
  }
  return out;
}

void raise_any(const std::vector<RankOutcome>& outcomes, int world_size) {
  if (const auto failed = failures(outcomes); !failed.empty()) failed.front()->raise(world_size);
}

bool all_damaged(const std::vector<const RankOutcome*>& failed) {
  for (const RankOutcome* f : failed) {
    if (f->code != ErrorCode::kCorruption && f->code != ErrorCode::kNotFound) return false;
  }
  return true;
}

void apply_everywhere(Coordinator& coordinator, const std::string& what, const std::function<void()>& apply) {
  if (coordinator.world_size() == 1) {
    apply();
    return;
  }
  raise_any(gather_outcomes(coordinator, what,
                            [&] {
                              apply();
                              return std::string();
                            }),
            coordinator.world_size());
}

std::vector<std::int64_t> agreed_steps(Coordinator& coordinator, const std::string& what,
                                       const std::vector<std::int64_t>& mine) {
  if (coordinator.world_size() == 1) return mine;
  WireReader r(coordinator.broadcast(what, WireWriter().steps(mine).bytes()), what);
  std::vector<std::int64_t> steps = r.steps();
  r.end();
  return steps;
}

}  // namespace lorakeep::detail
