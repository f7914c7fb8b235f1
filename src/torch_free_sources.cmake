# The sources of lorakeep_torch_free, the part of the library that does not
# include LibTorch (base, files, parsers, manifest, trainer state, options,
# run configuration), shared by src/CMakeLists.txt and the standalone fuzzing
# build (tests/fuzz/CMakeLists.txt).
set(LORAKEEP_TORCH_FREE_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/base/error.cpp
  ${CMAKE_CURRENT_LIST_DIR}/base/file_names.cpp
  ${CMAKE_CURRENT_LIST_DIR}/base/logging.cpp
  ${CMAKE_CURRENT_LIST_DIR}/base/text.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/checkpoint_reader.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/export.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/manifest.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/checkpoint_options.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/policy.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/run_dir.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/trainer_state.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint/training_state.cpp
  ${CMAKE_CURRENT_LIST_DIR}/format/dtype.cpp
  ${CMAKE_CURRENT_LIST_DIR}/format/header.cpp
  ${CMAKE_CURRENT_LIST_DIR}/format/json.cpp
  ${CMAKE_CURRENT_LIST_DIR}/format/shard_index.cpp
  ${CMAKE_CURRENT_LIST_DIR}/format/tensor_info.cpp
  ${CMAKE_CURRENT_LIST_DIR}/format/utf8.cpp
  ${CMAKE_CURRENT_LIST_DIR}/io/atomic_file.cpp
  ${CMAKE_CURRENT_LIST_DIR}/io/checksum.cpp
  ${CMAKE_CURRENT_LIST_DIR}/io/file_ops.cpp
  ${CMAKE_CURRENT_LIST_DIR}/io/read_file.cpp
  ${CMAKE_CURRENT_LIST_DIR}/lora/lora_config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/train/callback_options.cpp
  ${CMAKE_CURRENT_LIST_DIR}/train/config.cpp
  ${CMAKE_CURRENT_LIST_DIR}/train/config_schema.cpp
)
