#include "checkpoint/optimizer_state.h"

#include <exception>
#include <memory>
#include <sstream>
#include <type_traits>
#include <vector>

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/output-archive.h>

#include "lorakeep/error.h"
#include "io/atomic_file.h"
#include "tensors/torch_compat.h"
#include "tensors/torch_error.h"

namespace lorakeep::detail {
namespace {

at::Tensor moved(const at::Tensor& t, const c10::Device& device) { return t.defined() ? t.to(device) : t; }

// Moves the tensors of a state of LibTorch's own optimizers to `device`
// through their typed accessors; false for another type.
bool move_builtin_state(torch::optim::OptimizerParamState& state, const c10::Device& d) {
  using namespace torch::optim;
  if (auto* s = dynamic_cast<AdamParamState*>(&state)) {
    s->exp_avg(moved(s->exp_avg(), d)).exp_avg_sq(moved(s->exp_avg_sq(), d));
    s->max_exp_avg_sq(moved(s->max_exp_avg_sq(), d));
  } else if (auto* w = dynamic_cast<AdamWParamState*>(&state)) {
    w->exp_avg(moved(w->exp_avg(), d)).exp_avg_sq(moved(w->exp_avg_sq(), d));
    w->max_exp_avg_sq(moved(w->max_exp_avg_sq(), d));
  } else if (auto* g = dynamic_cast<SGDParamState*>(&state)) {
    g->momentum_buffer(moved(g->momentum_buffer(), d));
  } else if (auto* a = dynamic_cast<AdagradParamState*>(&state)) {
    a->sum(moved(a->sum(), d));
  } else if (auto* r = dynamic_cast<RMSpropParamState*>(&state)) {
    r->square_avg(moved(r->square_avg(), d)).momentum_buffer(moved(r->momentum_buffer(), d));
    r->grad_avg(moved(r->grad_avg(), d));
  } else {
    return false;
  }
  return true;
}

// Moves each parameter's optimizer state to the parameter's device, one
// parameter at a time. LibTorch's own optimizers through their typed
// accessors (a plain .to(device): any device); another optimizer's state
// through its own serialization, the only generic access LibTorch gives to
// state tensors (its archive loads onto the CPU and CUDA in LibTorch 1.x, onto
// more devices in 2.x). The device then holds at most one parameter's state
// beyond the final state.
void move_state_to_parameters(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups()) {
    for (const at::Tensor& param : group.params()) {
      if (param.device().is_cpu()) continue;
      auto it = optimizer.state().find(optimizer_state_key(optimizer, param));
      if (it == optimizer.state().end()) continue;
      if (move_builtin_state(*it->second, param.device())) continue;
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
  // Optimizer::load replaces the state and every group's options: both are
  // kept aside until the loaded state is on the parameters' devices, and put
  // back if that fails (a device out of memory), so the optimizer is
  // replaced only once everything it needs is allocated.
  std::decay_t<decltype(optimizer_->state())> kept_state;
  kept_state.swap(optimizer_->state());
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> kept_options;
  for (auto& group : optimizer_->param_groups()) kept_options.push_back(group.options().clone());
  try {
    // Its groups were checked against the archive, which is all
    // Optimizer::load checks.
    with_torch_errors(
        ErrorCode::kIncompatible,
        "cannot restore the optimizer from '" + path_ + "' (hint: another optimizer type, or other parameters?)", [&] {
          optimizer_->load(*archive_);
          move_state_to_parameters(*optimizer_);
        });
  } catch (const Error& e) {
    optimizer_->state().swap(kept_state);
    auto& groups = optimizer_->param_groups();
    for (std::size_t i = 0; i < groups.size(); ++i) groups[i].set_options(std::move(kept_options[i]));
    throw Error(e.code(), std::string(e.what()) + " (the optimizer was left as it was)");
  }
  archive_.reset();
}

}  // namespace lorakeep::detail
