#include "checkpoint/export.h"

#include <boost/filesystem.hpp>

#include "base/file_names.h"
#include "io/atomic_file.h"

namespace lorakeep::detail {

void export_adapter(const CheckpointReader& checkpoint, const std::string& out_dir) {
  StagedDirectory staged(out_dir);
  for (const char* name : {kAdapterWeightsFile, kAdapterConfigFile}) {
    checkpoint.copy_verified(name, (boost::filesystem::path(staged.path()) / name).string());
  }
  staged.publish(/*replace=*/true);
}

}  // namespace lorakeep::detail
