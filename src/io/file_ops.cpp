#include "io/file_ops.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>

namespace lorakeep::detail {
namespace {

// The installed override; null: the real calls.
std::atomic<FileOps*> installed{nullptr};

FileOps& real_file_ops() {
  static FileOps ops;
  return ops;
}

}  // namespace

int FileOps::create(const std::string& path) {
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
}

int FileOps::open_for_sync(const std::string& path) { return ::open(path.c_str(), O_RDONLY | O_CLOEXEC); }

int FileOps::fsync(int fd) { return ::fsync(fd); }

int FileOps::close(int fd) { return ::close(fd); }

int FileOps::rename(const std::string& from, const std::string& to) { return ::rename(from.c_str(), to.c_str()); }

int FileOps::exchange(const std::string& a, const std::string& b) {
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE);
}

int FileOps::rename_noreplace(const std::string& from, const std::string& to) {
  return ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE);
}

int FileOps::unlink(const std::string& path) { return ::unlink(path.c_str()); }

FileOps& file_ops() {
  FileOps* ops = installed.load(std::memory_order_acquire);
  return ops != nullptr ? *ops : real_file_ops();
}

ScopedFileOps::ScopedFileOps(FileOps& ops) : previous_(installed.exchange(&ops, std::memory_order_acq_rel)) {}

ScopedFileOps::~ScopedFileOps() { installed.store(previous_, std::memory_order_release); }

}  // namespace lorakeep::detail
