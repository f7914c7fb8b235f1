#include "merge/pipeline.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include "base/openmp_threads.h"

namespace lorakeep::detail {

at::Tensor piece_view(const TensorSource& source, const std::string& name, c10::ScalarType type, std::int64_t begin,
                      std::int64_t count, HostStaging* scratch) {
  const std::uint64_t size = c10::elementSize(type);
  at::Tensor piece = scratch->view(type, {count});
  source.read(name, static_cast<std::uint64_t>(begin) * size, piece.data_ptr(),
              static_cast<std::uint64_t>(count) * size);
  return piece;
}

at::Tensor Scratch::get(int slot, c10::ScalarType type, std::int64_t n) { return buffers_[slot].view(type, {n}); }

at::Tensor Scratch::as(const at::Tensor& src, c10::ScalarType type, int slot) {
  if (src.scalar_type() == type) return src;
  at::Tensor out = get(slot, type, src.numel());
  out.copy_(src);
  return out;
}

PiecePipeline::PiecePipeline(std::function<void(PiecePipeline&)> produce) {
  thread_ = std::thread([this, produce = std::move(produce)] {
    try {
      c10::NoGradGuard no_grad;  // thread-local
      // One core fewer for LibTorch's parallel ops started here (dtype
      // conversions, merge-delta's adds): the caller's thread keeps one core
      // busy writing and hashing, and a full OpenMP team beside it only
      // spin-waits against it (2 GiB merge-lora with an OpenBLAS GEMM per
      // piece, on 2 cores, written to tmpfs: 1.9 s -> 1.55 s).
      OpenMpThreadLimit limit(std::max(1, at::get_num_threads() - 1));
      produce(*this);
    } catch (const Stopped&) {
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    cv_.notify_all();
  });
}

void PiecePipeline::stop_and_join() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

PiecePipeline::~PiecePipeline() { stop_and_join(); }

PiecePipeline::Slot& PiecePipeline::acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return stop_ || produced_ - consumed_ < kSlots; });
  if (stop_) throw Stopped{};
  return slots_[produced_ % kSlots];
}

void PiecePipeline::publish() {
  std::lock_guard<std::mutex> lock(mu_);
  ++produced_;
  cv_.notify_all();
}

void PiecePipeline::drain(std::uint64_t bytes, const SafetensorsWriter::PieceSink& sink) {
  for (std::uint64_t drained = 0; drained < bytes;) {
    Slot* slot;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return produced_ > consumed_ || done_; });
      if (error_) std::rethrow_exception(error_);
      if (produced_ == consumed_) throw std::logic_error("the merge's pieces ended before its tensors");
      slot = &slots_[consumed_ % kSlots];
    }
    sink(slot->piece);
    drained += slot->piece.nbytes();
    slot->piece = at::Tensor();  // a whole tensor (not a view of a buffer) is freed now
    std::lock_guard<std::mutex> lock(mu_);
    ++consumed_;
    cv_.notify_all();
  }
}

void PiecePipeline::finish() {
  stop_and_join();
  if (error_) std::rethrow_exception(error_);
  if (produced_ != consumed_) throw std::logic_error("the merge produced pieces beyond its tensors");
}

MergeReport write_merged(ShardedWriter& writer, std::function<void(PiecePipeline&)> produce,
                         const std::function<std::uint64_t(const TensorInfo&)>& bytes_read,
                         const MergeProgress& progress) {
  PiecePipeline pipeline(std::move(produce));
  MergeReport report;
  const std::vector<TensorInfo>& order = writer.order();
  for (const TensorInfo& spec : order) {
    writer.write_pieces([&](const SafetensorsWriter::PieceSink& sink) { pipeline.drain(spec.byte_size(), sink); });
    report.bytes_read += bytes_read(spec);
    report.bytes_written += spec.byte_size();
    report.elements += static_cast<std::uint64_t>(spec.numel());
    ++report.tensors;
    if (progress) progress(report.tensors, order.size(), report.bytes_read);
  }
  pipeline.finish();
  report.output = writer.finish();
  return report;
}

}  // namespace lorakeep::detail
