// lorakeep_bench: the C++ side of the benchmarks. Each invocation measures one
// method on one file and prints one JSON object; bench/run.py runs the
// matrix and writes BENCHMARKS.md.
//
//   lorakeep_bench make   --layout adapter:512 --dtype F32 --out adapter.safetensors [--bin adapter.bin]
//   lorakeep_bench make   --layout llama:32 --dtype BF16 --out base --shard 4GiB --seed 0
//   lorakeep_bench reload --layout adapter:512 --file adapter.safetensors --method lorakeep-verify --repeat 5
//   lorakeep_bench save   --layout adapter:512 --dir out --method lorakeep --repeat 3
//
// Layouts (layout() in bench/peers.py mirrors all but llama):
//   adapter:N   N MiB of F32 LoRA factors, alternately [64, 4096] and [4096, 64] (1 MiB each)
//   embedding:N one tensor of N MiB, [N * 256, 1024] F32
//   tiny:N      N tensors of [8, 16] (per-tensor overhead)
//   base:N      N MiB in [4096, 4096] blocks (64 MiB each; the last may be smaller)
//   llama:L[:H:M:V]  a Llama-shaped model of L decoder layers, Hugging Face's names (hidden H, MLP M,
//               vocabulary V; default 4096, 11008, 32000: Llama-2-7B at L = 32)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/optim/adam.h>

#include "lorakeep/lorakeep.h"
#include "base/parallel.h"
#include "base/text.h"
#include "io/checksum.h"
#include "tensors/pickle.h"
#include "tensors/sharded_writer.h"

namespace {

using lorakeep::NamedTensors;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::vector<std::pair<std::string, std::vector<std::int64_t>>> layout(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::int64_t n = std::stoll(spec.substr(colon + 1));
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
  if (kind == "adapter") {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::string layer = "base_model.model.layers." + std::to_string(i / 2) + ".self_attn.q_proj.";
      if (i % 2 == 0) out.push_back({layer + "lora_A.weight", {64, 4096}});
      else out.push_back({layer + "lora_B.weight", {4096, 64}});
    }
  } else if (kind == "embedding") {  // one tensor of n MiB: [n * 256, 1024] F32
    out.push_back({"base_model.model.embed_tokens.weight", {n * 256, 1024}});
  } else if (kind == "tiny") {
    for (std::int64_t i = 0; i < n; ++i) out.push_back({"t." + std::to_string(i), {8, 16}});
  } else if (kind == "base") {
    for (std::int64_t mib = 0, i = 0; mib < n; mib += 64, ++i) {
      const std::int64_t rows = std::min<std::int64_t>(64, n - mib) * 64;  // 64 rows of 4096 F32 = 1 MiB
      out.push_back({"model.layers." + std::to_string(i) + ".weight", {rows, 4096}});
    }
  } else if (kind == "llama") {
    std::int64_t h = 4096, m = 11008, v = 32000;
    const auto dims = spec.find(':', colon + 1);  // n is L; then ":H:M:V" or nothing
    if (dims != std::string::npos &&
        std::sscanf(spec.c_str() + dims, ":%" SCNd64 ":%" SCNd64 ":%" SCNd64, &h, &m, &v) != 3)
      throw std::runtime_error("bad layout " + spec + " (llama:L or llama:L:H:M:V)");
    out.push_back({"model.embed_tokens.weight", {v, h}});
    for (std::int64_t i = 0; i < n; ++i) {
      const std::string layer = "model.layers." + std::to_string(i) + ".";
      for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
        out.push_back({layer + "self_attn." + p + ".weight", {h, h}});
      out.push_back({layer + "mlp.gate_proj.weight", {m, h}});
      out.push_back({layer + "mlp.up_proj.weight", {m, h}});
      out.push_back({layer + "mlp.down_proj.weight", {h, m}});
      out.push_back({layer + "input_layernorm.weight", {h}});
      out.push_back({layer + "post_attention_layernorm.weight", {h}});
    }
    out.push_back({"model.norm.weight", {h}});
    out.push_back({"lm_head.weight", {v, h}});
  } else {
    throw std::runtime_error("unknown layout " + spec);
  }
  return out;
}

