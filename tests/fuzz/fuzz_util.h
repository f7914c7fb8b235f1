// Shared by the libFuzzer targets. A target feeds the input to one parser
// and checks its promises:
//   - the only exception that may leave a parser is lorakeep::Error (any
//     other escapes to libFuzzer, which reports it as a crash);
//   - what parses survives a round trip through the matching writer.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "lorakeep/error.h"
#include "lorakeep/logging.h"

namespace lorakeep::fuzz {

// A broken promise: print it and abort, which libFuzzer records as a finding.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz: %s\n", what.c_str());
  std::abort();
}

inline void require(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

// Runs `parse`; lorakeep::Error is the expected way to refuse an input.
// Returns whether it parsed.
template <class F>
bool parses(F&& parse) {
  try {
    parse();
    return true;
  } catch (const Error& e) {
    if (e.what()[0] == '\0') fail("an error without a message");
    return false;
  }
}

// Quiet logging: parsers log ignored fields at debug level.
inline int quiet() {
  set_log_level(LogLevel::kOff);
  return 0;
}

}  // namespace lorakeep::fuzz
