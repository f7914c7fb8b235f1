// Every file and directory name lorakeep reads or writes (PEFT's adapter
// directory, Hugging Face's sharded sets, Trainer's checkpoint directory and
// lorakeep's own files in it, the run directory) is spelled, built and parsed
// here, and nowhere else.
//
//   <output_dir>/
//     .lock                          flock held by the one writer
//     metrics.jsonl                  MetricsLogger's JSON lines
//     checkpoint-400/                committed: appears by one rename
//       adapter_model.safetensors    PEFT's adapter
//       adapter_config.json
//       trainer_state.json           Hugging Face Trainer's state
//       lorakeep_optimizer.pt        optional (not optimizer.pt: Trainer would unpickle that)
//       lorakeep_rng.safetensors     optional (not rng_state.pth, likewise); with several
//                                    ranks one per rank, lorakeep_rng_<rank>.safetensors
//                                    (as Trainer's rng_state_<rank>.pth)
//       lorakeep_manifest.json       written last: sizes and checksums of all the above
//     .tmp-checkpoint-500-4242/      being written by pid 4242; removed if left over
//     .shared-check-<token>          for a moment while the ranks of a job open the
//                                    directory: each must see rank 0's file
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lorakeep::detail {

inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kAdapterPickleFile = "adapter_model.bin";
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";
inline constexpr const char* kManifestFile = "lorakeep_manifest.json";
inline constexpr const char* kOptimizerFile = "lorakeep_optimizer.pt";
inline constexpr const char* kRngFile = "lorakeep_rng.safetensors";
inline constexpr const char* kLockFile = ".lock";

// The RNG file of `rank` among `world` ranks: kRngFile for one process,
// "lorakeep_rng_<rank>.safetensors" for several.
std::string rng_file_name(int rank, int world);

// ".shared-check-<token>".
std::string shared_check_file_name(const std::string& token);

// "model" => "model.safetensors" (a set of one shard).
std::string single_shard_file_name(const std::string& base);

// The base name of Hugging Face's single-file and sharded model files.
inline constexpr const char* kModelBaseName = "model";

// "model", 2, 5 => "model-00002-of-00005.safetensors" (HF's shard names).
std::string shard_file_name(const std::string& base, std::size_t index, std::size_t count);

// "model" => "model.safetensors.index.json".
std::string shard_index_file_name(const std::string& base);

// Whether `path` names a sharded set's index ("*.safetensors.index.json" or
// any "*.index.json").
bool is_shard_index_path(const std::string& path);

// PEFT prefixes every key of an adapter file with this.
inline constexpr const char* kPeftPrefix = "base_model.model.";

// The files open_tensor_source looks for in a directory, in order:
// adapter_model.safetensors, adapter_model.bin, model.safetensors.index.json,
// model.safetensors.
const std::vector<std::string>& tensor_directory_candidates();

// 400 => "checkpoint-400" (Trainer's PREFIX_CHECKPOINT_DIR + "-" + step).
std::string checkpoint_dir_name(std::int64_t step);

// "checkpoint-400" => 400. Only the canonical spelling: no sign, no leading
// zero, no suffix ("checkpoint-0400", "checkpoint-4x" => nullopt), so that
// one step has one directory.
std::optional<std::int64_t> parse_checkpoint_dir_name(const std::string& name);

// (400, 4242) => ".tmp-checkpoint-400-4242": where checkpoint 400 is
// assembled before its rename.
std::string temp_checkpoint_dir_name(std::int64_t step, long pid);

// Whether `name` is a temporary checkpoint directory (of any process).
bool is_temp_checkpoint_dir_name(const std::string& name);

}  // namespace lorakeep::detail
