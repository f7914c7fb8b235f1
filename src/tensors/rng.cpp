#include "tensors/rng.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include "lorakeep/error.h"
#include "base/logging.h"
#include "format/header.h"

namespace lorakeep::detail {
namespace {

// name => generator: "cpu", then "cuda:<i>" for every CUDA device LibTorch sees.
std::vector<std::pair<std::string, at::Generator>> generators() {
  std::vector<std::pair<std::string, at::Generator>> out;
  out.emplace_back("cpu", at::detail::getDefaultCPUGenerator());
  const auto& cuda = at::detail::getCUDAHooks();
  if (cuda.hasCUDA()) {
    for (int i = 0; i < cuda.getNumGPUs(); ++i) {
      out.emplace_back("cuda:" + std::to_string(i),
                       at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(i))));
    }
  }
  return out;
}

at::Tensor state_of(at::Generator& g) {
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get_state();
}

// The generator each state is for, checked; unknown generators skipped.
std::vector<std::pair<at::Generator, const at::Tensor*>> match(const NamedTensors& states, const std::string& origin) {
  auto all = generators();
  std::vector<std::pair<at::Generator, const at::Tensor*>> out;
  for (const auto& [name, state] : states) {
    auto it = std::find_if(all.begin(), all.end(), [&](const auto& g) { return g.first == name; });
    if (it == all.end()) {
      // A CUDA state saved on a machine with more devices (or any CUDA state
      // on a CPU-only one): the generators that exist still resume exactly.
      log_warn("'{}' holds the state of generator '{}', which this process does not have: ignored", origin, name);
      continue;
    }
    const at::Tensor current = state_of(it->second);
    if (!state.defined() || state.scalar_type() != at::kByte || state.dim() != 1 || state.numel() != current.numel()) {
      throw Error(ErrorCode::kCorruption, "'" + origin + "' holds a state for generator '" + name + "' that is not " +
                                              std::to_string(current.numel()) +
                                              " bytes of uint8 (hint: written by another LibTorch version?)");
    }
    out.emplace_back(it->second, &state);
  }
  return out;
}

}  // namespace

NamedTensors parse_rng_states(const std::string& bytes, const std::string& origin) {
  const auto* file = reinterpret_cast<const std::uint8_t*>(bytes.data());
  const SafetensorsHeader header = parse_safetensors_header(file, bytes.size(), origin);
  NamedTensors states;
  for (const TensorInfo& t : header.tensors) {
    if (t.dtype != Dtype::kU8 || t.shape.size() != 1) {
      throw Error(ErrorCode::kCorruption, "'" + origin + "' holds '" + t.name +
                                              "', which is not a vector of uint8 (hint: not an RNG state lorakeep "
                                              "wrote)");
    }
    at::Tensor state = at::empty({t.shape[0]}, at::kByte);
    std::memcpy(state.data_ptr(), file + header.data_start() + t.data_begin, t.byte_size());
    states.emplace_back(t.name, std::move(state));
  }
  check_rng_states(states, origin);
  return states;
}

NamedTensors capture_rng_states() {
  NamedTensors out;
  for (auto& [name, g] : generators()) out.emplace_back(name, state_of(g));
  return out;
}

void check_rng_states(const NamedTensors& states, const std::string& origin) { match(states, origin); }

void restore_rng_states(const NamedTensors& states, const std::string& origin) {
  for (auto& [g, state] : match(states, origin)) {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(state->contiguous().cpu());
  }
}

RngGuard::~RngGuard() {
  try {
    restore_rng_states(states_, "the generators' saved state");
  } catch (const std::exception& e) {
    log_error("cannot restore the random generators: {}", e.what());
  }
}

}  // namespace lorakeep::detail
