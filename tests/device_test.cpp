// lorakeep's device path, run for real on the test device
// (tests/device/test_device.h): every bound of docs/ARCHITECTURE.md counted
// in device bytes at its allocator, Trainer's end-of-training out-of-memory
// reproduced, validate-before-mutate with device-resident parameters, and a
// LoRA training step on the device. An executable of its own: in LibTorch 2.x
// a named PrivateUse1 backend is at::accelerator's device for the process.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>

#include "lorakeep/adapter.h"
#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lora_conv2d.h"
#include "lorakeep/lora_embedding.h"
#include "lorakeep/memory.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"
#include "lorakeep/transfer.h"
#include "device/test_device.h"
#include "tensor_util.h"
#include "tensors/rng.h"
#include "tensors/torch_compat.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace td = test_device;

constexpr std::uint64_t kChunk = 1 << 20;
constexpr std::int64_t kMiB = 1 << 20;

at::TensorOptions on_device(at::ScalarType type = at::kFloat) { return at::TensorOptions(type).device(td::device()); }

// Loads `path` into `live` in pieces of kChunk (copies, or adds scale * the
// file) and returns the extra device bytes at the peak, as the allocator
// counted them and as the load's report gives them (they must agree).
std::int64_t load_peak(const std::string& path, const NamedTensors& live, TransferOp op = TransferOp::kCopy,
                       double scale = 1.0) {
  LoadOptions options;
  options.op = op;
  options.scale = scale;
  options.chunk_bytes = kChunk;
  const std::int64_t before = td::live_bytes();
  td::reset_peak();
  const TransferReport report = load_into(live, *open_tensor_source(path), options);
  const std::int64_t peak = td::peak_bytes() - before;
  CHECK(report.peak_device_bytes == peak);
  return peak;
}

// The whole model's adapter, as host copies.
NamedTensors adapter_on_host(test::TestNet& net, const LoraConfig& config) {
  return test::clone_all(adapter_tensors(*net, config));
}

// What Trainer's reload of the best adapter does (transformers #44660): the
// whole state dict onto the device first, then copied into the parameters.
void naive_reload(const std::string& adapter_file, torch::nn::Module& module, const LoraConfig& config) {
  const SafetensorsFile file = SafetensorsFile::open(adapter_file);
  NamedTensors on_dev;
  for (const std::string& name : file.names()) on_dev.emplace_back(name, file.tensor(name).to(td::device()));
  c10::NoGradGuard no_grad;
  const NamedTensors live = adapter_tensors(module, config);
  for (std::size_t i = 0; i < live.size(); ++i) live[i].second.copy_(on_dev[i].second);
}

// The trainable parameters of `net`.
std::vector<torch::Tensor> trainable(test::TestNet& net) {
  std::vector<torch::Tensor> out;
  for (auto& p : net->parameters()) {
    if (p.requires_grad()) out.push_back(p);
  }
  return out;
}

void train(test::TestNet& net, torch::optim::Optimizer& optimizer, int steps) {
  const std::int64_t width = net->q_proj->options().in_features();
  for (int i = 0; i < steps; ++i) {
    const torch::Tensor x = torch::randn({8, width}).to(td::device());
    optimizer.zero_grad();
    net->forward(x).pow(2).mean().backward();
    optimizer.step();
  }
}

}  // namespace