// Random values for large (sharded) sets, fast: every tensor is filled with
// a window of a pool of 16 Mi normal values (seeded), starting where its
// name hashes to. Generating 13.5 GB with randn would take minutes on 2
// cores; the merges' cost does not depend on the values.
class RandomPool {
 public:
  RandomPool(std::uint64_t seed, at::ScalarType type) {
    at::manual_seed(seed);
    pool_ = at::randn({std::int64_t{16} << 20}).to(type);
  }
  at::Tensor fill(const std::string& name, const std::vector<std::int64_t>& shape) const {
    at::Tensor t = at::empty(shape, pool_.options());
    const std::int64_t n = t.numel(), size = pool_.numel();
    at::Tensor flat = t.view({n});
    std::int64_t from = static_cast<std::int64_t>(lorakeep::detail::xxh3_64(name.data(), name.size()) % size);
    for (std::int64_t done = 0; done < n;) {
      const std::int64_t k = std::min(n - done, size - from);
      flat.narrow(0, done, k).copy_(pool_.narrow(0, from, k));
      done += k;
      from = 0;
    }
    return t;
  }

 private:
  at::Tensor pool_;
};

NamedTensors zeros(const std::string& spec, at::ScalarType type) {
  NamedTensors out;
  for (const auto& [name, shape] : layout(spec)) out.emplace_back(name, at::zeros(shape, type));
  return out;
}

// Reads a file once so every method starts from a warm page cache.
void warm(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  std::vector<char> buf(1 << 20);
  while (::read(fd, buf.data(), buf.size()) > 0) {
  }
  ::close(fd);
}

struct Sample {
  double seconds;
  std::int64_t rss;
  std::int64_t alloc;
};

template <class F>
nlohmann::json measure(int repeat, F&& f) {
  std::vector<Sample> samples;
  for (int r = 0; r < repeat; ++r) {
    lorakeep::RssProbe rss;
    lorakeep::AllocationProbe alloc;
    const double t0 = now();
    f();
    const double t1 = now();
    samples.push_back({t1 - t0, rss.peak_extra_bytes(), alloc.peak_bytes()});
  }
  std::sort(samples.begin(), samples.end(), [](const Sample& a, const Sample& b) { return a.seconds < b.seconds; });
  nlohmann::json j;
  j["seconds"] = samples[samples.size() / 2].seconds;  // median
  j["seconds_min"] = samples.front().seconds;
  std::int64_t rss = 0, alloc = 0;
  for (const Sample& s : samples) rss = std::max(rss, s.rss), alloc = std::max(alloc, s.alloc);
  j["peak_rss_bytes"] = rss;
  j["peak_alloc_bytes"] = alloc;
  j["repeat"] = repeat;
  return j;
}

int make(const std::string& spec, const std::string& dtype, const std::string& out, const std::string& bin,
         std::uint64_t shard_bytes, std::uint64_t seed) {
  const lorakeep::Dtype stored = *lorakeep::parse_dtype(dtype);
  const auto type = lorakeep::to_scalar_type(stored);
  if (shard_bytes > 0) {
    // Sharded sets are the large ones (the merges', up to a 7B model):
    // streamed, one tensor in memory at a time, whatever the model's size.
    if (!bin.empty()) throw std::runtime_error("--bin holds the whole model in memory: not with --shard");
    std::vector<lorakeep::TensorInfo> infos;
    for (const auto& [name, shape] : layout(spec)) {
      lorakeep::TensorInfo info;
      info.name = name;
      info.dtype = stored;
      info.shape = shape;
      infos.push_back(info);
    }
    lorakeep::ShardOptions o;
    o.max_shard_size = shard_bytes;
    lorakeep::detail::ShardedWriter writer(out, std::move(infos), {{"format", "pt"}}, o);
    const RandomPool pool(seed, type);
    for (const auto& info : writer.order()) writer.write(pool.fill(info.name, info.shape));
    writer.finish();
    return 0;
  }
  at::manual_seed(seed);
  NamedTensors tensors;
  for (const auto& [name, shape] : layout(spec)) tensors.emplace_back(name, at::randn(shape).to(type));
  lorakeep::save_safetensors(out, tensors, {{"format", "pt"}});
  if (!bin.empty()) lorakeep::detail::save_torch_pickle(bin, tensors);
  return 0;
}

