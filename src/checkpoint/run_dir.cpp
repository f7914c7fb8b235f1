#include "checkpoint/run_dir.h"

#include <algorithm>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"

namespace lorakeep::detail {

namespace fs = boost::filesystem;

std::vector<const ScannedCheckpoint*> RunDirScan::valid() const {
  std::vector<const ScannedCheckpoint*> out;
  for (const ScannedCheckpoint& c : checkpoints) {
    if (c.manifest) out.push_back(&c);
  }
  return out;
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
      const CheckpointReader reader(c.path);
      reader.check_all(/*full=*/false);
      c.manifest = reader.manifest();
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

}  // namespace lorakeep::detail
