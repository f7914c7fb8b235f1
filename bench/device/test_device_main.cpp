// lorakeep_device_bench: "reload onto a device with 1 MiB free" on lorakeep's
// test device (tests/device/test_device.h): device bytes counted exactly at
// its allocator, the 1 MiB enforced as its capacity. bench/run.py --sections
// device_reload runs its sweep. An executable of its own: in LibTorch 2.x a
// named PrivateUse1 backend is at::accelerator's device for the process.
#include "device/test_device.h"
#include "device_reload.h"

int main(int argc, char** argv) {
  namespace td = lorakeep::test_device;
  lorakeep::bench::BenchDevice dev;
  dev.device = td::device();
  dev.description = "lorakeep test device (PrivateUse1 in host RAM, counted and capped at its allocator)";
  dev.memory_is_host = true;
  dev.leave_free = [](std::int64_t bytes) { td::set_capacity(td::live_bytes() + bytes); };
  dev.lift = [] { td::set_capacity(-1); };
  dev.synchronize = [] {};
  return lorakeep::bench::run_device_reload(argc, argv, dev);
}
