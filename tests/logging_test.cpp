// The library logs through the named logger "lorakeep", which an application
// can replace; spdlog's default logger is never touched.
#include <sstream>

#include <ATen/ATen.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "lorakeep/logging.h"
#include "lorakeep/transfer.h"
#include "test_util.h"

namespace lorakeep {

TEST_CASE("an application-registered lorakeep logger receives the library messages", "[logging]") {
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto mine = std::make_shared<spdlog::logger>(kLoggerName, sink);
  mine->set_level(spdlog::level::info);
  spdlog::drop(kLoggerName);
  spdlog::register_logger(mine);
  const auto default_before = spdlog::default_logger();

  test::TempDir dir;
  save_safetensors(dir / "a.safetensors", {{"w", at::ones({4})}});
  const NamedTensors live = {{"w", at::zeros({4})}};
  load_into(live, *open_tensor_source(dir / "a.safetensors"));
  CHECK_THAT(captured.str(), Catch::Matchers::Contains("loaded 1 tensors"));

  set_log_level(LogLevel::kOff);  // silences the registered logger
  captured.str("");
  load_into(live, *open_tensor_source(dir / "a.safetensors"));
  CHECK(captured.str().empty());
  CHECK(spdlog::default_logger() == default_before);
  spdlog::drop(kLoggerName);
}

}  // namespace lorakeep