// A PEFT adapter directory for a "base:N" or "llama:L" layout: rank-r
// factors for every matrix (of a llama layout, every linear layer of the
// decoder: the 7 projections of each layer, as PEFT's "all-linear" without
// lm_head), PEFT's keys and config.
int make_adapter(const std::string& spec, int r, const std::string& out) {
  at::manual_seed(1);
  lorakeep::LoraConfig config;
  config.r = r;
  config.lora_alpha = 2.0 * r;
  NamedTensors tensors;
  for (const auto& [name, shape] : layout(spec)) {
    if (shape.size() != 2 || (spec.rfind("llama:", 0) == 0 && name.find("_proj.") == std::string::npos)) continue;
    const std::string path = name.substr(0, name.size() - 7);  // minus ".weight"
    config.target_modules.push_back(path);
    tensors.emplace_back("base_model.model." + path + ".lora_A.weight", at::randn({r, shape[1]}) * 0.01);
    tensors.emplace_back("base_model.model." + path + ".lora_B.weight", at::randn({shape[0], r}) * 0.01);
  }
  boost::filesystem::create_directories(out);
  lorakeep::save_safetensors(out + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  std::ofstream(out + "/adapter_config.json") << lorakeep::format_adapter_config(config);
  return 0;
}

int reload(const std::string& spec, const std::string& file, const std::string& method, int repeat,
           const std::string& param_dtype) {
  const auto type = lorakeep::to_scalar_type(*lorakeep::parse_dtype(param_dtype));
  const NamedTensors live = zeros(spec, type);
  warm(file);
  nlohmann::json j;
  if (method == "lorakeep" || method == "lorakeep-verify") {
    lorakeep::set_log_level(lorakeep::LogLevel::kWarn);
    lorakeep::LoadOptions options;
    if (method == "lorakeep-verify") {
      // The checksums a manifest would carry, computed before timing.
      const auto file_once = lorakeep::SafetensorsFile::open(file);
      for (const std::string& name : file_once.names()) {
        const auto b = file_once.bytes(name);
        options.checksums[name] = lorakeep::detail::xxh3_64(b.data, b.size);
      }
    }
    double verify = 0;
    j = measure(repeat, [&] {
      const auto source = lorakeep::open_tensor_source(file);
      verify += lorakeep::load_into(live, *source, options).verify_seconds;
    });
    j["verify_seconds"] = verify / repeat;
  } else if (method == "naive") {
    // The seed's bug in C++: the whole state dict in fresh tensors, then copy.
    j = measure(repeat, [&] {
      const auto source = lorakeep::open_tensor_source(file);
      std::map<std::string, at::Tensor> state;
      for (const std::string& name : source->names()) state[name] = source->tensor(name).clone();
      for (const auto& [name, t] : live) t.copy_(state.at(name));
    });
  } else if (method == "memcpy" || method == "memcpy-all-cores") {
    // The physical limit: the same bytes, already in memory, copied into the
    // parameters (same dtype only), on one thread or on every core.
    const auto file_once = lorakeep::SafetensorsFile::open(file);
    std::vector<std::vector<char>> bytes;
    for (const auto& [name, t] : live) {
      const auto b = file_once.bytes(name);
      bytes.emplace_back(reinterpret_cast<const char*>(b.data), reinterpret_cast<const char*>(b.data) + b.size);
    }
    // On every core: pieces of at most 16 MiB, so that one large tensor is
    // copied on every core too.
    const unsigned threads = method == "memcpy" ? 1 : std::max(1u, std::thread::hardware_concurrency());
    struct Piece {
      std::size_t tensor;
      std::size_t begin, size;
    };
    std::vector<Piece> pieces;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      for (std::size_t off = 0; off < bytes[i].size(); off += 16u << 20) {
        pieces.push_back({i, off, std::min<std::size_t>(16u << 20, bytes[i].size() - off)});
      }
    }
    j = measure(repeat, [&] {
      lorakeep::detail::run_parallel(pieces.size(), threads, [&](std::size_t k) {
        const Piece& p = pieces[k];
        std::memcpy(static_cast<char*>(live[p.tensor].second.data_ptr()) + p.begin, bytes[p.tensor].data() + p.begin,
                    p.size);
      });
    });
  } else {
    std::cerr << "unknown method " << method << "\n";
    return 2;
  }
  std::uint64_t total = 0;
  for (const auto& [name, t] : live) total += static_cast<std::uint64_t>(t.numel()) * t.element_size();
  j["method"] = method;
  j["layout"] = spec;
  j["param_bytes"] = total;
  j["file_bytes"] = lorakeep::SafetensorsFile::open(file).file_size();
  std::cout << j.dump() << std::endl;
  return 0;
}

