#include "device_reload.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch/version.h>

#include <lorakeep/lorakeep.h>

namespace lorakeep::bench {
namespace {

constexpr std::int64_t kMiB = 1 << 20;
// Each layer: LoraLinear(kWidth, kWidth) with rank kRank, a 2 MiB adapter in
// two 1 MiB F32 tensors, and a 4 MiB base weight.
constexpr std::int64_t kWidth = 1024;
constexpr int kRank = 256;
constexpr std::int64_t kLayerAdapterBytes = 2LL * kRank * kWidth * 4;
constexpr const char* kPrefix = "base_model.model.";
constexpr std::int64_t kFree = kMiB;  // what the device has left during the reload

struct NetImpl : torch::nn::Module {
  torch::nn::ModuleList layers;
  explicit NetImpl(std::int64_t n) {
    layers = register_module("layers", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < n; ++i) {
      auto block = std::make_shared<torch::nn::Module>();
      block->register_module("q_proj", LoraLinear(LoraLinearOptions(kWidth, kWidth).bias(false)));
      layers->push_back(block);
    }
  }
};
TORCH_MODULE(Net);

LoraConfig lora_config() {
  LoraConfig lora;
  lora.r = kRank;
  lora.lora_alpha = 2.0 * kRank;
  lora.target_modules = {"q_proj"};
  return lora;
}

std::int64_t layers_for(std::int64_t mib) { return std::max<std::int64_t>(1, mib * kMiB / kLayerAdapterBytes); }

CheckpointOptions run_options(const std::string& run) {
  CheckpointOptions options;
  options.output_dir = run;
  options.save_optimizer = false;
  options.metric_for_best_model = "eval_loss";
  return options;
}

// The model with LoRA armed and its factors drawn from `seed`.
Net make_model(std::int64_t mib, std::uint64_t seed) {
  torch::manual_seed(seed);
  Net net(layers_for(mib));
  inject_lora(*net, lora_config());
  torch::NoGradGuard no_grad;
  for (auto& item : net->named_parameters()) {
    if (item.key().find("lora_") != std::string::npos) item.value().normal_(0, 0.02);
  }
  return net;
}

NamedTensors lora_params(Net& net) {
  NamedTensors out;
  for (const auto& item : net->named_parameters()) {
    if (item.key().find("lora_") != std::string::npos) out.emplace_back(item.key(), item.value());
  }
  return out;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
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

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

bool is_out_of_memory(const std::exception& e) {
  if (const auto* error = dynamic_cast<const Error*>(&e)) return error->code() == ErrorCode::kOutOfMemory;
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  return std::strstr(e.what(), "out of memory") != nullptr;
}

// What Trainer's reload does: every tensor of the best adapter onto the
// device, then copied into the live parameters. Adds to `on_device` the bytes
// it had put on the device, so a failure says how far it got.
void naive_reload(const std::string& adapter_file, Net& net, const BenchDevice& dev, std::int64_t* on_device) {
  std::map<std::string, at::Tensor> live;
  for (const auto& [name, p] : lora_params(net)) live.emplace(kPrefix + name, p);
  const SafetensorsFile file = SafetensorsFile::open(adapter_file);
  std::vector<std::pair<at::Tensor, at::Tensor>> pairs;
  for (const std::string& name : file.names()) {
    pairs.emplace_back(live.at(name), file.tensor(name).to(dev.device));
    *on_device += static_cast<std::int64_t>(pairs.back().second.nbytes());
  }
  torch::NoGradGuard no_grad;
  for (auto& [param, loaded] : pairs) param.copy_(loaded);
  dev.synchronize();
}

// The first LoRA parameter that differs from the adapter file, or "".
std::string first_difference(Net& net, const std::string& adapter_file) {
  const SafetensorsFile file = SafetensorsFile::open(adapter_file);
  for (const auto& [name, p] : lora_params(net)) {
    if (!torch::equal(p.cpu(), file.tensor(kPrefix + name))) return name;
  }
  return "";
}

int make(std::int64_t mib, const std::string& run) {
  Net net = make_model(mib, 0);
  CheckpointManager ckpt(run_options(run));
  TrainingState state;
  state.global_step = 1;
  state.record_evaluation({{"eval_loss", 0.5}});
  ckpt.save(*net, lora_config(), state);
  return 0;
}

int one_case(std::int64_t mib, const std::string& run, const std::string& method, const BenchDevice& dev) {
  if (method != "naive" && method != "lorakeep") {
    std::fprintf(stderr, "device_reload: --method is naive or lorakeep, not '%s'\n", method.c_str());
    return 2;
  }
  Net net = make_model(mib, 1);  // the live model: other factors than the best's
  net->to(dev.device);
  dev.synchronize();
  CheckpointManager ckpt(run_options(run));
  const auto best = ckpt.best();
  if (!best) {
    std::fprintf(stderr, "device_reload: no best checkpoint in %s (run 'make' first)\n", run.c_str());
    return 1;
  }
  const std::string adapter_file = best->path + "/adapter_model.safetensors";
  const auto reload = [&](std::int64_t* on_device) {
    if (method == "naive") {
      naive_reload(adapter_file, net, dev, on_device);
      return;
    }
    ckpt.load_best_into(*net);
    dev.synchronize();
  };

  // 1. With the device's memory free: what the method takes (first, so that
  // the process's RSS is not yet padded by freed heap).
  std::string outcome = "ok";
  std::int64_t extra_device = -1, extra_host_alloc = -1, extra_rss = -1;
  double seconds = 0;
  {
    AllocationProbe probe(dev.device);
    AllocationProbe host(c10::Device(c10::kCPU));
    RssProbe rss;
    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t ignored = 0;
    try {
      reload(&ignored);
    } catch (const std::exception& e) {
      outcome = std::string("failed: ") + e.what();
    }
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    extra_device = probe.peak_bytes();
    extra_host_alloc = host.peak_bytes();
    if (rss.valid()) {
      extra_rss = rss.peak_extra_bytes();
      if (dev.memory_is_host && extra_device > 0) extra_rss = std::max<std::int64_t>(0, extra_rss - extra_device);
    }
  }
  const std::string after_free = outcome == "ok" ? first_difference(net, adapter_file) : "not loaded";

  // 2. With kFree bytes left on the device, from other values again.
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : lora_params(net)) p.zero_();
  }
  dev.synchronize();
  std::string tight = "ok";
  std::int64_t reached = 0;
  dev.leave_free(kFree);
  try {
    reload(&reached);
  } catch (const std::exception& e) {
    tight = is_out_of_memory(e) ? "out of memory" : std::string("failed: ") + e.what();
  }
  dev.lift();
  const std::string after_tight = tight == "ok" ? first_difference(net, adapter_file) : "not loaded";

