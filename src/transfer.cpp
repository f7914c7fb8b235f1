#include "lorakeep/transfer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "lorakeep/memory.h"
#include "format/json_util.h"
#include "io/checksum.h"
#include "logging.h"
#include "openmp_threads.h"
#include "parallel.h"
#include "torch_error.h"
#include "transfer_device.h"

namespace lorakeep {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string quoted_list(const std::vector<std::string>& names, std::size_t limit = 8) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < limit; ++i) {
    if (i) out += ", ";
    out += "'" + names[i] + "'";
  }
  if (names.size() > limit) out += ", ... and " + std::to_string(names.size() - limit) + " more";
  return out;
}

// Checksum verification reads in blocks of this size: small enough to stay
// in the L2 cache while being hashed.
constexpr std::uint64_t kHashBlock = 1ull << 20;

// Pieces converted or added into CPU tensors use at most this much staging
// per thread: small enough to stay in the L2 cache between the read into it
// and the arithmetic out of it (64 MiB pieces went through main memory at
// both steps).
constexpr std::uint64_t kHostPieceBytes = 256u << 10;

// Reading (and hashing) is bound by one core's memory throughput: a second
// thread nearly halves the time, where LibTorch's own pool may have one
// thread only (it counts physical cores). Small loads stay on one thread.
unsigned io_threads(std::uint64_t bytes) {
  if (bytes < (16u << 20)) return 1;
  return std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
}

// One source tensor matched to one live tensor.
struct Planned {
  std::string source_name;
  std::string target_name;
  at::Tensor target;
  const TensorInfo* info;
  c10::ScalarType source_type;
};

bool convertible(c10::ScalarType from, c10::ScalarType to, const LoadOptions& o) {
  const bool float_from = c10::isFloatingType(from), float_to = c10::isFloatingType(to);
  const bool int_from = c10::isIntegralType(from, /*includeBool=*/false);
  const bool int_to = c10::isIntegralType(to, /*includeBool=*/false);
  if (o.op == TransferOp::kAdd) {
    if (float_from && float_to) return true;
    if (c10::isComplexType(from) && c10::isComplexType(to)) return true;
    return int_from && int_to && o.scale == 1.0;
  }
  if (from == to) return true;
  return (float_from && float_to) || (int_from && int_to) || (c10::isComplexType(from) && c10::isComplexType(to));
}

// Suggests the prefix change that would match names the source has and the
// targets lack: "base_model.model.lin0.lora_A.weight" vs "lin0.lora_A.weight".
std::string prefix_hint(const std::vector<std::string>& unexpected, const std::vector<std::string>& missing) {
  std::map<std::string, int> strip, add;
  for (const std::string& u : unexpected) {
    for (const std::string& m : missing) {
      if (u.size() > m.size() && u.compare(u.size() - m.size(), m.size(), m) == 0) {
        ++strip[u.substr(0, u.size() - m.size())];
      } else if (m.size() > u.size() && m.compare(m.size() - u.size(), u.size(), u) == 0) {
        ++add[m.substr(0, m.size() - u.size())];
      }
    }
  }
  auto best = [](const std::map<std::string, int>& counts) {
    return std::max_element(counts.begin(), counts.end(),
                            [](const auto& a, const auto& b) { return a.second < b.second; });
  };
  if (!strip.empty()) {
    auto b = best(strip);
    return "the file's names carry the prefix '" + b->first + "' that the model's lack: set strip_prefix = \"" +
           b->first + "\"";
  }
  if (!add.empty()) {
    auto b = best(add);
    return "the model's names carry the prefix '" + b->first + "' that the file's lack: set add_prefix = \"" +
           b->first + "\"";
  }
  return "";
}

