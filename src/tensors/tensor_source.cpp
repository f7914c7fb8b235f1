#include "lorakeep/tensor_source.h"

#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "base/logging.h"
#include "base/text.h"
#include "format/shard_index.h"
#include "io/read_file.h"
#include "tensors/pickle.h"

namespace lorakeep {

std::uint64_t TensorSource::total_bytes() const {
  std::uint64_t total = 0;
  for (const std::string& name : names()) total += info(name).byte_size();
  return total;
}

namespace {

namespace fs = boost::filesystem;

[[noreturn]] void not_in(const std::string& name, const std::string& path) {
  throw Error(ErrorCode::kNotFound, "tensor '" + name + "' is not in '" + path + "'");
}

const std::map<std::string, std::string>& no_metadata() {
  static const std::map<std::string, std::string> kEmpty;
  return kEmpty;
}

class SafetensorsSource final : public TensorSource {
 public:
  explicit SafetensorsSource(SafetensorsFile file) : file_(std::move(file)) {}

  const std::string& path() const override { return file_.path(); }
  std::string kind() const override { return "safetensors"; }
  const std::vector<std::string>& names() const override { return file_.names(); }
  bool contains(const std::string& name) const override { return file_.contains(name); }
  const TensorInfo& info(const std::string& name) const override { return file_.info(name); }
  const std::string& file_of(const std::string& name) const override {
    if (!file_.contains(name)) not_in(name, path());
    return file_.path();
  }
  const std::map<std::string, std::string>& metadata() const override { return file_.metadata(); }
  at::Tensor tensor(const std::string& name) const override { return file_.tensor(name); }
  SafetensorsFile::Bytes bytes(const std::string& name) const override { return file_.bytes(name); }
  void read(const std::string& name, std::uint64_t begin, void* dst, std::uint64_t size) const override {
    file_.read(name, begin, dst, size);
  }
  void release(const std::string& name, std::uint64_t begin, std::uint64_t end) const override {
    file_.release(name, begin, end);
  }
  void prefetch(const std::string& name) const override { file_.prefetch(name); }

 private:
  SafetensorsFile file_;
};

class ShardedSource final : public TensorSource {
 public:
  explicit ShardedSource(const std::string& index_path) : path_(index_path) {
    const detail::ShardIndex index = detail::parse_shard_index(detail::read_small_file(index_path, 256ull << 20),
                                                               index_path);
    const fs::path dir = fs::path(index_path).parent_path();
    std::unordered_map<std::string, std::size_t> shard_of_file;
    for (const std::string& file : index.shard_files) {
      const std::string shard_path = (dir / file).string();
      try {
        shards_.push_back(SafetensorsFile::open(shard_path));
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kNotFound) throw;
        throw Error(ErrorCode::kNotFound, "shard '" + shard_path + "' named by index '" + index_path +
                                              "' does not exist (hint: incomplete download?)");
      }
      shard_of_file[file] = shards_.size() - 1;
    }
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      for (const TensorInfo& t : shards_[s].infos()) {
        auto [it, fresh] = where_.emplace(t.name, Where{s, &t});
        if (!fresh) {
          throw Error(ErrorCode::kCorruption, "tensor '" + t.name + "' is in two shards of '" + index_path + "': '" +
                                                  shards_[it->second.shard].path() + "' and '" + shards_[s].path() +
                                                  "'");
        }
      }
    }
    std::unordered_set<std::string> listed;
    for (const auto& [name, file] : index.weight_map) {
      auto it = where_.find(name);
      const std::size_t want = shard_of_file.at(file);
      if (it == where_.end()) {
        throw Error(ErrorCode::kCorruption,
                    "index '" + index_path + "' maps tensor '" + name + "' to '" + file + "', which does not hold it");
      }
      if (it->second.shard != want) {
        throw Error(ErrorCode::kCorruption, "index '" + index_path + "' maps tensor '" + name + "' to '" + file +
                                                "' but it is in '" + shards_[it->second.shard].path() + "'");
      }
      listed.insert(name);
    }
    std::uint64_t total = 0;
    for (const SafetensorsFile& shard : shards_) {
      for (const TensorInfo& t : shard.infos()) {
        if (!listed.count(t.name)) {
          throw Error(ErrorCode::kCorruption, "tensor '" + t.name + "' in shard '" + shard.path() +
                                                  "' is not listed in index '" + index_path + "' (hint: stale index?)");
        }
        names_.push_back(t.name);
        total += t.byte_size();
      }
    }
    if (index.total_size && *index.total_size != total) {
      detail::log_warn("index '{}' says total_size {} but its shards hold {} bytes of tensors", index_path,
                       *index.total_size, total);
    }
  }

