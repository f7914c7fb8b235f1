// Writing PEFT's adapter directory (adapter_model.safetensors,
// adapter_config.json): save_adapter's and a checkpoint's one writer.
#pragma once

#include <string>

#include "lorakeep/lora_config.h"
#include "lorakeep/safetensors.h"
#include "io/checksum.h"

namespace lorakeep::detail {

struct WrittenAdapter {
  SaveReport weights;       // adapter_model.safetensors, with per-tensor checksums
  std::string config_path;  // adapter_config.json
  FileDigest config;        // of the bytes written
};

// Writes `tensors` (adapter_tensors' names, or host copies of them) and
// `config` (saved with inference_mode true) into `dir`: direct = true writes
// plain synced files (for a directory published whole later, like a
// checkpoint), false replaces each file atomically, weights first.
// Throws Error(kIOError) naming the file.
WrittenAdapter write_adapter(const std::string& dir, const NamedTensors& tensors, const LoraConfig& config,
                             bool direct);

}  // namespace lorakeep::detail
