// Validate before mutate, for every entry point that writes into a live model
// or optimizer: load_into, apply_delta, load_adapter (armed and unarmed
// models), load_best_into (with and without fallback_to_next_best) and resume.
// Each row gives a kind of bad input; the whole observable state (parameter
// names, requires_grad, parameter and buffer bytes, optimizer state, global
// RNG state) is snapshotted before the call and compared after it.
#include <sstream>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>
#include <torch/optim/adam.h>
#include <torch/serialize/output-archive.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/lora.h"
#include "lorakeep/memory.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/transfer.h"
#include "base/file_names.h"
#include "tensor_util.h"
#include "tensors/rng.h"
#include "test_model.h"
#include "test_util.h"
#include "transfer/apply_phase.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

using Net = test::TestNet;

LoraConfig lora_config() { return test::test_lora(/*r=*/4, /*alpha=*/8, /*train_head=*/true); }

std::string optimizer_state(torch::optim::Optimizer& optimizer) {
  // Keyed by parameter (LibTorch keys its state by TensorImpl address); each
  // parameter's state through its own serialization, so every tensor counts.
  std::map<std::string, std::string> states;
  for (auto& [key, state] : optimizer.state()) {
    torch::serialize::OutputArchive archive;
    state->serialize(archive);
    std::ostringstream bytes;
    archive.save_to(bytes);
    std::ostringstream name;  // a std::string in LibTorch 1.x, a void* in 2.x (tensors/torch_compat.h)
    name << key;
    states[name.str()] = bytes.str();
  }
  std::string out;
  for (const auto& [key, bytes] : states) out += key + ":" + std::to_string(bytes.size()) + ":" + bytes;
  return out;
}

// Everything a failed call must leave as it was.
struct Snapshot {
  std::vector<std::string> names;
  std::vector<bool> requires_grad;
  NamedTensors tensors;  // parameters and buffers
  std::string optimizer;
  NamedTensors rng;

  bool operator==(const Snapshot& o) const {
    return names == o.names && requires_grad == o.requires_grad && test::bitwise_equal(tensors, o.tensors) &&
           optimizer == o.optimizer && test::bitwise_equal(rng, o.rng);
  }
};

Snapshot snapshot(torch::nn::Module& module, torch::optim::Optimizer* optimizer) {
  Snapshot s;
  NamedTensors all;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    s.names.push_back(p.key());
    s.requires_grad.push_back(p.value().requires_grad());
    all.emplace_back(p.key(), p.value());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) all.emplace_back(b.key(), b.value());
  s.tensors = test::clone_all(all);
  if (optimizer != nullptr) s.optimizer = optimizer_state(*optimizer);
  s.rng = test::clone_all(detail::capture_rng_states());
  return s;
}

