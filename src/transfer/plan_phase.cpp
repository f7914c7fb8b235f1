#include "transfer/plan_phase.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include <ATen/ATen.h>

#include "lorakeep/error.h"
#include "base/clock.h"
#include "base/logging.h"
#include "base/parallel.h"
#include "base/text.h"
#include "io/checksum.h"

namespace lorakeep::detail {
namespace {

// Checksum verification reads in blocks of this size: small enough to stay
// in the L2 cache while being hashed.
constexpr std::uint64_t kHashBlock = 1ull << 20;

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
// targets lack: "base_model.model.lin0.weight" vs "lin0.weight".
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

}  // namespace

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
      if (want != o.checksums.end()) {
        jobs.emplace_back(&p, want->second);
      } else {
        checksum.push_back("'" + p.source_name + "' has no recorded checksum");
      }
    }
    std::vector<std::uint64_t> got(jobs.size());
    std::uint64_t total = 0;
    for (const auto& job : jobs) total += job.first->info->byte_size();
    const std::uint64_t block = std::min<std::uint64_t>(o.chunk_bytes, kHashBlock);
    const unsigned threads = io_threads(total);
    std::vector<std::vector<std::uint8_t>> buffers(threads);  // one per thread, freed after the load
    run_parallel(jobs.size(), threads, [&](std::size_t i, unsigned worker) {
      std::vector<std::uint8_t>& buffer = buffers[worker];
      buffer.resize(block);
      const Planned& p = *jobs[i].first;
      const std::uint64_t size = p.info->byte_size();
      if (size > block) source.prefetch(p.source_name);  // see the apply phase
      Xxh3Stream hash;
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
                         format_checksum(jobs[i].second) + ", read " + format_checksum(got[i]) + ")");
    }
  }
  *verify_seconds = now_seconds() - t0;

  const bool hard = !shape.empty() || !dtype.empty() || !checksum.empty() || !duplicate.empty();
  const bool soft = !missing.empty() || !unexpected.empty();
  if (!hard && (!soft || !o.strict)) {
    if (soft) {
      log_info("loading '{}' non-strictly: {} model tensors not in the file, {} file tensors not in the "
               "model",
               source.path(), missing.size(), unexpected.size());
      if (!unexpected.empty()) log_debug("not in the model: {}", quoted_list(unexpected, 100));
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

}  // namespace lorakeep::detail