std::vector<Planned> plan(const NamedTensors& targets, const TensorSource& source, const LoadOptions& o,
                          double* verify_seconds) {
  std::unordered_map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, t] : targets) {
    if (!t.defined()) continue;
    if (!by_name.emplace(name, &t).second) {
      throw Error(ErrorCode::kInvalidArgument, "target '" + name + "' is given twice");
    }
  }
  std::vector<std::string> missing, unexpected, shape, dtype, checksum, duplicate;
  std::vector<Planned> planned;
  std::set<std::string> covered;
  for (const std::string& name : source.names()) {
    std::string mapped = name;
    if (!o.strip_prefix.empty() && mapped.compare(0, o.strip_prefix.size(), o.strip_prefix) == 0) {
      mapped = mapped.substr(o.strip_prefix.size());
    }
    mapped = o.add_prefix + mapped;
    auto it = by_name.find(mapped);
    if (it == by_name.end()) {
      unexpected.push_back(name);
      continue;
    }
    if (!covered.insert(mapped).second) {
      duplicate.push_back("'" + name + "' maps to '" + mapped + "', which another file tensor already fills");
      continue;
    }
    const at::Tensor& target = *it->second;
    const TensorInfo& info = source.info(name);
    const std::string label = name == mapped ? "'" + name + "'" : "'" + name + "' (model: '" + mapped + "')";
    if (target.sizes() != at::IntArrayRef(info.shape)) {
      std::string problem = label + " is " + format_shape(info.shape) + " in the file but " +
                            format_shape(target.sizes().vec()) + " in the model";
      if (info.shape.size() == 2 && target.dim() == 2 && info.shape[0] == target.size(1) &&
          info.shape[1] == target.size(0)) {
        problem += " (hint: transposed: a fan_in_fan_out layer?)";
      }
      shape.push_back(problem);
      continue;
    }
    c10::ScalarType source_type;
    try {
      source_type = to_scalar_type(info.dtype, name);
    } catch (const Error& e) {
      dtype.push_back(e.what());
      continue;
    }
    if (!convertible(source_type, target.scalar_type(), o)) {
      dtype.push_back(label + " is " + std::string(dtype_name(info.dtype)) + " in the file; cannot " +
                      (o.op == TransferOp::kAdd ? "add it to " : "convert it to ") +
                      c10::toString(target.scalar_type()) + " in the model");
      continue;
    }
    planned.push_back(Planned{name, mapped, target, &info, source_type});
  }
  for (const auto& [name, t] : by_name) {
    if (!covered.count(name)) missing.push_back(name);
  }
  std::sort(missing.begin(), missing.end());

  // Checksums: read every byte once before anything is written, through
  // small per-thread buffers that stay in the CPU cache, tensors hashed in
  // parallel on LibTorch's intra-op threads.
  const double t0 = now_seconds();
  if (o.verify_checksums && !o.checksums.empty()) {
    std::vector<std::pair<const Planned*, std::uint64_t>> jobs;  // tensor, recorded checksum
    for (const Planned& p : planned) {
      auto want = o.checksums.find(p.source_name);
      if (want != o.checksums.end()) jobs.emplace_back(&p, want->second);
    }
    std::vector<std::uint64_t> got(jobs.size());
    std::uint64_t total = 0;
    for (const auto& job : jobs) total += job.first->info->byte_size();
    const std::uint64_t block = std::min<std::uint64_t>(o.chunk_bytes, kHashBlock);
    const unsigned threads = io_threads(total);
    std::vector<std::vector<std::uint8_t>> buffers(threads);  // one per thread, freed after the load
    detail::run_parallel(jobs.size(), threads, [&](std::size_t i, unsigned worker) {
      std::vector<std::uint8_t>& buffer = buffers[worker];
      buffer.resize(block);
      const Planned& p = *jobs[i].first;
      const std::uint64_t size = p.info->byte_size();
      if (size > block) source.prefetch(p.source_name);  // see the apply phase
      detail::Xxh3Stream hash;
      for (std::uint64_t off = 0; off < size; off += block) {
        const std::uint64_t n = std::min(block, size - off);
        source.read(p.source_name, off, buffer.data(), n);
        hash.update(buffer.data(), n);
      }
      got[i] = hash.digest();
    });
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      if (got[i] == jobs[i].second) continue;
      const std::string& name = jobs[i].first->source_name;
      checksum.push_back("'" + name + "' in '" + source.file_of(name) + "' fails its checksum (recorded " +
                         detail::format_checksum(jobs[i].second) + ", read " + detail::format_checksum(got[i]) + ")");
    }
  }
  *verify_seconds = now_seconds() - t0;

  const bool hard = !shape.empty() || !dtype.empty() || !checksum.empty() || !duplicate.empty();
  const bool soft = !missing.empty() || !unexpected.empty();
  if (!hard && (!soft || !o.strict)) {
    if (soft) {
      detail::logger()->info("loading '{}' non-strictly: {} model tensors not in the file, {} file tensors not in the "
                             "model",
                             source.path(), missing.size(), unexpected.size());
      if (!unexpected.empty()) detail::logger()->debug("not in the model: {}", quoted_list(unexpected, 100));
    }
    return planned;
  }
  std::size_t count = shape.size() + dtype.size() + checksum.size() + duplicate.size();
  if (o.strict) count += missing.size() + unexpected.size();
  std::string msg = "cannot load '" + source.path() + "' into " + std::to_string(by_name.size()) +
                    " live tensors: " + std::to_string(count) + (count == 1 ? " problem" : " problems") +
                    " (nothing was changed)";
  auto section = [&msg](const char* title, const std::vector<std::string>& items, bool quote) {
    if (items.empty()) return;
    msg += "\n  " + std::string(title) + " (" + std::to_string(items.size()) + "): ";
    if (quote) {
      msg += quoted_list(items);
      return;
    }
    for (std::size_t i = 0; i < items.size() && i < 8; ++i) msg += (i ? "; " : "") + items[i];
    if (items.size() > 8) msg += "; ... and " + std::to_string(items.size() - 8) + " more";
  };
  section("checksum", checksum, false);
  if (o.strict) {
    section("in the model but not in the file", missing, true);
    section("in the file but not in the model", unexpected, true);
  }
  section("shape", shape, false);
  section("dtype", dtype, false);
  section("duplicate", duplicate, false);
  if (!checksum.empty()) msg += "\n  hint: the file changed after it was written; use another checkpoint";
  const std::string hint = prefix_hint(unexpected, missing);
  if (!hint.empty()) msg += "\n  hint: " + hint;
  if (!shape.empty() && checksum.empty()) msg += "\n  hint: wrong base model, or a different LoRA rank?";
  throw Error(checksum.empty() ? ErrorCode::kIncompatible : ErrorCode::kCorruption, msg);
}

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