// The parameters to train: those inject_lora opens, or all of an unarmed model.
std::vector<torch::Tensor> prepare(Net& net, bool armed) {
  if (armed) inject_lora(*net, lora_config());
  std::vector<torch::Tensor> trainable;
  for (auto& p : net->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  return trainable;
}

// A live training run: an armed model with an optimizer that has state.
struct Live {
  Net net;
  torch::optim::Adam adam;
  explicit Live(bool armed = true, std::int64_t width = 16)
      : net(width), adam(prepare(net, armed), torch::optim::AdamOptions(1e-2)) {
    step();
  }
  void step() {
    adam.zero_grad();
    net->forward(torch::randn({4, net->q_proj->options().in_features()})).pow(2).sum().backward();
    adam.step();
  }
  Snapshot snap() { return snapshot(*net, &adam); }
};

// --- damaging files -------------------------------------------------------

std::uint64_t file_size(const std::string& path) { return fs::file_size(path); }

void flip_data_byte(const std::string& path) { test::flip_byte(path, file_size(path) - 3); }
// Byte 8 is the header's opening '{': flipped, the header is not JSON.
void damage_header(const std::string& path) { test::flip_byte(path, 8); }
void truncate_file(const std::string& path) { fs::resize_file(path, file_size(path) - 6); }

// Rewrites a safetensors file with one edit to its tensors.
enum class Edit { kWrongShape, kMissingKey, kExtraKey, kWrongDtype };

void rewrite(const std::string& path, Edit edit) {
  const auto file = SafetensorsFile::open(path);
  NamedTensors tensors;
  for (const std::string& name : file.names()) tensors.emplace_back(name, file.tensor(name).clone());
  std::string& first = tensors.front().first;
  at::Tensor& t = tensors.front().second;
  switch (edit) {
    case Edit::kWrongShape: t = at::zeros({t.size(0) + 1, t.numel() / t.size(0)}, t.options()); break;
    case Edit::kMissingKey: tensors.erase(tensors.begin()); break;
    case Edit::kExtraKey: tensors.emplace_back(first.substr(0, first.rfind('.')) + ".extra", at::zeros({2})); break;
    case Edit::kWrongDtype: t = at::zeros(t.sizes(), at::kLong); break;
  }
  fs::remove(path);
  save_safetensors(path, tensors, file.metadata());
}

// --- the entry points -----------------------------------------------------

// A plain safetensors file of `live`'s parameters and buffers, values shifted.
std::string write_state(const std::string& path, Net& net) {
  NamedTensors state;
  for (const auto& p : net->named_parameters(/*recurse=*/true)) state.emplace_back(p.key(), p.value().detach() + 0.5);
  for (const auto& b : net->named_buffers(/*recurse=*/true)) state.emplace_back(b.key(), b.value() + 0.5);
  save_safetensors(path, state);
  return path;
}

// A PEFT adapter directory saved from a differently trained model.
std::string write_adapter(const std::string& dir, std::int64_t width = 16) {
  torch::manual_seed(99);
  Live other(/*armed=*/true, width);
  save_adapter(dir, *other.net, lora_config());
  return dir;
}

// A run directory with checkpoint-1 (older) and checkpoint-2 (the best and
// newest), and what checkpoint-1 holds.
struct Run {
  std::string dir;
  Snapshot at_step_1;  // model, optimizer and RNG as checkpoint-1 saved them
};

Run write_run(const std::string& dir, Live& live) {
  CheckpointOptions o;
  o.output_dir = dir;
  o.metric_for_best_model = "loss";
  CheckpointManager ckpt(o);
  TrainingState state;
  Run run{dir, {}};
  for (int step = 1; step <= 2; ++step) {
    live.step();
    state.global_step = step;
    state.record_evaluation({{"eval_loss", step == 2 ? 0.1 : 0.5}});
    if (step == 1) run.at_step_1 = live.snap();  // RNG included: the save records it as it is now
    ckpt.save(*live.net, lora_config(), state, &live.adam);
  }
  live.step();  // the live run moves on
  torch::rand({5});
  return run;
}

std::string in_best(const Run& run, const char* file) { return run.dir + "/checkpoint-2/" + file; }

}  // namespace