  const std::string& path() const override { return path_; }
  std::string kind() const override { return "sharded safetensors"; }
  const std::vector<std::string>& names() const override { return names_; }
  bool contains(const std::string& name) const override { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const override { return *find(name).info; }
  const std::string& file_of(const std::string& name) const override { return shards_[find(name).shard].path(); }
  const std::map<std::string, std::string>& metadata() const override {
    return shards_.empty() ? no_metadata() : shards_.front().metadata();
  }
  at::Tensor tensor(const std::string& name) const override { return shard(name).tensor(name); }
  SafetensorsFile::Bytes bytes(const std::string& name) const override { return shard(name).bytes(name); }
  void read(const std::string& name, std::uint64_t begin, void* dst, std::uint64_t size) const override {
    shard(name).read(name, begin, dst, size);
  }
  void release(const std::string& name, std::uint64_t begin, std::uint64_t end) const override {
    shard(name).release(name, begin, end);
  }
  void prefetch(const std::string& name) const override { shard(name).prefetch(name); }

 private:
  struct Where {
    std::size_t shard;
    const TensorInfo* info;
  };
  const Where& find(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) not_in(name, path_);
    return it->second;
  }
  const SafetensorsFile& shard(const std::string& name) const { return shards_[find(name).shard]; }

  std::string path_;
  std::vector<SafetensorsFile> shards_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, Where> where_;
};

// Tensors held in host memory: a loaded .bin, or tensors handed over by the
// caller.
class MemorySource final : public TensorSource {
 public:
  MemorySource(NamedTensors tensors, std::string path, std::string kind)
      : path_(std::move(path)), kind_(std::move(kind)) {
    for (auto& [name, t] : tensors) {
      if (index_.count(name)) throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' is given twice");
      at::Tensor host = t.detach().to(at::kCPU).contiguous();
      TensorInfo info;
      info.name = name;
      info.dtype = from_scalar_type(host.scalar_type(), name);
      info.shape = host.sizes().vec();
      info.data_end = static_cast<std::uint64_t>(host.numel()) * host.element_size();
      index_[name] = names_.size();
      names_.push_back(name);
      infos_.push_back(std::move(info));
      tensors_.push_back(std::move(host));
    }
  }

  const std::string& path() const override { return path_; }
  std::string kind() const override { return kind_; }
  const std::vector<std::string>& names() const override { return names_; }
  bool contains(const std::string& name) const override { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const override { return infos_[find(name)]; }
  const std::string& file_of(const std::string& name) const override {
    find(name);
    return path_;
  }
  const std::map<std::string, std::string>& metadata() const override { return no_metadata(); }
  at::Tensor tensor(const std::string& name) const override { return tensors_[find(name)]; }
  SafetensorsFile::Bytes bytes(const std::string& name) const override {
    const std::size_t i = find(name);
    return {static_cast<const std::uint8_t*>(tensors_[i].data_ptr()), infos_[i].byte_size()};
  }
  void read(const std::string& name, std::uint64_t begin, void* dst, std::uint64_t size) const override {
    const SafetensorsFile::Bytes b = bytes(name);
    if (begin > b.size || size > b.size - begin) {
      throw Error(ErrorCode::kInvalidArgument, "bytes past the end of tensor '" + name + "' of '" + path_ + "'");
    }
    if (size > 0) std::memcpy(dst, b.data + begin, size);
  }

 private:
  std::size_t find(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) not_in(name, path_);
    return it->second;
  }

  std::string path_;
  std::string kind_;
  std::vector<std::string> names_;
  std::vector<TensorInfo> infos_;
  std::vector<at::Tensor> tensors_;
  std::unordered_map<std::string, std::size_t> index_;
};

using detail::ends_with;

std::unique_ptr<TensorSource> open_file(const std::string& path) {
  if (detail::is_shard_index_path(path)) return std::make_unique<ShardedSource>(path);
  if (ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth")) {
    return std::make_unique<MemorySource>(detail::load_torch_pickle(path), path, "torch pickle");
  }
  return std::make_unique<SafetensorsSource>(SafetensorsFile::open(path));
}

}  // namespace

std::unique_ptr<TensorSource> open_tensor_source(const std::string& path) {
  boost::system::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw Error(ErrorCode::kNotFound, "'" + path + "' does not exist");
  if (!fs::is_directory(status)) return open_file(path);
  const std::vector<std::string>& candidates = detail::tensor_directory_candidates();
  for (const std::string& name : candidates) {
    const std::string candidate = (fs::path(path) / name).string();
    if (fs::exists(candidate, ec)) return open_file(candidate);
  }
  std::string looked;
  for (const std::string& name : candidates) looked += (looked.empty() ? "" : ", ") + name;
  throw Error(ErrorCode::kNotFound, "no tensors in directory '" + path + "' (looked for " + looked + ")");
}

std::unique_ptr<TensorSource> make_tensor_source(SafetensorsFile file) {
  return std::make_unique<SafetensorsSource>(std::move(file));
}

std::unique_ptr<TensorSource> make_tensor_source(NamedTensors tensors, std::string label) {
  return std::make_unique<MemorySource>(std::move(tensors), std::move(label), "memory");
}

}  // namespace lorakeep
