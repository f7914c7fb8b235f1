#include "io/mapped_file.h"
#include "io/read_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lorakeep/error.h"
#include "base/logging.h"

namespace lorakeep::detail {
namespace {

std::uint64_t page_size() {
  static const std::uint64_t kPage = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  return kPage;
}

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  std::uint64_t size = 0;
  const int fd = open_for_reading(path, &size);
  std::uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw Error(ErrorCode::kIOError, "cannot map '" + path + "': " + std::strerror(e));
    }
    data = static_cast<std::uint8_t*>(p);
  }
  return std::shared_ptr<const MappedFile>(new MappedFile(path, fd, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && ::munmap(data_, size_) != 0) {
    log_warn("cannot unmap '{}': {}", path_, std::strerror(errno));
  }
  ::close(fd_);
}

void MappedFile::read(std::uint64_t offset, void* dst, std::uint64_t length) const {
  auto* out = static_cast<char*>(dst);
  while (length > 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(length, 1u << 30));
    const ssize_t r = ::pread(fd_, out, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::kIOError,
                  "cannot read '" + path_ + "' at byte " + std::to_string(offset) + ": " + std::strerror(errno));
    }
    if (r == 0) {
      throw Error(ErrorCode::kCorruption, "'" + path_ + "' ends at byte " + std::to_string(offset) +
                                              ", shorter than when it was opened (hint: another process truncated it)");
    }
    out += r;
    offset += static_cast<std::uint64_t>(r);
    length -= static_cast<std::uint64_t>(r);
  }
}

void MappedFile::release(std::uint64_t offset, std::uint64_t length) const {
  if (data_ == nullptr || length == 0 || offset >= size_) return;
  const std::uint64_t page = page_size();
  const std::uint64_t end = std::min(size_, offset + length);
  const std::uint64_t first = (offset + page - 1) / page * page;
  // The last partial page may be the file's last page: release it too.
  const std::uint64_t last = end == size_ ? (end + page - 1) / page * page : end / page * page;
  if (last > first) ::madvise(data_ + first, last - first, MADV_DONTNEED);
}

void MappedFile::will_read(std::uint64_t offset, std::uint64_t length) const {
  if (data_ == nullptr || length == 0 || offset >= size_) return;
  const std::uint64_t page = page_size();
  const std::uint64_t first = offset / page * page;
  const std::uint64_t end = std::min(size_, offset + length);
  ::posix_fadvise(fd_, static_cast<off_t>(first), static_cast<off_t>(end - first), POSIX_FADV_WILLNEED);
}

}  // namespace lorakeep::detail
