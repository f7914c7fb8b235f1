// lorakeep/logging.h: where the library's messages go.
//
// By default lorakeep logs through one named spdlog logger and never touches
// spdlog's default logger. To route lorakeep's messages elsewhere through
// spdlog, register your own logger under kLoggerName before the first call
// into the library (or spdlog::drop(kLoggerName) and register a new one
// later); lorakeep picks it up on its next message. Without one, lorakeep
// creates a stderr logger at level info (env LORAKEEP_LOG_LEVEL overrides:
// trace, debug, info, warn, error, off).
//
// An application that does not use spdlog installs a sink instead: every
// message at or above the level goes to it, and none to spdlog. (Programs
// built against LibTorch 2.x usually cannot include Debian's spdlog at all:
// LibTorch ships a newer fmt whose headers shadow the one spdlog was built on.
// lorakeep itself includes spdlog in one translation unit that never sees
// LibTorch's headers.)
//
// Thread-safety: safe from any thread; a sink is called from the thread that
// logs, and must be safe to call from several at once.
#pragma once

#include <functional>
#include <string_view>

namespace lorakeep {

inline constexpr const char* kLoggerName = "lorakeep";

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Receives one message, without a trailing newline.
using LogSink = std::function<void(LogLevel level, std::string_view message)>;

// Sends the library's messages to `sink` from now on; an empty sink goes back
// to the spdlog logger.
void set_log_sink(LogSink sink);

// Sets the level below which messages are dropped: the sink's, and that of the
// current "lorakeep" spdlog logger (created if the application registered
// none).
void set_log_level(LogLevel level);

}  // namespace lorakeep
