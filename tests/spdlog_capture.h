// An spdlog logger registered as "lorakeep" that writes into a string, for
// the logging test. The header names no spdlog type: the tests see LibTorch's
// include directory, and LibTorch 2.x's fmt cannot be compiled next to
// Debian's spdlog (see src/base/logging.h), so spdlog stays in the .cpp.
#pragma once

#include <memory>
#include <string>

namespace lorakeep::test {

class SpdlogCapture {
 public:
  SpdlogCapture();   // replaces any logger registered as "lorakeep"
  ~SpdlogCapture();  // drops it again
  SpdlogCapture(const SpdlogCapture&) = delete;
  SpdlogCapture& operator=(const SpdlogCapture&) = delete;

  std::string text() const;
  void clear();
  // Whether spdlog's default logger is still the one it was at construction.
  bool default_logger_untouched() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lorakeep::test