int save(const std::string& spec, const std::string& dir, const std::string& method, int repeat) {
  at::manual_seed(0);
  NamedTensors tensors;
  for (const auto& [name, shape] : layout(spec)) tensors.emplace_back(name, at::randn(shape));
  lorakeep::set_log_level(lorakeep::LogLevel::kWarn);
  int i = 0;
  nlohmann::json j;
  if (method == "lorakeep") {
    j = measure(repeat,
                [&] { lorakeep::save_safetensors(dir + "/save-" + std::to_string(i++) + ".safetensors", tensors); });
  } else if (method == "torch-save") {
    j = measure(repeat,
                [&] { lorakeep::detail::save_torch_pickle(dir + "/save-" + std::to_string(i++) + ".bin", tensors); });
  } else {
    std::cerr << "unknown method " << method << "\n";
    return 2;
  }
  std::uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += static_cast<std::uint64_t>(t.numel()) * t.element_size();
  j["method"] = method;
  j["layout"] = spec;
  j["param_bytes"] = total;
  std::cout << j.dump() << std::endl;
  return 0;
}

// Saves off the training thread against synchronous ones, in the same run:
// a model of `mib` MiB of F32 LoRA factors (2048x2048 layers, rank 1024)
// with Adam's state after one step, saved with the optimizer; and a memcpy
// of as many bytes as save_async snapshots, into fresh memory as the
// snapshot's is. Medians of `repeat`; the target is blocking <= 1.5x memcpy.
int async_save(std::int64_t mib, const std::string& dir, int repeat) {
  at::manual_seed(0);
  lorakeep::set_log_level(lorakeep::LogLevel::kWarn);
  const std::int64_t layers = std::max<std::int64_t>(1, mib / 16);  // 16 MiB of factors per layer
  torch::nn::Module model;
  std::vector<lorakeep::LoraLinear> linears;
  for (std::int64_t i = 0; i < layers; ++i) {
    auto holder = std::make_shared<torch::nn::Module>();
    linears.push_back(holder->register_module("q_proj", lorakeep::LoraLinear(2048, 2048)));
    model.register_module("layer" + std::to_string(i), holder);
  }
  lorakeep::LoraConfig lora;
  lora.r = 1024;
  lora.target_modules = {"q_proj"};
  lorakeep::inject_lora(model, lora);
  std::vector<at::Tensor> trainable;
  for (auto& p : model.parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::Adam adam(trainable, torch::optim::AdamOptions(1e-4));
  const at::Tensor x = at::ones({1, 2048});
  at::Tensor loss = at::zeros({});
  for (lorakeep::LoraLinear& l : linears) loss = loss + l->forward(x).sum();
  loss.backward();
  adam.step();

  lorakeep::CheckpointOptions o;
  o.output_dir = dir;
  o.save_total_limit = 1;
  lorakeep::CheckpointManager ckpt(o);
  lorakeep::TrainingState state;
  std::vector<double> sync, blocking, total, copy;
  std::uint64_t snapshot = 0;
  for (int r = 0; r < repeat; ++r) {
    state.global_step += 1;
    double t0 = now();
    ckpt.save(model, lora, state, &adam);
    sync.push_back(now() - t0);
    state.global_step += 1;
    t0 = now();
    const lorakeep::AsyncSave ticket = ckpt.save_async(model, lora, state, &adam);
    blocking.push_back(now() - t0);
    ckpt.wait();
    total.push_back(now() - t0);
    snapshot = ticket.snapshot_bytes;
    // The floor: the same bytes copied once into fresh (not yet touched) memory.
    std::vector<std::pair<const char*, std::size_t>> sources;
    for (const at::Tensor& t : trainable) sources.push_back({static_cast<const char*>(t.data_ptr()), t.nbytes()});
    for (const auto& [key, st] : adam.state()) {
      const auto& s = static_cast<const torch::optim::AdamParamState&>(*st);
      for (const at::Tensor& t : {s.exp_avg(), s.exp_avg_sq()})
        sources.push_back({static_cast<const char*>(t.data_ptr()), t.nbytes()});
    }
    t0 = now();
    std::unique_ptr<char[]> fresh(new char[snapshot]);
    char* out = fresh.get();
    std::uint64_t left = snapshot;
    for (std::size_t i = 0; left > 0; i = (i + 1) % sources.size()) {
      const std::uint64_t n = std::min<std::uint64_t>(left, sources[i].second);
      std::memcpy(out, sources[i].first, n);
      out += n;
      left -= n;
    }
    copy.push_back(now() - t0);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  nlohmann::json j;
  j["layout"] = "lora:" + std::to_string(mib) + "MiB+adam";
  j["snapshot_bytes"] = snapshot;
  j["sync_save_seconds"] = median(sync);
  j["async_blocking_seconds"] = median(blocking);
  j["async_total_seconds"] = median(total);
  j["memcpy_seconds"] = median(copy);
  j["blocking_over_memcpy"] = median(blocking) / median(copy);
  j["blocking_over_sync"] = median(blocking) / median(sync);
  j["repeat"] = repeat;
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lorakeep benchmarks (see bench/run.py)"};
  app.require_subcommand(1);
  std::string spec, dtype = "F32", out, bin, file, method, dir, param_dtype = "F32";
  int repeat = 3;
  std::string shard;
  int rank = 16;
  auto* mk = app.add_subcommand("make", "write a benchmark file");
  mk->add_option("--layout", spec)->required();
  mk->add_option("--dtype", dtype);
  mk->add_option("--out", out)->required();
  mk->add_option("--bin", bin, "also write it as a torch.save archive");
  mk->add_option("--shard", shard, "write a sharded directory with shards of at most this size (e.g. 500MB), streamed");
  std::uint64_t seed = 0;
  mk->add_option("--seed", seed, "of the random values (default 0)");
  auto* ma = app.add_subcommand("make-adapter", "write a PEFT adapter for a base:N or llama:L layout");
  ma->add_option("--layout", spec)->required();
  ma->add_option("--r", rank);
  ma->add_option("--out", out)->required();
  auto* rl = app.add_subcommand("reload", "reload a file into live parameters");
  rl->add_option("--layout", spec)->required();
  rl->add_option("--file", file)->required();
  rl->add_option("--method", method)->required();
  rl->add_option("--repeat", repeat);
  rl->add_option("--param-dtype", param_dtype);
  auto* sv = app.add_subcommand("save", "save tensors to a directory");
  sv->add_option("--layout", spec)->required();
  sv->add_option("--dir", dir)->required();
  sv->add_option("--method", method)->required();
  sv->add_option("--repeat", repeat);
  std::int64_t mib = 64;
  auto* as = app.add_subcommand("async-save", "save_async's blocking time against save and a memcpy");
  as->add_option("--mib", mib, "MiB of LoRA factors")->required();
  as->add_option("--dir", dir)->required();
  as->add_option("--repeat", repeat);
  CLI11_PARSE(app, argc, argv);
  try {
    if (mk->parsed()) {
      std::uint64_t shard_bytes = 0;
      if (!shard.empty() && !lorakeep::detail::parse_byte_size(shard, &shard_bytes)) return 2;
      return make(spec, dtype, out, bin, shard_bytes, seed);
    }
    if (ma->parsed()) return make_adapter(spec, rank, out);
    if (rl->parsed()) return reload(spec, file, method, repeat, param_dtype);
    if (sv->parsed()) return save(spec, dir, method, repeat);
    if (as->parsed()) return async_save(mib, dir, repeat);
  } catch (const std::exception& e) {
    std::cerr << "lorakeep_bench: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
