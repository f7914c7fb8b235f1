// lorakeep/error.h: the one exception type of the library.
//
// Every failure the library reports is a lorakeep::Error carrying an ErrorCode
// and a message that names the action, the object (path or tensor key) and,
// where one helps, a hint. The library never exits or aborts.
//
// Thread-safety: Error is an immutable value; share it freely.
#pragma once

#include <stdexcept>
#include <string>

namespace lorakeep {

enum class ErrorCode {
  kInvalidArgument,  // the caller passed something unusable (bad option, empty name)
  kNotFound,         // a file, directory, tensor or checkpoint does not exist
  kCorruption,       // data exists but is malformed or fails its checksum
  kIncompatible,     // valid data that does not fit the target (shape, dtype, missing keys)
  kNotSupported,     // valid data using a feature this build cannot handle
  kIOError,          // the operating system refused a read, write, fsync or rename
  kLocked,           // another process holds the run directory
  kOutOfMemory,      // an allocation failed (on a device: its allocator ran out)
};

// "corruption" for ErrorCode::kCorruption: the lowercase name used in messages
// and in the CLI's JSON output.
const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace lorakeep
