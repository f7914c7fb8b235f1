// Private: torch.save state dicts (zip format, PyTorch >= 1.6), read with
// LibTorch's own unpickler. The unpickler knows only the globals a tensor
// needs, so no code from the file runs.
#pragma once

#include <string>

#include <ATen/core/ivalue.h>

#include "lorakeep/safetensors.h"

namespace lorakeep::detail {

// Any torch.save'd object (zip format) with every storage mapped to the CPU.
// Throws Error(kNotFound), Error(kNotSupported) for the legacy format,
// Error(kCorruption) for anything unreadable, naming the path.
c10::IValue load_torch_archive(const std::string& path);

// Loads a flat {name: tensor} dict (an OrderedDict from torch.save, as in
// PEFT's adapter_model.bin) with every tensor on the CPU and contiguous,
// whatever device it was saved from. Order is the file's.
// Throws Error(kNotFound), Error(kNotSupported) for the legacy (pre-1.6)
// format or a value that is not a tensor, Error(kCorruption) for a damaged
// archive, each naming the path.
NamedTensors load_torch_pickle(const std::string& path);

// Writes tensors as a dict with torch::pickle_save (readable by torch.load),
// atomically. Throws Error(kIOError).
void save_torch_pickle(const std::string& path, const NamedTensors& tensors);

}  // namespace lorakeep::detail
