// The YAML run configuration, with the sections of lorakeep and of an
// application (examples/char_lm's): anything yaml-cpp or the schema refuses
// must come out as lorakeep::Error naming the file.
#include <cstdint>
#include <string>

#include "lorakeep/config.h"
#include "fuzz_util.h"
#include "settings.h"

using namespace lorakeep;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    char_lm::parse_config(text, "run.yaml");
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("run.yaml") == std::string::npos) fuzz::fail("an error that does not name the file: " + what);
  }
  return 0;
}