  std::int64_t adapter_bytes = 0;
  for (const auto& [name, p] : lora_params(net)) adapter_bytes += static_cast<std::int64_t>(p.nbytes());
  std::printf(
      "{\"method\": %s, \"adapter_bytes\": %lld, \"tensors\": %zu, \"free_bytes\": %lld, \"tight_outcome\": %s, "
      "\"tight_bytes_on_device\": %lld, \"tight_bitwise_equal\": %s, \"outcome\": %s, \"extra_device_bytes\": %lld, "
      "\"extra_host_alloc_bytes\": %lld, \"extra_rss_bytes\": %lld, \"seconds\": %s, \"bitwise_equal\": %s}\n",
      json_string(method).c_str(), static_cast<long long>(adapter_bytes), lora_params(net).size(),
      static_cast<long long>(kFree), json_string(tight).c_str(), static_cast<long long>(reached),
      after_tight.empty() ? "true" : "false", json_string(outcome).c_str(), static_cast<long long>(extra_device),
      static_cast<long long>(extra_host_alloc), static_cast<long long>(extra_rss), number(seconds).c_str(),
      after_free.empty() ? "true" : "false");
  return 0;
}

std::string quoted(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string self_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error("cannot read /proc/self/exe");
  return std::string(buf, static_cast<std::size_t>(n));
}

// Runs `command`; returns its standard output's last line (the JSON object),
// or "" when it failed.
std::string run_line(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return "";
  std::string out, line;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, pipe)) out += buf;
  if (::pclose(pipe) != 0) return "";
  std::istringstream lines(out);
  std::string last;
  while (std::getline(lines, line)) {
    if (!line.empty()) last = line;
  }
  return last;
}

std::string mib_text(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / kMiB);
  return buf;
}

