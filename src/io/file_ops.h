// The file system calls of io/atomic_file.cpp, behind a seam (as leveldb's
// Env): every rename, fsync and open-to-sync of publish(), StagedDirectory
// and WritableFile goes through file_ops(), so that a test can make one of
// them fail on purpose and check what publish() leaves on disk.
//
//   struct FailingRename : detail::FileOps {
//     int rename(const std::string& from, const std::string& to) override {
//       errno = EIO;
//       return -1;
//     }
//   } failing;
//   detail::ScopedFileOps scope(failing);  // until the end of the scope
//
// Private to io/. No LibTorch here.
#pragma once

#include <string>

namespace lorakeep::detail {

// Each call behaves as the POSIX call it is named after: it returns what that
// call returns (-1 on failure) and leaves errno as that call leaves it. The
// base class makes the real calls; an override may fail a call (set errno,
// return -1) or forward to the base.
class FileOps {
 public:
  FileOps() = default;
  virtual ~FileOps() = default;
  FileOps(const FileOps&) = delete;
  FileOps& operator=(const FileOps&) = delete;

  // open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644): a new file to
  // write (WritableFile::create). The descriptor, or -1.
  virtual int create(const std::string& path);
  // open(path, O_RDONLY | O_CLOEXEC): a file or a directory opened only to
  // fsync it. The descriptor, or -1.
  virtual int open_for_sync(const std::string& path);
  // fsync(2).
  virtual int fsync(int fd);
  // close(2).
  virtual int close(int fd);
  // rename(2).
  virtual int rename(const std::string& from, const std::string& to);
  // renameat2(2) with RENAME_EXCHANGE: swaps `a` and `b`, both of which must
  // exist. EINVAL where the file system cannot.
  virtual int exchange(const std::string& a, const std::string& b);
  // renameat2(2) with RENAME_NOREPLACE: EEXIST if `to` exists. EINVAL where
  // the file system cannot refuse.
  virtual int rename_noreplace(const std::string& from, const std::string& to);
  // unlink(2).
  virtual int unlink(const std::string& path);
};

// The process's current file operations: the innermost ScopedFileOps's, else
// the real ones.
FileOps& file_ops();

// Installs `ops` as file_ops() for the life of the object, then restores the
// previous one. Scopes nest; they must end in the reverse order of their
// start. For tests: installing is not synchronised with calls already running
// on other threads, so install while no other thread writes files.
class ScopedFileOps {
 public:
  explicit ScopedFileOps(FileOps& ops);
  ~ScopedFileOps();
  ScopedFileOps(const ScopedFileOps&) = delete;
  ScopedFileOps& operator=(const ScopedFileOps&) = delete;

 private:
  FileOps* previous_;
};

}  // namespace lorakeep::detail
