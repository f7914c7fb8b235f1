// model.safetensors.index.json: what parses renders back to the same map
// (sorted by tensor name, as Hugging Face writes it).
#include <algorithm>
#include <cstdint>
#include <string>

#include "format/shard_index.h"
#include "fuzz_util.h"

using namespace lorakeep;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  detail::ShardIndex index;
  if (!fuzz::parses([&] { index = detail::parse_shard_index(text, "model.safetensors.index.json"); })) return 0;
  const std::string rendered = detail::render_shard_index(index.total_size.value_or(0), index.weight_map);
  const detail::ShardIndex again = detail::parse_shard_index(rendered, "rendered");
  auto sorted = index.weight_map;
  std::sort(sorted.begin(), sorted.end());
  fuzz::require(again.weight_map == sorted, "the weight map changed in a round trip");
  fuzz::require(again.shard_files == index.shard_files, "the shard list changed in a round trip");
  return 0;
}
