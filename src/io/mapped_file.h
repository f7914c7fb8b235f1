// A read-only memory map of a whole file.
//
// Thread-safety: all methods are const and safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lorakeep::detail {

class MappedFile {
 public:
  // Maps `path` copy-on-write: pages are shared with the page cache until a
  // caller writes through a view, and a write never reaches the file. Falls
  // back to a read-only map when the kernel refuses the private writable one.
  // Throws Error(kNotFound) if the file does not exist, Error(kIOError) if it
  // cannot be opened or mapped, Error(kInvalidArgument) for a directory.
  static std::shared_ptr<const MappedFile> open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Drops the resident pages wholly inside [offset, offset + length) so the
  // process RSS does not grow with the file. Later reads fault them back in
  // from the file; changes written through views of that range are lost.
  void release(std::uint64_t offset, std::uint64_t length) const;

  // Hints that [offset, offset + length) is about to be read front to back.
  void will_read(std::uint64_t offset, std::uint64_t length) const;

  // Copies [offset, offset + length) of the file into `dst` with pread(2):
  // straight from the page cache, without mapping pages into the process (so
  // the RSS does not grow) and without the page faults of a first touch.
  // Reads the file, not private changes made through views.
  // Throws Error(kIOError) naming the path, Error(kCorruption) if the file
  // shrank.
  void read(std::uint64_t offset, void* dst, std::uint64_t length) const;

 private:
  MappedFile(std::string path, int fd, std::uint8_t* data, std::uint64_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}

  std::string path_;
  int fd_;
  std::uint8_t* data_;
  std::uint64_t size_;
};

}  // namespace lorakeep::detail
