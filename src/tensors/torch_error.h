// Private: LibTorch reports failures as c10::Error; at the library's boundary
// they become lorakeep::Error with context (STYLE.md), never escape as is.
#pragma once

#include <string>
#include <utility>

#include <c10/util/Exception.h>

#include "lorakeep/error.h"

namespace lorakeep::detail {

// Runs `f`; a c10::Error thrown inside becomes Error(code) whose message is
// `what` + ": " + the first line of LibTorch's message (no backtrace); an
// out-of-memory one becomes Error(ErrorCode::kOutOfMemory).
template <class F>
auto with_torch_errors(ErrorCode code, const std::string& what, F&& f) -> decltype(f()) {
  try {
    return std::forward<F>(f)();
  } catch (const c10::OutOfMemoryError& e) {
    std::string why = e.what_without_backtrace();
    throw Error(ErrorCode::kOutOfMemory, what + ": " + why.substr(0, why.find('\n')));
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    throw Error(code, what + ": " + why.substr(0, why.find('\n')));
  }
}

}  // namespace lorakeep::detail
