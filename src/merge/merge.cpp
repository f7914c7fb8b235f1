#include "lorakeep/merge.h"

#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "lorakeep/tensor_source.h"
#include "base/clock.h"
#include "base/logging.h"
#include "base/openmp_threads.h"
#include "base/text.h"
#include "merge/bf16_delta.h"
#include "merge/pipeline.h"
#include "tensors/sharded_writer.h"

namespace lorakeep {
namespace {

// One output tensor and where its inputs are.
struct Job {
  std::string name;
  bool in_a = false;  // base (merge) or base (make)
  bool in_b = false;  // delta (merge) or tuned (make)
  c10::ScalarType a_type = c10::kFloat;
  c10::ScalarType b_type = c10::kFloat;
  std::int64_t a_numel = 0;  // elements of the output covered by the base (fewer when grown)
  TensorInfo out;
};

struct Plan {
  std::vector<Job> jobs;
  std::unordered_map<std::string, std::size_t> index;
};

struct Rules {
  bool allow_missing, allow_new, allow_grow;
  double scale;
  std::optional<Dtype> dtype;
  bool make;            // make-delta: the delta dtype defaults to a lossless one
  const char* b_label;  // "delta" or "tuned"
};

Dtype lossless_delta_dtype(Dtype tuned) {
  return tuned == Dtype::kF16 || tuned == Dtype::kBF16 ? Dtype::kF32 : Dtype::kF64;
}

Plan plan(const TensorSource& a, const TensorSource& b, const Rules& r) {
  std::vector<std::string> problems;
  Plan plan;
  auto numeric = [&](const TensorSource& s, const std::string& name, c10::ScalarType* type) {
    try {
      *type = to_scalar_type(s.info(name).dtype, name);
    } catch (const Error& e) {
      problems.push_back(e.what());
      return false;
    }
    if (*type == c10::kBool || c10::isComplexType(*type)) {
      problems.push_back("'" + name + "' is " + std::string(dtype_name(s.info(name).dtype)) +
                         ", which has no meaningful difference");
      return false;
    }
    return true;
  };
  for (const std::string& name : a.names()) {
    Job job;
    job.name = name;
    job.in_a = true;
    if (!numeric(a, name, &job.a_type)) continue;
    const TensorInfo& ai = a.info(name);
    job.out = ai;
    job.a_numel = ai.numel();
    if (!b.contains(name)) {
      if (!r.allow_missing) {
        problems.push_back("'" + name + "' is in the base but not in the " + r.b_label + " (hint: --allow-missing)");
      }
      if (!r.allow_missing || r.make) continue;  // make-delta leaves such tensors out
    } else {
      job.in_b = true;
      if (!numeric(b, name, &job.b_type)) continue;
      const TensorInfo& bi = b.info(name);
      if (c10::isFloatingType(job.a_type) != c10::isFloatingType(job.b_type)) {
        problems.push_back("'" + name + "' is " + std::string(dtype_name(ai.dtype)) + " in the base but " +
                           std::string(dtype_name(bi.dtype)) + " in the " + r.b_label);
        continue;
      }
      if (bi.shape != ai.shape) {
        const bool grows = r.allow_grow && !ai.shape.empty() && bi.shape.size() == ai.shape.size() &&
                           bi.shape[0] > ai.shape[0] &&
                           std::equal(ai.shape.begin() + 1, ai.shape.end(), bi.shape.begin() + 1);
        if (!grows) {
          problems.push_back("'" + name + "' is " + format_shape(ai.shape) + " in the base but " +
                             format_shape(bi.shape) + " in the " + r.b_label +
                             (bi.shape.size() == ai.shape.size() && !ai.shape.empty() && bi.shape[0] > ai.shape[0]
                                  ? " (hint: --allow-grow for an added vocabulary)"
                                  : ""));
          continue;
        }
        job.out.shape = bi.shape;
      }
      if (!c10::isFloatingType(job.a_type) && r.scale != 1.0 && !r.make) {
        problems.push_back("'" + name + "' is an integer tensor: it can only be merged with scale 1");
        continue;
      }
    }
    plan.jobs.push_back(std::move(job));
  }
  for (const std::string& name : b.names()) {
    if (a.contains(name)) continue;
    if (!r.allow_new) {
      problems.push_back("'" + name + "' is in the " + r.b_label + " but not in the base (hint: --allow-new)");
      continue;
    }
    Job job;
    job.name = name;
    job.in_b = true;
    if (!numeric(b, name, &job.b_type)) continue;
    job.out = b.info(name);
    plan.jobs.push_back(std::move(job));
  }
  if (!problems.empty()) {
    std::string msg = "cannot combine '" + a.path() + "' with '" + b.path() + "': " + std::to_string(problems.size()) +
                      (problems.size() == 1 ? " problem" : " problems") + " (nothing was written)";
    for (std::size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
    if (problems.size() > 20) msg += "\n  ... and " + std::to_string(problems.size() - 20) + " more";
    throw Error(ErrorCode::kIncompatible, msg);
  }
  for (Job& job : plan.jobs) {
    if (r.make) {
      const Dtype tuned = job.in_b ? from_scalar_type(job.b_type) : job.out.dtype;
      job.out.dtype = r.dtype ? *r.dtype : c10::isFloatingType(job.b_type) ? lossless_delta_dtype(tuned) : tuned;
    } else if (r.dtype) {
      job.out.dtype = *r.dtype;
    }
    job.out.data_begin = job.out.data_end = 0;
    plan.index[job.name] = &job - plan.jobs.data();
  }
  return plan;
}

// Elements of x and y (same dtype and size, contiguous) whose bits differ,
// NaNs included.
template <class Word>
std::int64_t count_word_differences(const void* x, const void* y, std::int64_t n) {
  const auto* p = static_cast<const Word*>(x);
  const auto* q = static_cast<const Word*>(y);
  std::int64_t diff = 0;
  for (std::int64_t i = 0; i < n; ++i) diff += p[i] != q[i];  // vectorizes, unlike a memcmp per element
  return diff;
}

std::int64_t count_bit_differences(const at::Tensor& x, const at::Tensor& y) {
  const std::int64_t n = x.numel();
  const std::size_t size = x.element_size();
  // The usual answer, an exact round trip, costs one memcmp.
  if (std::memcmp(x.data_ptr(), y.data_ptr(), static_cast<std::size_t>(n) * size) == 0) return 0;
  switch (size) {
    case 1: return count_word_differences<std::uint8_t>(x.data_ptr(), y.data_ptr(), n);
    case 2: return count_word_differences<std::uint16_t>(x.data_ptr(), y.data_ptr(), n);
    case 4: return count_word_differences<std::uint32_t>(x.data_ptr(), y.data_ptr(), n);
    case 8: return count_word_differences<std::uint64_t>(x.data_ptr(), y.data_ptr(), n);
  }
  // plan() admits no other element size (complex and bool are refused).
  throw Error(ErrorCode::kNotSupported, "cannot compare " + std::to_string(size) + "-byte elements");
}

c10::ScalarType compute_type(std::initializer_list<c10::ScalarType> types) {
  bool any_float = false, any_double = false;
  for (c10::ScalarType t : types) {
    any_float = any_float || c10::isFloatingType(t);
    any_double = any_double || t == c10::kDouble;
  }
  if (!any_float) return c10::kLong;
  return any_double ? c10::kDouble : c10::kFloat;
}

// Runs the plan: for each output tensor, pieces of a and b are combined by
// `combine(job, a_piece or undefined, b_piece or undefined, out_type, scratch,
// inexact)` on the pipeline's thread while the pieces before are written.
// Pieces are read into buffers of the pipeline's own (piece_view), which
// combine may overwrite; it adds to `inexact` the elements it could not
// represent exactly.
template <class Combine>
MergeReport run(const TensorSource& a, const TensorSource& b, const std::string& out_dir, Plan plan,
                const std::map<std::string, std::string>& metadata, const ShardOptions& shards,
                const MergeProgress& progress, Combine combine) {
  const double start = detail::now_seconds();
  std::vector<TensorInfo> specs;
  for (const Job& job : plan.jobs) specs.push_back(job.out);
  detail::ShardedWriter writer(out_dir, std::move(specs), metadata, shards);
  std::uint64_t inexact = 0;  // the producer's until write_merged returns
  auto produce = [&](detail::PiecePipeline& pipe) {
    for (const TensorInfo& spec : writer.order()) {
      const Job& job = plan.jobs[plan.index.at(spec.name)];
      const c10::ScalarType out_type = to_scalar_type(spec.dtype, spec.name);
      const std::int64_t n = spec.numel();
      if (job.in_a) a.prefetch(job.name);
      if (job.in_b) b.prefetch(job.name);
      for (std::int64_t e = 0; e < n;) {
        // Pieces never straddle the end of the base's part of a grown tensor.
        std::int64_t end = std::min(n, e + detail::kPieceElements);
        if (job.in_a && e < job.a_numel) end = std::min(end, job.a_numel);
        const std::int64_t k = end - e;
        detail::PiecePipeline::Slot& slot = pipe.acquire();
        at::Tensor pa, pb;
        if (job.in_a && e < job.a_numel) pa = detail::piece_view(a, job.name, job.a_type, e, k, &slot.read[0]);
        if (job.in_b) pb = detail::piece_view(b, job.name, job.b_type, e, k, &slot.read[1]);
        slot.piece = combine(job, pa, pb, out_type, slot.scratch, inexact);
        pipe.publish();
        e = end;
      }
    }
  };
  auto bytes_read = [&](const TensorInfo& spec) {
    const Job& job = plan.jobs[plan.index.at(spec.name)];
    return (job.in_a ? a.info(job.name).byte_size() : 0) + (job.in_b ? b.info(job.name).byte_size() : 0);
  };
  MergeReport report = detail::write_merged(writer, produce, bytes_read, progress);
  report.inexact_elements = inexact;
  report.seconds = detail::now_seconds() - start;
  return report;
}

}  // namespace

MergeReport merge_delta_files(const std::string& base, const std::string& delta, const std::string& out_dir,
                              const MergeDeltaOptions& options) {
  const auto a = open_tensor_source(base);
  const auto b = open_tensor_source(delta);
  Plan p = plan(*a, *b,
                Rules{options.allow_missing, options.allow_new, options.allow_grow, options.scale, options.dtype,
                      /*make=*/false, "delta"});
  const double scale = options.scale;
  MergeReport report = run(*a, *b, out_dir, std::move(p), options.metadata, options.shards, options.progress,
                           [scale](const Job& job, const at::Tensor& pa, const at::Tensor& pb, c10::ScalarType out,
                                   detail::Scratch& s, std::uint64_t&) {
                             if (!pb.defined()) return s.as(pa, out, 0);
                             const c10::ScalarType c = compute_type({job.a_type, job.b_type, out});
                             const at::Scalar alpha = c == c10::kLong ? at::Scalar(static_cast<std::int64_t>(scale))
                                                                      : at::Scalar(scale);
                             // In place: pieces are in our own buffers.
                             at::Tensor sum = s.as(pb, c, 1);
                             if (pa.defined()) {
                               sum = s.as(pa, c, 0).add_(sum, alpha);
                             } else {
                               sum.mul_(alpha);
                             }
                             return s.as(sum, out, 3);
                           });
  detail::log_info("merged '{}' + {} * '{}' into '{}': {} tensors in {} s", base, scale, delta, out_dir, report.tensors,
                   detail::fixed(report.seconds, 1));
  return report;
}

MergeReport make_delta_files(const std::string& base, const std::string& tuned, const std::string& out_dir,
                             const MakeDeltaOptions& options) {
  const auto a = open_tensor_source(base);
  const auto b = open_tensor_source(tuned);
  Plan p = plan(*a, *b,
                Rules{options.allow_missing, options.allow_new, options.allow_grow, 1.0, options.dtype,
                      /*make=*/true, "tuned model"});
  MergeReport report = run(
      *a, *b, out_dir, std::move(p), options.metadata, options.shards, options.progress,
      [](const Job& job, const at::Tensor& pa, const at::Tensor& pb, c10::ScalarType out, detail::Scratch& s,
         std::uint64_t& inexact) {
        if (!pa.defined()) {  // new or grown rows: stored whole
          at::Tensor d = s.as(pb, out, 3);
          inexact += static_cast<std::uint64_t>(count_bit_differences(s.as(d, job.b_type, 4), pb));
          return d;
        }
        if (job.a_type == c10::kBFloat16 && job.b_type == c10::kBFloat16 && out == c10::kBFloat16) {
          // The usual case, in one pass: the same values as the general
          // path below (tests/merge_test.cpp compares them).
          at::Tensor d = s.get(3, out, pb.numel());
          inexact += static_cast<std::uint64_t>(detail::bf16_delta(
              static_cast<const std::uint16_t*>(pa.data_ptr()), static_cast<const std::uint16_t*>(pb.data_ptr()),
              static_cast<std::uint16_t*>(d.data_ptr()), pb.numel()));
          return d;
        }
        // The delta, in the widest of the three dtypes, then stored as `out`.
        const c10::ScalarType c = compute_type({job.a_type, job.b_type, out});
        const at::Tensor wide_a = s.as(pa, c, 0);
        at::Tensor diff = s.get(2, c, pb.numel());
        at::sub_out(diff, s.as(pb, c, 1), wide_a);
        at::Tensor d = s.as(diff, out, 3);
        // The round trip exactly as merge_delta_files will compute it (the
        // same compute dtype: that of base, delta and tuned), back in the
        // tuned dtype.
        at::Tensor back = s.get(4, c, pb.numel());
        at::add_out(back, wide_a, s.as(d, c, 5));
        inexact += static_cast<std::uint64_t>(count_bit_differences(s.as(back, job.b_type, 6), pb));
        return d;
      });
  if (report.inexact_elements > 0) {
    detail::log_warn("{} of {} elements of the delta '{}' will not reproduce the tuned model exactly "
                     "(a narrower --dtype, or extreme value ratios)",
                     report.inexact_elements, report.elements, out_dir);
  }
  detail::log_info("wrote the delta '{}' = '{}' - '{}': {} tensors in {} s", out_dir, tuned, base, report.tensors,
                   detail::fixed(report.seconds, 1));
  return report;
}

}  // namespace lorakeep
