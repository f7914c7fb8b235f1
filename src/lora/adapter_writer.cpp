#include "lora/adapter_writer.h"

#include <boost/filesystem.hpp>

#include "base/file_names.h"
#include "io/atomic_file.h"
#include "tensors/safetensors_writer.h"

namespace lorakeep::detail {

WrittenAdapter write_adapter(const std::string& dir, const NamedTensors& tensors, const LoraConfig& config,
                             bool direct) {
  namespace fs = boost::filesystem;
  LoraConfig saved = config;
  saved.inference_mode = true;
  const std::string text = format_adapter_config(saved);
  WrittenAdapter out;
  out.config_path = (fs::path(dir) / kAdapterConfigFile).string();
  out.config = FileDigest{text.size(), xxh3_64(text.data(), text.size())};
  const std::string weights = (fs::path(dir) / kAdapterWeightsFile).string();
  if (direct) {
    // Inside a directory that is published whole later: plain files, synced.
    out.weights = write_safetensors(weights, tensors, {{"format", "pt"}}, SafetensorsWriter::Mode::kDirect,
                                    64ull << 20);
    write_synced_file(out.config_path, text);
  } else {
    out.weights = save_safetensors(weights, tensors, {{"format", "pt"}});
    write_file_atomically(out.config_path, [&](WritableFile& f) { f.append(text.data(), text.size()); });
  }
  return out;
}

}  // namespace lorakeep::detail
