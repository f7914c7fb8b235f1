#include "transfer/apply_phase.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "lorakeep/memory.h"
#include "base/clock.h"
#include "base/logging.h"
#include "base/openmp_threads.h"
#include "base/parallel.h"
#include "base/text.h"
#include "io/checksum.h"
#include "tensors/device_bytes.h"
#include "tensors/pieces.h"
#include "tensors/torch_error.h"
#include "transfer/device_stager.h"
#include "transfer/plan_phase.h"

namespace lorakeep {
namespace {

using detail::Planned;

// Pieces converted or added into CPU tensors use at most this much staging
// per thread: small enough to stay in the L2 cache between the read into it
// and the arithmetic out of it (64 MiB pieces went through main memory at
// both steps).
constexpr std::uint64_t kHostPieceBytes = 256u << 10;

// A tensor read straight into its storage is read in pieces of at most this
// much (and of chunk_bytes), spread over the threads.
constexpr std::uint64_t kDirectReadBytes = 16u << 20;

// RSS sampled as the load goes: non-intrusive (the process's VmHWM is left
// alone) and exact enough for allocations that live across samples.
class RssSampler {
 public:
  RssSampler() : base_(current_rss_bytes()) {}
  // Safe to call from several threads.
  void sample() {
    const std::uint64_t now = current_rss_bytes();
    std::uint64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }
  std::int64_t peak_extra() const {
    if (base_ == 0) return -1;
    const std::uint64_t peak = peak_.load();
    return peak > base_ ? static_cast<std::int64_t>(peak - base_) : 0;
  }