TEST_CASE("every entry point that writes into a live model leaves it unchanged on bad input", "[validate]") {
  enum class Entry { kLoadInto, kApplyDelta, kAdapterArmed, kAdapterUnarmed };
  struct Row {
    const char* damage;
    std::function<void(const std::string& file)> apply;
  };
  const std::vector<Row> rows = {
      {"wrong shape", [](const std::string& f) { rewrite(f, Edit::kWrongShape); }},
      {"missing key", [](const std::string& f) { rewrite(f, Edit::kMissingKey); }},
      {"extra key", [](const std::string& f) { rewrite(f, Edit::kExtraKey); }},
      {"wrong dtype", [](const std::string& f) { rewrite(f, Edit::kWrongDtype); }},
      {"damaged header", damage_header},
      {"truncated file", truncate_file},
  };
  for (Entry entry : {Entry::kLoadInto, Entry::kApplyDelta, Entry::kAdapterArmed, Entry::kAdapterUnarmed}) {
    for (const Row& row : rows) {
      const char* names[] = {"load_into", "apply_delta", "load_adapter (armed)", "load_adapter (unarmed)"};
      INFO(names[static_cast<int>(entry)] << ", " << row.damage);
      test::TempDir dir;
      torch::manual_seed(1);
      Live live(/*armed=*/entry != Entry::kAdapterUnarmed);
      std::string file;
      std::function<void()> call;
      if (entry == Entry::kLoadInto || entry == Entry::kApplyDelta) {
        file = write_state(dir / "state.safetensors", live.net);
        call = [&] {
          const auto source = open_tensor_source(file);
          if (entry == Entry::kLoadInto) load_into(*live.net, *source);
          else apply_delta(*live.net, *source);
        };
      } else {
        file = write_adapter(dir / "adapter") + "/" + detail::kAdapterWeightsFile;
        call = [&] { load_adapter(dir / "adapter", *live.net); };
      }
      row.apply(file);
      const Snapshot before = live.snap();
      const Error e = test::capture_error(call);
      CHECK(e.code() != ErrorCode::kInvalidArgument);
      CHECK(live.snap() == before);
      if (std::string(e.what()).find("nothing was changed") == std::string::npos) {
        // Open-time failures (header, truncation) name the file instead.
        CHECK_THAT(e.what(), Contains(fs::path(file).filename().string()));
      }
    }
  }
}

TEST_CASE("load_best_into and resume change nothing on a bad best, or load the older checkpoint in full",
          "[validate]") {
  // What load_best_into without fallback does: fail (it verifies every file
  // of the best), or load checkpoint-1 (checkpoint-2 no longer counts: a file
  // missing or of the wrong size).
  enum class Best { kFails, kLoadsStep1 };
  struct Row {
    const char* damage;
    std::function<void(const Run&)> apply;
    Best best;
  };
  const std::vector<Row> rows = {
      {"flipped data byte", [](const Run& r) { flip_data_byte(in_best(r, detail::kAdapterWeightsFile)); },
       Best::kFails},
      {"damaged header", [](const Run& r) { damage_header(in_best(r, detail::kAdapterWeightsFile)); }, Best::kFails},
      {"damaged adapter config", [](const Run& r) { test::flip_byte(in_best(r, detail::kAdapterConfigFile), 3); },
       Best::kFails},
      {"truncated adapter", [](const Run& r) { truncate_file(in_best(r, detail::kAdapterWeightsFile)); },
       Best::kLoadsStep1},
      {"missing adapter", [](const Run& r) { fs::remove(in_best(r, detail::kAdapterWeightsFile)); }, Best::kLoadsStep1},
      {"bad optimizer archive", [](const Run& r) { flip_data_byte(in_best(r, detail::kOptimizerFile)); }, Best::kFails},
      {"bad trainer state", [](const Run& r) { test::flip_byte(in_best(r, detail::kTrainerStateFile), 5); },
       Best::kFails},
      {"bad rng state", [](const Run& r) { flip_data_byte(in_best(r, detail::kRngFile)); }, Best::kFails},
  };
  for (const Row& row : rows) {
    INFO(row.damage);
    test::TempDir dir;
    torch::manual_seed(2);
    Live live;
    const Run run = write_run(dir / "run", live);
    row.apply(run);
    CheckpointOptions o;
    o.output_dir = run.dir;
    o.metric_for_best_model = "loss";

    for (bool fallback : {false, true}) {
      INFO("fallback_to_next_best " << fallback);
      const Snapshot before = live.snap();
      CheckpointOptions with = o;
      with.fallback_to_next_best = fallback;
      CheckpointManager ckpt(with);
      const Snapshot* expected = &run.at_step_1;
      if (row.best == Best::kFails && !fallback) {
        const Error e = test::capture_error([&] { ckpt.load_best_into(*live.net); });
        CHECK((e.code() == ErrorCode::kCorruption || e.code() == ErrorCode::kNotFound));
        CHECK_THAT(e.what(), Contains("checkpoint-2"));
        expected = &before;
      } else {
        ckpt.load_best_into(*live.net);
      }
      // The model's tensors are all the expected checkpoint's (its base is
      // frozen, so only the adapter and the head differ between them); the
      // optimizer and the RNG are never a reload's business.
      const Snapshot after = live.snap();
      CHECK(after.names == before.names);
      CHECK(after.requires_grad == before.requires_grad);
      CHECK(test::bitwise_equal(after.tensors, expected->tensors));
      CHECK(after.optimizer == before.optimizer);
      CHECK(test::bitwise_equal(after.rng, before.rng));
    }

    // resume: every damage makes it fall back to checkpoint-1, and then
    // model, optimizer and RNG are what checkpoint-1 holds.
    CheckpointManager ckpt(o);
    TrainingState state;
    const auto from = ckpt.resume(*live.net, state, &live.adam);
    REQUIRE(from.has_value());
    CHECK(from->step == 1);
    CHECK(state.global_step == 1);
    CHECK(live.snap() == run.at_step_1);
  }
}