// Host buffers for the pieces of one thread.
struct HostBuffers {
  at::Tensor source;   // a piece as stored (source dtype), for pieces that are not direct
  at::Tensor convert;  // a CPU piece converted to a wider dtype (kAdd with mixed dtypes)
  std::uint64_t budget = 0;  // staging bytes one piece may use
};

// Everything the apply phase allocates, allocated before it starts. Pieces
// bound for a device go one at a time through `serial`; CPU tensors are
// spread over `threads` threads, each with buffers of its own. All host
// buffers are slices of one arena of at most about chunk_bytes: the device
// pieces are done before the CPU ones start.
struct Staging {
  at::Tensor arena;
  HostBuffers serial;
  std::vector<HostBuffers> workers;  // one per thread; empty if every CPU tensor is read straight in
  unsigned threads = 1;              // for the CPU tensors
  std::map<std::string, std::unique_ptr<detail::DeviceStager>> stagers;  // by device
};

at::Tensor bytes_buffer(std::uint64_t bytes) {
  return at::empty({static_cast<std::int64_t>(std::max<std::uint64_t>(bytes, 64))}, at::kByte);
}

at::Tensor piece_of(const at::Tensor& buffer, c10::ScalarType type, at::IntArrayRef shape) {
  return at::from_blob(buffer.data_ptr(), shape, at::TensorOptions().dtype(type));
}

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
  s.threads = io_threads(host_bytes);
  if (staged_on_host) {
    // Every thread's staging together stays within chunk_bytes.
    s.threads = static_cast<unsigned>(std::max<std::uint64_t>(
        1, std::min<std::uint64_t>(s.threads, o.chunk_bytes / kHostPieceBytes)));
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
  if (arena > 0) s.arena = bytes_buffer(arena);
  auto slice = [&](std::uint64_t offset, std::uint64_t bytes) {
    if (bytes == 0) return at::Tensor();
    return s.arena.narrow(0, static_cast<std::int64_t>(offset), static_cast<std::int64_t>(bytes));
  };
  s.serial.source = slice(0, source);
  for (std::size_t t = 0; t < s.workers.size(); ++t) {
    s.workers[t].source = slice(t * per_worker, worker_source);
    s.workers[t].convert = slice(t * per_worker + round_up(worker_source), worker_convert);
  }
  for (const auto& [name, d] : devices) s.stagers[name] = detail::make_stager(d.device, d.needs);
  return s;
}

// Applies the tensors that need staging (a conversion, a device, an add or
// strides), one piece at a time through one thread's preallocated buffers
// (and, for device tensors, the stagers).
class Applier {
 public:
  Applier(const TensorSource& source, const LoadOptions& o, const HostBuffers& buffers, Staging& staging,
          RssSampler& rss)
      : source_(source), o_(o), buffers_(buffers), staging_(staging), rss_(rss) {}

