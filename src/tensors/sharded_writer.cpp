#include "tensors/sharded_writer.h"

#include <unordered_map>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/clock.h"
#include "base/file_names.h"
#include "format/header.h"
#include "format/shard_index.h"

namespace lorakeep::detail {
namespace {

namespace fs = boost::filesystem;

}  // namespace

ShardedWriter::ShardedWriter(std::string dir, std::vector<TensorInfo> tensors,
                             std::map<std::string, std::string> metadata, const ShardOptions& options)
    : dir_(std::move(dir)), metadata_(std::move(metadata)), options_(options), started_(now_seconds()) {
  boost::system::error_code ec;
  if (fs::exists(dir_, ec) && !(fs::is_directory(dir_, ec) && fs::is_empty(dir_, ec))) {
    throw Error(ErrorCode::kInvalidArgument,
                "output directory '" + dir_ + "' already exists and is not empty (hint: choose a new path)");
  }
  // Hugging Face's split: in the given order, a new shard when the next tensor
  // would overflow the current one; an oversized tensor gets its own shard.
  std::vector<std::vector<TensorInfo>> groups(1);
  std::uint64_t current = 0;
  for (TensorInfo& t : tensors) {
    std::uint64_t bytes;
    std::vector<std::uint64_t> shape(t.shape.begin(), t.shape.end());
    if (!checked_byte_size(t.dtype, shape, &bytes)) {
      throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "' has no valid byte size");
    }
    if (bytes > options_.max_shard_size) {
      groups.insert(groups.end() - 1, std::vector<TensorInfo>{std::move(t)});
      continue;
    }
    if (current + bytes > options_.max_shard_size && !groups.back().empty()) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(std::move(t));
    current += bytes;
  }
  if (groups.back().empty() && groups.size() > 1) groups.pop_back();
  const std::size_t count = groups.size();
  for (std::size_t i = 0; i < count; ++i) {
    Shard shard;
    shard.file = count == 1 ? single_shard_file_name(options_.base_name)
                            : shard_file_name(options_.base_name, i + 1, count);
    shard.tensors = layout_safetensors_header(std::move(groups[i]), metadata_).tensors;
    for (const TensorInfo& t : shard.tensors) order_.push_back(t);
    shards_.push_back(std::move(shard));
  }
  std::unordered_map<std::string, int> seen;
  for (const TensorInfo& t : order_) {
    if (seen[t.name]++) throw Error(ErrorCode::kInvalidArgument, "tensor name '" + t.name + "' is given twice");
  }
  staged_.emplace(dir_);
}

ShardedWriter::~ShardedWriter() { writer_.reset(); }  // before staged_ removes its directory

SafetensorsWriter& ShardedWriter::current() {
  if (next_ >= order_.size()) throw Error(ErrorCode::kInvalidArgument, "all tensors of '" + dir_ + "' are written");
  if (!writer_) {
    const Shard& shard = shards_[shard_];
    writer_ = std::make_unique<SafetensorsWriter>((fs::path(staged_->path()) / shard.file).string(), shard.tensors,
                                                  metadata_, SafetensorsWriter::Mode::kDirect, options_.chunk_bytes);
  }
  return *writer_;
}

void ShardedWriter::write(const at::Tensor& tensor) {
  current().write(tensor);
  after_write();
}

void ShardedWriter::write_pieces(const std::function<void(const SafetensorsWriter::PieceSink&)>& produce) {
  current().write_pieces(produce);
  after_write();
}

void ShardedWriter::after_write() {
  ++next_;
  if (writer_->next_name().empty()) {
    reports_.push_back(writer_->finish());
    reports_.back().path = (fs::path(dir_) / shards_[shard_].file).string();
    writer_.reset();
    ++shard_;
  }
}

ShardedSaveReport ShardedWriter::finish() {
  if (next_ != order_.size()) {
    throw Error(ErrorCode::kInvalidArgument, "'" + dir_ + "' is missing tensor '" + order_[next_].name + "'");
  }
  // A set with no tensors at all still gets its one (empty) file.
  if (reports_.empty()) {
    SafetensorsWriter empty((fs::path(staged_->path()) / shards_[0].file).string(), {}, metadata_,
                            SafetensorsWriter::Mode::kDirect, options_.chunk_bytes);
    reports_.push_back(empty.finish());
    reports_.back().path = (fs::path(dir_) / shards_[0].file).string();
  }
  ShardedSaveReport report;
  report.dir = dir_;
  if (shards_.size() > 1) {
    std::vector<std::pair<std::string, std::string>> weight_map;
    std::uint64_t total = 0;
    for (const Shard& shard : shards_) {
      for (const TensorInfo& t : shard.tensors) {
        weight_map.emplace_back(t.name, shard.file);
        total += t.byte_size();
      }
    }
    const std::string index_name = shard_index_file_name(options_.base_name);
    const std::string text = render_shard_index(total, weight_map);
    WritableFile index = WritableFile::create((fs::path(staged_->path()) / index_name).string());
    index.append(text.data(), text.size());
    index.sync();
    index.close();
    report.index_path = (fs::path(dir_) / index_name).string();
  }
  boost::system::error_code ec;
  if (fs::exists(dir_, ec)) fs::remove(dir_, ec);  // checked empty in the constructor
  staged_->publish(/*replace=*/false);
  report.shards = std::move(reports_);
  report.seconds = now_seconds() - started_;
  return report;
}

}  // namespace lorakeep::detail
