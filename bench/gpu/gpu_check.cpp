// gpu_check: the seed's bug reproduced and beaten on a real CUDA device, with
// counted bytes (scripts/gpu-check.sh builds and runs it; see docs/gpu-check.md).
//
//   gpu_check --work DIR [--json FILE] [--adapter-mib 1024] [--free-mib 64]
//             [--device 0] [--repeat 3] [--dry-run]
//
// With the live model resident (base weights and LoRA parameters on the GPU)
// and the rest of the device taken by a balloon allocation, so that only
// --free-mib stays free:
//   1. the naive reload (the whole adapter state dict to CUDA, then copy_)
//      fails with CUDA out of memory;
//   2. CheckpointManager::load_best_into succeeds, parameters bitwise equal
//      to the file;
//   3. extra device bytes (lorakeep::AllocationProbe: the caching allocator's
//      allocated_bytes peak minus its level before, after resetPeakStats): load_into of an F32 file, of a
//      BF16 file into the F32 parameters, apply_delta;
//   4. load_into's throughput (page-cache read included) against cudaMemcpy
//      of the same bytes into the same parameters from pinned memory;
//   5. apply_delta into the live CUDA parameters equal to the same delta
//      applied by lorakeep into CPU copies.
// Prints one table and writes it as JSON (the "gpu" section of
// bench/results.json). Exit 0 when every row passes, 1 when one fails, 2 for
// usage errors and a missing GPU.
//
// Uses lorakeep's public headers only, and LibTorch API that 1.13, 2.11 and
// 2.15 share. --dry-run prints the plan and exits before the first CUDA call.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <lorakeep/lorakeep.h>

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::int64_t kMiB = 1 << 20;

struct Args {
  std::string work;
  std::string json;
  std::int64_t adapter_mib = 1024;
  std::int64_t free_mib = 64;
  int device = 0;
  int repeat = 3;
  bool dry_run = false;
};

// The model: `layers` blocks, each a LoraLinear(d, d) named layers.<i>.q_proj
// with rank r; the adapter is 2 * r * d * 4 bytes per layer in F32.
constexpr std::int64_t kD = 2048;
constexpr int kRank = 512;
constexpr std::int64_t kLayerAdapterBytes = 2LL * kRank * kD * 4;

struct BlockImpl : torch::nn::Module {
  lorakeep::LoraLinear q_proj{nullptr};
  BlockImpl() {
    q_proj = register_module("q_proj", lorakeep::LoraLinear(lorakeep::LoraLinearOptions(kD, kD).bias(false)));
  }
};
TORCH_MODULE(Block);

struct NetImpl : torch::nn::Module {
  torch::nn::ModuleList layers;
  explicit NetImpl(int n) {
    layers = register_module("layers", torch::nn::ModuleList());
    for (int i = 0; i < n; ++i) layers->push_back(Block());
  }
};
TORCH_MODULE(Net);

struct Row {
  std::string key;
  std::string what;
  std::string value;   // human-readable
  std::string target;  // human-readable
  std::string json;    // the JSON value of the measurement
  bool pass = false;
};

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string mib(std::int64_t bytes) { return fmt("%.1f MiB", static_cast<double>(bytes) / kMiB); }

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "gpu_check: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

std::int64_t device_free_bytes() {
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return static_cast<std::int64_t>(free);
}

lorakeep::NamedTensors lora_params(Net& model) {
  lorakeep::NamedTensors out;
  for (const auto& item : model->named_parameters()) {
    if (item.key().find("lora_") != std::string::npos) out.emplace_back(item.key(), item.value());
  }
  return out;
}

// Every parameter bitwise equal to the file's tensor (converted to the
// parameter's dtype), compared on the host one tensor at a time.
bool equal_to_file(const lorakeep::NamedTensors& params, const std::string& file, const std::string& prefix,
                   std::string* first_difference) {
  const auto f = lorakeep::SafetensorsFile::open(file);
  for (const auto& [name, p] : params) {
    const at::Tensor expected = f.tensor(prefix + name).to(p.scalar_type());
    if (!torch::equal(p.to(torch::kCPU), expected)) {
      *first_difference = name;
      return false;
    }
  }
  return true;
}

void zero_all(const lorakeep::NamedTensors& params) {
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params) p.zero_();
  torch::cuda::synchronize();
}

