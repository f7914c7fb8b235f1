#include "io/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "base/logging.h"

namespace lorakeep::detail {

DirLock DirLock::acquire(const std::string& dir) {
  const std::string path = dir + "/" + kLockFile;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw Error(ErrorCode::kIOError, "cannot open lock file '" + path + "': " + std::strerror(errno));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    char buf[32] = {0};
    const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    ::close(fd);
    if (e == EWOULDBLOCK) {
      const std::string holder = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string("?");
      throw Error(ErrorCode::kLocked, "run directory '" + dir + "' is locked by process " +
                                          holder.substr(0, holder.find('\n')) +
                                          " (hint: another training run or CheckpointManager writes there)");
    }
    throw Error(ErrorCode::kIOError, "cannot lock '" + path + "': " + std::strerror(e));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    log_warn("cannot record the pid in '{}': {}", path, std::strerror(errno));
  }
  return DirLock(path, fd);
}

DirLock::~DirLock() {
  if (fd_ < 0) return;
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

}  // namespace lorakeep::detail
