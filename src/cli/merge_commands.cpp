// merge-delta, make-delta: offline weight arithmetic, file to file.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "lorakeep/error.h"
#include "lorakeep/merge.h"
#include "lorakeep/merge_lora.h"
#include "base/text.h"
#include "cli/commands.h"

namespace lorakeep::cli {
namespace {

// A one-line progress display, redrawn in place, only on a terminal.
MergeProgress terminal_progress(const std::string& what) {
  if (!::isatty(2)) return nullptr;
  const auto start = std::chrono::steady_clock::now();
  return [what, start](std::size_t done, std::size_t total, std::uint64_t bytes) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\r%s: %zu/%zu tensors, %s read, %.0f MB/s   ", what.c_str(), done, total,
                 detail::format_bytes(bytes).c_str(), s > 0 ? static_cast<double>(bytes) / s / 1e6 : 0.0);
    if (done == total) std::fprintf(stderr, "\n");
  };
}

Dtype parse_dtype_option(const std::string& text) {
  auto d = parse_dtype(text);
  if (!d) throw Error(ErrorCode::kInvalidArgument, "unknown --dtype '" + text + "' (use F32, F16, BF16, F64, ...)");
  return *d;
}

std::uint64_t parse_size_option(const std::string& text) {
  std::uint64_t v = 0;
  if (!detail::parse_byte_size(text, &v) || v == 0) {
    throw Error(ErrorCode::kInvalidArgument, "bad --max-shard-size '" + text + "' (use e.g. 5GB, 2GiB, 500MB)");
  }
  return v;
}

struct CommonArgs {
  std::string base, other, out, dtype, max_shard_size = "5GB";
  bool allow_missing = false, allow_new = false, allow_grow = false;
};

void add_common(CLI::App* sub, CommonArgs& a, const char* other_flag, const char* other_help) {
  sub->add_option("--base", a.base, "base weights: file, sharded index or directory")->required();
  sub->add_option(other_flag, a.other, other_help)->required();
  sub->add_option("--out", a.out, "output directory (must not exist, or be empty)")->required();
  sub->add_option("--max-shard-size", a.max_shard_size, "largest output shard, e.g. 5GB (default), 2GiB");
  sub->add_flag("--allow-missing", a.allow_missing, "base tensors without a counterpart pass through unchanged");
  sub->add_flag("--allow-new", a.allow_new, "tensors only on the other side are taken whole");
  sub->add_flag("--allow-grow", a.allow_grow, "the other side may be larger in dim 0 (an added vocabulary)");
}

void print_report(const char* verb, const MergeReport& r) {
  std::printf("%s %zu tensors into %s (%zu shard%s): read %s, wrote %s in %.1f s\n", verb, r.tensors,
              r.output.dir.c_str(), r.output.shards.size(), r.output.shards.size() == 1 ? "" : "s",
              detail::format_bytes(r.bytes_read).c_str(), detail::format_bytes(r.bytes_written).c_str(), r.seconds);
}

}  // namespace

void add_merge_commands(CLI::App& app, std::vector<Command>& commands) {
  {
    auto* sub = app.add_subcommand("merge-delta", "base + scale * delta, streamed into sharded safetensors");
    auto a = std::make_shared<CommonArgs>();
    auto scale = std::make_shared<double>(1.0);
    add_common(sub, *a, "--delta", "delta weights: file, sharded index or directory");
    sub->add_option("--scale", *scale, "factor on the delta (default 1)");
    sub->add_option("--dtype", a->dtype, "output dtype (default: each base tensor's)");
    commands.push_back({sub,
                        [a, scale] {
                          MergeDeltaOptions o;
                          o.scale = *scale;
                          if (!a->dtype.empty()) o.dtype = parse_dtype_option(a->dtype);
                          o.allow_missing = a->allow_missing;
                          o.allow_new = a->allow_new;
                          o.allow_grow = a->allow_grow;
                          o.shards.max_shard_size = parse_size_option(a->max_shard_size);
                          o.progress = terminal_progress("merge-delta");
                          print_report("merged", merge_delta_files(a->base, a->other, a->out, o));
                          return kExitOk;
                        },
                        nullptr, nullptr});
  }
  {
    auto* sub = app.add_subcommand("merge-lora", "fold a PEFT LoRA adapter into base weights, streamed into sharded "
                                                 "safetensors");
    auto a = std::make_shared<CommonArgs>();
    auto base_prefix = std::make_shared<std::string>();
    sub->add_option("--base", a->base, "base weights: file, sharded index or directory")->required();
    sub->add_option("--adapter", a->other, "PEFT adapter directory")->required();
    sub->add_option("--out", a->out, "output directory (must not exist, or be empty)")->required();
    sub->add_option("--max-shard-size", a->max_shard_size, "largest output shard, e.g. 5GB (default), 2GiB");
    sub->add_option("--dtype", a->dtype, "output dtype (default: each base tensor's)");
    sub->add_option("--base-prefix", *base_prefix,
                    "prefix the adapter's names carry and the base's lack, e.g. bert. for a "
                    "BertForSequenceClassification adapter over a BertModel file; the output uses the adapter's "
                    "names (every base tensor written as the prefix + its name)");
    commands.push_back({sub,
                        [a, base_prefix] {
                          MergeLoraOptions o;
                          o.base_prefix = *base_prefix;
                          if (!a->dtype.empty()) o.dtype = parse_dtype_option(a->dtype);
                          o.shards.max_shard_size = parse_size_option(a->max_shard_size);
                          o.progress = terminal_progress("merge-lora");
                          print_report("merged", merge_lora_files(a->base, a->other, a->out, o));
                          return kExitOk;
                        },
                        nullptr, nullptr});
  }
  {
    auto* sub = app.add_subcommand("make-delta", "tuned - base, streamed into sharded safetensors");
    auto a = std::make_shared<CommonArgs>();
    add_common(sub, *a, "--tuned", "fine-tuned weights: file, sharded index or directory");
    sub->add_option("--dtype", a->dtype,
                    "delta dtype (default: lossless, F64 for F32 weights and F32 for F16/BF16 ones)");
    commands.push_back({sub,
                        [a] {
                          MakeDeltaOptions o;
                          if (!a->dtype.empty()) o.dtype = parse_dtype_option(a->dtype);
                          o.allow_missing = a->allow_missing;
                          o.allow_new = a->allow_new;
                          o.allow_grow = a->allow_grow;
                          o.shards.max_shard_size = parse_size_option(a->max_shard_size);
                          o.progress = terminal_progress("make-delta");
                          const MergeReport r = make_delta_files(a->base, a->other, a->out, o);
                          print_report("wrote the delta of", r);
                          if (r.inexact_elements == 0) {
                            std::printf("round trip: all %llu elements of the tuned model come back exactly\n",
                                        static_cast<unsigned long long>(r.elements));
                          } else {
                            std::printf("round trip: %llu of %llu elements will NOT come back exactly\n",
                                        static_cast<unsigned long long>(r.inexact_elements),
                                        static_cast<unsigned long long>(r.elements));
                          }
                          return kExitOk;
                        },
                        nullptr, nullptr});
  }
}

}  // namespace lorakeep::cli
