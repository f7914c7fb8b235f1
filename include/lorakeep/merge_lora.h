// lorakeep/merge_lora.h: folding a PEFT LoRA adapter into base weights,
// offline and file to file, with the memory bound of lorakeep/merge.h.
//
//   lorakeep::merge_lora_files("model.safetensors", "runs/exp1/final_adapter", "merged/");
#pragma once

#include <map>
#include <optional>
#include <string>

#include "lorakeep/dtype.h"
#include "lorakeep/merge.h"

namespace lorakeep {

struct MergeLoraOptions {
  // behaviour
  std::optional<Dtype> dtype;                                        // output dtype; default: each base tensor's
  std::map<std::string, std::string> metadata = {{"format", "pt"}};  // of every output shard
  // The prefix the adapted model's names carry that the base file's names
  // lack (Hugging Face's base_model_prefix, e.g. "bert." for a
  // BertForSequenceClassification adapter over a BertModel file). The output
  // uses the adapted model's names: every base tensor is written as
  // base_prefix + its name, so the merged file is a checkpoint of the model
  // with its head (e.g. BertForSequenceClassification: bert.* plus
  // classifier.*), which Hugging Face's from_pretrained and a strict LibTorch
  // load read in full. Every adapted layer path must then start with it (its
  // weight is looked up as the path less the prefix + ".weight"); a whole
  // tensor (modules_to_save) whose name starts with it replaces the base
  // tensor of its name less the prefix, any other joins the output under its
  // own name. Empty (the default): the adapter's paths are the base's names.
  std::string base_prefix;  // ends in "." (Error kInvalidArgument otherwise)
  // performance
  ShardOptions shards;
  MergeProgress progress;  // optional
};

// Offline, file to file: out_dir = the base weights with the adapter folded
// in, W + scaling * B @ A (transposed for fan_in_fan_out; an embedding's
// (B @ A)^T; a convolution's kernels as rows), scaling from the adapter's config (lora_alpha or
// alpha_pattern, over r or sqrt(r) with use_rslora), computed in F32 (F64
// for F64 weights) a block of rows at a time; for a DoRA adapter each output
// then scaled to its magnitude over its L2 norm, as PEFT's merge (a row's;
// for weights stored [in, out] and embeddings a column's, whose norms a
// first pass over the adapted weight works out); with lora_bias each adapted
// layer's base bias gains scaling * lora_B.bias; the adapter's whole tensors
// (modules_to_save, task heads) replace or join the base's. Streams one tensor at a time into sharded safetensors, as
// merge_delta_files. Validates first: every adapted layer's weight exists in the base (under options.base_prefix, see
// there) with the shape the factors imply, ranks agree with the config, whole tensors that replace a base tensor have
// its shape. Throws Error(kIncompatible) listing every problem (a missing weight that the base has under another prefix
// with a hint at base_prefix), and as merge_delta_files.
MergeReport merge_lora_files(const std::string& base, const std::string& adapter_dir, const std::string& out_dir,
                             const MergeLoraOptions& options = {});

}  // namespace lorakeep