 private:
  std::uint64_t base_;
  std::atomic<std::uint64_t> peak_{0};
};

// A piece goes straight from the file into the live storage (one pread, no
// staging) when nothing needs converting: same dtype, contiguous CPU target,
// plain copy.
bool direct(const Planned& p, const LoadOptions& o) {
  return o.op == TransferOp::kCopy && p.target.device().is_cpu() && p.target.is_contiguous() &&
         p.source_type == p.target.scalar_type();
}

bool mixed_cpu_add(const Planned& p, const LoadOptions& o) {
  return o.op == TransferOp::kAdd && p.target.device().is_cpu() && p.source_type != p.target.scalar_type();
}

// Elements per piece, chosen so that all the staging one piece needs (the
// piece as stored, plus its converted copy for a mixed-dtype add or a
// device) fits in `budget` bytes.
std::int64_t piece_elements(const Planned& p, const LoadOptions& o, std::uint64_t budget) {
  std::uint64_t per_element = 0;
  if (!direct(p, o)) per_element += c10::elementSize(p.source_type);
  if (mixed_cpu_add(p, o) || !p.target.device().is_cpu()) {
    per_element += std::max<std::uint64_t>(p.target.element_size(), c10::elementSize(p.source_type));
  }
  if (per_element == 0) per_element = c10::elementSize(p.source_type);  // direct: only the read size
  return static_cast<std::int64_t>(std::max<std::uint64_t>(1, budget / per_element));
}

// Host buffers for the pieces of one thread: fixed windows of the arena.
struct HostBuffers {
  detail::HostStaging source;   // a piece as stored (source dtype), for pieces that are not direct
  detail::HostStaging convert;  // a CPU piece converted to a wider dtype (kAdd with mixed dtypes)
  std::uint64_t budget = 0;     // staging bytes one piece may use
};

// Everything the apply phase allocates, allocated before it starts. Pieces
// bound for a device go one at a time through `serial`; CPU tensors are
// spread over `threads` threads, each with buffers of its own. All host
// buffers are windows of one arena of at most about chunk_bytes: the device
// pieces are done before the CPU ones start.
struct Staging {
  detail::HostStaging arena;
  HostBuffers serial;
  std::vector<HostBuffers> workers;  // one per thread; empty if every CPU tensor is read straight in
  unsigned threads = 1;              // for the CPU tensors
  std::map<std::string, std::unique_ptr<detail::DeviceStager>> stagers;  // by device
};

Staging allocate_staging(const std::vector<Planned>& planned, const LoadOptions& o) {
  Staging s;
  std::uint64_t host_bytes = 0;
  bool staged_on_host = false;  // some CPU tensor is not read straight in
  for (const Planned& p : planned) {
    if (!p.target.device().is_cpu()) continue;
    // Read or written, whichever is more: a conversion writes more than it reads.
    host_bytes += std::max<std::uint64_t>(p.info->byte_size(), p.target.numel() * p.target.element_size());
    staged_on_host = staged_on_host || (!direct(p, o) && p.target.numel() > 0);
  }
  s.threads = detail::io_threads(host_bytes);
  if (staged_on_host) {
    // Every thread's staging together stays within chunk_bytes.
    s.threads = static_cast<unsigned>(
        std::max<std::uint64_t>(1, std::min<std::uint64_t>(s.threads, o.chunk_bytes / kHostPieceBytes)));
    s.workers.resize(s.threads);
  }
  s.serial.budget = o.chunk_bytes;
  for (HostBuffers& w : s.workers) w.budget = std::min<std::uint64_t>(kHostPieceBytes, o.chunk_bytes / s.threads);

  std::uint64_t source = 0, worker_source = 0, worker_convert = 0;
  struct DeviceNeeds {
    c10::Device device;
    detail::StagingNeeds needs;
  };
  std::map<std::string, DeviceNeeds> devices;
  for (const Planned& p : planned) {
    if (direct(p, o) || p.target.numel() == 0) continue;
    const bool on_cpu = p.target.device().is_cpu();
    const std::uint64_t src_size = c10::elementSize(p.source_type);
    const std::uint64_t dst_size = p.target.element_size();
    const std::uint64_t budget = on_cpu ? s.workers[0].budget : s.serial.budget;
    const auto piece = static_cast<std::uint64_t>(std::min(piece_elements(p, o, budget), p.target.numel()));
    if (on_cpu) {
      worker_source = std::max(worker_source, piece * src_size);
      if (mixed_cpu_add(p, o)) worker_convert = std::max(worker_convert, piece * std::max(dst_size, src_size));
      continue;
    }
    source = std::max(source, piece * src_size);
    const bool mixed = p.source_type != p.target.scalar_type();
    auto& d = devices.emplace(p.target.device().str(), DeviceNeeds{p.target.device(), {}}).first->second;
    d.needs.piece_bytes = std::max(d.needs.piece_bytes, piece * std::max(dst_size, src_size));
    d.needs.convert = d.needs.convert || mixed;
    d.needs.add = d.needs.add || o.op == TransferOp::kAdd;
  }
  // Slices start on 64-byte boundaries.
  auto round_up = [](std::uint64_t n) { return (n + 63) / 64 * 64; };
  const std::uint64_t per_worker = round_up(worker_source) + round_up(worker_convert);
  const std::uint64_t arena = std::max(round_up(source), per_worker * s.workers.size());
  if (arena > 0) s.arena = detail::HostStaging(arena);
  s.serial.source = s.arena.window(0, source);
  for (std::size_t t = 0; t < s.workers.size(); ++t) {
    s.workers[t].source = s.arena.window(t * per_worker, worker_source);
    s.workers[t].convert = s.arena.window(t * per_worker + round_up(worker_source), worker_convert);
  }
  for (const auto& [name, d] : devices) {
    try {
      s.stagers[name] = detail::make_stager(d.device, d.needs);
    } catch (const c10::OutOfMemoryError& e) {
      const std::string why = e.what_without_backtrace();
      throw Error(ErrorCode::kOutOfMemory, "out of memory on " + name + " allocating the load's staging (one piece: " +
                                               detail::format_bytes(d.needs.piece_bytes) +
                                               "): " + why.substr(0, why.find('\n')) +
                                               "\n  hint: free memory on the device, or load with a smaller "
                                               "chunk_bytes");
    }
  }
  return s;
}

// Applies the tensors that need staging (a conversion, a device, an add or
// strides), one piece at a time through one thread's preallocated buffers
// (and, for device tensors, the stagers).
class Applier {
 public:
  Applier(const TensorSource& source, const LoadOptions& o, HostBuffers& buffers, Staging& staging, RssSampler& rss)
      : source_(source), o_(o), buffers_(buffers), staging_(staging), rss_(rss) {}

  // Sets `written` just before the first write to p.target.
  // REQUIRES: p.target is not empty.
  void apply(const Planned& p, std::atomic<bool>& written) {
    p_ = &p;
    written_ = &written;
    src_size_ = c10::elementSize(p.source_type);
    per_ = piece_elements(p, o_, buffers_.budget);
    source_.prefetch(p.source_name);
    detail::for_each_piece(p.target, per_, [this](const at::Tensor& dst, std::int64_t offset) { piece(dst, offset); });
  }

