// The CUDA leg, on a real device: bounds counted with the caching allocator's
// statistics. Every case skips, saying why, where there is no CUDA device (or
// the build's LibTorch has none); scripts/gpu-check.sh measures the same on a
// GPU machine with the device nearly full.
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "lorakeep/memory.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "lorakeep/transfer.h"
#include "tensor_util.h"
#include "tensors/rng.h"
#include "test_util.h"

namespace lorakeep {
namespace {

// Skips (and returns false) unless a CUDA device can run the case.
bool have_cuda() {
#ifndef LORAKEEP_WITH_CUDA
  test::skip("this build's LibTorch has no CUDA: the CUDA path is not compiled");
  return false;
#else
  if (!torch::cuda::is_available()) {
    test::skip("no CUDA device on this machine (torch::cuda::is_available() is false)");
    return false;
  }
  return true;
#endif
}

constexpr std::uint64_t kChunk = 1 << 20;

NamedTensors cuda_targets(at::ScalarType type) {
  return {{"a", at::zeros({512, 1024}, at::TensorOptions(type).device(at::kCUDA))},      // 2 MiB in F32
          {"b", at::zeros({3, 1000, 700}, at::TensorOptions(type).device(at::kCUDA))}};  // 8.4 MB
}

// Saves `file`, loads it into `live` in pieces of kChunk (copies, or adds
// scale * file) and returns the extra bytes the load allocated at its peak on
// the targets' device.
std::int64_t reload_peak(const NamedTensors& file, const NamedTensors& live, TransferOp op = TransferOp::kCopy,
                         double scale = 1.0) {
  test::TempDir dir;
  save_safetensors(dir / "w.safetensors", file);
  LoadOptions options;
  options.op = op;
  options.scale = scale;
  options.chunk_bytes = kChunk;
  AllocationProbe probe(live[0].second.device());
  load_into(live, *open_tensor_source(dir / "w.safetensors"), options);
  return probe.peak_bytes();
}

}  // namespace

TEST_CASE("a reload into CUDA parameters of the same dtype allocates nothing on the device", "[cuda]") {
  if (!have_cuda()) return;
  const NamedTensors file = {{"a", at::randn({512, 1024})}, {"b", at::randn({3, 1000, 700})}};
  const NamedTensors live = cuda_targets(at::kFloat);
  CHECK(reload_peak(file, live) == 0);
  for (std::size_t i = 0; i < file.size(); ++i) CHECK(at::equal(live[i].second.cpu(), file[i].second));
}

TEST_CASE("a BF16 file reloads into F32 CUDA parameters within one chunk of device memory", "[cuda]") {
  if (!have_cuda()) return;
  const NamedTensors file = {{"a", at::randn({512, 1024}).to(at::kBFloat16)},
                             {"b", at::randn({3, 1000, 700}).to(at::kBFloat16)}};
  const NamedTensors live = cuda_targets(at::kFloat);
  CHECK(reload_peak(file, live) <= static_cast<std::int64_t>(kChunk));
  for (std::size_t i = 0; i < file.size(); ++i) CHECK(at::equal(live[i].second.cpu(), file[i].second.to(at::kFloat)));
}

TEST_CASE("a reload into a strided CUDA view writes through it within one chunk of device memory", "[cuda]") {
  if (!have_cuda()) return;
  const at::Tensor value = at::randn({1024, 512});
  const at::Tensor storage = at::zeros({512, 1024}, at::TensorOptions().device(at::kCUDA));
  // copy_ into a strided CUDA destination goes through a contiguous
  // temporary of the piece's size: at most one chunk.
  CHECK(reload_peak({{"t", value}}, {{"t", storage.t()}}) <= static_cast<std::int64_t>(kChunk));
  CHECK(at::equal(storage.t().cpu(), value));
}

TEST_CASE("apply_delta into live CUDA parameters equals the CPU result within one chunk", "[cuda]") {
  if (!have_cuda()) return;
  const NamedTensors delta = {{"a", at::randn({512, 1024})}, {"b", at::randn({3, 1000, 700})}};
  const NamedTensors cpu = {{"a", at::randn({512, 1024})}, {"b", at::randn({3, 1000, 700})}};
  NamedTensors cuda;
  for (const auto& [name, t] : cpu) cuda.emplace_back(name, t.to(at::kCUDA));
  reload_peak(delta, cpu, TransferOp::kAdd, 0.5);
  CHECK(reload_peak(delta, cuda, TransferOp::kAdd, 0.5) <= static_cast<std::int64_t>(kChunk));
  for (std::size_t i = 0; i < cpu.size(); ++i) CHECK(at::allclose(cuda[i].second.cpu(), cpu[i].second, 1e-6, 1e-6));
}

TEST_CASE("the CUDA generators' states are saved and restored with the CPU one", "[cuda]") {
  if (!have_cuda()) return;
  const NamedTensors states = detail::capture_rng_states();
  bool has_cuda0 = false;
  for (const auto& [name, state] : states) has_cuda0 = has_cuda0 || name == "cuda:0";
  REQUIRE(has_cuda0);
  const at::Tensor first = at::randn({64}, at::TensorOptions().device(at::kCUDA));
  detail::restore_rng_states(states, "the captured states");
  CHECK(at::equal(at::randn({64}, at::TensorOptions().device(at::kCUDA)), first));
}

}  // namespace lorakeep
