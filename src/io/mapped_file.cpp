#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lorakeep/error.h"
#include "logging.h"

namespace lorakeep::detail {
namespace {

std::uint64_t page_size() {
  static const std::uint64_t kPage = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  return kPage;
}

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kInvalidArgument, "'" + path + "' is a directory, not a file");
  }
  const std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
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
  ::close(fd);  // the mapping keeps the file alive
  return std::shared_ptr<const MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && ::munmap(data_, size_) != 0) {
    logger()->warn("cannot unmap '{}': {}", path_, std::strerror(errno));
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
  ::madvise(data_ + first, end - first, MADV_WILLNEED);
}

}  // namespace lorakeep::detail
