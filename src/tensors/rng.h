// Private: the global random generators LibTorch draws from (the CPU one,
// and each CUDA device's where LibTorch has CUDA), captured and restored as
// named byte tensors: "cpu", "cuda:0", "cuda:1", ...
#pragma once

#include "lorakeep/tensor_source.h"

namespace lorakeep::detail {

// The state of every global generator, as CPU uint8 tensors (copies).
NamedTensors capture_rng_states();

// Checks that every state fits its generator (a uint8 tensor of the size the
// generator's state has). States of generators this process lacks (CUDA
// devices it does not see) are logged and skipped. Throws Error(kCorruption)
// naming `origin` and the state.
void check_rng_states(const NamedTensors& states, const std::string& origin);

// The states in `bytes`, a safetensors file of uint8 vectors as a checkpoint
// holds them (parsed from these bytes, already verified by the caller),
// checked by check_rng_states. Throws Error(kCorruption) naming `origin`.
NamedTensors parse_rng_states(const std::string& bytes, const std::string& origin);

// check_rng_states, then sets them all; generators not named are left alone.
// Throws as check_rng_states, with nothing changed.
void restore_rng_states(const NamedTensors& states, const std::string& origin);

// Restores, when it goes out of scope, every generator to the state it had
// when the guard was made: for work that must not move the training run's
// random stream (arming layers whose initial values a load overwrites).
class RngGuard {
 public:
  RngGuard() : states_(capture_rng_states()) {}
  ~RngGuard();
  RngGuard(const RngGuard&) = delete;
  RngGuard& operator=(const RngGuard&) = delete;

 private:
  NamedTensors states_;
};

}  // namespace lorakeep::detail
