// Two ranks, each with its own test device (tests/device/test_device.h):
// real processes (this executable run again, once per rank, on its hidden
// case), a real c10d TCPStore hosted here as torchrun's agent hosts it. The
// ranks save coordinated checkpoints of device-resident parameters, agree on
// the best, and reload it with no device memory left.
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>

#include <boost/filesystem.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "lorakeep/adapter.h"
#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/distributed.h"
#include "lorakeep/safetensors.h"
#include "device/test_device.h"
#include "test_model.h"
#include "test_util.h"

namespace lorakeep {
namespace {

namespace td = test_device;
constexpr std::int64_t kMiB = 1 << 20;

std::string self_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  REQUIRE(n > 0);
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

// One rank of the case below, run only by it (a hidden case): LK_DEVICE_RUN
// is the shared run directory. Prints "rank R digest D peak P".
TEST_CASE("one rank of a two-rank job on its own test device", "[.][device-rank]") {
  const char* run = std::getenv("LK_DEVICE_RUN");
  REQUIRE(run != nullptr);
  Coordinator coordinator = Coordinator::from_env();
  REQUIRE(coordinator.world_size() == 2);
  // Two 1024-wide layers with rank-128 LoRA: a 2 MiB adapter, the same on
  // every rank (same seed, same steps).
  const LoraConfig config = test::test_lora(/*r=*/128, /*alpha=*/256);
  test::TestNet net = test::armed_net(0, config, 1024);
  net->to(td::device());
  CheckpointManager ckpt(test::options_for(run), coordinator);
  TrainingState state;
  for (const double loss : {0.9, 0.4, 0.6}) {
    test::perturb(net, 0.25);
    ++state.global_step;
    // Each rank's share: the sample-weighted mean is `loss` on both.
    state.record_evaluation(coordinator.reduce_metrics({{"eval_loss", loss}}, coordinator.rank() + 1));
    ckpt.save(*net, config, state);
  }
  REQUIRE(ckpt.best().has_value());
  CHECK(ckpt.best()->step == 2);
  test::perturb(net, 1.0);
  TransferReport report;
  td::reset_peak();
  const std::int64_t before = td::live_bytes();
  {
    td::FreeBytes free(kMiB);  // half the adapter
    report = ckpt.load_best_into(*net);
  }
  const std::int64_t peak = td::peak_bytes() - before;
  CHECK(peak == 0);
  CHECK(report.peak_device_bytes == 0);
  const SafetensorsFile best = SafetensorsFile::open(ckpt.best()->path + "/adapter_model.safetensors");
  for (const auto& [name, live] : adapter_tensors(*net, config)) {
    INFO(name);
    CHECK(live.device() == td::device());
    CHECK(torch::equal(live.cpu(), best.tensor(name)));
  }
  std::printf("rank %d digest %llx peak %lld\n", coordinator.rank(),
              static_cast<unsigned long long>(adapter_digest(*net, config)), static_cast<long long>(peak));
}

TEST_CASE("two ranks, each on its own test device, save together and reload the best with no device memory",
          "[device]") {
  test::TempDir dir;
  c10d::TCPStoreOptions o;
  o.port = 0;
  o.isServer = true;
  o.waitWorkers = false;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  std::ostringstream script;
  script << "cd " << dir.path() << "\n";
  for (int r = 0; r < 2; ++r) {
    script << "(RANK=" << r << " LOCAL_RANK=" << r << " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1"
           << " MASTER_PORT=" << store->getPort()
           << " TORCHELASTIC_USE_AGENT_STORE=True LK_DEVICE_RUN=" << (dir / "run") << " exec " << self_path()
           << " '[device-rank]' > out." << r << " 2> err." << r << ") & pid" << r << "=$!\n";
  }
  script << "wait $pid0; echo $? > rc.0; wait $pid1; echo $? > rc.1\n";
  test::write_file(dir / "job.sh", script.str());
  REQUIRE(test::run_shell("bash " + (dir / "job.sh")).exit_code == 0);
  std::string digest;
  for (int r = 0; r < 2; ++r) {
    const std::string n = std::to_string(r);
    const std::string out = test::read_file(dir / ("out." + n));
    INFO("rank " << r << ":\n" << out << test::read_file(dir / ("err." + n)));
    CHECK(std::stoi(test::read_file(dir / ("rc." + n))) == 0);
    const auto at = out.find("rank " + n + " digest ");
    REQUIRE(at != std::string::npos);
    std::istringstream line(out.substr(at));
    std::string word, d, peak_word;
    int rank = -1;
    long long peak = -1;
    line >> word >> rank >> word >> d >> peak_word >> peak;
    CHECK(peak == 0);
    if (r == 0) digest = d;
    CHECK(d == digest);
  }
  // One run directory, written by rank 0 only: the newest 2 and the best.
  CHECK(boost::filesystem::exists(dir / "run/checkpoint-2"));
  CHECK(boost::filesystem::exists(dir / "run/checkpoint-3"));
  CHECK_FALSE(boost::filesystem::exists(dir / "run/checkpoint-1"));
}

}  // namespace lorakeep