 private:
  void piece(const at::Tensor& dst, std::int64_t offset) {
    const std::uint64_t begin = static_cast<std::uint64_t>(offset) * src_size_;
    const std::uint64_t size = static_cast<std::uint64_t>(dst.numel()) * src_size_;
    const at::Tensor src = buffers_.source.view(p_->source_type, dst.sizes());
    source_.read(p_->source_name, begin, src.data_ptr(), size);
    if (dst.device().is_cpu()) {
      written_->store(true);
      apply_cpu(dst, src);
    } else {
      staging_.stagers.at(dst.device().str())->apply(dst, src, o_.op, o_.scale, *written_);
    }
    progress_ += size;
    if (progress_ >= (16u << 20)) {
      rss_.sample();
      progress_ = 0;
    }
  }

  void apply_cpu(const at::Tensor& dst, const at::Tensor& src) {
    if (o_.op == TransferOp::kCopy) {
      dst.copy_(src);  // casts in the kernel: no temporary
      return;
    }
    if (src.scalar_type() == dst.scalar_type()) {
      dst.add_(src, o_.scale);
      return;
    }
    // Mixed dtypes: add in the wider of the two and round once into the
    // parameter (an F64 delta added to F32 weights gives what the offline
    // merge gives), through the preallocated buffer: a mixed-dtype add_ would
    // cast through a temporary of the piece.
    const c10::ScalarType wide = c10::promoteTypes(src.scalar_type(), dst.scalar_type());
    at::Tensor sum = buffers_.convert.view(wide, dst.sizes());
    if (wide == dst.scalar_type()) {
      sum.copy_(src);  // exact widening
      dst.add_(sum, o_.scale);
    } else {
      sum.copy_(dst);
      sum.add_(src, o_.scale);
      dst.copy_(sum);
    }
  }

  const TensorSource& source_;
  const LoadOptions& o_;
  HostBuffers& buffers_;
  Staging& staging_;
  RssSampler& rss_;
  const Planned* p_ = nullptr;
  std::atomic<bool>* written_ = nullptr;
  std::uint64_t src_size_ = 1;
  std::int64_t per_ = 1;
  std::uint64_t progress_ = 0;
};

}  // namespace

namespace detail {

struct LoadPlan::State {
  const TensorSource* source = nullptr;
  LoadOptions options;
  std::vector<Planned> planned;
  double start = 0;
  double verify_seconds = 0;
};

LoadPlan::LoadPlan(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options)
    : s_(std::make_unique<State>()) {
  if (options.chunk_bytes < 64) {
    throw Error(ErrorCode::kInvalidArgument,
                "chunk_bytes must be at least 64, not " + std::to_string(options.chunk_bytes));
  }
  s_->start = now_seconds();
  s_->source = &source;
  s_->options = options;
  s_->planned = with_torch_errors(ErrorCode::kIncompatible, "cannot load '" + source.path() + "'",
                                  [&] { return plan(targets, source, options, &s_->verify_seconds); });
}

LoadPlan::~LoadPlan() = default;
LoadPlan::LoadPlan(LoadPlan&&) noexcept = default;
LoadPlan& LoadPlan::operator=(LoadPlan&&) noexcept = default;

void LoadPlan::retarget(const NamedTensors& live) {
  std::unordered_map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, t] : live) by_name.emplace(name, &t);
  for (Planned& p : s_->planned) {
    auto it = by_name.find(p.target_name);
    if (it == by_name.end()) continue;
    const at::Tensor& t = *it->second;
    if (!t.defined() || t.sizes() != p.target.sizes() || t.scalar_type() != p.target.scalar_type()) {
      throw Error(ErrorCode::kInvalidArgument, "live tensor '" + p.target_name + "' is not the " +
                                                   format_shape(p.target.sizes().vec()) + " " +
                                                   c10::toString(p.target.scalar_type()) + " tensor planned");
    }
    p.target = t;
  }
}