// A field of one of our own JSON lines (flat, written above), as text.
std::string field(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const auto at = line.find(k);
  if (at == std::string::npos) return "?";
  auto begin = at + k.size();
  if (line[begin] == '"') {
    const auto end = line.find('"', begin + 1);
    return line.substr(begin + 1, end - begin - 1);
  }
  const auto end = line.find_first_of(",}", begin);
  return line.substr(begin, end - begin);
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

int sweep(const std::vector<std::int64_t>& sizes, const std::string& work, const std::string& json_path,
          const std::string& command, const BenchDevice& dev) {
  const std::string self = quoted(self_path());
  std::vector<std::string> rows;
  bool pass = true;
  std::printf("device: %s (%s)\n%-10s %-9s %-32s %-13s %-13s %-13s %s\n", dev.description.c_str(),
              dev.device.str().c_str(), "adapter", "method", "with 1 MiB free", "extra device", "extra host",
              "extra RSS", "seconds");
  for (const std::int64_t mib : sizes) {
    const std::string run = work + "/run-" + std::to_string(mib);
    if (std::system((self + " make --mib " + std::to_string(mib) + " --run " + quoted(run)).c_str()) != 0) {
      std::fprintf(stderr, "device_reload: make --mib %lld failed\n", static_cast<long long>(mib));
      return 1;
    }
    for (const char* method : {"naive", "lorakeep"}) {
      const std::string line = run_line(self + " case --mib " + std::to_string(mib) + " --run " + quoted(run) +
                                        " --method " + method);
      if (line.empty()) {
        std::fprintf(stderr, "device_reload: case --mib %lld --method %s failed\n", static_cast<long long>(mib),
                     method);
        return 1;
      }
      rows.push_back(line);
      const bool lorakeep = std::string(method) == "lorakeep";
      // The claim: the naive reload runs out of memory there, lorakeep
      // succeeds with no device memory and restores the best bitwise.
      const bool ok = lorakeep
                          ? field(line, "tight_outcome") == "ok" && field(line, "tight_bitwise_equal") == "true" &&
                                field(line, "extra_device_bytes") == "0" && field(line, "bitwise_equal") == "true"
                          : field(line, "tight_outcome") == "out of memory" && field(line, "bitwise_equal") == "true";
      pass = pass && ok;
      const std::string tight = field(line, "tight_outcome") +
                                (lorakeep
                                     ? (field(line, "tight_bitwise_equal") == "true" ? ", bitwise equal" : ", DIFFERS")
                                     : ", after " + mib_text(std::stod(field(line, "tight_bytes_on_device"))));
      std::printf("%-10s %-9s %-32s %-13s %-13s %-13s %s%s\n",
                  mib_text(std::stod(field(line, "adapter_bytes"))).c_str(), method, tight.c_str(),
                  mib_text(std::stod(field(line, "extra_device_bytes"))).c_str(),
                  mib_text(std::stod(field(line, "extra_host_alloc_bytes"))).c_str(),
                  mib_text(std::stod(field(line, "extra_rss_bytes"))).c_str(), field(line, "seconds").c_str(),
                  ok ? "" : "   <- FAILS THE CLAIM");
    }
    std::filesystem::remove_all(run);
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << "{";
    if (!command.empty()) out << "\"command\": " << json_string(command) << ", ";
    out << "\"date\": " << json_string(utc_now()) << ", \"device\": " << json_string(dev.description)
        << ", \"device_name\": " << json_string(dev.device.str()) << ", \"libtorch\": " << json_string(TORCH_VERSION)
        << ", \"lorakeep\": " << json_string(LORAKEEP_VERSION) << ", \"free_bytes\": " << kFree
        << ", \"pass\": " << (pass ? "true" : "false") << ", \"rows\": [\n";
    for (std::size_t i = 0; i < rows.size(); ++i) out << "  " << rows[i] << (i + 1 < rows.size() ? ",\n" : "\n");
    out << "]}\n";
    if (!out) {
      std::fprintf(stderr, "device_reload: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  std::printf("device_reload: %s\n",
              pass ? "the naive reload ran out of memory at every size; lorakeep did not" : "SOME ROWS FAIL THE CLAIM");
  return pass ? 0 : 1;
}

int usage(const char* why) {
  std::fprintf(stderr,
               "device_reload: %s\nusage: device_reload make --mib N --run DIR\n"
               "       device_reload case --mib N --run DIR --method naive|lorakeep\n"
               "       device_reload sweep --mib 16,64,256,1024 --work DIR [--json FILE] [--command TEXT]\n",
               why);
  return 2;
}

}  // namespace

int run_device_reload(int argc, char** argv, const BenchDevice& dev) {
  if (argc < 2) return usage("no subcommand");
  const std::string command = argv[1];
  std::string run, method, work, json, mib_list, label;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return usage((arg + " needs a value").c_str());
    const std::string value = argv[++i];
    if (arg == "--mib") mib_list = value;
    else if (arg == "--run") run = value;
    else if (arg == "--method") method = value;
    else if (arg == "--work") work = value;
    else if (arg == "--json") json = value;
    else if (arg == "--command") label = value;
    else return usage(("unknown argument " + arg).c_str());
  }
  std::vector<std::int64_t> sizes;
  std::istringstream list(mib_list);
  for (std::string item; std::getline(list, item, ',');) {
    if (!item.empty()) sizes.push_back(std::atoll(item.c_str()));
  }
  if (sizes.empty()) return usage("--mib is required");
  try {
    if (command == "make" && !run.empty()) return make(sizes[0], run);
    if (command == "case" && !run.empty()) return one_case(sizes[0], run, method, dev);
    if (command == "sweep" && !work.empty()) return sweep(sizes, work, json, label, dev);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "device_reload: %s\n", e.what());
    return 1;
  }
  return usage(("bad command line for " + command).c_str());
}

}  // namespace lorakeep::bench
