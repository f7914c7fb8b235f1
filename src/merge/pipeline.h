// Private: the piece pipeline shared by the offline merges (merge.cpp and
// lora/merge_files.cpp).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include <ATen/core/Tensor.h>

#include "lorakeep/merge.h"
#include "lorakeep/tensor_source.h"
#include "tensors/pieces.h"
#include "tensors/safetensors_writer.h"
#include "tensors/sharded_writer.h"

namespace lorakeep::detail {

// Elements per computed piece of an offline merge (256 KiB of F32): small
// enough that a piece and its temporaries stay in the CPU's L2 cache between
// the read into it, the arithmetic and the write out of it. Pieces of 4M
// elements went through main memory at every step: a 2 GiB merge-delta took
// 1.5x the time, and every merge 40-60 MiB more RSS.
inline constexpr std::int64_t kPieceElements = std::int64_t{1} << 16;

// Reusable piece buffers (growing HostStaging). Every temporary of a merge lives in one of these,
// allocated on first use: allocating fresh piece-sized tensors over and over
// fragments the heap, and glibc then keeps hundreds of MiB resident that the
// program no longer uses.
class Scratch {
 public:
  // A flat tensor of `n` elements of `type` in buffer `slot`. Each slot
  // holds one live value at a time: callers give every temporary its own.
  at::Tensor get(int slot, c10::ScalarType type, std::int64_t n);
  // `src` as `type`: itself if it already is, else converted into `slot`.
  at::Tensor as(const at::Tensor& src, c10::ScalarType type, int slot);

 private:
  HostStaging buffers_[8];
};

// Elements [begin, begin + count) of tensor `name` of `source` as a flat CPU
// tensor of `type` (its stored dtype), read into `*scratch` (grown as needed,
// then reused): the file is read, never mapped, so the RSS does not grow.
at::Tensor piece_view(const TensorSource& source, const std::string& name, c10::ScalarType type, std::int64_t begin,
                      std::int64_t count, HostStaging* scratch);

// Computes the pieces of a merge on a second thread while the caller writes
// the ones before: reading and arithmetic of one piece overlap the write and
// hashing of the previous one. Each piece lives in a Slot with buffers of its
// own; kSlots slots circulate between the two threads, so at most kSlots
// pieces are in flight and no buffer is allocated per piece.
class PiecePipeline {
 public:
  static constexpr int kSlots = 3;
  struct Slot {
    Scratch scratch;      // temporaries of the arithmetic
    HostStaging read[2];  // piece_view buffers of up to two inputs
    at::Tensor piece;     // the producer's result
  };

  // Starts `produce` on a new thread (gradient mode off). For every piece, in
  // the order the caller drains them, it calls acquire(), sets the slot's
  // `piece`, then publish().
  explicit PiecePipeline(std::function<void(PiecePipeline&)> produce);
  // Stops the producer (its next acquire() throws) and waits for it.
  ~PiecePipeline();
  PiecePipeline(const PiecePipeline&) = delete;
  PiecePipeline& operator=(const PiecePipeline&) = delete;

  // Producer side: a slot to fill (waits while all are in flight), then
  // hands it over.
  Slot& acquire();
  void publish();

  // Caller side: passes pieces to `sink` until `bytes` bytes have gone, each
  // slot returned to the producer once its sink call returns. Rethrows the
  // producer's exception.
  void drain(std::uint64_t bytes, const SafetensorsWriter::PieceSink& sink);
  // Waits for the producer to return; rethrows its exception. REQUIRES: every
  // piece drained.
  void finish();

 private:
  struct Stopped {};
  void stop_and_join();

  std::mutex mu_;
  std::condition_variable cv_;
  Slot slots_[kSlots];
  std::uint64_t produced_ = 0;  // pieces published
  std::uint64_t consumed_ = 0;  // pieces drained
  bool stop_ = false;           // the caller gave up or finished
  bool done_ = false;           // the producer returned
  std::exception_ptr error_;
  std::thread thread_;
};

// The writing side of every offline merge: writes each tensor of
// writer.order() from the pieces `produce` computes on a PiecePipeline, then
// publishes the output. After each tensor, `progress` (if set) gets the
// running total of bytes_read(tensor). The report has every count and the
// output filled in; its seconds are the caller's to set.
MergeReport write_merged(ShardedWriter& writer, std::function<void(PiecePipeline&)> produce,
                         const std::function<std::uint64_t(const TensorInfo&)>& bytes_read,
                         const MergeProgress& progress);

}  // namespace lorakeep::detail
