// Opening and reading files, the one way: a missing file is kNotFound,
// anything that is not a regular file (a directory, a FIFO, a device) is
// refused before it can make a reader block, and read errors name the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace lorakeep::detail {

// open(2) for reading. Returns the descriptor and, in *size, the file's size.
// Throws Error(kNotFound), Error(kInvalidArgument) for a directory or a
// non-regular file, Error(kIOError) otherwise; each naming the path.
int open_for_reading(const std::string& path, std::uint64_t* size = nullptr);

// A file open for reading. Move-only; not thread-safe.
class ReadableFile {
 public:
  // Throws as open_for_reading.
  explicit ReadableFile(const std::string& path);
  ~ReadableFile();
  ReadableFile(const ReadableFile&) = delete;
  ReadableFile& operator=(const ReadableFile&) = delete;

  std::uint64_t size() const { return size_; }

  // Reads up to `n` bytes; returns 0 at the end. Throws Error(kIOError).
  std::size_t read(void* buf, std::size_t n);

  // Calls sink(data, n) for each block of at most `block` bytes, front to
  // back, to the end of the file. Throws Error(kIOError) and what sink throws.
  void for_each_block(std::size_t block, const std::function<void(const char*, std::size_t)>& sink);

 private:
  std::string path_;
  int fd_;
  std::uint64_t size_ = 0;
};

// Reads a whole (small) file. Throws Error(kNotFound) if missing,
// Error(kIOError) if unreadable, Error(kCorruption) if larger than max_bytes.
std::string read_small_file(const std::string& path, std::uint64_t max_bytes);

// The first `n` bytes of a file (fewer if it is shorter). Throws Error(kNotFound) if
// missing, Error(kIOError) if unreadable.
std::string read_file_prefix(const std::string& path, std::size_t n);

}  // namespace lorakeep::detail
