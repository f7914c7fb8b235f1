// trainer_state.json (ours or Trainer's): what parses is written back in a
// form that parses to the same state.
#include <cstdint>
#include <string>

#include "checkpoint/trainer_state.h"
#include "fuzz_util.h"

using namespace lorakeep;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int quiet = fuzz::quiet();
  (void)quiet;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  TrainingState state;
  if (!fuzz::parses([&] { detail::parse_trainer_state(text, "trainer_state.json", &state); })) return 0;
  const std::string written = detail::format_trainer_state(state);
  TrainingState reread;
  detail::parse_trainer_state(written, "written", &reread);
  const std::string again = detail::format_trainer_state(reread);
  fuzz::require(again == written, "trainer_state.json changed in a round trip:\n" + written + "\n---\n" + again);
  return 0;
}
