// lorakeep/safetensors.h: strict reading and streaming, atomic writing of
// safetensors files.
//
//   auto file = lorakeep::SafetensorsFile::open("adapter_model.safetensors");
//   at::Tensor a = file.tensor("base_model.model.q_proj.lora_A.weight");  // zero-copy view
//
//   lorakeep::save_safetensors("out.safetensors", {{"w", w}}, {{"format", "pt"}});
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "lorakeep/tensor_info.h"

namespace lorakeep {

// Dtype::kF32 => at::kFloat. Throws Error(kNotSupported) naming `what` (a
// tensor, for the message) and the dtype when the linked LibTorch lacks it
// (F8 before 2.1, U16/U32/U64 before 2.3; F4/F6 always).
c10::ScalarType to_scalar_type(Dtype dtype, const std::string& what = "");

// at::kBFloat16 => Dtype::kBF16. Throws Error(kNotSupported) for types
// safetensors cannot hold (quantized, complex128, ...).
Dtype from_scalar_type(c10::ScalarType type, const std::string& what = "");

namespace detail {
class SafetensorsImpl;
}

// An open, validated safetensors file, memory-mapped read-only (copy-on-write).
//
// A cheap handle: copies share one mapping, which lives until the last handle
// and the last tensor view from it are gone.
// Thread-safety: all methods are const and safe to call concurrently.
class SafetensorsFile {
 public:
  // Maps and validates `path` as the reference reader does (see docs/ARCHITECTURE.md).
  // Throws Error(kNotFound) if missing, Error(kCorruption) naming the path and
  // the first problem if invalid, Error(kIOError) if unreadable.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const;
  std::uint64_t file_size() const;

  // Tensor names in data-offset (file) order.
  const std::vector<std::string>& names() const;
  // All tensors in file order.
  const std::vector<TensorInfo>& infos() const;
  bool contains(const std::string& name) const;
  // Throws Error(kNotFound) naming the tensor and the file.
  const TensorInfo& info(const std::string& name) const;

  // "__metadata__" (empty if absent).
  const std::map<std::string, std::string>& metadata() const;

  // A CPU tensor over the file's bytes: zero-copy when the data is aligned to
  // its element size (always, for files written by the reference writer or by
  // lorakeep), otherwise an aligned copy. The view keeps the mapping alive.
  // Writes to it stay private to this process (copy-on-write).
  // Throws Error(kNotFound), or Error(kNotSupported) for a dtype the linked
  // LibTorch lacks.
  at::Tensor tensor(const std::string& name) const;

  struct Bytes {
    const std::uint8_t* data;
    std::uint64_t size;
  };
  // The stored little-endian bytes of one tensor; valid while this handle lives.
  Bytes bytes(const std::string& name) const;

  // Drops the resident pages of bytes [begin, end) of one tensor: the process
  // RSS stops counting them; a later read faults them back in from the file
  // (in-place changes made through views of them are lost).
  void release(const std::string& name, std::uint64_t begin = 0, std::uint64_t end = UINT64_MAX) const;

  // Copies bytes [begin, begin + size) of one tensor's stored data into
  // `dst` with pread(2): no page of the file is mapped into the process, so
  // nothing needs releasing. Throws Error(kInvalidArgument) for a range past
  // the tensor, Error(kIOError) on a read failure.
  void read(const std::string& name, std::uint64_t begin, void* dst, std::uint64_t size) const;

  // Hints that one tensor's bytes are about to be read.
  void prefetch(const std::string& name) const;

 private:
  explicit SafetensorsFile(std::shared_ptr<const detail::SafetensorsImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const detail::SafetensorsImpl> impl_;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct SaveOptions {
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // host staging for device or non-contiguous tensors
};

// What a save wrote: enough for a manifest without reading the file again.
struct SaveReport {
  std::string path;
  std::uint64_t file_size = 0;
  std::uint64_t file_checksum = 0;              // XXH3-64 of the whole file
  std::vector<TensorInfo> tensors;              // in file order
  std::vector<std::uint64_t> tensor_checksums;  // XXH3-64 of each tensor's bytes, same order
  double seconds = 0;
  // Where the tensors lived ("cpu", "cuda:0", "mixed") and the extra bytes
  // the save took on that allocator (-1: not counted, and why). Filled by
  // save_safetensors and the adapter and checkpoint saves, not by a streaming
  // writer's finish().
  std::string device;
  std::int64_t peak_device_bytes = -1;
  std::string device_bytes_unmeasured;
};

// Writes `tensors` (any device, any strides) to `path` as the reference writer
// would lay them out (byte-identical for the same tensors and at most one
// metadata key), streaming each tensor in pieces of at most
// options.chunk_bytes (contiguous CPU tensors are written straight from their
// memory), then publishes atomically: temp file beside `path`, fsync, rename,
// fsync of the directory. An existing `path` is replaced only on success.
// Throws Error(kInvalidArgument) for duplicate names, Error(kNotSupported)
// for a dtype safetensors lacks, Error(kIOError) naming the path on I/O
// failure (the temp file is removed).
SaveReport save_safetensors(const std::string& path, const NamedTensors& tensors,
                            const std::map<std::string, std::string>& metadata = {}, const SaveOptions& options = {});

}  // namespace lorakeep
