#include "checkpoint/run_dir.h"

#include <sys/stat.h>

#include <algorithm>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "io/checksum.h"
#include "io/read_file.h"

namespace lorakeep::detail {
namespace {

namespace fs = boost::filesystem;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

}  // namespace

std::vector<const ScannedCheckpoint*> RunDirScan::valid() const {
  std::vector<const ScannedCheckpoint*> out;
  for (const ScannedCheckpoint& c : checkpoints) {
    if (c.manifest) out.push_back(&c);
  }
  return out;
}

Manifest read_manifest(const std::string& checkpoint_dir) {
  const std::string path = join(checkpoint_dir, kManifestFile);
  Manifest m = parse_manifest(read_small_file(path, 256ull << 20), path);
  const auto step = parse_checkpoint_dir_name(fs::path(checkpoint_dir).filename().string());
  if (step && *step != m.step) {
    throw Error(ErrorCode::kCorruption,
                "manifest '" + path + "' is for step " + std::to_string(m.step) + ", not " + std::to_string(*step));
  }
  return m;
}

void check_checkpoint_file(const std::string& checkpoint_dir, const std::string& name, const FileDigest& entry,
                           bool full) {
  const std::string path = join(checkpoint_dir, name);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    throw Error(ErrorCode::kNotFound, "checkpoint file '" + path + "' listed in its manifest is missing");
  }
  if (static_cast<std::uint64_t>(st.st_size) != entry.size) {
    throw Error(ErrorCode::kCorruption, "checkpoint file '" + path + "' is " + std::to_string(st.st_size) +
                                            " bytes; its manifest says " + std::to_string(entry.size) +
                                            " (hint: truncated or replaced)");
  }
  if (!full) return;
  const std::uint64_t got = checksum_file(path);
  if (got != entry.xxh3) {
    throw Error(ErrorCode::kCorruption, "checkpoint file '" + path + "' fails its checksum (manifest " +
                                            format_checksum(entry.xxh3) + ", file " + format_checksum(got) +
                                            ") (hint: the file was damaged after it was written)");
  }
}

void check_checkpoint_files(const std::string& checkpoint_dir, const Manifest& manifest, bool full) {
  for (const auto& [name, entry] : manifest.files) check_checkpoint_file(checkpoint_dir, name, entry, full);
}

RunDirScan scan_run_dir(const std::string& dir) {
  boost::system::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(ErrorCode::kNotFound, "run directory '" + dir + "' does not exist");
  RunDirScan scan;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(ErrorCode::kIOError, "cannot list '" + dir + "': " + ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) throw Error(ErrorCode::kIOError, "cannot list '" + dir + "': " + ec.message());
    const std::string name = it->path().filename().string();
    if (is_temp_checkpoint_dir_name(name)) {
      scan.temp_dirs.push_back(it->path().string());
      continue;
    }
    const auto step = parse_checkpoint_dir_name(name);
    if (!step || !fs::is_directory(it->path(), ec)) continue;
    ScannedCheckpoint c;
    c.step = *step;
    c.path = it->path().string();
    try {
      Manifest m = read_manifest(c.path);
      check_checkpoint_files(c.path, m, /*full=*/false);
      c.manifest = std::move(m);
    } catch (const Error& e) {
      c.problem = e.what();
      c.problem_code = e.code();
    }
    scan.checkpoints.push_back(std::move(c));
  }
  std::sort(scan.checkpoints.begin(), scan.checkpoints.end(),
            [](const ScannedCheckpoint& a, const ScannedCheckpoint& b) { return a.step < b.step; });
  std::sort(scan.temp_dirs.begin(), scan.temp_dirs.end());
  return scan;
}

std::vector<std::string> verify_checkpoints(const std::string& path) {
  std::vector<std::string> lines;
  auto verify_one = [&lines](const std::string& dir) {
    const Manifest m = read_manifest(dir);
    check_checkpoint_files(dir, m, /*full=*/true);
    lines.push_back("ok: " + dir + " (step " + std::to_string(m.step) + ", " + std::to_string(m.files.size()) +
                    " files, checksums verified)");
  };
  boost::system::error_code ec;
  if (fs::exists(join(path, kManifestFile), ec) || parse_checkpoint_dir_name(fs::path(path).filename().string())) {
    verify_one(path);
    return lines;
  }
  const RunDirScan scan = scan_run_dir(path);
  for (const ScannedCheckpoint& c : scan.checkpoints) {
    if (!c.manifest) throw Error(c.problem_code, c.problem);
    verify_one(c.path);
  }
  if (scan.checkpoints.empty()) {
    throw Error(ErrorCode::kNotFound, "'" + path + "' holds no checkpoint-<step> directory");
  }
  return lines;
}

}  // namespace lorakeep::detail
