// The safetensors header parser, on whole files: what it accepts is laid out
// exactly as promised, and the writer's header for the same tensors parses
// back to the same tensors.
#include <cstdint>
#include <cstring>
#include <string>

#include "format/header.h"
#include "fuzz_util.h"

using namespace lorakeep;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  detail::SafetensorsHeader h;
  if (!fuzz::parses([&] { h = detail::parse_safetensors_header(data, size, "fuzz.safetensors"); })) return 0;

  fuzz::require(h.data_start() + h.data_size == size, "data does not end at the end of the file");
  std::uint64_t at = 0;
  for (const TensorInfo& t : h.tensors) {
    fuzz::require(t.data_begin == at, "tensor '" + t.name + "' does not start where the previous ended");
    std::uint64_t bytes = 0;
    fuzz::require(
        detail::checked_byte_size(t.dtype, std::vector<std::uint64_t>(t.shape.begin(), t.shape.end()), &bytes) &&
            bytes == t.byte_size(),
        "tensor '" + t.name + "' has a byte length other than its shape's");
    at = t.data_end;
  }
  fuzz::require(at == h.data_size, "the tensors do not cover the data");

  // Round trip: the writer's header for these tensors, over zeroed data.
  const detail::HeaderLayout layout = detail::layout_safetensors_header(h.tensors, h.metadata);
  fuzz::require(layout.data_size == h.data_size, "the writer lays out a different data size");
  std::string file(8, '\0');
  const std::uint64_t n = layout.header.size();
  std::memcpy(file.data(), &n, 8);  // little-endian, as x86 and the format are
  file += layout.header;
  file.append(layout.data_size, '\0');
  const detail::SafetensorsHeader again = detail::parse_safetensors_header(
      reinterpret_cast<const std::uint8_t*>(file.data()), file.size(), "rewritten");
  fuzz::require(again.metadata == h.metadata, "metadata changed in a round trip");
  fuzz::require(again.tensors.size() == layout.tensors.size(), "tensor count changed in a round trip");
  for (std::size_t i = 0; i < again.tensors.size(); ++i) {
    const TensorInfo &a = again.tensors[i], &b = layout.tensors[i];
    fuzz::require(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.data_begin == b.data_begin &&
                      a.data_end == b.data_end,
                  "tensor '" + b.name + "' changed in a round trip");
  }
  return 0;
}
