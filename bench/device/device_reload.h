// "Reload onto a device with 1 MiB free": Trainer's end-of-training reload of
// the best adapter (the whole state dict onto the device, then copy_, as in
// transformers #44660) against lorakeep's CheckpointManager::load_best_into,
// measured on one device. The same program runs on lorakeep's test device
// (bench/device/test_device_main.cpp, in the main build) and on CUDA
// (bench/gpu/, built by scripts/gpu-check.sh); only the BenchDevice differs.
//
//   PROGRAM make  --mib N --run DIR                  a checkpoint run whose best holds N MiB of LoRA factors
//   PROGRAM case  --mib N --run DIR --method M       one method (naive | lorakeep) in this process: one JSON object
//   PROGRAM sweep --mib 16,64,256,1024 --work DIR [--json FILE] [--command TEXT]
//                                                    make, then each method in a process of its own, per size;
//                                                    prints the table, writes {["command",] "date", "device",
//                                                    ..., "rows": [...]} (a section of bench/results.json)
//
// Uses lorakeep's public headers only (bench/gpu/ builds it against the
// installed package).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <c10/core/Device.h>

namespace lorakeep::bench {

struct BenchDevice {
  c10::Device device{c10::kCPU};
  std::string description;      // for the table and the JSON ("NVIDIA H100 80GB HBM3, 79.1 GiB")
  bool memory_is_host = false;  // its allocations are host RSS too (the test device): subtracted from host bytes
  std::function<void(std::int64_t)> leave_free;  // from now on, only this many bytes can be allocated
  std::function<void()> lift;                    // undoes leave_free
  std::function<void()> synchronize;
};

// Runs the subcommand in argv[1] on `device`; returns the exit status (0 ok,
// 1 a failed check or step, 2 usage).
int run_device_reload(int argc, char** argv, const BenchDevice& device);

}  // namespace lorakeep::bench
