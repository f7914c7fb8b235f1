// Private: the library's logger. See lorakeep/logging.h for the contract.
#pragma once

#include <memory>

#include <spdlog/spdlog.h>

namespace lorakeep::detail {

// The logger registered as "lorakeep", created on first use if the
// application registered none. Never null.
std::shared_ptr<spdlog::logger> logger();

}  // namespace lorakeep::detail
