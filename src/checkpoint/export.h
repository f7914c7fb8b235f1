// Copying a checkpoint's adapter out of a run directory: the end-of-training
// hook for shell pipelines (lorakeep finalize). No LibTorch here.
#pragma once

#include <string>

#include "checkpoint/manifest.h"

namespace lorakeep::detail {

// Copies adapter_model.safetensors and adapter_config.json of
// `checkpoint_dir` into `out_dir`, checking each byte against the manifest's
// checksum as it is copied: the export holds exactly the verified bytes. The
// directory is assembled beside `out_dir` and published in one rename,
// replacing an earlier export. Throws Error(kNotFound / kCorruption) naming
// the file, Error(kIOError).
void export_adapter(const std::string& checkpoint_dir, const Manifest& manifest, const std::string& out_dir);

}  // namespace lorakeep::detail
