#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/logging.h"
#include "io/file_ops.h"

namespace lorakeep::detail {
namespace {

[[noreturn]] void io_fail(const std::string& what, int err) {
  throw Error(ErrorCode::kIOError, what + ": " + std::strerror(err));
}

std::string parent_of(const std::string& path) {
  const std::string parent = boost::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

void fsync_path(const std::string& path) {
  FileOps& ops = file_ops();
  const int fd = ops.open_for_sync(path);
  if (fd < 0) io_fail("cannot open '" + path + "' to sync it", errno);
  if (ops.fsync(fd) != 0) {
    const int e = errno;
    ops.close(fd);
    io_fail("cannot sync '" + path + "'", e);
  }
  ops.close(fd);
}

}  // namespace

WritableFile WritableFile::create(const std::string& path) {
  const int fd = file_ops().create(path);
  if (fd < 0) io_fail("cannot create '" + path + "'", errno);
  return WritableFile(path, fd);
}

WritableFile::WritableFile(WritableFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), size_(other.size_), writeback_(other.writeback_) {
  other.fd_ = -1;
}

WritableFile::~WritableFile() {
  if (fd_ >= 0 && file_ops().close(fd_) != 0) log_warn("cannot close '{}': {}", path_, std::strerror(errno));
}

void WritableFile::append(const void* data, std::uint64_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most 0x7ffff000 bytes per call.
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, 1u << 30));
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      io_fail("cannot write '" + path_ + "' at byte " + std::to_string(size_), errno);
    }
    if (w == 0) io_fail("cannot write '" + path_ + "' at byte " + std::to_string(size_), ENOSPC);
    p += w;
    size -= static_cast<std::uint64_t>(w);
    size_ += static_cast<std::uint64_t>(w);
  }
  start_writeback();
}

// Big files reach the disk while they are being written: every
// kWritebackBytes the kernel is asked to start writing the range just
// written, and to finish the range before it. The final fsync then has
// little left to do, and dirty pages stay bounded (about two ranges) instead
// of growing with the file. Durability still comes from sync() alone.
void WritableFile::start_writeback() {
#ifdef __linux__
  constexpr std::uint64_t kWritebackBytes = 32u << 20;
  while (size_ - writeback_ >= kWritebackBytes) {
    if (writeback_ >= kWritebackBytes) {
      ::sync_file_range(fd_, static_cast<off_t>(writeback_ - kWritebackBytes), kWritebackBytes,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    }
    ::sync_file_range(fd_, static_cast<off_t>(writeback_), kWritebackBytes, SYNC_FILE_RANGE_WRITE);
    writeback_ += kWritebackBytes;
  }
#endif
}

void WritableFile::sync() {
  if (file_ops().fsync(fd_) != 0) io_fail("cannot sync '" + path_ + "'", errno);
}

void WritableFile::close() {
  const int fd = fd_;
  fd_ = -1;
  if (file_ops().close(fd) != 0) io_fail("cannot close '" + path_ + "'", errno);
}

std::string temp_path_beside(const std::string& final_path) {
  static std::atomic<unsigned> counter{0};
  const boost::filesystem::path p(final_path);
  const std::string name = "." + p.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter.fetch_add(1));
  return (p.parent_path() / name).string();
}

void publish(const std::string& tmp, const std::string& final_path, bool replace) {
  FileOps& ops = file_ops();
  fsync_path(tmp);
  struct stat existing;
  if (replace && ::lstat(final_path.c_str(), &existing) == 0 && S_ISDIR(existing.st_mode)) {
    // rename(2) cannot replace a non-empty directory: swap the two in one
    // step, then delete the old one, which now sits at `tmp`.
    int rc = ops.exchange(tmp, final_path);
    if (rc != 0 && errno == EINVAL) {
      // No RENAME_EXCHANGE on this file system: move the old one aside first.
      const std::string aside = temp_path_beside(final_path);
      if (ops.rename(final_path, aside) != 0) {
        io_fail("cannot move '" + final_path + "' aside to replace it", errno);
      }
      rc = ops.rename(tmp, final_path);
      if (rc != 0) {
        const int e = errno;
        ops.rename(aside, final_path);
        io_fail("cannot rename '" + tmp + "' to '" + final_path + "'", e);
      }
      sync_directory(parent_of(final_path));
      remove_all_logged(aside);
      return;
    }
    if (rc != 0) io_fail("cannot swap '" + tmp + "' into '" + final_path + "'", errno);
    sync_directory(parent_of(final_path));
    remove_all_logged(tmp);
    return;
  }
  int rc = replace ? ops.rename(tmp, final_path) : ops.rename_noreplace(tmp, final_path);
  if (rc != 0 && !replace && errno == EINVAL) {
    // The file system cannot refuse to replace: check, then rename (racy only
    // against another writer, which the run directory lock excludes).
    struct stat st;
    if (::lstat(final_path.c_str(), &st) == 0) io_fail("cannot rename '" + tmp + "' to '" + final_path + "'", EEXIST);
    rc = ops.rename(tmp, final_path);
  }
  if (rc != 0) io_fail("cannot rename '" + tmp + "' to '" + final_path + "'", errno);
  sync_directory(parent_of(final_path));
}

void sync_directory(const std::string& dir) { fsync_path(dir); }

StagedDirectory::StagedDirectory(std::string final_path, std::string tmp)
    : final_(std::move(final_path)), tmp_(tmp.empty() ? temp_path_beside(final_) : std::move(tmp)) {
  if (::mkdir(tmp_.c_str(), 0755) != 0) {
    const int e = errno;
    const std::string path = std::move(tmp_);
    tmp_.clear();
    io_fail("cannot create directory '" + path + "'", e);
  }
}

StagedDirectory::StagedDirectory(StagedDirectory&& other) noexcept
    : final_(std::move(other.final_)), tmp_(std::exchange(other.tmp_, std::string())) {}

StagedDirectory::~StagedDirectory() {
  if (!tmp_.empty()) remove_all_logged(tmp_);
}

void StagedDirectory::publish(bool replace) {
  lorakeep::detail::publish(tmp_, final_, replace);
  tmp_.clear();
}

void write_file_atomically(const std::string& path, const std::function<void(WritableFile&)>& fill) {
  const std::string tmp = temp_path_beside(path);
  try {
    WritableFile file = WritableFile::create(tmp);
    fill(file);
    file.close();  // publish() syncs it
    publish(tmp, path, /*replace=*/true);
  } catch (...) {
    file_ops().unlink(tmp);
    throw;
  }
}

FileDigest write_synced_file(const std::string& path, const std::string& bytes) {
  WritableFile f = WritableFile::create(path);
  f.append(bytes.data(), bytes.size());
  f.sync();
  f.close();
  return FileDigest{bytes.size(), xxh3_64(bytes.data(), bytes.size())};
}

bool remove_all_logged(const std::string& path) {
  boost::system::error_code ec;
  boost::filesystem::remove_all(path, ec);
  if (ec) {
    log_error("cannot remove '{}': {}", path, ec.message());
    return false;
  }
  return true;
}

}  // namespace lorakeep::detail
