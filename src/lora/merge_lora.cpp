// merge_lora_files: an adapter folded into base weights, file to file.
#include <cmath>
#include <map>
#include <vector>

#include <ATen/ATen.h>

#include "lorakeep/merge_lora.h"

#include "lorakeep/adapter.h"
#include "lorakeep/error.h"
#include "base/clock.h"
#include "base/logging.h"
#include "base/text.h"
#include "lora/adapter_load.h"
#include "lora/peft_keys.h"
#include "lora/rank_update.h"
#include "merge/pipeline.h"
#include "tensors/sharded_writer.h"

namespace lorakeep {
namespace {

// One adapted weight's update, W[i, :] += sum_k C[i, k] V[k, :], in the
// compute dtype, contiguous: C = s * B and V = A, or for a weight stored
// [in, out] (fan_in_fan_out, and an embedding's [num_embeddings, dim]) C =
// s * A^T and V = B^T. With DoRA's magnitude m, each output of the sum is
// then scaled to m / its L2 norm: a row's, or, stored [in, out], a column's,
// whose norms the caller works out in a first pass (column_scale = m /
// them).
struct Fold {
  at::Tensor C, V, magnitude, column_scale;
  std::int64_t r = 0;
  bool columns = false;  // DoRA's outputs are columns

  // Rows [r0, r0 + rows) of W, in `w` (the compute dtype), before DoRA.
  void update(const at::Tensor& w, std::int64_t r0, std::int64_t rows, std::int64_t cols) const {
    if (w.scalar_type() == c10::kDouble) {
      detail::rank_update(w.data_ptr<double>(), rows, cols, C.data_ptr<double>() + r0 * r, V.data_ptr<double>(), r);
    } else {
      detail::rank_update(w.data_ptr<float>(), rows, cols, C.data_ptr<float>() + r0 * r, V.data_ptr<float>(), r);
    }
  }

