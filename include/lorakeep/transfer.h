// lorakeep/transfer.h: loading tensors into live parameters, CPU-first and
// in place, in two phases: plan (validate everything; nothing is touched),
// then apply (stream each tensor through host memory into the parameter's
// own storage).
//
//   auto src = lorakeep::open_tensor_source("runs/exp1/checkpoint-400");
//   lorakeep::LoadOptions opt;
//   opt.strip_prefix = "base_model.model.";
//   lorakeep::TransferReport r = lorakeep::load_into(model, *src, opt);
//
// The bounds (docs/ARCHITECTURE.md, invariants 1, 2, 5): no tensor of a parameter's size
// is ever allocated on the parameter's device; same-dtype loads into
// contiguous CPU parameters allocate nothing at all (each piece is read from
// the file straight into the parameter); otherwise at most one chunk of host
// staging (and, for adds on an accelerator, one chunk there). File bytes are
// read with pread, never mapped, so host RSS grows by at most about one chunk,
// not by the file size.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <torch/nn/module.h>

#include "lorakeep/safetensors.h"
#include "lorakeep/tensor_source.h"

namespace lorakeep {

enum class TransferOp {
  kCopy,  // param = source
  kAdd,   // param += scale * source
};

struct LoadOptions {
  // behaviour
  TransferOp op = TransferOp::kCopy;  // what to do with each tensor
  double scale = 1.0;                 // kAdd: the factor on the source
  bool strict = true;                 // every source tensor needs a target and every target a source
  std::string strip_prefix;           // removed from source names that start with it ("base_model.model.")
  std::string add_prefix;             // then put in front of every source name
  bool verify_checksums =
      true;  // with `checksums`: every tensor loaded must have one and match it, checked before anything is touched
  std::map<std::string, std::uint64_t> checksums;  // source name -> XXH3-64 of its stored bytes
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // piece size of host staging; bounds extra memory
};

// What a load did and what it cost.
struct TransferReport {
  std::string source;                    // path of the source
  std::string device;                    // device of the targets: "cpu", "cuda:0", "mixed"
  std::size_t tensors = 0;               // tensors applied
  std::uint64_t bytes = 0;               // source bytes read
  double seconds = 0;                    // plan + verify + apply
  double verify_seconds = 0;             // of which checksum verification
  double gb_per_s = 0;                   // bytes / seconds / 1e9
  std::int64_t peak_device_bytes = -1;   // extra bytes on the targets' allocator (-1: not measurable)
  std::string device_bytes_unmeasured;   // why peak_device_bytes is -1 (empty when it is counted)
  std::int64_t peak_rss_bytes = -1;      // extra process RSS, sampled as the load goes (-1: unreadable)
  std::uint64_t naive_device_bytes = 0;  // what a full temporary copy on the device would have taken

  // "loaded 24 tensors (1.2 MiB) from '...' in 0.010 s (0.12 GB/s); ..."
  std::string summary() const;
};

// Loads `source` into the parameters and buffers of `module` (their names as
// named_parameters() / named_buffers() give them). Borrows `module` for the
// call only.
//
// Plan phase, nothing mutated: source names are mapped (strip_prefix, then
// add_prefix) to targets; shapes must match; dtypes must be convertible
// (floating <-> floating, integer <-> integer; kAdd needs a floating target or
// scale 1); checksums are verified. In strict mode missing and unexpected
// names are problems too; otherwise they are logged and skipped. All problems
// are reported in one Error: kCorruption if a checksum failed, else
// kIncompatible; the message lists them with hints. Every allocation the apply
// phase needs is made before the first write, so a load that fails before it
// leaves every live tensor bitwise unchanged. A failure after writing began
// (the file truncated or unreadable under the load; the memory bound rules out
// keeping a copy to roll back) throws an Error of the reader's code whose
// message says the targets are partly written and names those reached.
//
// Apply phase, under NoGradGuard: each tensor goes file -> host piece ->
// (dtype conversion on the host) -> copy_ (or add_) into the live storage; a
// same-dtype piece for a contiguous CPU tensor is read straight into it. All
// host staging together stays within about chunk_bytes: device tensors go one
// piece at a time, CPU tensors are spread over up to 4 threads with pieces of
// at most 256 KiB each (cache-sized).
// REQUIRES: no other thread uses the module's tensors during the call.
TransferReport load_into(torch::nn::Module& module, const TensorSource& source, const LoadOptions& options = {});

// The same, into named live tensors (e.g. a chosen subset of parameters).
// Writes go into the tensors' storage: views of parameters update them.
TransferReport load_into(const NamedTensors& targets, const TensorSource& source, const LoadOptions& options = {});

// base += scale * delta, in place and CPU-first: load_into with op = kAdd.
TransferReport apply_delta(torch::nn::Module& base, const TensorSource& delta, double scale = 1.0,
                           LoadOptions options = {});

}  // namespace lorakeep