TransferReport LoadPlan::apply() {
  const TensorSource& source = *s_->source;
  const LoadOptions& options = s_->options;
  const std::vector<Planned>& planned = s_->planned;
  TransferReport report;
  report.source = source.path();
  report.verify_seconds = s_->verify_seconds;
  std::set<std::string> devices;
  for (const Planned& p : planned) devices.insert(p.target.device().str());
  const DeviceBytes device_bytes(devices);
  report.device = device_bytes.device();
  RssSampler rss;
  Staging staging;
  try {
    staging = with_torch_errors(ErrorCode::kIncompatible, "allocating the staging",
                                [&] { return allocate_staging(planned, options); });
  } catch (const Error& e) {
    throw Error(e.code(), "cannot load '" + source.path() + "': " + e.what() + " (nothing was changed)");
  }
  rss.sample();

  // From here on nothing allocates a tensor of a parameter's size, and the
  // staging is in place: writes begin. reached[i]: planned[i] may have been
  // written (set just before its first write; the pieces of one tensor may
  // set its entry from several threads).
  std::unique_ptr<std::atomic<bool>[]> reached(new std::atomic<bool>[planned.size()]);
  for (std::size_t i = 0; i < planned.size(); ++i) reached[i].store(false);
  try {
    c10::NoGradGuard no_grad;
    std::vector<std::size_t> on_host;
    Applier serial(source, options, staging.serial, staging, rss);
    for (std::size_t i = 0; i < planned.size(); ++i) {
      const Planned& p = planned[i];
      report.bytes += p.info->byte_size();
      report.naive_device_bytes += static_cast<std::uint64_t>(p.target.numel()) * p.target.element_size();
      if (p.target.numel() == 0) continue;  // nothing to read or write
      if (p.target.device().is_cpu()) {
        on_host.push_back(i);
      } else {
        serial.apply(p, reached[i]);
      }
    }
    for (auto& [device, stager] : staging.stagers) stager->finish();
    // CPU tensors are independent of each other: each is converted (added)
    // piece by piece through its thread's buffers, or read straight in. A
    // tensor read straight in is split into reads of at most
    // kDirectReadBytes, so that one large tensor (an embedding) is read on
    // every core too.
    struct Work {
      std::size_t index;    // into planned
      std::uint64_t begin;  // bytes, for a direct read
      std::uint64_t size;
    };
    const std::uint64_t split = std::min<std::uint64_t>(options.chunk_bytes, kDirectReadBytes);
    std::vector<Work> work;
    for (const std::size_t i : on_host) {
      const Planned& p = planned[i];
      if (!direct(p, options)) {
        work.push_back({i, 0, 0});
        continue;
      }
      const std::uint64_t size = p.info->byte_size();
      for (std::uint64_t off = 0; off < size; off += split) work.push_back({i, off, std::min(split, size - off)});
    }
    run_parallel(work.size(), staging.threads, [&](std::size_t k, unsigned worker) {
      const Work& w = work[k];
      const Planned& p = planned[w.index];
      if (!direct(p, options)) {
        // This thread is one of those keeping every core busy: LibTorch's
        // arithmetic on it stays on it.
        std::optional<OpenMpThreadLimit> one_thread;
        if (staging.threads > 1) one_thread.emplace(1);
        Applier(source, options, staging.workers[worker], staging, rss).apply(p, reached[w.index]);
        return;
      }
      reached[w.index].store(true);  // the read below writes the target
      // Read-ahead helps only while a later read waits for an earlier one:
      // for a single read it is one more system call for the same pages.
      if (w.begin == 0 && w.size < p.info->byte_size()) source.prefetch(p.source_name);
      source.read(p.source_name, w.begin, static_cast<std::uint8_t*>(p.target.data_ptr()) + w.begin, w.size);
    });
  } catch (const std::exception& e) {
    std::vector<std::string> written;
    for (std::size_t i = 0; i < planned.size(); ++i) {
      if (reached[i]) written.push_back(planned[i].target_name);
    }
    const auto* error = dynamic_cast<const Error*>(&e);
    const std::string what = dynamic_cast<const c10::Error*>(&e)
                                 ? static_cast<const c10::Error&>(e).what_without_backtrace()
                                 : e.what();
    const ErrorCode code = error ? error->code() : ErrorCode::kIOError;
    if (written.empty()) throw Error(code, "cannot load '" + source.path() + "': " + what + " (nothing was changed)");
    throw Error(code, "loading '" + source.path() + "' failed after writing began: THE TARGETS ARE PARTLY WRITTEN (" +
                          std::to_string(written.size()) + " of " + std::to_string(planned.size()) +
                          " tensors reached: " + quoted_list(written) + "): " + what +
                          "\n  hint: the file changed or became unreadable during the load; load a consistent "
                          "checkpoint again before training on");
  }
  rss.sample();
  report.tensors = planned.size();
  report.seconds = now_seconds() - s_->start;
  report.gb_per_s = report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds / 1e9 : 0;
  report.peak_device_bytes = device_bytes.peak();
  report.device_bytes_unmeasured = device_bytes.unmeasured();
  report.peak_rss_bytes = rss.peak_extra();
  log_info("{}", report.summary());
  return report;
}

}  // namespace detail

}  // namespace lorakeep