TEST_CASE("an adapter of another width leaves a fresh model exactly as it was", "[validate][lora]") {
  // The case found with an outside program: q_proj / v_proj of width 256, an
  // adapter saved from width 128, a model whose layers are not armed yet.
  test::TempDir dir;
  const std::string adapter = write_adapter(dir / "adapter", 128);
  torch::manual_seed(3);
  Net fresh(256);
  const Snapshot before = snapshot(*fresh, nullptr);
  REQUIRE(before.names.size() == 6);
  REQUIRE(fresh->head->weight.requires_grad());
  const Error e = test::capture_error([&] { load_adapter(adapter, *fresh); });
  CHECK(e.code() == ErrorCode::kIncompatible);
  CHECK_THAT(e.what(), Contains("nothing was changed") && Contains("q_proj.lora_A.weight"));
  CHECK(snapshot(*fresh, nullptr) == before);
  CHECK(fresh->named_parameters().size() == 6);
  CHECK(fresh->head->weight.requires_grad());
}

TEST_CASE("a successful load_adapter into an unarmed model leaves the random stream where it was", "[validate][lora]") {
  test::TempDir dir;
  const std::string adapter = write_adapter(dir / "adapter");
  torch::manual_seed(4);
  Net fresh;
  const NamedTensors rng = test::clone_all(detail::capture_rng_states());
  load_adapter(adapter, *fresh);
  CHECK(fresh->q_proj->has_adapter());
  CHECK(test::bitwise_equal(detail::capture_rng_states(), rng));
  // And the load holds what the file holds.
  const auto file = SafetensorsFile::open(adapter + "/" + detail::kAdapterWeightsFile);
  CHECK(torch::equal(fresh->q_proj->lora_A->weight, file.tensor("base_model.model.q_proj.lora_A.weight")));
}

TEST_CASE("a file truncated after validation fails saying the model is partly written and naming the tensors",
          "[validate][transfer]") {
  test::TempDir dir;
  torch::manual_seed(5);
  NamedTensors live;
  for (int i = 0; i < 6; ++i) live.emplace_back("t" + std::to_string(i), torch::zeros({64, 64}));
  NamedTensors file_tensors;
  for (const auto& [name, t] : live) file_tensors.emplace_back(name, torch::ones({64, 64}));
  const std::string path = dir / "f.safetensors";
  save_safetensors(path, file_tensors);
  const auto source = open_tensor_source(path);
  LoadOptions single_thread;  // 96 KiB in all: io_threads() keeps it on one thread, in file order
  detail::LoadPlan plan(live, *source, single_thread);
  fs::resize_file(path, file_size(path) - 3 * 64 * 64 * 4);  // the last three tensors gone
  const Error e = test::capture_error([&] { plan.apply(); });
  CHECK_THAT(e.what(),
             Contains("PARTLY WRITTEN") && Contains("'t3'") && !Contains("'t5'") && Contains("4 of 6 tensors reached"));
  CHECK(torch::equal(live[0].second, torch::ones({64, 64})));
  CHECK(torch::equal(live[5].second, torch::zeros({64, 64})));
}

