// lorakeep/tensor_source.h: one read interface over every place tensors come
// from: a safetensors file, a sharded set (model.safetensors.index.json), a
// PEFT adapter directory, or a torch pickle state dict (.bin / .pt).
//
//   auto src = lorakeep::open_tensor_source("runs/exp1/checkpoint-400");
//   for (const auto& name : src->names()) std::cout << name << "\n";
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_info.h"

namespace lorakeep {

// Everything is validated when the source is opened; reads afterwards cannot
// meet a malformed header.
// Thread-safety: all methods are const and safe to call concurrently.
class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // The path the source was opened from.
  virtual const std::string& path() const = 0;
  // "safetensors", "sharded safetensors" or "torch pickle".
  virtual std::string kind() const = 0;

  // Tensor names in a stable order that reads the files front to back.
  virtual const std::vector<std::string>& names() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  // Throws Error(kNotFound) naming the tensor and the source.
  virtual const TensorInfo& info(const std::string& name) const = 0;
  // The file that holds `name` (its shard, for a sharded set).
  virtual const std::string& file_of(const std::string& name) const = 0;
  // "__metadata__" of the file (of the first shard, for a sharded set).
  virtual const std::map<std::string, std::string>& metadata() const = 0;

  // A CPU tensor with the stored dtype and shape: a zero-copy view for
  // safetensors sources. Throws Error(kNotFound) or Error(kNotSupported).
  virtual at::Tensor tensor(const std::string& name) const = 0;
  // The stored bytes (little-endian, C order) in place: mapped pages for
  // files, memory for the rest.
  virtual SafetensorsFile::Bytes bytes(const std::string& name) const = 0;
  // Copies stored bytes [begin, begin + size) of `name` into `dst`, without
  // mapping them into the process (pread for files). Throws
  // Error(kInvalidArgument) for a range past the tensor, Error(kIOError).
  virtual void read(const std::string& name, std::uint64_t begin, void* dst, std::uint64_t size) const = 0;

  // Drops the host pages holding bytes [begin, end) of `name` once a reader
  // is done with them (the whole tensor by default).
  virtual void release(const std::string& name, std::uint64_t begin = 0, std::uint64_t end = UINT64_MAX) const {
    (void)name, (void)begin, (void)end;
  }
  // Hints that `name` is about to be read.
  virtual void prefetch(const std::string& name) const { (void)name; }

  // Sum of the stored byte sizes of all tensors.
  std::uint64_t total_bytes() const;
};

// Opens and validates the tensors at `path`:
//   *.safetensors                 one file
//   *.safetensors.index.json      a sharded set, read as one source
//   *.bin, *.pt, *.pth            a torch.save state dict, loaded onto the CPU
//   a directory                   the first of adapter_model.safetensors,
//                                 adapter_model.bin, model.safetensors.index.json,
//                                 model.safetensors inside it
// Throws Error(kNotFound) if nothing is there, Error(kCorruption) naming the
// file and the problem, Error(kNotSupported) for formats it cannot read.
std::unique_ptr<TensorSource> open_tensor_source(const std::string& path);

// A source over an already open file.
std::unique_ptr<TensorSource> make_tensor_source(SafetensorsFile file);

// A source over tensors in memory (CPU or not: they are copied to the CPU when
// read), named as given. `label` stands in for a path in messages.
std::unique_ptr<TensorSource> make_tensor_source(NamedTensors tensors, std::string label = "<memory>");

}  // namespace lorakeep
