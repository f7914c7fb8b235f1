// Every file and directory name of an adapter directory, a checkpoint and a
// run directory is built and parsed here, and nowhere else.
//
//   <output_dir>/
//     .lock                          flock held by the one writer
//     metrics.jsonl                  MetricsLogger's JSON lines
//     checkpoint-400/                committed: appears by one rename
//       adapter_model.safetensors    PEFT's adapter
//       adapter_config.json
//       trainer_state.json           Hugging Face Trainer's state
//       lorakeep_optimizer.pt        optional (not optimizer.pt: Trainer would unpickle that)
//       lorakeep_rng.safetensors     optional (not rng_state.pth, likewise)
//       lorakeep_manifest.json       written last: sizes and checksums of all the above
//     .tmp-checkpoint-500-4242/      being written by pid 4242; removed if left over
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace lorakeep::detail {

inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kAdapterPickleFile = "adapter_model.bin";
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";
inline constexpr const char* kManifestFile = "lorakeep_manifest.json";
inline constexpr const char* kOptimizerFile = "lorakeep_optimizer.pt";
inline constexpr const char* kRngFile = "lorakeep_rng.safetensors";
inline constexpr const char* kLockFile = ".lock";
inline constexpr const char* kMetricsLogFile = "metrics.jsonl";
inline constexpr const char* kReportFile = "report.html";

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
