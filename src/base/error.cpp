#include "lorakeep/error.h"

namespace lorakeep {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kCorruption: return "corruption";
    case ErrorCode::kIncompatible: return "incompatible";
    case ErrorCode::kNotSupported: return "not_supported";
    case ErrorCode::kIOError: return "io_error";
    case ErrorCode::kLocked: return "locked";
    case ErrorCode::kOutOfMemory: return "out_of_memory";
  }
  return "unknown";
}

}  // namespace lorakeep
