// Private to the transfer engine: the plan phase of a load. Every source
// tensor is matched to its live target and checked (shape, dtype, checksum)
// before anything is written.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lorakeep/transfer.h"

namespace lorakeep::detail {

// Reading (and hashing) is bound by one core's memory throughput: a second
// thread nearly halves the time, where LibTorch's own pool may have one
// thread only (it counts physical cores). Small loads stay on one thread.
inline unsigned io_threads(std::uint64_t bytes) {
  if (bytes < (16u << 20)) return 1;
  return std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
}

// One source tensor matched to one live tensor.
struct Planned {
  std::string source_name;
  std::string target_name;
  at::Tensor target;
  const TensorInfo* info;
  c10::ScalarType source_type;
};

// Maps source names to targets, checks every pair, and verifies the bytes of
// every planned tensor against options.checksums (when given and
// verify_checksums is on): each read once, on up to io_threads() threads.
// Nothing is written. Throws one Error listing every problem (kCorruption if
// a checksum failed, else kIncompatible), as load_into documents.
std::vector<Planned> plan(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options,
                          double* verify_seconds);

}  // namespace lorakeep::detail
