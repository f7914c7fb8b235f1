// The library logs through the named spdlog logger "lorakeep", which an
// application can replace, or through a sink the application installs;
// spdlog's default logger is never touched.
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "lorakeep/logging.h"
#include "lorakeep/transfer.h"
#include "base/logging.h"
#include "spdlog_capture.h"
#include "test_util.h"

namespace lorakeep {
namespace {

// Saves a one-tensor file and loads it once: the load logs one info line.
struct OneLoad {
  test::TempDir dir;
  NamedTensors live = {{"w", at::zeros({4})}};
  OneLoad() { save_safetensors(dir / "a.safetensors", {{"w", at::ones({4})}}); }
  void run() { load_into(live, *open_tensor_source(dir / "a.safetensors")); }
};

}  // namespace

TEST_CASE("an application-registered lorakeep logger receives the library messages", "[logging]") {
  test::SpdlogCapture captured;
  OneLoad load;
  load.run();
  CHECK_THAT(captured.text(), Catch::Matchers::Contains("loaded 1 tensors"));

  set_log_level(LogLevel::kOff);  // silences the registered logger
  captured.clear();
  load.run();
  CHECK(captured.text().empty());
  CHECK(captured.default_logger_untouched());
}

TEST_CASE("a log sink receives the library messages instead of spdlog", "[logging]") {
  test::SpdlogCapture captured;
  std::mutex mu;
  std::vector<std::pair<LogLevel, std::string>> seen;
  set_log_sink([&](LogLevel level, std::string_view message) {
    std::lock_guard<std::mutex> lock(mu);
    seen.emplace_back(level, std::string(message));
  });
  set_log_level(LogLevel::kInfo);
  OneLoad load;
  load.run();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].first == LogLevel::kInfo);
  CHECK_THAT(seen[0].second, Catch::Matchers::StartsWith("loaded 1 tensors"));
  CHECK(captured.text().empty());

  set_log_level(LogLevel::kWarn);  // the sink's level too
  load.run();
  CHECK(seen.size() == 1);

  set_log_sink(nullptr);  // back to spdlog
  set_log_level(LogLevel::kInfo);
  load.run();
  CHECK(seen.size() == 1);
  CHECK_THAT(captured.text(), Catch::Matchers::Contains("loaded 1 tensors"));
}

TEST_CASE("log messages put their arguments in the placeholders", "[logging]") {
  CHECK(detail::format_message("'{}' has {} of {} ({})", std::string("x.bin"), 3, 4.5, true) ==
        "'x.bin' has 3 of 4.5 (true)");
  CHECK(detail::format_message("no placeholders") == "no placeholders");
  CHECK(detail::format_message("{}{}", "a", "b") == "ab");
}

}  // namespace lorakeep
