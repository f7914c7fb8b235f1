// Private: streams tensors into a sharded safetensors set published as one
// directory (used by save_sharded and the offline merges).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lorakeep/sharded.h"
#include "io/atomic_file.h"
#include "tensors/safetensors_writer.h"

namespace lorakeep::detail {

// Not thread-safe; not copyable.
class ShardedWriter {
 public:
  // Plans the shards for `tensors` (name, dtype, shape; in the given order)
  // and creates the temporary directory beside `dir`.
  // Throws Error(kInvalidArgument) if `dir` exists and is not empty.
  ShardedWriter(std::string dir, std::vector<TensorInfo> tensors, std::map<std::string, std::string> metadata,
                const ShardOptions& options);
  ~ShardedWriter();  // unfinished: removes the temporary directory
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;

  // Every tensor, in the order write() expects them. Fixed at construction:
  // safe to read from any thread while another writes.
  const std::vector<TensorInfo>& order() const { return order_; }

  // Writes the next tensor of order(), whole or in pieces (see
  // SafetensorsWriter::write_pieces).
  void write(const at::Tensor& tensor);
  void write_pieces(const std::function<void(const SafetensorsWriter::PieceSink&)>& produce);

  // Syncs everything, writes the index, publishes `dir`.
  ShardedSaveReport finish();

 private:
  SafetensorsWriter& current();
  void after_write();

  struct Shard {
    std::string file;
    std::vector<TensorInfo> tensors;
  };

  std::string dir_;
  std::optional<StagedDirectory> staged_;  // the set being written
  std::map<std::string, std::string> metadata_;
  ShardOptions options_;
  std::vector<Shard> shards_;
  std::vector<TensorInfo> order_;
  std::size_t next_ = 0;
  std::size_t shard_ = 0;
  std::unique_ptr<SafetensorsWriter> writer_;
  std::vector<SaveReport> reports_;
  double started_;
};

}  // namespace lorakeep::detail