TEST_CASE("the test device keeps its memory out of the host's reach and counts it", "[device]") {
  const std::int64_t before = td::live_bytes();
  at::Tensor t = at::empty({1024}, on_device());
  CHECK(t.device() == td::device());
  CHECK(td::live_bytes() - before == 4096);
  AllocationProbe probe(td::device());
  CHECK(probe.unmeasured().empty());
  {
    const at::Tensor u = at::empty({256}, on_device());
    CHECK(probe.current_bytes() == 1024);
  }
  CHECK(probe.peak_bytes() == 1024);
  CHECK(probe.current_bytes() == 0);
  // A host read of device memory faults instead of reading something.
  const pid_t child = ::fork();
  if (child == 0) {
    ::signal(SIGSEGV, SIG_DFL);  // not Catch's handler: die of it
    ::signal(SIGBUS, SIG_DFL);
    volatile const char* p = static_cast<const char*>(t.data_ptr());
    const char c = *p;
    ::_exit(c == 0 ? 0 : 1);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(WIFSIGNALED(status));
  // A cap: allocations past it fail as out of memory.
  {
    td::FreeBytes free(1000);
    CHECK_THROWS_AS(at::empty({1024}, on_device()), c10::OutOfMemoryError);
    CHECK_NOTHROW(at::empty({250}, on_device()));
  }
  t = at::Tensor();
  CHECK(td::live_bytes() == before);
}

TEST_CASE("copies to, from and within the test device honour strides and storage offsets", "[device]") {
  const at::Tensor host = at::randn({6, 8});
  const at::Tensor dev = host.to(td::device());
  CHECK(at::equal(dev.cpu(), host));
  // Device to host through a narrowed, transposed view; BF16 on the way.
  CHECK(at::equal(dev.narrow(0, 2, 3).t().cpu(), host.narrow(0, 2, 3).t()));
  CHECK(at::equal(dev.to(at::kBFloat16).cpu(), host.to(at::kBFloat16)));
  // Host to device into a narrowed, strided view: the rest untouched.
  const at::Tensor patch = at::randn({6, 2});
  dev.narrow(1, 3, 2).copy_(patch);
  at::Tensor expected = host.clone();
  expected.narrow(1, 3, 2).copy_(patch);
  CHECK(at::equal(dev.cpu(), expected));
  // Device to device, overlapping storage.
  dev.narrow(0, 0, 3).copy_(dev.narrow(0, 3, 3));
  expected.narrow(0, 0, 3).copy_(expected.narrow(0, 3, 3));
  CHECK(at::equal(dev.cpu(), expected));
  // Arithmetic runs through the CPU fallback.
  CHECK(at::allclose((dev * 2 + 1).cpu(), expected * 2 + 1));
  CHECK(dev.sum().item<float>() == Approx(expected.sum().item<float>()));
}

TEST_CASE("a reload into device parameters of the same dtype allocates nothing on the device", "[device]") {
  test::TempDir dir;
  const NamedTensors file = {{"a", at::randn({512, 1024})}, {"b", at::randn({3, 1000, 700})}};
  save_safetensors(dir / "w.safetensors", file);
  const NamedTensors live = {{"a", at::zeros({512, 1024}, on_device())}, {"b", at::zeros({3, 1000, 700}, on_device())}};
  CHECK(load_peak(dir / "w.safetensors", live) == 0);
  CHECK(test::bitwise_equal(test::clone_all(live), file));
}

TEST_CASE("a BF16 file reloads into F32 device parameters with no device memory", "[device]") {
  test::TempDir dir;
  const NamedTensors file = {{"a", at::randn({512, 1024}).to(at::kBFloat16)},
                             {"b", at::randn({3, 1000, 700}).to(at::kBFloat16)}};
  save_safetensors(dir / "w.safetensors", file);
  const NamedTensors live = {{"a", at::zeros({512, 1024}, on_device())}, {"b", at::zeros({3, 1000, 700}, on_device())}};
  CHECK(load_peak(dir / "w.safetensors", live) == 0);  // converted on the host
  for (std::size_t i = 0; i < file.size(); ++i) CHECK(at::equal(live[i].second.cpu(), file[i].second.to(at::kFloat)));
}

TEST_CASE("a reload writes through strided and narrowed device views with no device memory", "[device]") {
  test::TempDir dir;
  const NamedTensors file = {{"t", at::randn({1024, 512})}, {"n", at::randn({100, 300})}};
  save_safetensors(dir / "w.safetensors", file);
  const at::Tensor storage = at::zeros({512, 1024}, on_device());
  const at::Tensor wide = at::zeros({100, 400}, on_device());
  const NamedTensors live = {{"t", storage.t()}, {"n", wide.narrow(1, 50, 300)}};
  CHECK(load_peak(dir / "w.safetensors", live) == 0);
  CHECK(at::equal(storage.cpu(), file[0].second.t()));
  const at::Tensor back = wide.cpu();
  CHECK(at::equal(back.narrow(1, 50, 300), file[1].second));
  CHECK(back.narrow(1, 0, 50).abs().sum().item<float>() == 0);
  CHECK(back.narrow(1, 350, 50).abs().sum().item<float>() == 0);
}

TEST_CASE("apply_delta into device parameters equals the CPU result within one piece of device memory", "[device]") {
  test::TempDir dir;
  for (const at::ScalarType file_type : {at::kFloat, at::kBFloat16, at::kDouble}) {
    CAPTURE(file_type);
    const NamedTensors delta = {{"a", at::randn({512, 1024}).to(file_type)},
                                {"b", at::randn({3, 1000, 700}).to(file_type)}};
    save_safetensors(dir / "d.safetensors", delta);
    const NamedTensors base = {{"a", at::randn({512, 1024})}, {"b", at::randn({3, 1000, 700})}};
    const NamedTensors on_cpu = test::clone_all(base);
    NamedTensors live;
    for (const auto& [name, t] : base) live.emplace_back(name, t.to(td::device()));
    load_into(on_cpu, *open_tensor_source(dir / "d.safetensors"), [] {
      LoadOptions o;
      o.op = TransferOp::kAdd;
      o.scale = 0.5;
      o.chunk_bytes = kChunk;
      return o;
    }());
    const std::int64_t peak = load_peak(dir / "d.safetensors", live, TransferOp::kAdd, 0.5);
    CHECK(peak > 0);
    CHECK(peak <= static_cast<std::int64_t>(kChunk) + 64);
    CHECK(test::bitwise_equal(test::clone_all(live), on_cpu));
  }
}

TEST_CASE("a device out of memory at the staging fails the add before anything is written", "[device]") {
  test::TempDir dir;
  save_safetensors(dir / "d.safetensors", {{"a", at::randn({512, 1024})}});
  const NamedTensors live = {{"a", at::randn({512, 1024}).to(td::device())}};
  const NamedTensors before = test::clone_all(live);
  LoadOptions o;
  o.op = TransferOp::kAdd;
  o.chunk_bytes = kChunk;
  td::FreeBytes full(4096);  // one piece (512 KiB) does not fit
  const Error e = test::capture_error([&] { load_into(live, *open_tensor_source(dir / "d.safetensors"), o); });
  CHECK(e.code() == ErrorCode::kOutOfMemory);
  CHECK_THAT(e.what(), Contains("out of memory on " + td::device().str()));
  CHECK_THAT(e.what(), Contains("nothing was changed"));
  CHECK_THAT(e.what(), !Contains("PARTLY WRITTEN"));
  CHECK(test::bitwise_equal(test::clone_all(live), before));
}

TEST_CASE("the naive reload runs out of device memory at (adapter - 1 MiB) free, where lorakeep's reloads succeed",
          "[device]") {
  test::TempDir dir;
  // Two 1024-wide layers with rank-128 LoRA: a 2 MiB adapter.
  const LoraConfig config = test::test_lora(/*r=*/128, /*alpha=*/256);
  test::TestNet net = test::armed_net(0, config, 1024);
  net->to(td::device());
  TrainingState state;
  CheckpointManager ckpt(test::options_for(dir / "run"));
  NamedTensors best;
  for (const double loss : {0.9, 0.4, 0.6}) {
    test::perturb(net, 0.25);
    ++state.global_step;
    state.record_evaluation({{"eval_loss", loss}});
    ckpt.save(*net, config, state);
    if (loss == 0.4) best = adapter_on_host(net, config);
  }
  const std::string best_file = ckpt.best()->path + "/adapter_model.safetensors";
  std::int64_t adapter_bytes = 0;
  for (const auto& [name, t] : best) adapter_bytes += static_cast<std::int64_t>(t.nbytes());
  REQUIRE(adapter_bytes == 2 * kMiB);
  const NamedTensors last = adapter_on_host(net, config);

  SECTION("the naive reload") {
    td::FreeBytes free(adapter_bytes - kMiB);
    CHECK_THROWS_AS(naive_reload(best_file, *net, config), c10::OutOfMemoryError);
    CHECK(test::bitwise_equal(adapter_on_host(net, config), last));
  }
  SECTION("load_best_into") {
    td::FreeBytes free(adapter_bytes - kMiB);
    td::reset_peak();
    const std::int64_t before = td::live_bytes();
    const TransferReport report = ckpt.load_best_into(*net);
    CHECK(td::peak_bytes() - before == 0);
    CHECK(report.peak_device_bytes == 0);
    CHECK(test::bitwise_equal(adapter_on_host(net, config), best));
  }
  SECTION("load_adapter") {
    td::FreeBytes free(adapter_bytes - kMiB);
    td::reset_peak();
    const std::int64_t before = td::live_bytes();
    load_adapter(ckpt.best()->path, *net);
    CHECK(td::peak_bytes() - before == 0);
    CHECK(test::bitwise_equal(adapter_on_host(net, config), best));
  }
  SECTION("resume") {
    test::TestNet fresh = test::armed_net(7, config, 1024);
    fresh->to(td::device());
    TrainingState resumed;
    td::FreeBytes free(adapter_bytes - kMiB);
    td::reset_peak();
    const std::int64_t before = td::live_bytes();
    CHECK(ckpt.resume(*fresh, resumed).has_value());
    CHECK(td::peak_bytes() - before == 0);
    CHECK(resumed.global_step == 3);
    CHECK(test::bitwise_equal(adapter_on_host(fresh, config), last));
  }
}

TEST_CASE("a flipped byte or a wrong last shape leaves device parameters bitwise unchanged", "[device]") {
  test::TempDir dir;
  const LoraConfig config = test::test_lora();
  test::TestNet net = test::armed_net(0, config);
  net->to(td::device());
  TrainingState state;
  state.global_step = 1;
  state.record_evaluation({{"eval_loss", 0.5}});
  CheckpointManager ckpt(test::options_for(dir / "run"));
  const std::string checkpoint = ckpt.save(*net, config, state).path;
  const std::string file = checkpoint + "/adapter_model.safetensors";
  test::perturb(net, 0.5);
  const NamedTensors before = adapter_on_host(net, config);
  const NamedTensors rng = test::clone_all(detail::capture_rng_states());
  SECTION("a flipped byte, found by the manifest's checksum") {
    test::flip_byte(file, boost::filesystem::file_size(file) - 3);
    const Error e = test::capture_error([&] { ckpt.load_best_into(*net); });
    CHECK(e.code() == ErrorCode::kCorruption);
  }
  SECTION("a shape mismatch in the last tensor") {
    const SafetensorsFile original = SafetensorsFile::open(file);
    NamedTensors tensors;
    for (const std::string& name : original.names()) tensors.emplace_back(name, original.tensor(name).clone());
    tensors.back().second = at::zeros({tensors.back().second.size(0) + 1, tensors.back().second.size(1)});
    const auto metadata = original.metadata();
    boost::filesystem::remove(file);
    save_safetensors(dir / "a.safetensors", tensors, metadata);
    boost::filesystem::create_directories(dir / "a");
    boost::filesystem::copy_file(checkpoint + "/adapter_config.json", dir / "a/adapter_config.json");
    boost::filesystem::rename(dir / "a.safetensors", dir / "a/adapter_model.safetensors");
    const Error e = test::capture_error([&] { load_adapter(dir / "a", *net); });
    CHECK(e.code() == ErrorCode::kIncompatible);
  }
  CHECK(test::bitwise_equal(adapter_on_host(net, config), before));
  CHECK(test::bitwise_equal(test::clone_all(detail::capture_rng_states()), rng));
}

TEST_CASE("arming an unarmed model on the device puts its LoRA factors there, or changes nothing", "[device]") {
  test::TempDir dir;
  const LoraConfig config = test::test_lora();
  test::TestNet trained = test::armed_net(0, config);
  test::perturb(trained, 0.5);
  save_adapter(dir / "a", *trained, config);
  torch::manual_seed(0);
  test::TestNet net;
  net->to(td::device());
  const auto names = [&] {
    std::vector<std::string> out;
    for (const auto& p : net->named_parameters()) out.push_back(p.key());
    return out;
  };
  const std::vector<std::string> unarmed = names();
  SECTION("a damaged header: still unarmed") {
    test::flip_byte(dir / "a/adapter_model.safetensors", 8);
    CHECK_THROWS_AS(load_adapter(dir / "a", *net), Error);
    CHECK(names() == unarmed);
  }
  SECTION("armed on the device, with the file's factors") {
    load_adapter(dir / "a", *net);
    CHECK(names().size() == unarmed.size() + 4);
    for (const auto& p : net->parameters()) CHECK(p.device() == td::device());
    CHECK(test::bitwise_equal(adapter_on_host(net, config), adapter_on_host(trained, config)));
  }
}

TEST_CASE("a LoRA or DoRA training step on the device, then save and reload with no device memory", "[device]") {
  for (const bool dora : {false, true}) {
    INFO("use_dora " << dora);
    test::TempDir dir;
    LoraConfig config = test::test_lora();
    config.use_dora = dora;
    test::TestNet net = test::armed_net(0, config);
    net->to(td::device());
    torch::optim::AdamW adamw(trainable(net), torch::optim::AdamWOptions(1e-2));
    const NamedTensors start = adapter_on_host(net, config);
    train(net, adamw, 3);
    for (const auto& p : net->parameters()) CHECK(p.device() == td::device());
    const NamedTensors trained = adapter_on_host(net, config);
    CHECK(trained.size() == (dora ? 6u : 4u));  // A, B (and the magnitude) of two layers
    CHECK_FALSE(test::bitwise_equal(trained, start));
    td::reset_peak();
    std::int64_t before = td::live_bytes();
    save_adapter(dir / "a", *net, config);
    CHECK(td::peak_bytes() - before == 0);  // contiguous parameters: read straight off the device
    test::perturb(net, 1.0);
    td::reset_peak();
    before = td::live_bytes();
    load_adapter(dir / "a", *net);
    CHECK(td::peak_bytes() - before == 0);
    CHECK(test::bitwise_equal(adapter_on_host(net, config), trained));
  }
}

TEST_CASE("a hot swap of a smaller rank into layers armed larger takes no device memory", "[device]") {
  test::TempDir dir;
  LoraConfig small = test::test_lora(/*r=*/3, /*alpha=*/9);
  test::TestNet source = test::armed_net(1, small);
  test::perturb(source, 0.2);
  save_adapter(dir / "rank3", *source, small);
  test::TestNet net = test::armed_net(0, test::test_lora(/*r=*/8));
  test::perturb(net, 0.5);
  net->to(td::device());
  td::reset_peak();
  const std::int64_t before = td::live_bytes();
  load_adapter(dir / "rank3", *net);
  CHECK(td::peak_bytes() - before == 0);  // written through narrowed views, the rest zeroed in place
  CHECK(net->q_proj->rank() == 3);
  CHECK(net->q_proj->scaling() == 3.0);
  CHECK(test::bitwise_equal(adapter_on_host(net, small), adapter_on_host(source, small)));
  const at::Tensor a = net->q_proj->lora_A->weight.cpu();
  CHECK(a.narrow(0, 3, 5).abs().sum().item<double>() == 0);
  const at::Tensor b = net->q_proj->lora_B->weight.cpu();
  CHECK(b.narrow(1, 3, 5).abs().sum().item<double>() == 0);
}

// An embedding and a 2-D convolution, the other kinds of LoRA layer.
struct KindsNetImpl : torch::nn::Module {
  LoraEmbedding emb{nullptr};
  LoraConv2d conv{nullptr};
  KindsNetImpl() {
    emb = register_module("emb", LoraEmbedding(16, 6));
    conv = register_module("conv", LoraConv2d(torch::nn::Conv2dOptions(1, 2, 3).padding(1)));
  }
  torch::Tensor loss(const torch::Tensor& ids, const torch::Tensor& images) {
    return emb(ids).pow(2).mean() + conv(images).pow(2).mean();
  }
};
TORCH_MODULE(KindsNet);

TEST_CASE("embeddings and convolutions, plain and DoRA, armed on the device from a file, trained, reloaded",
          "[device]") {
  for (const bool dora : {false, true}) {
    INFO("use_dora " << dora);
    test::TempDir dir;
    LoraConfig config;
    config.r = 2;
    config.lora_alpha = 4;
    config.target_modules = {"emb", "conv"};
    config.init_lora_weights = "false";  // every factor non-zero
    config.use_dora = dora;
    torch::manual_seed(0);
    KindsNet on_host;
    inject_lora(*on_host, config);
    save_adapter(dir / "start", *on_host, config);
    torch::manual_seed(0);
    KindsNet net;
    net->to(td::device());
    load_adapter(dir / "start", *net);  // arms on the device
    for (const auto& p : net->parameters()) CHECK(p.device() == td::device());
    CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, config)),
                              test::clone_all(adapter_tensors(*on_host, config))));
    std::vector<torch::Tensor> params;
    for (const auto& p : net->parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    CHECK(params.size() == (dora ? 6u : 4u));
    torch::optim::AdamW adamw(params, torch::optim::AdamWOptions(1e-2));
    const torch::Tensor ids = torch::tensor({1, 5, 9, 15}, torch::kLong).to(td::device());
    const torch::Tensor images = torch::randn({4, 1, 3, 3}).to(td::device());
    adamw.zero_grad();
    net->loss(ids, images).backward();
    adamw.step();
    const NamedTensors trained = test::clone_all(adapter_tensors(*net, config));
    td::reset_peak();
    std::int64_t before = td::live_bytes();
    save_adapter(dir / "trained", *net, config);
    CHECK(td::peak_bytes() - before == 0);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : params) p.add_(1.0);
    }
    td::reset_peak();
    before = td::live_bytes();
    load_adapter(dir / "trained", *net);
    CHECK(td::peak_bytes() - before == 0);  // CPU-first, in place: no device byte
    CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, config)), trained));
  }
}

