#include "io/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "lorakeep/error.h"

namespace lorakeep::detail {

int open_for_reading(const std::string& path, std::uint64_t* size) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    throw Error(e == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIOError,
                "cannot open '" + path + "': " + std::strerror(e));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(ErrorCode::kIOError, "cannot stat '" + path + "': " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kInvalidArgument,
                "'" + path + "' is " + (S_ISDIR(st.st_mode) ? "a directory" : "not a regular file") + ", not a file");
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  if (size) *size = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

ReadableFile::ReadableFile(const std::string& path) : path_(path), fd_(open_for_reading(path, &size_)) {
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
}

ReadableFile::~ReadableFile() { ::close(fd_); }

std::size_t ReadableFile::read(void* buf, std::size_t n) {
  for (;;) {
    const ssize_t r = ::read(fd_, buf, n);
    if (r >= 0) return static_cast<std::size_t>(r);
    if (errno != EINTR) throw Error(ErrorCode::kIOError, "cannot read '" + path_ + "': " + std::strerror(errno));
  }
}

void ReadableFile::for_each_block(std::size_t block, const std::function<void(const char*, std::size_t)>& sink) {
  std::vector<char> buf(block);
  for (std::size_t n; (n = read(buf.data(), buf.size())) > 0;) sink(buf.data(), n);
}

std::string read_small_file(const std::string& path, std::uint64_t max_bytes) {
  ReadableFile file(path);
  auto too_big = [&](std::uint64_t size) {
    return Error(ErrorCode::kCorruption, "'" + path + "' is " + std::to_string(size) + " bytes, more than the " +
                                             std::to_string(max_bytes) + " expected");
  };
  if (file.size() > max_bytes) throw too_big(file.size());
  std::string text;
  file.for_each_block(65536, [&](const char* data, std::size_t n) {
    text.append(data, n);
    if (text.size() > max_bytes) throw too_big(text.size());  // it grew while read
  });
  return text;
}

std::string read_file_prefix(const std::string& path, std::size_t n) {
  ReadableFile file(path);
  std::string head(n, '\0');
  std::size_t got = 0;
  for (std::size_t r; got < n && (r = file.read(head.data() + got, n - got)) > 0;) got += r;
  head.resize(got);
  return head;
}

}  // namespace lorakeep::detail
