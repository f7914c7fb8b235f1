// lorakeep_manifest.json: the input as it is (nearly always refused by the
// self-checksum) and resealed, so that the fuzzer reaches the JSON fields;
// what parses is written back to a manifest that parses the same.
#include <cstdint>
#include <string>

#include "checkpoint/manifest.h"
#include "fuzz_util.h"

using namespace lorakeep;

namespace {

void check(const std::string& text) {
  detail::Manifest m;
  if (!fuzz::parses([&] { m = detail::parse_manifest(text, "lorakeep_manifest.json"); })) return;
  const std::string written = detail::format_manifest(m);
  const std::string again = detail::format_manifest(detail::parse_manifest(written, "written"));
  fuzz::require(again == written, "the manifest changed in a round trip:\n" + written + "\n---\n" + again);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  const std::string text(reinterpret_cast<const char*>(data), size);
  check(text);
  check(detail::seal_manifest(text));
  return 0;
}