TEST_CASE("a named adapter beside the default one: armed on the device from PEFT's layout, trained, reloaded",
          "[device]") {
  test::TempDir dir;
  LoraConfig first;
  first.r = 2;
  first.lora_alpha = 4;
  first.target_modules = {"emb", "conv"};
  first.init_lora_weights = "false";  // every factor non-zero
  LoraConfig second = first;
  second.r = 3;
  second.lora_alpha = 6;
  second.use_dora = true;
  torch::manual_seed(0);
  KindsNet on_host;
  inject_lora(*on_host, first);
  inject_lora(*on_host, second, "second");
  save_adapter(dir / "start", *on_host, first);
  save_adapter(dir / "start", *on_host, second, "second");  // start/second/
  torch::manual_seed(0);
  KindsNet net;
  net->to(td::device());
  AdapterLoadOptions named;
  named.adapter_name = "second";
  load_adapter(dir / "start", *net);
  load_adapter(dir / "start", *net, named);  // both armed on the device
  for (const auto& p : net->parameters()) CHECK(p.device() == td::device());
  CHECK(adapter_names(*net) == std::vector<std::string>{"default", "second"});
  const NamedTensors first_before = test::clone_all(adapter_tensors(*net, first));
  set_adapter(*net, "second");
  std::vector<torch::Tensor> params;
  for (const auto& p : net->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  CHECK(params.size() == 6u);  // the named adapter's factors and magnitudes, nothing else
  torch::optim::AdamW adamw(params, torch::optim::AdamWOptions(1e-2));
  const torch::Tensor ids = torch::tensor({1, 5, 9, 15}, torch::kLong).to(td::device());
  const torch::Tensor images = torch::randn({4, 1, 3, 3}).to(td::device());
  net->loss(ids, images).backward();
  adamw.step();
  CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, first)), first_before));
  const NamedTensors trained = test::clone_all(adapter_tensors(*net, second, "second"));
  CHECK(!test::bitwise_equal(trained, test::clone_all(adapter_tensors(*on_host, second, "second"))));
  td::reset_peak();
  std::int64_t before = td::live_bytes();
  save_adapter(dir / "trained", *net, second, "second");
  CHECK(td::peak_bytes() - before == 0);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : params) p.add_(1.0);
  }
  td::reset_peak();
  before = td::live_bytes();
  load_adapter(dir / "trained", *net, named);  // a hot swap of the named adapter, from trained/second/
  CHECK(td::peak_bytes() - before == 0);
  CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, second, "second")), trained));

  // A checkpoint holds both adapters; a resume restores both in place with
  // no device memory, and the active one with them.
  CheckpointOptions options;
  options.output_dir = dir / "run";
  CheckpointManager manager(options);
  TrainingState state;
  state.global_step = 1;
  manager.save(*net, first, state, &adamw);
  set_adapter(*net, kDefaultAdapter);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : adapter_tensors(*net, first)) t.add_(1.0);
    for (auto& [name, t] : adapter_tensors(*net, second, "second")) t.add_(1.0);
  }
  td::reset_peak();
  before = td::live_bytes();
  TrainingState resumed;
  REQUIRE(manager.resume(*net, resumed));
  CHECK(td::peak_bytes() - before == 0);
  CHECK(net->emb->active_adapter() == "second");
  CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, second, "second")), trained));
  CHECK(test::bitwise_equal(test::clone_all(adapter_tensors(*net, first)), first_before));
}