TEST_CASE("checkpoint verify_checksums decides whether a reload checks the bytes it copies", "[validate][checkpoint]") {
  test::TempDir dir;
  torch::manual_seed(6);
  Live live;
  const Run run = write_run(dir / "run", live);
  flip_data_byte(in_best(run, detail::kAdapterWeightsFile));
  CheckpointOptions o;
  o.output_dir = run.dir;
  o.metric_for_best_model = "loss";
  {
    CheckpointManager verified(o);
    CHECK(test::capture_error([&] { verified.load_best_into(*live.net); }).code() == ErrorCode::kCorruption);
  }
  o.verify_checksums = false;
  // Unverified, the damaged bytes load (what the option means): only a
  // verifying load can promise the file's tensors are the saved ones.
  CheckpointManager unverified(std::move(o));
  CHECK_NOTHROW(unverified.load_best_into(*live.net));
}

}  // namespace lorakeep

namespace lorakeep {

TEST_CASE("resume holds at most one extra copy of the optimizer state while it restores it", "[validate][checkpoint]") {
  // The saved state is parsed into host memory once (to check it before
  // anything changes); on CPU parameters that copy becomes the state. So the
  // allocator's peak above the live run is one copy of the optimizer state
  // plus the adapter's staging, never two copies.
  test::TempDir dir;
  torch::manual_seed(7);
  Live live(/*armed=*/true, /*width=*/1024);
  CheckpointOptions o;
  o.output_dir = dir / "run";
  std::uint64_t state_bytes = 0;
  {
    CheckpointManager ckpt(o);
    TrainingState state;
    state.global_step = 1;
    ckpt.save(*live.net, lora_config(), state, &live.adam);
    for (auto& [key, s] : live.adam.state()) {
      const auto& adam = static_cast<const torch::optim::AdamParamState&>(*s);
      state_bytes += (adam.exp_avg().numel() + adam.exp_avg_sq().numel()) * 4;
    }
  }
  REQUIRE(state_bytes > (128u << 10));
  live.step();
  CheckpointManager ckpt(o);
  TrainingState state;
  AllocationProbe probe;
  REQUIRE(ckpt.resume(*live.net, state, &live.adam).has_value());
  INFO("optimizer state " << state_bytes << " bytes, allocator peak during resume " << probe.peak_bytes());
  CHECK(probe.peak_bytes() <= static_cast<std::int64_t>(state_bytes + (64u << 10)));  // two copies: 2 x state
  CHECK(probe.peak_bytes() >= static_cast<std::int64_t>(state_bytes / 2));            // the probe saw the parse
}

}  // namespace lorakeep

namespace lorakeep {

TEST_CASE("resume into an optimizer of other parameter groups changes nothing", "[validate][checkpoint]") {
  test::TempDir dir;
  torch::manual_seed(8);
  Live live;
  const Run run = write_run(dir / "run", live);
  // Another optimizer setup on the same model: the adapter factors in one
  // group, the head in a second one.
  std::vector<torch::Tensor> factors, head;
  for (const auto& p : live.net->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    (p.key().rfind("head.", 0) == 0 ? head : factors).push_back(p.value());
  }
  torch::optim::Adam two_groups(factors, torch::optim::AdamOptions(1e-2));
  two_groups.add_param_group(torch::optim::OptimizerParamGroup(head));
  CheckpointOptions o;
  o.output_dir = run.dir;
  CheckpointManager ckpt(o);
  const Snapshot before = snapshot(*live.net, &two_groups);
  TrainingState state;
  const Error e = test::capture_error([&] { ckpt.resume(*live.net, state, &two_groups); });
  CHECK(e.code() == ErrorCode::kIncompatible);
  CHECK_THAT(e.what(), Contains("parameter groups") && Contains("checkpoint-2"));
  CHECK(snapshot(*live.net, &two_groups) == before);
  CHECK(state.global_step == 0);
}

}  // namespace lorakeep
