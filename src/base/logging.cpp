#include "base/logging.h"

#include <cstdlib>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>

#include "lorakeep/logging.h"

namespace lorakeep {
namespace detail {

std::shared_ptr<spdlog::logger> logger() {
  if (auto existing = spdlog::get(kLoggerName)) return existing;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (auto existing = spdlog::get(kLoggerName)) return existing;
  auto created = std::make_shared<spdlog::logger>(kLoggerName, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  created->set_pattern("[%H:%M:%S.%e] [lorakeep] [%^%l%$] %v");
  created->set_level(spdlog::level::info);
  if (const char* env = std::getenv("LORAKEEP_LOG_LEVEL")) {
    created->set_level(spdlog::level::from_str(env));
  }
  try {
    spdlog::register_logger(created);
  } catch (const spdlog::spdlog_ex&) {
    // The application registered one between our check and now: use it.
    if (auto existing = spdlog::get(kLoggerName)) return existing;
  }
  return created;
}

}  // namespace detail

void set_log_level(LogLevel level) {
  static const spdlog::level::level_enum kLevels[] = {spdlog::level::trace, spdlog::level::debug, spdlog::level::info,
                                                      spdlog::level::warn,  spdlog::level::err,   spdlog::level::off};
  detail::logger()->set_level(kLevels[static_cast<int>(level)]);
}

}  // namespace lorakeep
