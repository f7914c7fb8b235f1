// Writing files so that readers see all of them or nothing.
//
// Every temp-then-rename in lorakeep goes through publish(): a file or a
// directory is prepared under a temporary name in the same directory, and
// publish() makes it durable and visible in one step.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "io/checksum.h"

namespace lorakeep::detail {

// An open file being written. Not thread-safe; move-only.
class WritableFile {
 public:
  // Creates `path`, which must not exist. Throws Error(kIOError) naming it.
  static WritableFile create(const std::string& path);

  WritableFile(WritableFile&& other) noexcept;
  WritableFile& operator=(WritableFile&&) = delete;
  WritableFile(const WritableFile&) = delete;
  ~WritableFile();  // closes without syncing; never throws

  // Writes all of [data, data + size). Throws Error(kIOError) with the path and
  // the system's reason (e.g. "No space left on device").
  void append(const void* data, std::uint64_t size);
  // fsync(2). Throws Error(kIOError).
  void sync();
  // close(2), reporting its error. Throws Error(kIOError).
  void close();

  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }

 private:
  WritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  void start_writeback();

  std::string path_;
  int fd_;
  std::uint64_t size_ = 0;
  std::uint64_t writeback_ = 0;  // bytes [0, writeback_) have been handed to writeback
};

// "<dir>/.<name>.tmp-<pid>-<n>": a fresh temporary name beside `final_path`.
std::string temp_path_beside(const std::string& final_path);

// The one publishing step: fsync `tmp` (a file or a directory whose files the
// caller already synced), rename it to `final_path`, fsync the parent
// directory. With replace=false an existing `final_path` is an error
// (kIOError, "File exists") and is left untouched; with replace=true an
// existing file is replaced atomically, and an existing directory is swapped
// out atomically (RENAME_EXCHANGE) and then deleted.
// Throws Error(kIOError) naming both paths.
void publish(const std::string& tmp, const std::string& final_path, bool replace);

// The one lifecycle of a directory that appears whole or not at all: it is
// created under a temporary name, filled by the caller (each file synced),
// then published under its final name; destroyed unpublished (an exception
// on the way), it is removed with everything in it. Move-only; not
// thread-safe.
//
//   StagedDirectory staged(out_dir);          // "<parent>/.<name>.tmp-<pid>-<n>/"
//   write_files_into(staged.path());
//   staged.publish(/*replace=*/true);         // fsync, rename, fsync parent
class StagedDirectory {
 public:
  // Creates `tmp` (by default temp_path_beside(final_path)), which must not
  // exist. Throws Error(kIOError) naming it.
  explicit StagedDirectory(std::string final_path, std::string tmp = {});
  ~StagedDirectory();  // unpublished: removes the temporary directory, logging failures; never throws
  StagedDirectory(StagedDirectory&& other) noexcept;
  StagedDirectory& operator=(StagedDirectory&&) = delete;
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  // The temporary directory to fill.
  const std::string& path() const { return tmp_; }

  // publish(path(), <the final path>, replace). Throws as publish(); the
  // temporary directory is then still removed by the destructor.
  void publish(bool replace);

 private:
  std::string final_;
  std::string tmp_;  // empty once published or moved from
};

// Writes `path` atomically: `fill` writes into a temp file beside it, which is
// then published (replacing `path` if it exists). On any failure the temp file
// is removed and `path` is unchanged.
void write_file_atomically(const std::string& path, const std::function<void(WritableFile&)>& fill);

// Writes one small file that must not exist yet, synced (for a directory
// published whole later), and returns its digest, computed from the bytes
// written. Throws Error(kIOError) naming it.
FileDigest write_synced_file(const std::string& path, const std::string& bytes);

// fsync(2) of a directory. Throws Error(kIOError).
void sync_directory(const std::string& dir);

// Removes a file or directory tree; logs (never throws) on failure and
// returns whether it is gone.
bool remove_all_logged(const std::string& path);

}  // namespace lorakeep::detail
