// lorakeep/logging.h: the library logs through one named spdlog logger.
//
// The library never touches spdlog's default logger. To route lorakeep's
// messages elsewhere, register your own logger under kLoggerName before the
// first call into the library (or spdlog::drop(kLoggerName) and register a new
// one later); lorakeep picks it up on its next message. Without one, lorakeep
// creates a stderr logger at level info (env LORAKEEP_LOG_LEVEL overrides:
// trace, debug, info, warn, error, off).
//
// Thread-safety: safe from any thread.
#pragma once

namespace lorakeep {

inline constexpr const char* kLoggerName = "lorakeep";

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Sets the level of the current "lorakeep" logger, creating the default one
// if the application registered none.
void set_log_level(LogLevel level);

}  // namespace lorakeep