TEST_CASE("saves and async snapshots read device parameters with no device memory", "[device]") {
  test::TempDir dir;
  const LoraConfig config = test::test_lora(/*r=*/64, /*alpha=*/128);
  test::TestNet net = test::armed_net(0, config, 512);
  net->to(td::device());
  torch::optim::AdamW adamw(trainable(net), torch::optim::AdamWOptions(1e-2));
  train(net, adamw, 1);
  TrainingState state;
  CheckpointManager ckpt(test::options_for(dir / "run"));
  state.global_step = 1;
  td::reset_peak();
  std::int64_t before = td::live_bytes();
  ckpt.save(*net, config, state, &adamw);
  CHECK(td::peak_bytes() - before == 0);
  state.global_step = 2;
  td::reset_peak();
  before = td::live_bytes();
  ckpt.save_async(*net, config, state, &adamw);
  ckpt.wait();
  CHECK(td::peak_bytes() - before == 0);
  // A strided parameter: at most one piece (none on this device, whose copy
  // kernel writes strided views in place).
  const at::Tensor storage = at::randn({512, 64}).to(td::device());
  td::reset_peak();
  before = td::live_bytes();
  const SaveReport saved = save_safetensors(dir / "t.safetensors", {{"t", storage.t()}});
  CHECK(td::peak_bytes() - before <= static_cast<std::int64_t>(kChunk));
  CHECK(saved.device == td::device().str());
  CHECK(saved.peak_device_bytes == td::peak_bytes() - before);
  CHECK(at::equal(SafetensorsFile::open(dir / "t.safetensors").tensor("t"), storage.t().cpu()));
  // Tensors on two devices: no one allocator to count, and the report says so.
  const SaveReport mixed = save_safetensors(dir / "m.safetensors", {{"t", storage}, {"h", at::ones({4})}});
  CHECK(mixed.device == "mixed");
  CHECK(mixed.peak_device_bytes == -1);
  CHECK_THAT(mixed.device_bytes_unmeasured, Contains("several devices"));
  NamedTensors targets = {{"t", at::zeros({512, 64}, on_device())}, {"h", at::zeros({4})}};
  const TransferReport loaded = load_into(targets, *open_tensor_source(dir / "m.safetensors"));
  CHECK(loaded.peak_device_bytes == -1);
  CHECK_THAT(loaded.summary(), Contains("n/a (the tensors are on several devices)"));
  CHECK(at::equal(targets[0].second.cpu(), storage.cpu()));
}

