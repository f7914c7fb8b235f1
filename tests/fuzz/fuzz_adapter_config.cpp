// adapter_config.json: what parses is written back in a form that parses to
// the same configuration (format is idempotent after one round).
#include <cstdint>
#include <string>

#include "lorakeep/lora_config.h"
#include "fuzz_util.h"

using namespace lorakeep;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  const std::string text(reinterpret_cast<const char*>(data), size);
  LoraConfig config;
  if (!fuzz::parses([&] { config = parse_adapter_config(text, "adapter_config.json"); })) return 0;
  const std::string written = format_adapter_config(config);
  const std::string again = format_adapter_config(parse_adapter_config(written, "written"));
  fuzz::require(again == written, "adapter_config.json changed in a round trip:\n" + written + "\n---\n" + again);
  return 0;
}
