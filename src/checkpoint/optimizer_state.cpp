#include "checkpoint/optimizer_state.h"

#include <exception>
#include <sstream>

#include <torch/serialize/output-archive.h>

#include "lorakeep/error.h"
#include "io/atomic_file.h"
#include "tensors/torch_compat.h"
#include "tensors/torch_error.h"

namespace lorakeep::detail {
namespace {

// Moves each parameter's optimizer state to the parameter's device, one
// parameter at a time, through the state's own serialization (the only
// generic access LibTorch's optimizers give to their state tensors): the
// device then holds at most one parameter's state beyond the final state.
void move_state_to_parameters(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups()) {
    for (const at::Tensor& param : group.params()) {
      if (param.device().is_cpu()) continue;
      auto it = optimizer.state().find(optimizer_state_key(optimizer, param));
      if (it == optimizer.state().end()) continue;
      torch::serialize::OutputArchive out;
      it->second->serialize(out);
      std::ostringstream bytes;
      out.save_to(bytes);
      torch::serialize::InputArchive in;
      std::istringstream read(bytes.str());
      in.load_from(read, param.device());
      it->second->serialize(in);
    }
  }
}

// LibTorch's Optimizer::load checks the number of parameter groups, then
// each group's size just before it replaces that group's state: a saved
// state that fits the first group but not a later one would leave the
// optimizer half restored. So every count is checked here first, on the
// archive as LibTorch writes it ("param_groups/size", "param_groups/<i>" ->
// "params/size"). Throws Error(kIncompatible) naming `path`.
void check_optimizer_groups(torch::serialize::InputArchive& archive, torch::optim::Optimizer& optimizer,
                            const std::string& path) {
  torch::serialize::InputArchive groups;
  if (!archive.try_read("param_groups", groups)) return;  // another layout: Optimizer::load checks it
  auto count = [&](torch::serialize::InputArchive& a, const std::string& key) {
    at::Tensor n;
    if (!a.try_read(key, n) || n.numel() != 1) {
      throw Error(ErrorCode::kCorruption, "the optimizer state '" + path + "' has no '" + key + "'");
    }
    return n.item<std::int64_t>();
  };
  const auto& live = optimizer.param_groups();
  const std::int64_t saved = count(groups, "param_groups/size");
  if (saved != static_cast<std::int64_t>(live.size())) {
    throw Error(ErrorCode::kIncompatible, "the optimizer state '" + path + "' has " + std::to_string(saved) +
                                              " parameter groups; the optimizer has " + std::to_string(live.size()) +
                                              " (hint: another optimizer setup?)");
  }
  for (std::size_t i = 0; i < live.size(); ++i) {
    torch::serialize::InputArchive group;
    groups.read("param_groups/" + std::to_string(i), group);
    const std::int64_t params = count(group, "params/size");
    if (params != static_cast<std::int64_t>(live[i].params().size())) {
      throw Error(ErrorCode::kIncompatible, "the optimizer state '" + path + "' has " + std::to_string(params) +
                                                " parameters in group " + std::to_string(i) + "; the optimizer has " +
                                                std::to_string(live[i].params().size()) +
                                                " (hint: other trainable parameters?)");
    }
  }
}

}  // namespace

// A failed write is kept and rethrown after save_to returns: the archive's
// writer retries from its destructor, and a second throw there would
// terminate the process.
FileDigest write_optimizer_state(const std::string& path, torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  WritableFile f = WritableFile::create(path);
  Xxh3Stream hash;
  std::exception_ptr failed;
  archive.save_to([&](const void* data, std::size_t size) -> std::size_t {
    if (failed) return size;
    try {
      f.append(data, size);
      hash.update(data, size);
    } catch (...) {
      failed = std::current_exception();
    }
    return size;
  });
  if (failed) std::rethrow_exception(failed);
  f.sync();
  const std::uint64_t size = f.size();
  f.close();
  return FileDigest{size, hash.digest()};
}

std::string serialize_optimizer_state(torch::optim::Optimizer& optimizer, std::size_t reserve) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::string bytes;
  bytes.reserve(reserve);  // growing the string would copy it again and again
  archive.save_to([&](const void* data, std::size_t size) -> std::size_t {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

OptimizerStateLoad::OptimizerStateLoad(const std::string& path, torch::optim::Optimizer& optimizer)
    : path_(path), optimizer_(&optimizer) {
  archive_.emplace();
  with_torch_errors(ErrorCode::kCorruption, "cannot read the optimizer state '" + path + "'", [&] {
    archive_->load_from(path, c10::Device(c10::kCPU));
    check_optimizer_groups(*archive_, optimizer, path);
  });
}

void OptimizerStateLoad::apply() {
  // Its groups were checked against the archive, which is all
  // Optimizer::load checks.
  with_torch_errors(
      ErrorCode::kIncompatible,
      "cannot restore the optimizer from '" + path_ + "' (hint: another optimizer type, or other parameters?)", [&] {
        optimizer_->load(*archive_);
        archive_.reset();
        move_state_to_parameters(*optimizer_);
      });
}

}  // namespace lorakeep::detail
