// Private to checkpoint/: a step that every rank runs and whose outcome
// every rank learns. Each rank runs its local part and reports a RankOutcome
// (its payload, or the Error it threw) to all; a rank that failed still takes
// part, so no rank waits for it; the same checks over the same outcomes give
// every rank the same result, or the same Error naming the rank that failed.
// With one process each call is the local part alone.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lorakeep/distributed.h"
#include "lorakeep/error.h"

namespace lorakeep::detail {

struct RankOutcome {
  int rank = 0;
  bool ok = true;
  ErrorCode code = ErrorCode::kIOError;
  std::string message;  // the error's, when !ok
  std::string payload;  // the local part's result, when ok

  // Runs `local` and returns its outcome as a message: the payload it
  // returned, or the Error (or other exception, as kIOError) it threw.
  static std::string run(const std::function<std::string()>& local);
  // Throws Error(kCorruption) for a malformed message (`what` names the step).
  static RankOutcome decode(const std::string& bytes, int rank, const std::string& what);

  // The same Error on every rank: this failure, naming its rank (with one
  // process, the error as it was).
  [[noreturn]] void raise(int world_size) const;
};

// Runs `local` on this rank and returns every rank's outcome, by rank.
std::vector<RankOutcome> gather_outcomes(Coordinator& coordinator, const std::string& what,
                                         const std::function<std::string()>& local);

// The failed outcomes, by rank.
std::vector<const RankOutcome*> failures(const std::vector<RankOutcome>& outcomes);

// Raises the first failure, if any.
void raise_any(const std::vector<RankOutcome>& outcomes, int world_size);

// Whether every failure says the data is damaged or missing (kCorruption,
// kNotFound): what a fallback to another checkpoint may step over.
bool all_damaged(const std::vector<const RankOutcome*>& failed);

// Runs `apply` (what every rank validated) on every rank; a failure on any
// (a read error after writing began) is raised on all.
void apply_everywhere(Coordinator& coordinator, const std::string& what, const std::function<void()>& apply);

// Rank 0's `mine`, on every rank.
std::vector<std::int64_t> agreed_steps(Coordinator& coordinator, const std::string& what,
                                       const std::vector<std::int64_t>& mine);

}  // namespace lorakeep::detail
