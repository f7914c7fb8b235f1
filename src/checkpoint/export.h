// Copying a checkpoint's adapter out of a run directory: the end-of-training
// hook for shell pipelines (lorakeep finalize). No LibTorch here.
#pragma once

#include <string>

#include "checkpoint/checkpoint_reader.h"

namespace lorakeep::detail {

// Copies adapter_model.safetensors and adapter_config.json of `checkpoint`
// into `out_dir` (CheckpointReader::copy_verified): the export holds exactly
// the verified bytes. The directory is assembled beside `out_dir` and
// published in one rename, replacing an earlier export. Throws
// Error(kNotFound / kCorruption) naming the file, Error(kIOError).
void export_adapter(const CheckpointReader& checkpoint, const std::string& out_dir);

}  // namespace lorakeep::detail
