// lorakeep/lora_layer.h: LoraLayer, what every layer that can carry a LoRA
// adapter offers (LoraLinear, LoraEmbedding, LoraConv2d), and
// LoraAdapterOptions, the adapter part of one layer. inject_lora, the loads,
// the saves and the merges see layers through it only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace torch::nn {
class Module;
}

namespace lorakeep {

struct LoraConfig;  // lorakeep/lora_config.h

// The name of a layer's own adapter, as PEFT names an adapter given no name.
inline constexpr const char* kDefaultAdapter = "default";

// The adapter part of one layer.
struct LoraAdapterOptions {
  int r = 8;
  double alpha = 8;
  double dropout = 0.0;
  bool use_rslora = false;
  std::string init = "true";  // PEFT's init_lora_weights: "true", "false" or "gaussian"
  // DoRA (PEFT's use_dora): a magnitude per output (lora_magnitude_vector)
  // rescales each output of the adapted weight W + scaling * delta to it.
  bool use_dora = false;
  // PEFT's lora_bias: lora_B has a bias [out] (zero at "true"), scaled with
  // the rest of the LoRA path and merged into the base's bias. Linear layers
  // only; not with DoRA or "gaussian".
  bool lora_bias = false;
};

// A layer that can carry LoRA adapters. Implemented by torch::nn::Module
// subclasses; inject_lora finds them in a module tree by this interface.
//
// Its own adapter is the one named "default" (kDefaultAdapter): what
// add_adapter arms and every member below but the named-adapter ones is
// about. Adapters of other names (PEFT's adapter_name) are each held by a
// layer of the same kind over the same base tensors, registered under this
// one as "lora_adapters.<name>" (its tensors "lora_adapters.<name>.lora_A.weight",
// ...); adapter(name) gives that layer, whose own adapter it is. The layer's
// forward computes the active adapter only (PEFT's active adapter); a layer
// that lacks the active adapter computes its base.
// Thread-safety: as any torch::nn::Module (no concurrent mutation).
class LoraLayer {
 public:
  virtual ~LoraLayer() = default;

  // Arms adapter `name` with `options`: add_adapter for "default", else a new
  // layer of this kind over this layer's base (not registered twice), armed
  // with `options`, registered as "lora_adapters.<name>". The active adapter
  // stays. Throws Error(kInvalidArgument) for a name that is not a non-empty
  // run of [A-Za-z0-9_-] (it becomes a directory name), when the layer has an
  // adapter of that name or one of its adapters is merged, or as add_adapter.
  void add_named_adapter(const std::string& name, const LoraAdapterOptions& options);
  // The layer that holds adapter `name`: this for "default" (armed or not),
  // else the named adapter's layer, or nullptr when the layer has none.
  LoraLayer* adapter(const std::string& name);
  // The adapters the layer carries: "default" first when armed, then the
  // others in arming order.
  std::vector<std::string> adapter_names() const;
  // The adapter forward computes ("default" at first).
  const std::string& active_adapter() const { return active_; }
  // Makes `name` the active adapter (one the layer lacks too: it then
  // computes its base). Throws Error(kInvalidArgument) when one of its
  // adapters is merged (the weight holds it: unmerge first) or for an
  // invalid name.
  void set_active_adapter(const std::string& name);
  // Whether any of the layer's adapters is merged into its weight.
  bool any_merged() const;
  // The config of the layer's own adapter as inject_lora armed it or a load
  // last filled it (target_modules resolved), shared by the adapter's
  // layers: what a checkpoint writes for a named adapter. nullptr for an
  // adapter armed by add_adapter directly.
  const std::shared_ptr<const LoraConfig>& adapter_config() const { return config_; }
  void set_adapter_config(std::shared_ptr<const LoraConfig> config) { config_ = std::move(config); }

  // Why this layer cannot carry an adapter of `options` ("" when it can):
  // what add_adapter throws, checked by inject_lora before anything is armed.
  virtual std::string refusal(const LoraAdapterOptions& options) const;

  // Arms the layer (initialised as PEFT does; the base moves under
  // "base_layer" and stops requiring grad). Throws Error(kInvalidArgument)
  // with refusal(options), or if the layer already has an adapter.
  virtual void add_adapter(const LoraAdapterOptions& options) = 0;
  virtual bool has_adapter() const = 0;

  // The adapter's options as armed (options.r: the rank its tensors have),
  // with the scaling and dropout of the last set_scaling.
  // REQUIRES: has_adapter().
  const LoraAdapterOptions& adapter_options() const { return adapter_; }
  double scaling() const { return scaling_; }
  // The rank of the adapter the layer holds: the armed rank, or, after an
  // adapter of a smaller rank was swapped in (padded: its factors fill the
  // first rows / columns, the rest is zero, as PEFT's hot swap pads), that
  // rank. 0 without an adapter.
  int rank() const { return has_adapter() ? (held_rank_ ? held_rank_ : adapter_.r) : 0; }
  virtual bool use_dora() const = 0;

  // Sets the adapter's alpha, use_rslora and dropout, and with rank > 0 the
  // rank the layer holds (at most the armed rank; what rank() says and what
  // the scaling divides by); its factors stay. What a load of an adapter
  // whose config says otherwise does, so that the layer computes what the
  // file's adapter computes. Throws Error(kInvalidArgument) without an
  // adapter, when merged (the merged weight holds the old scaling: unmerge
  // first), or for a rank above the armed one.
  void set_scaling(double alpha, bool use_rslora, double dropout, int rank = 0);