TEST_CASE("resume moves the optimizer's state onto the device, or changes nothing when it does not fit", "[device]") {
  test::TempDir dir;
  // Two 1024-wide layers with rank-128 LoRA: a 2 MiB adapter, 4 MiB of AdamW
  // state, 1 MiB of it for the largest parameter.
  const LoraConfig config = test::test_lora(/*r=*/128, /*alpha=*/256);
  const torch::optim::AdamWOptions options(1e-3);
  test::TestNet net = test::armed_net(0, config, 1024);
  net->to(td::device());
  torch::optim::AdamW adamw(trainable(net), options);
  train(net, adamw, 2);
  TrainingState state;
  state.global_step = 2;
  CheckpointManager ckpt(test::options_for(dir / "run"));
  ckpt.save(*net, config, state, &adamw);
  const std::vector<std::string> saved_state = test::optimizer_state_bytes(adamw);
  constexpr std::int64_t kStateBytes = 4 * kMiB, kLargest = kMiB;

  test::TestNet fresh = test::armed_net(0, config, 1024);  // the same base weights
  test::perturb(fresh, 0.3);
  fresh->to(td::device());
  torch::optim::AdamW fresh_adamw(trainable(fresh), options);
  SECTION("into a fresh model and optimizer: exact, within one parameter's state") {
    TrainingState resumed;
    td::reset_peak();
    const std::int64_t before = td::live_bytes();
    REQUIRE(ckpt.resume(*fresh, resumed, &fresh_adamw).has_value());
    const std::int64_t kept = td::live_bytes() - before;
    CHECK(kept == kStateBytes);
    CHECK(td::peak_bytes() - before - kept <= kLargest);
    CHECK(test::optimizer_state_bytes(fresh_adamw) == saved_state);
    // The next step is the same on both.
    const NamedTensors rng = detail::capture_rng_states();
    train(net, adamw, 1);
    detail::restore_rng_states(rng, "test");
    train(fresh, fresh_adamw, 1);
    CHECK(test::bitwise_equal(adapter_on_host(fresh, config), adapter_on_host(net, config)));
  }
  SECTION("with the device at (optimizer state - 1 MiB) free: nothing changes") {
    train(fresh, fresh_adamw, 1);  // a live optimizer with state of its own
    const NamedTensors adapter = adapter_on_host(fresh, config);
    const std::vector<std::string> live_state = test::optimizer_state_bytes(fresh_adamw);
    const NamedTensors rng = test::clone_all(detail::capture_rng_states());
    TrainingState resumed;
    td::FreeBytes free(kStateBytes - kMiB);
    const Error e = test::capture_error([&] { ckpt.resume(*fresh, resumed, &fresh_adamw); });
    CHECK(e.code() == ErrorCode::kOutOfMemory);
    CHECK_THAT(e.what(), Contains("out of memory"));
    CHECK(test::bitwise_equal(adapter_on_host(fresh, config), adapter));
    CHECK(test::optimizer_state_bytes(fresh_adamw) == live_state);
    CHECK(test::bitwise_equal(test::clone_all(detail::capture_rng_states()), rng));
    CHECK(resumed.global_step == 0);
  }
}

}  // namespace lorakeep
