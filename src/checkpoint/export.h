// Copying a checkpoint's adapter out of a run directory: the end-of-training
// hook for shell pipelines (lorakeep finalize). No LibTorch here.
#pragma once

#include <string>

#include "checkpoint/checkpoint_reader.h"

namespace lorakeep::detail {

// Whether a file a checkpoint lists is one of its adapters' (the default's
// adapter_model.safetensors and adapter_config.json, and those of every
// named adapter's folder): what export_adapter copies.
bool is_adapter_file(const std::string& name);

// Copies the adapter files of `checkpoint` (is_adapter_file) into `out_dir`,
// a named adapter's into its folder there, as PEFT's save_pretrained lays
// them out (CheckpointReader::copy_verified): the export holds exactly the
// verified bytes. The directory is assembled beside `out_dir` and published
// in one rename, replacing an earlier export. Throws Error(kNotFound /
// kCorruption) naming the file, Error(kIOError).
void export_adapter(const CheckpointReader& checkpoint, const std::string& out_dir);

}  // namespace lorakeep::detail
