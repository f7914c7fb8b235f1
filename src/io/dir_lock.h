// One writer per run directory: an flock(2) on <dir>/.lock for the lock
// holder's lifetime. The file holds the holder's pid, for the error message
// of the next one. flock locks go away with the process, so a crashed writer
// never leaves a stale lock.
#pragma once

#include <string>

namespace lorakeep::detail {

// Move-only; not thread-safe.
class DirLock {
 public:
  // Creates <dir>/.lock if needed and locks it without waiting.
  // Throws Error(kLocked) naming the holder's pid if another process (or
  // another lock in this one) holds it, Error(kIOError) on failure.
  static DirLock acquire(const std::string& dir);

  DirLock(DirLock&& other) noexcept : path_(std::move(other.path_)), fd_(other.fd_) { other.fd_ = -1; }
  DirLock& operator=(DirLock&&) = delete;
  DirLock(const DirLock&) = delete;
  ~DirLock();  // unlocks; never throws

 private:
  DirLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
};

}  // namespace lorakeep::detail
