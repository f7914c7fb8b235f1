// Opening files to read, the one way: a missing file is kNotFound, and
// anything that is not a regular file (a directory, a FIFO, a device) is
// refused before it can make a reader block or misbehave.
#pragma once

#include <cstdint>
#include <string>

namespace lorakeep::detail {

// open(2) for reading. Returns the descriptor and, in *size, the file's size.
// Throws Error(kNotFound), Error(kInvalidArgument) for a directory or a
// non-regular file, Error(kIOError) otherwise; each naming the path.
int open_for_reading(const std::string& path, std::uint64_t* size = nullptr);

}  // namespace lorakeep::detail
