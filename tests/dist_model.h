// What the multi-rank tests and their ranks (dist_child) share: each rank's
// evaluation and the identity of an adapter's values.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>

#include <xxhash.h>
#include <torch/nn/module.h>

#include "crash_model.h"

namespace lorakeep::test {

// Rank r's eval loss at `step` over its share (r + 1 samples): the job's
// global value is the sample-weighted mean over the ranks.
inline double dist_metric(std::int64_t step, int rank) { return crash_metric(step) + 0.01 * rank; }

// XXH3-64 of every LoRA parameter's bytes, in module order, as 16 hex digits.
inline std::string adapter_xxh3(torch::nn::Module& module) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const auto& p : module.named_parameters()) {
    if (p.key().find("lora_") == std::string::npos) continue;
    const at::Tensor t = p.value().detach().contiguous();
    XXH3_64bits_update(state, t.data_ptr(), t.nbytes());
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016" PRIx64, static_cast<std::uint64_t>(XXH3_64bits_digest(state)));
  XXH3_freeState(state);
  return hex;
}

}  // namespace lorakeep::test
