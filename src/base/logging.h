// Private: how the library writes a message. See lorakeep/logging.h for where
// messages go.
//
// No spdlog (nor fmt) here: this header is included next to LibTorch's, and
// LibTorch 2.x ships its own fmt, which Debian's spdlog cannot be compiled
// with. spdlog lives in logging.cpp alone, a translation unit that never sees
// LibTorch's include directory.
#pragma once

#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

#include "lorakeep/logging.h"

namespace lorakeep::detail {

bool log_enabled(LogLevel level);
void log_line(LogLevel level, const std::string& message);

// "{}" placeholders replaced by the arguments in order. Arguments are numbers
// (bools as true/false) or strings; format a double with fixed() first.
template <class... Args>
std::string format_message(std::string_view pattern, const Args&... args) {
  static_assert(((std::is_arithmetic_v<Args> || std::is_convertible_v<const Args&, std::string_view>)&&...),
                "log arguments are numbers or strings");
  std::ostringstream out;
  out << std::boolalpha;
  [[maybe_unused]] const auto next = [&](const auto& arg) {
    const std::size_t at = pattern.find("{}");
    out << pattern.substr(0, at) << arg;
    pattern = at == std::string_view::npos ? std::string_view() : pattern.substr(at + 2);
  };
  (next(args), ...);
  out << pattern;
  return out.str();
}

template <class... Args>
void log(LogLevel level, std::string_view pattern, const Args&... args) {
  if (log_enabled(level)) log_line(level, format_message(pattern, args...));
}
template <class... Args>
void log_debug(std::string_view pattern, const Args&... args) {
  log(LogLevel::kDebug, pattern, args...);
}
template <class... Args>
void log_info(std::string_view pattern, const Args&... args) {
  log(LogLevel::kInfo, pattern, args...);
}
template <class... Args>
void log_warn(std::string_view pattern, const Args&... args) {
  log(LogLevel::kWarn, pattern, args...);
}
template <class... Args>
void log_error(std::string_view pattern, const Args&... args) {
  log(LogLevel::kError, pattern, args...);
}

}  // namespace lorakeep::detail
