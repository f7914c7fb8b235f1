#include "checkpoint/export.h"

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "io/atomic_file.h"

namespace lorakeep::detail {

bool is_adapter_file(const std::string& name) {
  const std::string file = name.substr(name.find('/') + 1);  // the whole name when it has no folder
  return file == kAdapterWeightsFile || file == kAdapterConfigFile;
}

void export_adapter(const CheckpointReader& checkpoint, const std::string& out_dir) {
  namespace fs = boost::filesystem;
  StagedDirectory staged(out_dir);
  for (const auto& [name, entry] : checkpoint.manifest().files) {
    if (!is_adapter_file(name)) continue;
    const fs::path to = fs::path(staged.path()) / name;
    if (to.parent_path() != fs::path(staged.path())) {
      boost::system::error_code ec;
      fs::create_directory(to.parent_path(), ec);
      if (ec)
        throw Error(ErrorCode::kIOError,
                    "cannot create directory '" + to.parent_path().string() + "': " + ec.message());
    }
    checkpoint.copy_verified(name, to.string());
  }
  for (const std::string& folder : checkpoint.manifest().named_adapters()) {
    sync_directory((fs::path(staged.path()) / folder).string());
  }
  staged.publish(/*replace=*/true);
}

}  // namespace lorakeep::detail
