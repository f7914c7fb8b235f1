#include "checkpoint/export.h"

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/read_file.h"

namespace lorakeep::detail {
namespace {

namespace fs = boost::filesystem;

void copy_verified(const std::string& from, const std::string& to, const FileDigest& expected) {
  ReadableFile in(from);
  WritableFile out = WritableFile::create(to);
  Xxh3Stream hash;
  in.for_each_block(4 << 20, [&](const char* data, std::size_t n) {
    hash.update(data, n);
    out.append(data, n);
  });
  if (out.size() != expected.size || hash.digest() != expected.xxh3) {
    throw Error(ErrorCode::kCorruption,
                "checkpoint file '" + from + "' does not match its manifest (size " + std::to_string(out.size()) +
                    ", checksum " + format_checksum(hash.digest()) + "; expected " + std::to_string(expected.size) +
                    ", " + format_checksum(expected.xxh3) + ")");
  }
  out.sync();
  out.close();
}

}  // namespace

void export_adapter(const std::string& checkpoint_dir, const Manifest& manifest, const std::string& out_dir) {
  StagedDirectory staged(out_dir);
  for (const char* name : {kAdapterWeightsFile, kAdapterConfigFile}) {
    auto entry = manifest.files.find(name);
    if (entry == manifest.files.end()) {
      throw Error(ErrorCode::kCorruption, "the manifest of '" + checkpoint_dir + "' does not list " + name);
    }
    copy_verified((fs::path(checkpoint_dir) / name).string(), (fs::path(staged.path()) / name).string(), entry->second);
  }
  staged.publish(/*replace=*/true);
}

}  // namespace lorakeep::detail
