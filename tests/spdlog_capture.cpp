#include "spdlog_capture.h"

#include <sstream>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "lorakeep/logging.h"

namespace lorakeep::test {

struct SpdlogCapture::Impl {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> default_before = spdlog::default_logger();
};

SpdlogCapture::SpdlogCapture() : impl_(std::make_unique<Impl>()) {
  auto mine = std::make_shared<spdlog::logger>(kLoggerName,
                                               std::make_shared<spdlog::sinks::ostream_sink_mt>(impl_->out));
  mine->set_level(spdlog::level::info);
  spdlog::drop(kLoggerName);
  spdlog::register_logger(mine);
}

SpdlogCapture::~SpdlogCapture() { spdlog::drop(kLoggerName); }

std::string SpdlogCapture::text() const { return impl_->out.str(); }

void SpdlogCapture::clear() { impl_->out.str(""); }

bool SpdlogCapture::default_logger_untouched() const { return spdlog::default_logger() == impl_->default_before; }

}  // namespace lorakeep::test
