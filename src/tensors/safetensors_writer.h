// Private: the streaming safetensors writer behind save_safetensors, the
// sharded writer and the offline merges.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lorakeep/safetensors.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "tensors/pieces.h"

namespace lorakeep::detail {

// Calls `sink` with the host bytes of `t` in order. A contiguous CPU tensor
// is passed straight from its memory; anything else (device memory, strides)
// goes piece by piece through `*staging`, at most `chunk_bytes` of it
// (page-locked for CUDA tensors).
// REQUIRES: chunk_bytes >= 64.
void for_each_host_piece(const at::Tensor& t, std::uint64_t chunk_bytes, HostStaging* staging,
                         const std::function<void(const void*, std::uint64_t)>& sink);

// Writes one safetensors file whose header is laid out up front from the
// tensors' names, dtypes and shapes; the data then streams in, one tensor at a
// time, in order(). Not thread-safe; not copyable or movable.
class SafetensorsWriter {
 public:
  enum class Mode {
    kAtomic,  // write a temp file beside `path`, publish() it on finish()
    kDirect,  // write `path` itself (inside a temp directory published later); fsync on finish()
  };

  SafetensorsWriter(std::string path, std::vector<TensorInfo> tensors,
                    const std::map<std::string, std::string>& metadata, Mode mode, std::uint64_t chunk_bytes);
  ~SafetensorsWriter();  // unfinished: removes what it wrote; never throws
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The order write() expects, with data offsets filled in.
  const std::vector<TensorInfo>& order() const { return order_; }
  // The name of the tensor write() expects next; "" when all are written.
  const std::string& next_name() const;

  // Writes the next tensor. Its dtype and shape must be those of order()[i].
  // Throws Error(kInvalidArgument) on a mismatch, Error(kIOError) on failure.
  void write(const at::Tensor& tensor);

  // Receives one piece of a tensor being streamed: a CPU tensor of the
  // announced dtype whose elements follow the previous piece's in C order.
  using PieceSink = std::function<void(const at::Tensor& piece)>;

  // Writes the next tensor of order() without it ever existing whole:
  // `produce` calls the sink with consecutive pieces that together hold
  // exactly the tensor's elements. Throws Error(kInvalidArgument) if they do
  // not add up, Error(kIOError) on failure.
  void write_pieces(const std::function<void(const PieceSink&)>& produce);

  // Closes, syncs and (kAtomic) publishes. REQUIRES: every tensor written.
  SaveReport finish();

 private:
  void append(const void* data, std::uint64_t size);
  const TensorInfo& expect_next() const;

  std::string path_;
  std::string write_path_;
  Mode mode_;
  std::uint64_t chunk_bytes_;
  std::vector<TensorInfo> order_;
  std::size_t next_ = 0;
  std::unique_ptr<WritableFile> file_;
  Xxh3Stream file_hash_;
  std::vector<std::uint64_t> tensor_checksums_;
  HostStaging staging_;
  bool finished_ = false;
  double started_;
};

// The specs (name, dtype, shape) of tensors about to be written, and where
// each tensor is. Throws Error(kInvalidArgument) for an undefined tensor,
// Error(kNotSupported) for a dtype safetensors lacks.
struct IndexedTensors {
  std::vector<TensorInfo> specs;
  std::unordered_map<std::string, const at::Tensor*> by_name;
};
IndexedTensors index_tensors(const NamedTensors& tensors);

// Writes whole tensors to `path` in the given mode (save_safetensors is this
// with Mode::kAtomic). Throws as SafetensorsWriter.
SaveReport write_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata, SafetensorsWriter::Mode mode,
                             std::uint64_t chunk_bytes);

}  // namespace lorakeep::detail