  // The same, then DoRA's scaling.
  void apply(const at::Tensor& w, std::int64_t r0, std::int64_t rows, std::int64_t cols) const {
    update(w, r0, rows, cols);
    if (!magnitude.defined()) return;
    const at::Tensor block = w.view({rows, cols});
    if (columns) {
      block.mul_(column_scale.unsqueeze(0));
      return;
    }
    const std::vector<std::int64_t> along_rows = {1};
    const at::Tensor norms = at::linalg_vector_norm(block, 2, along_rows, /*keepdim=*/false, c10::nullopt);
    block.mul_((magnitude.narrow(0, r0, rows) / norms).unsqueeze(1));
  }
};

}  // namespace

MergeReport merge_lora_files(const std::string& base, const std::string& adapter_dir, const std::string& out_dir,
                             const MergeLoraOptions& options) {
  const double start = detail::now_seconds();
  if (!options.base_prefix.empty() && options.base_prefix.back() != '.') {
    throw Error(ErrorCode::kInvalidArgument, "base_prefix '" + options.base_prefix +
                                                 "' does not end in '.' (hint: a module path, e.g. '" +
                                                 options.base_prefix + ".')");
  }
  const LoraConfig config = read_adapter_config(adapter_dir);
  const auto adapter = open_tensor_source(detail::adapter_weights_path(adapter_dir));
  const detail::AdapterLayout layout = detail::classify_adapter_keys(*adapter);
  detail::check_optional_tensors(layout, config.use_dora, config.lora_bias, adapter->path());
  const auto source = open_tensor_source(base);

  // The adapted model's names carry base_prefix; the base file's lack it.
  const std::string& base_prefix = options.base_prefix;
  auto starts_with = [](const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; };
  // Why the base may lack a layer's weight, when it is a prefix: the base's
  // names lack one more leading dotted component than base_prefix strips
  // (the hint names the base_prefix that finds it), or they already carry
  // base_prefix. "" otherwise.
  auto prefix_hint = [&](const std::string& path) -> std::string {
    if (!base_prefix.empty() && source->contains(path + ".weight")) {
      return "; hint: the base's names already carry the prefix '" + base_prefix + "': leave base_prefix empty";
    }
    const std::string rest = path.substr(base_prefix.size());
    const std::size_t dot = rest.find('.');
    if (dot == std::string::npos || !source->contains(rest.substr(dot + 1) + ".weight")) return "";
    const std::string want = base_prefix + rest.substr(0, dot + 1);
    return "; hint: the base's names lack the prefix '" + want + "': set base_prefix (--base-prefix " + want + ")";
  };

  // Validate everything first.
  std::vector<std::string> problems;
  std::map<std::string, std::string> layer_of;  // base weight name -> layer path
  std::map<std::string, std::string> bias_of;   // base bias name -> layer path (lora_bias)
  for (const std::string& path : layout.layers) {
    if (!starts_with(path, base_prefix)) {
      problems.push_back("adapted layer '" + path + "' does not start with base_prefix '" + base_prefix + "'");
      continue;
    }
    const std::string weight = path.substr(base_prefix.size()) + ".weight";
    const TensorInfo& a = adapter->info(detail::file_key(layout.factor_a(path)));
    const TensorInfo& b = adapter->info(detail::file_key(layout.factor_b(path)));
    const bool in_out = config.fan_in_fan_out || layout.embedding(path);  // stored [in, out]
    if (!source->contains(weight)) {
      problems.push_back("the adapter adapts '" + path + "' but the base has no '" + weight + "'" + prefix_hint(path));
      continue;
    }
    const TensorInfo& w = source->info(weight);
    // A convolution's: A [r, in, kh, kw], B [out, r, 1, 1] (groups 1).
    const bool conv = a.shape.size() == 4 && b.shape.size() == 4 && b.shape[2] == 1 && b.shape[3] == 1;
    if (!(conv || (a.shape.size() == 2 && b.shape.size() == 2)) || a.shape[0] != b.shape[1]) {
      problems.push_back("'" + path + "' has factors " + format_shape(a.shape) + " and " + format_shape(b.shape) +
                         ", which do not multiply" +
                         (a.shape.size() == 4 && b.shape.size() == 4
                              ? " (a grouped convolution's, which PEFT cannot merge either)"
                              : ""));
      continue;
    }
    std::vector<std::int64_t> want = in_out ? std::vector<std::int64_t>{a.shape[1], b.shape[0]}
                                            : std::vector<std::int64_t>{b.shape[0], a.shape[1]};
    if (conv) want = {b.shape[0], a.shape[1], a.shape[2], a.shape[3]};
    if (w.shape != want) {
      problems.push_back("'" + weight + "' is " + format_shape(w.shape) + " in the base but the factors make " +
                         format_shape(want) + (in_out ? "" : " (hint: fan_in_fan_out?)"));
      continue;
    }
    if (a.shape[0] != rank_for(config, path)) {
      problems.push_back("'" + path + "' has rank " + std::to_string(a.shape[0]) + " in the file but " +
                         std::to_string(rank_for(config, path)) + " in adapter_config.json");
      continue;
    }
    if (config.lora_bias) {
      const std::string bias = path.substr(base_prefix.size()) + ".bias";
      if (!source->contains(bias) || source->info(bias).shape != std::vector<std::int64_t>{b.shape[0]}) {
        problems.push_back("'" + path + "' has lora_bias but the base has no '" + bias + "' of shape " +
                           format_shape({b.shape[0]}) + " to merge it into (PEFT cannot merge it either)");
        continue;
      }
      bias_of[bias] = path;
    }
    if (config.use_dora) {
      const TensorInfo& m = adapter->info(detail::file_key({detail::PeftTensor::kMagnitude, path}));
      if (m.shape != (conv ? std::vector<std::int64_t>{1, b.shape[0], 1, 1} : std::vector<std::int64_t>{b.shape[0]})) {
        problems.push_back("'" + path + "' has a DoRA magnitude " + format_shape(m.shape) + " for " +
                           std::to_string(b.shape[0]) + " outputs");
        continue;
      }
    }
    layer_of[weight] = path;
  }
  // Whole tensors keep their own names in the output: under base_prefix they
  // replace the base tensor of that name less the prefix (output as
  // base_prefix + its name, the same name); otherwise, or when the base lacks
  // it, they join the output (a head such as "classifier.weight"). A joiner
  // cannot collide with a prefixed base name: that would start with the
  // prefix and be a replacement.
  std::map<std::string, std::string> whole;  // output name -> adapter key
  for (const std::string& name : layout.whole) {
    const std::string in_base = starts_with(name, base_prefix) ? name.substr(base_prefix.size()) : std::string();
    if (!in_base.empty() && source->contains(in_base) &&
        source->info(in_base).shape != adapter->info(detail::file_key({detail::PeftTensor::kWhole, name})).shape) {
      problems.push_back("'" + in_base + "' is " + format_shape(source->info(in_base).shape) + " in the base but " +
                         format_shape(adapter->info(detail::file_key({detail::PeftTensor::kWhole, name})).shape) +
                         " in the adapter" + (base_prefix.empty() ? "" : " ('" + name + "')"));
      continue;
    }
    whole[name] = detail::file_key({detail::PeftTensor::kWhole, name});
  }
  if (!problems.empty()) {
    std::string msg = "cannot merge adapter '" + adapter_dir + "' into '" + base +
                      "': " + std::to_string(problems.size()) + (problems.size() == 1 ? " problem" : " problems") +
                      " (nothing was written)";
    for (std::size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
    throw Error(ErrorCode::kIncompatible, msg);
  }

  auto scaling_for = [&](const std::string& path, std::int64_t r) {
    const double alpha = alpha_for(config, path);
    return config.use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
  };
  // Output names: base_prefix + each base tensor's name, then the joiners'.
  std::vector<TensorInfo> specs;
  std::map<std::string, std::string> base_of;  // output name -> base name
  for (const std::string& name : source->names()) {
    TensorInfo t = source->info(name);
    t.name = base_prefix + name;
    if (options.dtype) t.dtype = *options.dtype;
    base_of[t.name] = name;
    specs.push_back(std::move(t));
  }
  for (const auto& [name, key] : whole) {
    if (base_of.count(name)) continue;
    TensorInfo t = adapter->info(key);  // a head the base lacks: joins the output
    t.name = name;
    if (options.dtype) t.dtype = *options.dtype;
    specs.push_back(std::move(t));
    detail::log_info("'{}' is not in the base: added from the adapter", name);
  }
  detail::ShardedWriter writer(out_dir, std::move(specs), options.metadata, options.shards);
  // Pieces are read and folded on the pipeline's thread while the ones
  // before are written.
  auto produce = [&](detail::PiecePipeline& pipe) {
    for (const TensorInfo& spec : writer.order()) {
      const c10::ScalarType out = to_scalar_type(spec.dtype, spec.name);
      if (auto w = whole.find(spec.name); w != whole.end()) {
        pipe.acquire().piece = adapter->tensor(w->second).to(out);
        pipe.publish();
        continue;
      }
      const std::string& name = base_of.at(spec.name);
      const TensorInfo& info = source->info(name);
      const c10::ScalarType stored = to_scalar_type(info.dtype, name);
      const std::int64_t n = info.numel();
      const std::int64_t cols = info.shape.empty() ? 1 : n / std::max<std::int64_t>(1, info.shape[0]);
      const std::int64_t rows_per = std::max<std::int64_t>(1, detail::kPieceElements / std::max<std::int64_t>(1, cols));
      auto layer = layer_of.find(name);
      Fold fold;
      const c10::ScalarType compute = stored == c10::kDouble ? c10::kDouble : c10::kFloat;
      if (layer != layer_of.end()) {
        const std::string& path = layer->second;
        const at::Tensor a = adapter->tensor(detail::file_key(layout.factor_a(path))).to(compute);
        const at::Tensor b = adapter->tensor(detail::file_key(layout.factor_b(path))).to(compute);
        const at::Tensor A = a.reshape({a.size(0), -1}), B = b.reshape({b.size(0), -1});  // [r, in], [out, r]
        const bool in_out = config.fan_in_fan_out || layout.embedding(path);
        fold.r = A.size(0);
        const double scaling = scaling_for(path, fold.r);
        fold.C = (in_out ? A.t() * scaling : B * scaling).contiguous();
        fold.V = (in_out ? B.t() : A).contiguous();
        if (config.use_dora) {
          fold.magnitude =
              adapter->tensor(detail::file_key({detail::PeftTensor::kMagnitude, path})).to(compute).reshape({-1});
          fold.columns = in_out;
        }
      }
      at::Tensor bias_delta;  // s * lora_B.bias, for the base bias of a lora_bias layer
      if (auto biased = bias_of.find(name); biased != bias_of.end()) {
        const std::string& path = biased->second;
        const std::int64_t r = adapter->info(detail::file_key(layout.factor_a(path))).shape[0];
        bias_delta = adapter->tensor(detail::file_key({detail::PeftTensor::kLoraBias, path})).to(compute) *
                     scaling_for(path, r);
      }
      if (fold.columns) {
        // DoRA on a weight stored [in, out]: its outputs' norms run down
        // the columns, which no row block holds whole. A first pass over
        // the adapted weight sums their squares, a block at a time.
        detail::HostStaging read;
        detail::Scratch scratch;
        at::Tensor squares = at::zeros({cols}, at::TensorOptions().dtype(compute));
        const std::vector<std::int64_t> down_columns = {0};
        for (std::int64_t e = 0; e < n;) {
          const std::int64_t k = std::min(n - e, rows_per * cols);
          const at::Tensor w = scratch.as(detail::piece_view(*source, name, stored, e, k, &read), compute, 0);
          fold.update(w, e / cols, k / cols, cols);
          squares.add_(
              at::linalg_vector_norm(w.view({k / cols, cols}), 2, down_columns, false, c10::nullopt).square_());
          e += k;
        }
        fold.column_scale = fold.magnitude / squares.sqrt_();
      }
      source->prefetch(name);
      for (std::int64_t e = 0; e < n;) {
        const std::int64_t k = std::min(n - e, info.shape.empty() ? n : rows_per * cols);
        detail::PiecePipeline::Slot& slot = pipe.acquire();
        const at::Tensor piece = detail::piece_view(*source, name, stored, e, k, &slot.read[0]);
        if (bias_delta.defined()) {
          const at::Tensor b = slot.scratch.as(piece, compute, 2);
          b.view({-1}).add_(bias_delta.narrow(0, e, k));
          slot.piece = slot.scratch.as(b, out, 3);
        } else if (!fold.C.defined()) {
          slot.piece = slot.scratch.as(piece, out, 0);
        } else {
          // Rows [r0, r0 + k / cols) of W plus the same rows of s * B A,
          // added in place: the piece is in our own buffer, and no product
          // is ever allocated.
          const std::int64_t r0 = e / cols, nr = k / cols;
          const at::Tensor w = slot.scratch.as(piece, compute, 2);
          fold.apply(w, r0, nr, cols);
          slot.piece = slot.scratch.as(w, out, 3);
        }
        pipe.publish();
        e += k;
      }
    }
  };
  auto bytes_read = [&](const TensorInfo& spec) {
    auto w = whole.find(spec.name);
    return w != whole.end() ? adapter->info(w->second).byte_size() : source->info(base_of.at(spec.name)).byte_size();
  };
  MergeReport report = detail::write_merged(writer, produce, bytes_read, options.progress);
  report.seconds = detail::now_seconds() - start;
  detail::log_info("merged adapter '{}' ({} layers) into '{}': {} tensors in {} s", adapter_dir, layout.layers.size(),
                   out_dir, report.tensors, detail::fixed(report.seconds, 1));
  return report;
}

}  // namespace lorakeep
