#include "checkpoint/export.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "checkpoint/layout.h"
#include "io/atomic_file.h"
#include "io/checksum.h"

namespace lorakeep::detail {
namespace {

namespace fs = boost::filesystem;

void copy_verified(const std::string& from, const std::string& to, const FileEntry& expected) {
  const int fd = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    throw Error(e == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIOError,
                "cannot open '" + from + "': " + std::strerror(e));
  }
  WritableFile out = WritableFile::create(to);
  Xxh3Stream hash;
  std::vector<char> buf(4 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      throw Error(ErrorCode::kIOError, "cannot read '" + from + "': " + std::strerror(e));
    }
    if (n == 0) break;
    hash.update(buf.data(), static_cast<std::uint64_t>(n));
    out.append(buf.data(), static_cast<std::uint64_t>(n));
  }
  ::close(fd);
  if (out.size() != expected.size || hash.digest() != expected.xxh3) {
    throw Error(ErrorCode::kCorruption, "checkpoint file '" + from + "' does not match its manifest (size " +
                                            std::to_string(out.size()) + ", checksum " + format_checksum(hash.digest()) +
                                            "; expected " + std::to_string(expected.size) + ", " +
                                            format_checksum(expected.xxh3) + ")");
  }
  out.sync();
  out.close();
}

}  // namespace

void export_adapter(const std::string& checkpoint_dir, const Manifest& manifest, const std::string& out_dir) {
  const std::string tmp = temp_path_beside(out_dir);
  boost::system::error_code ec;
  if (!fs::create_directory(tmp, ec)) {
    throw Error(ErrorCode::kIOError, "cannot create '" + tmp + "': " + (ec ? ec.message() : "it exists"));
  }
  try {
    for (const char* name : {kAdapterWeightsFile, kAdapterConfigFile}) {
      auto entry = manifest.files.find(name);
      if (entry == manifest.files.end()) {
        throw Error(ErrorCode::kCorruption, "the manifest of '" + checkpoint_dir + "' does not list " + name);
      }
      copy_verified((fs::path(checkpoint_dir) / name).string(), (fs::path(tmp) / name).string(), entry->second);
    }
    publish(tmp, out_dir, /*replace=*/true);
  } catch (...) {
    remove_all_logged(tmp);
    throw;
  }
}

}  // namespace lorakeep::detail