  // REQUIRES: p.target is not empty.
  void apply(const Planned& p) {
    p_ = &p;
    src_size_ = c10::elementSize(p.source_type);
    per_ = piece_elements(p, o_, buffers_.budget);
    source_.prefetch(p.source_name);
    process(p.target, 0);
  }

 private:
  // Splits `dst` (a view of the live tensor whose elements come from source
  // element `offset` on, in C order) into pieces of at most per_ elements.
  void process(const at::Tensor& dst, std::int64_t offset) {
    const std::int64_t n = dst.numel();
    if (n == 0) return;
    if (dst.is_contiguous()) {
      const at::Tensor flat = dst.view({-1});
      for (std::int64_t e = 0; e < n; e += per_) {
        const std::int64_t k = std::min(per_, n - e);
        piece(flat.narrow(0, e, k), offset + e);
      }
      return;
    }
    if (n <= per_) {
      piece(dst, offset);
      return;
    }
    const std::int64_t rows = dst.size(0);
    const std::int64_t row = n / rows;
    if (row > per_) {
      for (std::int64_t i = 0; i < rows; ++i) process(dst.select(0, i), offset + i * row);
      return;
    }
    const std::int64_t block = per_ / row;
    for (std::int64_t i = 0; i < rows; i += block) {
      process(dst.narrow(0, i, std::min(block, rows - i)), offset + i * row);
    }
  }

  void piece(const at::Tensor& dst, std::int64_t offset) {
    const std::uint64_t begin = static_cast<std::uint64_t>(offset) * src_size_;
    const std::uint64_t size = static_cast<std::uint64_t>(dst.numel()) * src_size_;
    source_.read(p_->source_name, begin, buffers_.source.data_ptr(), size);
    const at::Tensor src = piece_of(buffers_.source, p_->source_type, dst.sizes());
    if (dst.device().is_cpu()) {
      apply_cpu(dst, src);
    } else {
      staging_.stagers.at(dst.device().str())->apply(dst, src, o_.op, o_.scale);
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
    at::Tensor sum = piece_of(buffers_.convert, wide, dst.sizes());
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
  const HostBuffers& buffers_;
  Staging& staging_;
  RssSampler& rss_;
  const Planned* p_ = nullptr;
  std::uint64_t src_size_ = 1;
  std::int64_t per_ = 1;
  std::uint64_t progress_ = 0;
};

}  // namespace

std::string TransferReport::summary() const {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "loaded %zu tensors (%s) from '%s' in %.3f s (%.2f GB/s, checksums %.3f s); extra %s allocator peak "
                "%s (a full temporary copy: %s); extra RSS peak %s",
                tensors, detail::format_bytes(bytes).c_str(), source.c_str(), seconds, gb_per_s, verify_seconds,
                device.c_str(),
                peak_device_bytes < 0 ? "n/a" : detail::format_bytes(static_cast<std::uint64_t>(peak_device_bytes)).c_str(),
                detail::format_bytes(naive_device_bytes).c_str(),
                peak_rss_bytes < 0 ? "n/a" : detail::format_bytes(static_cast<std::uint64_t>(peak_rss_bytes)).c_str());
  return buf;
}

namespace {

TransferReport load_into_impl(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options);

}  // namespace

TransferReport load_into(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options) {
  return detail::with_torch_errors(ErrorCode::kIncompatible, "cannot load '" + source.path() + "'",
                                   [&] { return load_into_impl(targets, source, options); });
}

