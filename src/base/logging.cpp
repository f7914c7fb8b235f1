// The only translation unit that includes spdlog (see base/logging.h).
#include "base/logging.h"

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace lorakeep {
namespace {

constexpr spdlog::level::level_enum kSpdlogLevels[] = {spdlog::level::trace, spdlog::level::debug, spdlog::level::info,
                                                       spdlog::level::warn,  spdlog::level::err,   spdlog::level::off};

spdlog::level::level_enum to_spdlog(LogLevel level) { return kSpdlogLevels[static_cast<int>(level)]; }

LogLevel initial_level() {
  const char* env = std::getenv("LORAKEEP_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  const spdlog::level::level_enum parsed = spdlog::level::from_str(env);
  for (int i = 0; i < 6; ++i) {
    if (kSpdlogLevels[i] == parsed) return static_cast<LogLevel>(i);
  }
  return LogLevel::kInfo;
}

// The logger registered as "lorakeep", created on first use if the
// application registered none. Never null.
std::shared_ptr<spdlog::logger> logger() {
  if (auto existing = spdlog::get(kLoggerName)) return existing;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (auto existing = spdlog::get(kLoggerName)) return existing;
  auto created = std::make_shared<spdlog::logger>(kLoggerName, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  created->set_pattern("[%H:%M:%S.%e] [lorakeep] [%^%l%$] %v");
  created->set_level(to_spdlog(initial_level()));
  try {
    spdlog::register_logger(created);
  } catch (const spdlog::spdlog_ex&) {
    // The application registered one between our check and now: use it.
    if (auto existing = spdlog::get(kLoggerName)) return existing;
  }
  return created;
}

struct SinkSlot {
  std::mutex mu;
  std::shared_ptr<const LogSink> sink;  // null: spdlog
  std::atomic<int> level{static_cast<int>(initial_level())};
};

SinkSlot& sink_slot() {
  static SinkSlot slot;
  return slot;
}

std::shared_ptr<const LogSink> current_sink() {
  SinkSlot& slot = sink_slot();
  std::lock_guard<std::mutex> lock(slot.mu);
  return slot.sink;
}

}  // namespace

namespace detail {

bool log_enabled(LogLevel level) {
  if (level == LogLevel::kOff) return false;
  if (current_sink()) return static_cast<int>(level) >= sink_slot().level.load();
  return logger()->should_log(to_spdlog(level));
}

void log_line(LogLevel level, const std::string& message) {
  if (auto sink = current_sink()) {
    (*sink)(level, message);
    return;
  }
  logger()->log(to_spdlog(level), spdlog::string_view_t(message.data(), message.size()));
}

}  // namespace detail

void set_log_sink(LogSink sink) {
  SinkSlot& slot = sink_slot();
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.sink = sink ? std::make_shared<const LogSink>(std::move(sink)) : nullptr;
}

void set_log_level(LogLevel level) {
  sink_slot().level.store(static_cast<int>(level));
  logger()->set_level(to_spdlog(level));
}

}  // namespace lorakeep