void warm_page_cache(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> buf(16 << 20);
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
  }
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int usage(const char* msg) {
  std::fprintf(stderr,
               "gpu_check: %s\nusage: gpu_check --work DIR [--json FILE] [--adapter-mib N] [--free-mib N] "
               "[--device I] [--repeat N] [--dry-run]\n",
               msg);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gpu_check: %s needs a value\n", s.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (s == "--work") a.work = value();
    else if (s == "--json") a.json = value();
    else if (s == "--adapter-mib") a.adapter_mib = std::atoll(value().c_str());
    else if (s == "--free-mib") a.free_mib = std::atoll(value().c_str());
    else if (s == "--device") a.device = std::atoi(value().c_str());
    else if (s == "--repeat") a.repeat = std::max(1, std::atoi(value().c_str()));
    else if (s == "--dry-run") a.dry_run = true;
    else return usage(("unknown argument " + s).c_str());
  }
  if (a.work.empty()) return usage("--work DIR is required");
  const int layers = static_cast<int>(std::max<std::int64_t>(1, a.adapter_mib * kMiB / kLayerAdapterBytes));
  const std::int64_t adapter_bytes = layers * kLayerAdapterBytes;
  const std::int64_t chunk = 64 * kMiB;

  std::printf("gpu_check: lorakeep %s, LibTorch %s, C++ %ld\n", LORAKEEP_VERSION, TORCH_VERSION,
              static_cast<long>(__cplusplus));
  std::printf("plan: cuda:%d; model: %d x LoraLinear(%ld, %ld, r=%d), adapter %s F32, base %s F32;\n"
              "      checkpoint in %s; balloon so that %ld MiB stay free;\n"
              "      naive reload (state dict to CUDA, then copy_) must hit CUDA out of memory;\n"
              "      load_best_into, load_into F32 and BF16 files, apply_delta: extra device bytes 0 / <= %s / <= %s;\n"
              "      load_into throughput vs cudaMemcpy from pinned memory (median of %d), target >= 0.8x\n",
              a.device, layers, static_cast<long>(kD), static_cast<long>(kD), kRank, mib(adapter_bytes).c_str(),
              mib(layers * kD * kD * 4).c_str(), a.work.c_str(), static_cast<long>(a.free_mib), mib(chunk).c_str(),
              mib(chunk).c_str(), a.repeat);
  if (a.dry_run) {
    std::printf("gpu_check: --dry-run: stopping before the first CUDA call\n");
    return 0;
  }

  // The first CUDA call.
  if (!torch::cuda::is_available() || static_cast<int>(torch::cuda::device_count()) <= a.device) {
    std::fprintf(stderr,
                 "gpu_check: no CUDA device %d visible to LibTorch %s (torch::cuda::device_count() = %d); "
                 "this check needs an NVIDIA GPU (use --dry-run to stop before CUDA)\n",
                 a.device, TORCH_VERSION, static_cast<int>(torch::cuda::device_count()));
    return 2;
  }
  check_cuda(cudaSetDevice(a.device), "cudaSetDevice");
  const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(a.device));
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, a.device), "cudaGetDeviceProperties");
  std::printf("device: %s, %.1f GiB\n", prop.name, static_cast<double>(prop.totalGlobalMem) / (1 << 30));

  // The live model, resident on the GPU, LoRA parameters random.
  torch::manual_seed(0);
  Net model(layers);
  lorakeep::LoraConfig lora;
  lora.r = kRank;
  lora.lora_alpha = 2.0 * kRank;
  lora.target_modules = {"q_proj"};
  lorakeep::inject_lora(*model, lora);
  model->to(dev);
  lorakeep::NamedTensors params = lora_params(model);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : params) p.normal_(0, 0.02);
  }
  torch::cuda::synchronize();

  // The checkpoint (the best, by eval_loss), a BF16 copy of its adapter, a delta.
  std::filesystem::create_directories(a.work);
  lorakeep::CheckpointOptions co;
  co.output_dir = a.work + "/run";
  co.save_optimizer = false;
  co.metric_for_best_model = "eval_loss";
  lorakeep::CheckpointManager ckpt(co);
  lorakeep::TrainingState state;
  state.global_step = 1;
  state.last_metrics = {{"eval_loss", 0.5}};
  state.last_metrics_step = 1;
  const auto saved = ckpt.save(*model, lora, state);
  const std::string adapter_file = saved.path + "/adapter_model.safetensors";
  const std::string prefix = "base_model.model.";
  const std::string bf16_file = a.work + "/adapter_bf16.safetensors";
  const std::string delta_file = a.work + "/delta.safetensors";
  const double delta_scale = 0.5;  // a power of two: the scaled add rounds once on CPU and GPU alike
  {
    lorakeep::NamedTensors bf16, delta;
    for (const auto& [name, p] : params) bf16.emplace_back(name, p.to(torch::kCPU).to(torch::kBFloat16));
    lorakeep::save_safetensors(bf16_file, bf16, {{"format", "pt"}});
    bf16.clear();
    for (const auto& [name, p] : params) delta.emplace_back(name, torch::randn(p.sizes()) * 0.01);
    lorakeep::save_safetensors(delta_file, delta, {{"format", "pt"}});
  }
  for (const auto& f : {adapter_file, bf16_file, delta_file}) warm_page_cache(f);

  // The balloon: everything free but --free-mib, in 1 GiB blocks and a rest.
  c10::cuda::CUDACachingAllocator::emptyCache();
  std::vector<at::Tensor> balloon;
  std::int64_t to_take = device_free_bytes() - a.free_mib * kMiB;
  while (to_take >= 2 * kMiB) {
    const std::int64_t n = std::min<std::int64_t>(to_take, 1LL << 30) / (2 * kMiB) * (2 * kMiB);
    try {
      balloon.push_back(at::empty({n}, at::TensorOptions(at::kByte).device(dev)));
    } catch (const c10::Error&) {
      break;  // what remains is the driver's own reserve
    }
    to_take -= n;
  }
  c10::cuda::CUDACachingAllocator::emptyCache();
  const std::int64_t free_during = device_free_bytes();
  std::int64_t balloon_bytes = 0;
  for (const auto& t : balloon) balloon_bytes += t.numel();
  std::printf("balloon: %s on the device, %s free\n", mib(balloon_bytes).c_str(), mib(free_during).c_str());

  std::vector<Row> rows;
  zero_all(params);

  // 1. The naive reload.
  {
    std::string outcome = "succeeded";
    bool oom = false;
    std::int64_t reached = 0;
    try {
      const auto f = lorakeep::SafetensorsFile::open(adapter_file);
      std::vector<std::pair<at::Tensor, at::Tensor>> on_device;
      for (const auto& [name, p] : params) {
        on_device.emplace_back(p, f.tensor(prefix + name).to(dev));
        reached += on_device.back().second.nbytes();
      }
      torch::NoGradGuard no_grad;
      for (auto& [p, t] : on_device) p.copy_(t);
      torch::cuda::synchronize();
    } catch (const c10::Error& e) {
      const std::string what = e.what();
      oom = what.find("out of memory") != std::string::npos;
      outcome = oom ? "CUDA out of memory" : "failed: " + what.substr(0, 120);
    }
    c10::cuda::CUDACachingAllocator::emptyCache();
    rows.push_back({"naive_reload", "naive reload (state dict to CUDA, then copy_), " + mib(free_during) + " free",
                    outcome + " after " + mib(reached), "CUDA out of memory",
                    "{\"outcome\": " + json_string(outcome) +
                        ", \"bytes_on_device_before_failure\": " + std::to_string(reached) + "}",
                    oom});
  }

  // 2. load_best_into under the same balloon.
  {
    zero_all(params);
    std::string outcome = "succeeded";
    bool ok = true;
    lorakeep::TransferReport r;
    std::int64_t extra = -1;
    try {
      lorakeep::AllocationProbe peak(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(a.device)));
      r = ckpt.load_best_into(*model);
      torch::cuda::synchronize();
      extra = peak.peak_bytes();
    } catch (const std::exception& e) {
      ok = false;
      outcome = std::string("failed: ") + e.what();
    }
    std::string diff;
    const bool equal = ok && equal_to_file(params, adapter_file, prefix, &diff);
    rows.push_back({"load_best_into", "CheckpointManager::load_best_into, " + mib(free_during) + " free",
                    ok ? outcome + fmt(", %.2f s", r.seconds) + (equal ? ", bitwise equal" : ", DIFFERS: " + diff) +
                             ", extra device " + std::to_string(extra) + " B"
                       : outcome,
                    "succeeds, bitwise equal, 0 B extra",
                    "{\"ok\": " + std::string(ok ? "true" : "false") + ", \"seconds\": " + fmt("%.4f", r.seconds) +
                        ", \"verify_seconds\": " + fmt("%.4f", r.verify_seconds) + ", \"bytes\": " +
                        std::to_string(r.bytes) + ", \"bitwise_equal\": " + (equal ? "true" : "false") +
                        ", \"extra_device_bytes\": " + std::to_string(extra) +
                        ", \"report_peak_device_bytes\": " + std::to_string(r.peak_device_bytes) + "}",
                    ok && equal && extra == 0});
  }

  // 3 and 4. load_into of the F32 file: extra bytes, throughput, equality;
  // cudaMemcpy of the same bytes into the same parameters from pinned memory.
  const auto source = lorakeep::open_tensor_source(adapter_file);
  lorakeep::LoadOptions lo;
  lo.strip_prefix = prefix;
  std::vector<double> reload_s, memcpy_s;
  std::int64_t extra_f32 = 0;
  std::uint64_t bytes = 0;
  bool equal_f32 = true;
  std::string diff;
  for (int i = 0; i < a.repeat; ++i) {
    zero_all(params);
    lorakeep::AllocationProbe peak(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(a.device)));
    const auto t0 = Clock::now();
    const auto r = lorakeep::load_into(params, *source, lo);
    torch::cuda::synchronize();
    reload_s.push_back(seconds_since(t0));
    extra_f32 = std::max(extra_f32, peak.peak_bytes());
    bytes = r.bytes;
    equal_f32 = equal_f32 && equal_to_file(params, adapter_file, prefix, &diff);
  }
  {
    void* pinned = nullptr;
    check_cuda(cudaMallocHost(&pinned, static_cast<size_t>(adapter_bytes)), "cudaMallocHost");
    std::memset(pinned, 0, static_cast<size_t>(adapter_bytes));
    for (int i = 0; i < a.repeat; ++i) {
      check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      const auto t0 = Clock::now();
      std::int64_t off = 0;
      for (const auto& [name, p] : params) {
        check_cuda(cudaMemcpy(p.data_ptr(), static_cast<char*>(pinned) + off, p.nbytes(), cudaMemcpyHostToDevice),
                   "cudaMemcpy");
        off += static_cast<std::int64_t>(p.nbytes());
      }
      check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      memcpy_s.push_back(seconds_since(t0));
    }
    check_cuda(cudaFreeHost(pinned), "cudaFreeHost");
  }
  const double reload_gbs = static_cast<double>(bytes) / median(reload_s) / 1e9;
  const double memcpy_gbs = static_cast<double>(adapter_bytes) / median(memcpy_s) / 1e9;
  const double ratio = reload_gbs / memcpy_gbs;
  rows.push_back({"extra_device_f32", "load_into, F32 file into F32 parameters: extra device bytes",
                  std::to_string(extra_f32) + " B", "0 B",
                  "{\"extra_device_bytes\": " + std::to_string(extra_f32) + "}", extra_f32 == 0});
  rows.push_back({"throughput", "load_into throughput (page cache) vs cudaMemcpy from pinned memory",
                  fmt("%.2f GB/s", reload_gbs) + " vs " + fmt("%.2f GB/s", memcpy_gbs) + fmt(" = %.2fx", ratio),
                  ">= 0.80x",
                  "{\"bytes\": " + std::to_string(bytes) + ", \"reload_gb_per_s\": " + fmt("%.3f", reload_gbs) +
                      ", \"memcpy_pinned_gb_per_s\": " + fmt("%.3f", memcpy_gbs) +
                      ", \"ratio\": " + fmt("%.3f", ratio) + ", \"repeat\": " + std::to_string(a.repeat) + "}",
                  ratio >= 0.8});
  rows.push_back({"bitwise_equal", "parameters bitwise equal to the file after load_into",
                  equal_f32 ? "yes" : "no: " + diff, "yes",
                  std::string("{\"equal\": ") + (equal_f32 ? "true" : "false") + "}", equal_f32});

  // BF16 file into the F32 parameters.
  {
    zero_all(params);
    const auto bf16 = lorakeep::open_tensor_source(bf16_file);
    lorakeep::AllocationProbe peak(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(a.device)));
    lorakeep::load_into(params, *bf16, {});
    torch::cuda::synchronize();
    const std::int64_t extra = peak.peak_bytes();
    const bool equal = equal_to_file(params, bf16_file, "", &diff);
    rows.push_back({"extra_device_bf16", "load_into, BF16 file into F32 parameters: extra device bytes",
                    std::to_string(extra) + " B" + (equal ? ", equal to the file" : ", DIFFERS: " + diff),
                    "<= " + mib(chunk) + ", equal",
                    "{\"extra_device_bytes\": " + std::to_string(extra) + ", \"chunk_bytes\": " +
                        std::to_string(chunk) + ", \"equal\": " + (equal ? "true" : "false") + "}",
                    extra >= 0 && extra <= chunk && equal});
  }

  // 5. apply_delta into the live CUDA parameters, against the same on CPU copies.
  {
    const auto r0 = lorakeep::load_into(params, *source, lo);  // a known base: the adapter
    (void)r0;
    lorakeep::NamedTensors cpu;
    for (const auto& [name, p] : params) cpu.emplace_back(name, p.to(torch::kCPU));
    const auto delta = lorakeep::open_tensor_source(delta_file);
    lorakeep::AllocationProbe peak(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(a.device)));
    const auto r = lorakeep::apply_delta(*model, *delta, delta_scale);
    torch::cuda::synchronize();
    const std::int64_t extra = peak.peak_bytes();
    lorakeep::LoadOptions add;
    add.op = lorakeep::TransferOp::kAdd;
    add.scale = delta_scale;
    lorakeep::load_into(cpu, *delta, add);
    bool equal = true;
    double max_diff = 0;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const at::Tensor g = params[i].second.to(torch::kCPU);
      if (!torch::equal(g, cpu[i].second)) {
        equal = false;
        max_diff = std::max(max_diff, (g - cpu[i].second).abs().max().item<double>());
      }
    }
    rows.push_back(
        {"apply_delta", "apply_delta into live CUDA parameters vs the CPU result",
         std::string(equal ? "bitwise equal" : "DIFFERS, max |diff| " + fmt("%.3g", max_diff)) + ", extra device " +
             std::to_string(extra) + " B" + fmt(", %.2f s", r.seconds),
         "equal, <= " + mib(chunk),
         "{\"equal\": " + std::string(equal ? "true" : "false") + ", \"max_abs_diff\": " + fmt("%.6g", max_diff) +
             ", \"extra_device_bytes\": " + std::to_string(extra) + ", \"chunk_bytes\": " + std::to_string(chunk) +
             ", \"seconds\": " + fmt("%.4f", r.seconds) + "}",
         equal && extra >= 0 && extra <= chunk});
  }
  balloon.clear();

  // The table.
  bool all = true;
  std::printf("\n%-4s  %-78s  %-44s  %s\n", "", "check", "result", "target");
  for (const auto& r : rows) {
    all = all && r.pass;
    std::printf("%-4s  %-78s  %-44s  %s\n", r.pass ? "ok" : "FAIL", r.what.c_str(), r.value.c_str(), r.target.c_str());
  }
  std::ostringstream js;
  js << "{\n  \"device\": " << json_string(prop.name) << ",\n  \"device_total_bytes\": " << prop.totalGlobalMem
     << ",\n  \"libtorch\": " << json_string(TORCH_VERSION) << ",\n  \"lorakeep\": " << json_string(LORAKEEP_VERSION)
     << ",\n  \"adapter_bytes\": " << adapter_bytes << ",\n  \"free_bytes_during_reload\": " << free_during
     << ",\n  \"balloon_bytes\": " << balloon_bytes << ",\n  \"chunk_bytes\": " << chunk
     << ",\n  \"pass\": " << (all ? "true" : "false") << ",\n  \"rows\": {";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    js << (i ? ",\n" : "\n") << "    " << json_string(rows[i].key) << ": {\"what\": " << json_string(rows[i].what)
       << ", \"pass\": " << (rows[i].pass ? "true" : "false") << ", \"target\": " << json_string(rows[i].target)
       << ", \"result\": " << rows[i].json << "}";
  }
  js << "\n  }\n}\n";
  if (!a.json.empty()) {
    std::ofstream out(a.json);
    out << js.str();
    if (!out) {
      std::fprintf(stderr, "gpu_check: cannot write %s\n", a.json.c_str());
      return 1;
    }
    std::printf("\nwrote %s\n", a.json.c_str());
  }
  std::printf("gpu_check: %s\n", all ? "all rows pass" : "SOME ROWS FAIL");
  return all ? 0 : 1;
}