namespace {

TransferReport load_into_impl(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options) {
  if (options.chunk_bytes < 64) {
    throw Error(ErrorCode::kInvalidArgument, "chunk_bytes must be at least 64, not " +
                                                 std::to_string(options.chunk_bytes));
  }
  const double start = now_seconds();
  TransferReport report;
  report.source = source.path();
  std::set<std::string> devices;
  for (const auto& [name, t] : targets) {
    if (t.defined()) devices.insert(t.device().str());
  }
  report.device = devices.size() == 1 ? *devices.begin() : devices.empty() ? "cpu" : "mixed";
  const c10::Device probe_device = devices.size() == 1 ? c10::Device(*devices.begin()) : c10::Device(c10::kCPU);
  AllocationProbe probe(probe_device);
  RssSampler rss;

  const std::vector<Planned> planned = plan(targets, source, options, &report.verify_seconds);
  Staging staging = allocate_staging(planned, options);
  rss.sample();

  // From here on nothing allocates a tensor of a parameter's size, and the
  // staging is in place: writes begin.
  {
    c10::NoGradGuard no_grad;
    std::vector<const Planned*> on_host;
    Applier serial(source, options, staging.serial, staging, rss);
    for (const Planned& p : planned) {
      report.bytes += p.info->byte_size();
      report.naive_device_bytes += static_cast<std::uint64_t>(p.target.numel()) * p.target.element_size();
      if (p.target.numel() == 0) continue;  // nothing to read or write
      if (p.target.device().is_cpu()) {
        on_host.push_back(&p);
      } else {
        serial.apply(p);
      }
    }
    for (auto& [device, stager] : staging.stagers) stager->finish();
    // CPU tensors are independent of each other: each is read straight in,
    // or converted (added) piece by piece through its thread's buffers.
    detail::run_parallel(on_host.size(), staging.threads, [&](std::size_t i, unsigned worker) {
      const Planned& p = *on_host[i];
      if (!direct(p, options)) {
        // This thread is one of those keeping every core busy: LibTorch's
        // arithmetic on it stays on it.
        std::optional<detail::OpenMpThreadLimit> one_thread;
        if (staging.threads > 1) one_thread.emplace(1);
        Applier(source, options, staging.workers[worker], staging, rss).apply(p);
        return;
      }
      const std::uint64_t size = p.info->byte_size();
      // Read-ahead helps only while a later chunk waits for an earlier one:
      // for a single read it is one more system call for the same pages.
      if (size > options.chunk_bytes) source.prefetch(p.source_name);
      auto* dst = static_cast<std::uint8_t*>(p.target.data_ptr());
      for (std::uint64_t off = 0; off < size; off += options.chunk_bytes) {
        source.read(p.source_name, off, dst + off, std::min(options.chunk_bytes, size - off));
      }
    });
  }
  rss.sample();
  report.tensors = planned.size();
  report.seconds = now_seconds() - start;
  report.gb_per_s = report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds / 1e9 : 0;
  report.peak_device_bytes = probe.peak_bytes();
  report.peak_rss_bytes = rss.peak_extra();
  detail::logger()->info("{}", report.summary());
  return report;
}

}  // namespace

TransferReport load_into(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options) {
  NamedTensors targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  return load_into(targets, source, options);
}

TransferReport apply_delta(torch::nn::Module& base, const TensorSource& delta, double scale, LoadOptions options) {
  options.op = TransferOp::kAdd;
  options.scale = scale;
  return load_into(base, delta, options);
}

namespace detail {
namespace {

class GenericStager final : public DeviceStager {
 public:
  GenericStager(const c10::Device& device, const StagingNeeds& needs) {
    if (needs.convert) host_ = bytes_buffer(needs.piece_bytes);
    if (needs.add) {
      device_ = at::empty({static_cast<std::int64_t>(std::max<std::uint64_t>(needs.piece_bytes, 64))},
                          at::TensorOptions(at::kByte).device(device));
    }
  }

  void apply(const at::Tensor& dst, const at::Tensor& src, TransferOp op, double scale) override {
    // Copies convert to the parameter's dtype on the host; adds happen on
    // the device in the wider of the two dtypes, rounded once.
    const c10::ScalarType type = op == TransferOp::kCopy ? dst.scalar_type()
                                                          : c10::promoteTypes(src.scalar_type(), dst.scalar_type());
    at::Tensor host = src;
    if (src.scalar_type() != type) {
      host = piece_of(host_, type, dst.sizes());
      host.copy_(src);  // dtype conversion on the host
    }
    if (op == TransferOp::kCopy) {
      dst.copy_(host);  // straight into the live storage
      return;
    }
    at::Tensor on_device =
        at::from_blob(device_.data_ptr(), dst.sizes(), at::TensorOptions().dtype(type).device(dst.device()));
    on_device.copy_(host);
    if (type == dst.scalar_type()) {
      dst.add_(on_device, scale);
    } else {
      on_device.mul_(scale).add_(dst);
      dst.copy_(on_device);
    }
  }

  void finish() override {}

 private:
  at::Tensor host_;
  at::Tensor device_;
};

}  // namespace

std::unique_ptr<DeviceStager> make_stager(const c10::Device& device, const StagingNeeds& needs) {
#ifdef LORAKEEP_WITH_CUDA
  if (device.is_cuda()) return make_cuda_stager(device, needs);
#endif
  return std::make_unique<GenericStager>(device, needs);
}

}  // namespace detail
}  // namespace lorakeep
