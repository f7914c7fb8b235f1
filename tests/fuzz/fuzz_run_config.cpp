// The YAML run configuration: anything yaml-cpp or the schema refuses must
// come out as lorakeep::Error naming the file.
#include <cstdint>
#include <string>

#include "lorakeep/config.h"
#include "fuzz_util.h"

using namespace lorakeep;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    parse_run_config(text, "run.yaml");
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("run.yaml") == std::string::npos) fuzz::fail("an error that does not name the file: " + what);
  }
  return 0;
}