  // Folds the adapter into the base weight, as PEFT's merge: W += delta
  // (the layer kind's scaling * B A, computed in F32 for F16 / BF16 weights,
  // rounded once), and with lora_bias the base's bias gains scaling *
  // lora_B.bias (a base without bias: refused, as PEFT). With DoRA, as
  // PEFT: W = k * (W + delta) per output, k = magnitude / the outputs' L2
  // norms of W + delta, which the layer keeps for unmerge. With safe = true
  // the result is checked for NaN / Inf first. Throws Error(kInvalidArgument)
  // without an adapter, and where the kind cannot merge; nothing changed
  // then. Forward then skips the LoRA path; unmerge() takes it out again.
  void merge(bool safe = false);
  void unmerge();
  bool merged() const { return merged_; }

  // The adapter's tensors, named as named_parameters() names them under the
  // layer ("lora_A.weight", "lora_embedding_A", ...), in file order, whole
  // (at the armed rank). REQUIRES: has_adapter().
  virtual std::vector<std::pair<std::string, at::Tensor>> lora_tensors() const = 0;
  // The same, narrowed to their first `rank` rows / columns where the rank
  // is a dimension: what an adapter of that rank saves and loads (views).
  // REQUIRES: has_adapter(), 1 <= rank <= adapter_options().r.
  std::vector<std::pair<std::string, at::Tensor>> lora_tensors_at(int rank) const;
  // Zeros what lies past the first `rank` rows / columns of those tensors:
  // an adapter of that rank, swapped into the first ones, is then the only
  // one the layer computes (and training leaves the zeros be: they get no
  // gradient). REQUIRES: as lora_tensors_at.
  void zero_beyond(int rank);
  // The same names with the shapes add_adapter(options) would create.
  virtual std::vector<std::pair<std::string, std::vector<std::int64_t>>> lora_shapes(
      const LoraAdapterOptions& options) const = 0;
  // The base weight: the adapter is created in F64 for an F64 one, else in
  // F32, on its device.
  virtual const at::Tensor& base_weight() const = 0;
  // Whether the base weight is stored [in, out] (GPT-2's Conv1D): what
  // PEFT's fan_in_fan_out says of linear layers; empty for the kinds PEFT
  // does not read it for.
  virtual std::optional<bool> fan_in_fan_out() const { return std::nullopt; }
  // Whether an adapter of a smaller rank can be swapped into the first rows
  // / columns of this one's tensors (PEFT pads a grouped convolution's
  // lora_A group by group; lorakeep does not).
  virtual bool pads_rank() const { return true; }
  // "linear layer", "embedding": for messages.
  virtual const char* kind() const = 0;

 protected:
  // Records `options` and sets the scaling: add_adapter's common part.
  void set_adapter_options(const LoraAdapterOptions& options);
  // forward's dispatch. The layer of the active adapter when it is a named
  // one the layer carries (its forward computes this layer's), else nullptr.
  LoraLayer* active_named() const;
  // Whether this layer's forward adds its own adapter: it is active, armed
  // and not merged.
  bool computes_own_adapter() const { return active_ == kDefaultAdapter && has_adapter() && !merged_; }
  // A layer of the same kind over the same base tensors (registered in it
  // as its own, as its wrapping constructor does), unarmed: what holds a
  // named adapter.
  virtual std::shared_ptr<torch::nn::Module> new_layer_over_base() const = 0;
  // Called by set_scaling with the new dropout probability.
  virtual void on_dropout(double /*p*/) {}

  // What merge and unmerge ask of a kind of layer.
  // scaling * delta in the base weight's layout and the compute dtype
  // (F32, or F64 for an F64 base), without gradient. Throws
  // Error(kInvalidArgument) without an adapter, or where the kind cannot
  // merge.
  virtual at::Tensor delta_f32_or_wider() const = 0;
  // DoRA: the L2 norm of each output of `adapted` (W + delta), without
  // gradient, and the factors magnitude / norms shaped to scale the weight.
  virtual at::Tensor dora_norms(const at::Tensor& adapted) const = 0;
  virtual at::Tensor dora_factors(const at::Tensor& norms) const = 0;
  // The base's bias and lora_B's (lora_bias); undefined where none.
  virtual at::Tensor base_bias() const { return at::Tensor(); }
  virtual at::Tensor lora_bias_tensor() const { return at::Tensor(); }
  // W + delta in the compute dtype (a new tensor).
  at::Tensor adapted_weight() const;
  // Calls fn(tensor, dim, size at `rank`) for each dimension of `tensors`
  // (lora_tensors()) whose size depends on the rank.
  void for_each_rank_dim(int rank, const std::function<void(at::Tensor&, std::int64_t dim, std::int64_t keep)>& fn,
                         std::vector<std::pair<std::string, at::Tensor>>& tensors) const;

  LoraAdapterOptions adapter_;
  double scaling_ = 0;
  bool merged_ = false;
  int held_rank_ = 0;        // rank(), when below the armed rank (0: the armed rank)
  at::Tensor merged_norms_;  // DoRA: the norms the merge divided by, for unmerge

 private:
  LoraLayer* find_named(const std::string& name) const;  // nullptr when the layer has none of that name

  std::vector<std::pair<std::string, std::shared_ptr<LoraLayer>>> named_;  // in arming order
  std::shared_ptr<torch::nn::Module> named_holder_;                        // "lora_adapters"
  std::string active_ = kDefaultAdapter;
  std::shared_ptr<const LoraConfig> config_;
};

}  // namespace lorakeep
