#include "lorakeep/sharded.h"

#include <utility>

#include "tensors/safetensors_writer.h"
#include "tensors/sharded_writer.h"

namespace lorakeep {

ShardedSaveReport save_sharded(const std::string& dir, const NamedTensors& tensors,
                               const std::map<std::string, std::string>& metadata, const ShardOptions& options) {
  detail::IndexedTensors indexed = detail::index_tensors(tensors);
  detail::ShardedWriter writer(dir, std::move(indexed.specs), metadata, options);
  for (const TensorInfo& t : writer.order()) writer.write(*indexed.by_name.at(t.name));
  return writer.finish();
}

}  // namespace lorakeep
