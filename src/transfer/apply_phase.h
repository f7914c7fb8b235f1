// The transfer layer's interface for the layers above it (lora/,
// checkpoint/): a load in its two phases, for callers that must finish
// validating everything they will touch before the first write, including
// tensors that do not exist yet (the factors of layers a load will arm).
// The constructor runs the plan phase (transfer/plan_phase.h); apply() is the
// apply phase, implemented in apply_phase.cpp with the staging it needs.
#pragma once

#include <memory>

#include "lorakeep/transfer.h"

namespace lorakeep::detail {

// load_into, split at its one boundary: the constructor plans (names, shapes,
// dtypes, checksums of every byte to be copied; nothing written), apply()
// writes. Move-only; not thread-safe.
class LoadPlan {
 public:
  // Throws as load_into's plan phase; `source` must outlive the plan. Targets
  // may be placeholders (meta tensors of the right shape and dtype) that
  // retarget() replaces before apply().
  LoadPlan(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options);
  ~LoadPlan();
  LoadPlan(LoadPlan&&) noexcept;
  LoadPlan& operator=(LoadPlan&&) noexcept;

  // Replaces each planned target by the tensor of the same name in `live`;
  // names not in `live` keep their target.
  // Throws Error(kInvalidArgument) if a live tensor's shape or dtype differs
  // from the placeholder's (an internal mismatch; nothing written).
  void retarget(const NamedTensors& live);

  // Allocates the staging, then writes every planned tensor. A failure before
  // the first write leaves every target unchanged; after it (an I/O error on
  // a file that changed under the load) the Error keeps its code and says the
  // targets were partly written, naming those reached.
  TransferReport apply();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace lorakeep::detail
