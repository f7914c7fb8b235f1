// The optimizer's state in a checkpoint (optimizer.pt, LibTorch's archive):
// written streamed from the live optimizer or from a host snapshot, and
// loaded in two phases like an adapter: parse and check, then apply.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>

#include "io/checksum.h"

namespace lorakeep::detail {

// Streams the optimizer's archive into a new synced file at `path`.
// Throws Error(kIOError) naming it.
FileDigest write_optimizer_state(const std::string& path, torch::optim::Optimizer& optimizer);

// The optimizer's archive in host memory (a snapshot for a save off the
// training thread); `reserve`: its expected size (the last one's).
std::string serialize_optimizer_state(torch::optim::Optimizer& optimizer, std::size_t reserve);

// The constructor parses the archive at `path` (its checksum verified by the
// caller, streamed) into host memory and checks every parameter group's size
// against `optimizer`, changing nothing: Error(kCorruption) for an archive
// that does not parse, Error(kIncompatible) for other groups. apply() loads
// it and moves each parameter's state to the parameter's device, one
// parameter at a time. Borrows `optimizer` until apply() returns.
class OptimizerStateLoad {
 public:
  OptimizerStateLoad(const std::string& path, torch::optim::Optimizer& optimizer);

  // Throws Error(kIncompatible) (another optimizer type).
  void apply();

 private:
  std::string path_;
  torch::optim::Optimizer* optimizer_;
  std::optional<torch::serialize::InputArchive> archive_;
};

}  // namespace lorakeep::detail
