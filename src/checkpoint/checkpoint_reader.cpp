#include "checkpoint/checkpoint_reader.h"

#include <sys/stat.h>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "checkpoint/run_dir.h"
#include "checkpoint/trainer_state.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/read_file.h"

namespace lorakeep::detail {
namespace {

namespace fs = boost::filesystem;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// A file of a checkpoint that is read whole, to be parsed: far above any
// trainer state, adapter config or RNG state lorakeep writes.
constexpr std::uint64_t kMaxSmallFile = 256ull << 20;

[[noreturn]] void fails_checksum(const std::string& path, std::uint64_t expected, std::uint64_t got) {
  throw Error(ErrorCode::kCorruption, "checkpoint file '" + path + "' fails its checksum (manifest " +
                                          format_checksum(expected) + ", file " + format_checksum(got) +
                                          ") (hint: the file was damaged after it was written)");
}

[[noreturn]] void wrong_size(const std::string& path, std::uint64_t size, std::uint64_t expected) {
  throw Error(ErrorCode::kCorruption, "checkpoint file '" + path + "' is " + std::to_string(size) +
                                          " bytes; its manifest says " + std::to_string(expected) +
                                          " (hint: truncated or replaced)");
}

void check_file(const std::string& path, const FileDigest& entry, bool full) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    throw Error(ErrorCode::kNotFound, "checkpoint file '" + path + "' listed in its manifest is missing");
  }
  if (static_cast<std::uint64_t>(st.st_size) != entry.size) wrong_size(path, st.st_size, entry.size);
  if (!full) return;
  const std::uint64_t got = checksum_file(path);
  if (got != entry.xxh3) fails_checksum(path, entry.xxh3, got);
}

}  // namespace

Manifest read_manifest(const std::string& checkpoint_dir) {
  const std::string path = join(checkpoint_dir, kManifestFile);
  Manifest m = parse_manifest(read_small_file(path, kMaxSmallFile), path);
  const auto step = parse_checkpoint_dir_name(fs::path(checkpoint_dir).filename().string());
  if (step && *step != m.step) {
    throw Error(ErrorCode::kCorruption,
                "manifest '" + path + "' is for step " + std::to_string(m.step) + ", not " + std::to_string(*step));
  }
  return m;
}

void check_checkpoint_files(const std::string& checkpoint_dir, const Manifest& manifest, bool full) {
  for (const auto& [name, entry] : manifest.files) check_file(join(checkpoint_dir, name), entry, full);
}

CheckpointReader::CheckpointReader(std::string dir) : dir_(std::move(dir)), manifest_(read_manifest(dir_)) {}

std::string CheckpointReader::path(const std::string& name) const { return join(dir_, name); }

const FileDigest& CheckpointReader::entry(const std::string& name) const {
  const auto it = manifest_.files.find(name);
  if (it == manifest_.files.end()) {
    throw Error(ErrorCode::kCorruption, "the manifest of '" + dir_ + "' does not list " + name);
  }
  return it->second;
}

void CheckpointReader::check(const std::string& name, bool full) const { check_file(path(name), entry(name), full); }

void CheckpointReader::check_all(bool full) const { check_checkpoint_files(dir_, manifest_, full); }

std::string CheckpointReader::read_verified(const std::string& name, bool verify) const {
  const FileDigest& expected = entry(name);
  const std::string file = path(name);
  std::string bytes;
  try {
    bytes = read_small_file(file, kMaxSmallFile);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kNotFound) throw;
    throw Error(ErrorCode::kNotFound, "checkpoint file '" + file + "' listed in its manifest is missing");
  }
  if (bytes.size() != expected.size) wrong_size(file, bytes.size(), expected.size);
  if (verify) {
    Xxh3Stream hash;
    hash.update(bytes.data(), bytes.size());
    if (hash.digest() != expected.xxh3) fails_checksum(file, expected.xxh3, hash.digest());
  }
  return bytes;
}

void CheckpointReader::copy_verified(const std::string& name, const std::string& to) const {
  const FileDigest& expected = entry(name);
  const std::string from = path(name);
  ReadableFile in(from);
  WritableFile out = WritableFile::create(to);
  Xxh3Stream hash;
  in.for_each_block(4 << 20, [&](const char* data, std::size_t n) {
    hash.update(data, n);
    out.append(data, n);
  });
  if (out.size() != expected.size) wrong_size(from, out.size(), expected.size);
  if (hash.digest() != expected.xxh3) fails_checksum(from, expected.xxh3, hash.digest());
  out.sync();
  out.close();
}

TrainingState CheckpointReader::trainer_state(bool verify) const {
  TrainingState state;
  parse_trainer_state(read_verified(kTrainerStateFile, verify), path(kTrainerStateFile), &state);
  // lorakeep keeps early stopping's state in the manifest (transformers 4.x
  // would refuse it in trainer_state.json); a file of Trainer 5 or of an
  // older lorakeep has it in "stateful_callbacks".
  if (manifest_.early_stopping) state.early_stopping = manifest_.early_stopping;
  return state;
}

LoraConfig CheckpointReader::adapter_config(bool verify, const std::string& folder) const {
  const std::string name = folder.empty() ? std::string(kAdapterConfigFile) : folder + "/" + kAdapterConfigFile;
  return parse_adapter_config(read_verified(name, verify), path(name));
}

std::vector<std::string> verify_checkpoints(const std::string& path) {
  std::vector<std::string> lines;
  auto verify_one = [&lines](const std::string& dir) {
    const CheckpointReader reader(dir);
    reader.check_all(/*full=*/true);
    lines.push_back("ok: " + dir + " (step " + std::to_string(reader.manifest().step) + ", " +
                    std::to_string(reader.manifest().files.size()) + " files, checksums verified)");
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
