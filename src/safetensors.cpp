#include "lorakeep/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "format/header.h"
#include "io/mapped_file.h"
#include "logging.h"
#include "safetensors_writer.h"
#include "torch_compat.h"
#include "torch_error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; so is every host we build for");

namespace lorakeep {
namespace {

[[noreturn]] void unsupported_dtype(Dtype dtype, const std::string& what) {
  throw Error(ErrorCode::kNotSupported,
              "tensor '" + what + "' has dtype " + std::string(dtype_name(dtype)) +
                  ", which LibTorch " + detail::torch_version_string() + " cannot hold");
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

c10::ScalarType to_scalar_type(Dtype dtype, const std::string& what) {
  switch (dtype) {
    case Dtype::kBool: return c10::kBool;
    case Dtype::kU8: return c10::kByte;
    case Dtype::kI8: return c10::kChar;
    case Dtype::kI16: return c10::kShort;
    case Dtype::kF16: return c10::kHalf;
    case Dtype::kBF16: return c10::kBFloat16;
    case Dtype::kI32: return c10::kInt;
    case Dtype::kF32: return c10::kFloat;
    case Dtype::kC64: return c10::kComplexFloat;
    case Dtype::kF64: return c10::kDouble;
    case Dtype::kI64: return c10::kLong;
#if LORAKEEP_HAS_FLOAT8
    case Dtype::kF8E5M2: return c10::ScalarType::Float8_e5m2;
    case Dtype::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
#endif
#if LORAKEEP_HAS_UINT_WIDE
    case Dtype::kU16: return c10::ScalarType::UInt16;
    case Dtype::kU32: return c10::ScalarType::UInt32;
    case Dtype::kU64: return c10::ScalarType::UInt64;
#endif
#if LORAKEEP_HAS_FLOAT8_E8M0
    case Dtype::kF8E8M0: return c10::ScalarType::Float8_e8m0fnu;
#endif
    default: unsupported_dtype(dtype, what);
  }
}

Dtype from_scalar_type(c10::ScalarType type, const std::string& what) {
  switch (type) {
    case c10::kBool: return Dtype::kBool;
    case c10::kByte: return Dtype::kU8;
    case c10::kChar: return Dtype::kI8;
    case c10::kShort: return Dtype::kI16;
    case c10::kHalf: return Dtype::kF16;
    case c10::kBFloat16: return Dtype::kBF16;
    case c10::kInt: return Dtype::kI32;
    case c10::kFloat: return Dtype::kF32;
    case c10::kComplexFloat: return Dtype::kC64;
    case c10::kDouble: return Dtype::kF64;
    case c10::kLong: return Dtype::kI64;
#if LORAKEEP_HAS_FLOAT8
    case c10::ScalarType::Float8_e5m2: return Dtype::kF8E5M2;
    case c10::ScalarType::Float8_e4m3fn: return Dtype::kF8E4M3;
#endif
#if LORAKEEP_HAS_UINT_WIDE
    case c10::ScalarType::UInt16: return Dtype::kU16;
    case c10::ScalarType::UInt32: return Dtype::kU32;
    case c10::ScalarType::UInt64: return Dtype::kU64;
#endif
#if LORAKEEP_HAS_FLOAT8_E8M0
    case c10::ScalarType::Float8_e8m0fnu: return Dtype::kF8E8M0;
#endif
    default:
      throw Error(ErrorCode::kNotSupported, "tensor '" + what + "' has type " + std::string(c10::toString(type)) +
                                                ", which safetensors cannot store");
  }
}

namespace detail {

class SafetensorsImpl {
 public:
  std::shared_ptr<const MappedFile> map;
  SafetensorsHeader header;
  std::vector<std::string> names;
  std::unordered_map<std::string, std::size_t> index;

  const TensorInfo& find(const std::string& name) const {
    auto it = index.find(name);
    if (it == index.end()) {
      throw Error(ErrorCode::kNotFound, "tensor '" + name + "' is not in '" + map->path() + "' (it holds " +
                                            std::to_string(names.size()) + " tensors)");
    }
    return header.tensors[it->second];
  }
  std::uint64_t file_offset(const TensorInfo& t) const { return header.data_start() + t.data_begin; }
};

}  // namespace detail

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_shared<detail::SafetensorsImpl>();
  impl->map = detail::MappedFile::open(path);
  static const char kLfs[] = "version https://git-lfs.github.com/spec/";
  if (impl->map->size() >= sizeof kLfs - 1 && std::memcmp(impl->map->data(), kLfs, sizeof kLfs - 1) == 0) {
    throw Error(ErrorCode::kCorruption, "'" + path + "' is a Git LFS pointer, not the file's content "
                                        "(hint: run 'git lfs pull' where it was cloned)");
  }
  impl->header = detail::parse_safetensors_header(impl->map->data(), impl->map->size(), path);
  impl->names.reserve(impl->header.tensors.size());
  for (std::size_t i = 0; i < impl->header.tensors.size(); ++i) {
    impl->names.push_back(impl->header.tensors[i].name);
    impl->index.emplace(impl->header.tensors[i].name, i);
  }
  return SafetensorsFile(std::move(impl));
}

const std::string& SafetensorsFile::path() const { return impl_->map->path(); }
std::uint64_t SafetensorsFile::file_size() const { return impl_->map->size(); }
const std::vector<std::string>& SafetensorsFile::names() const { return impl_->names; }
const std::vector<TensorInfo>& SafetensorsFile::infos() const { return impl_->header.tensors; }
bool SafetensorsFile::contains(const std::string& name) const { return impl_->index.count(name) != 0; }
const TensorInfo& SafetensorsFile::info(const std::string& name) const { return impl_->find(name); }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->header.metadata; }

SafetensorsFile::Bytes SafetensorsFile::bytes(const std::string& name) const {
  const TensorInfo& t = impl_->find(name);
  return Bytes{impl_->map->data() + impl_->file_offset(t), t.byte_size()};
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& t = impl_->find(name);
  const c10::ScalarType type = to_scalar_type(t.dtype, name);
  const auto options = at::TensorOptions().dtype(type);
  std::uint8_t* data = const_cast<std::uint8_t*>(impl_->map->data()) + impl_->file_offset(t);
  const auto alignment = static_cast<std::uintptr_t>(c10::elementSize(type));
  if (reinterpret_cast<std::uintptr_t>(data) % alignment != 0) {
    // Files from writers that do not pad the header (the reference samples)
    // put data at odd offsets; typed access there is undefined behaviour.
    at::Tensor copy = at::empty(t.shape, options);
    std::memcpy(copy.data_ptr(), data, t.byte_size());
    return copy;
  }
  std::shared_ptr<const detail::SafetensorsImpl> keep = impl_;
  return at::from_blob(data, t.shape, [keep](void*) {}, options);
}

void SafetensorsFile::release(const std::string& name, std::uint64_t begin, std::uint64_t end) const {
  const TensorInfo& t = impl_->find(name);
  end = std::min(end, t.byte_size());
  if (begin < end) impl_->map->release(impl_->file_offset(t) + begin, end - begin);
}

void SafetensorsFile::read(const std::string& name, std::uint64_t begin, void* dst, std::uint64_t size) const {
  const TensorInfo& t = impl_->find(name);
  if (begin > t.byte_size() || size > t.byte_size() - begin) {
    throw Error(ErrorCode::kInvalidArgument, "bytes [" + std::to_string(begin) + ", " + std::to_string(begin + size) +
                                                 ") are outside tensor '" + name + "' of '" + path() + "'");
  }
  impl_->map->read(impl_->file_offset(t) + begin, dst, size);
}

void SafetensorsFile::prefetch(const std::string& name) const {
  const TensorInfo& t = impl_->find(name);
  impl_->map->will_read(impl_->file_offset(t), t.byte_size());
}

// ---------------------------------------------------------------------------
// Writing

namespace detail {

void for_each_host_piece(const at::Tensor& t, std::uint64_t chunk_bytes, at::Tensor* staging,
                         const std::function<void(const void*, std::uint64_t)>& sink) {
  const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
  if (bytes == 0) return;
  if (t.device().is_cpu() && t.is_contiguous()) {
    const auto* p = static_cast<const std::uint8_t*>(t.data_ptr());
    for (std::uint64_t off = 0; off < bytes; off += chunk_bytes) sink(p + off, std::min(chunk_bytes, bytes - off));
    return;
  }
  if (bytes <= chunk_bytes) {
    if (!staging->defined() || static_cast<std::uint64_t>(staging->numel()) < bytes) {
      *staging = at::Tensor();  // free the smaller buffer first
      *staging = at::empty({static_cast<std::int64_t>(bytes)},
                           at::TensorOptions(at::kByte).pinned_memory(t.is_cuda()));
    }
    at::Tensor view = at::from_blob(staging->data_ptr(), t.sizes(), at::TensorOptions().dtype(t.scalar_type()));
    c10::NoGradGuard no_grad;
    view.copy_(t);
    sink(staging->data_ptr(), bytes);
    return;
  }
  // Too big for one piece: split along the first dimension.
  const std::int64_t rows = t.size(0);
  const std::uint64_t row_bytes = bytes / static_cast<std::uint64_t>(rows);
  if (row_bytes > chunk_bytes) {
    for (std::int64_t i = 0; i < rows; ++i) for_each_host_piece(t.select(0, i), chunk_bytes, staging, sink);
    return;
  }
  const auto per = static_cast<std::int64_t>(chunk_bytes / row_bytes);
  for (std::int64_t i = 0; i < rows; i += per) {
    for_each_host_piece(t.narrow(0, i, std::min(per, rows - i)), chunk_bytes, staging, sink);
  }
}

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<TensorInfo> tensors,
                                     const std::map<std::string, std::string>& metadata, Mode mode,
                                     std::uint64_t chunk_bytes)
    : path_(std::move(path)), mode_(mode), chunk_bytes_(std::max<std::uint64_t>(chunk_bytes, 64)),
      started_(now_seconds()) {
  HeaderLayout layout = layout_safetensors_header(std::move(tensors), metadata);
  order_ = std::move(layout.tensors);
  write_path_ = mode_ == Mode::kAtomic ? temp_path_beside(path_) : path_;
  file_ = std::make_unique<WritableFile>(WritableFile::create(write_path_));
  try {
    std::uint8_t len[8];
    std::uint64_t n = layout.header.size();
    for (int i = 0; i < 8; ++i, n >>= 8) len[i] = static_cast<std::uint8_t>(n & 0xFF);
    append(len, 8);
    append(layout.header.data(), layout.header.size());
  } catch (...) {
    file_.reset();
    ::unlink(write_path_.c_str());
    throw;
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (finished_) return;
  file_.reset();
  if (::unlink(write_path_.c_str()) != 0) logger()->warn("cannot remove unfinished '{}'", write_path_);
}

const std::string& SafetensorsWriter::next_name() const {
  static const std::string kNone;
  return next_ < order_.size() ? order_[next_].name : kNone;
}

void SafetensorsWriter::append(const void* data, std::uint64_t size) {
  file_->append(data, size);
  file_hash_.update(data, size);
}

const TensorInfo& SafetensorsWriter::expect_next() const {
  if (next_ >= order_.size()) {
    throw Error(ErrorCode::kInvalidArgument, "all tensors of '" + path_ + "' are already written");
  }
  return order_[next_];
}

void SafetensorsWriter::write_pieces(const std::function<void(const PieceSink&)>& produce) {
  const TensorInfo& spec = expect_next();
  Xxh3Stream tensor_hash;
  std::uint64_t written = 0;
  produce([&](const at::Tensor& piece) {
    if (from_scalar_type(piece.scalar_type(), spec.name) != spec.dtype) {
      throw Error(ErrorCode::kInvalidArgument, "a piece of tensor '" + spec.name + "' is " +
                                                   std::string(c10::toString(piece.scalar_type())) + ", not " +
                                                   std::string(dtype_name(spec.dtype)));
    }
    for_each_host_piece(piece, chunk_bytes_, &staging_, [&](const void* p, std::uint64_t n) {
      append(p, n);
      tensor_hash.update(p, n);
      written += n;
    });
  });
  if (written != spec.byte_size()) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + spec.name + "' was streamed with " +
                                                 std::to_string(written) + " bytes, not " +
                                                 std::to_string(spec.byte_size()));
  }
  tensor_checksums_.push_back(tensor_hash.digest());
  ++next_;
}

void SafetensorsWriter::write(const at::Tensor& tensor) {
  const TensorInfo& spec = expect_next();
  if (from_scalar_type(tensor.scalar_type(), spec.name) != spec.dtype || tensor.sizes() != at::IntArrayRef(spec.shape)) {
    throw Error(ErrorCode::kInvalidArgument,
                "tensor '" + spec.name + "' for '" + path_ + "' was announced as " + std::string(dtype_name(spec.dtype)) +
                    " " + format_shape(spec.shape) + " but is " + std::string(c10::toString(tensor.scalar_type())) +
                    " " + format_shape(tensor.sizes().vec()));
  }
  write_pieces([&](const PieceSink& sink) { sink(tensor); });
}

SaveReport SafetensorsWriter::finish() {
  if (next_ != order_.size()) {
    throw Error(ErrorCode::kInvalidArgument, "'" + path_ + "' is missing tensor '" + order_[next_].name + "'");
  }
  staging_ = at::Tensor();
  SaveReport report;
  report.file_size = file_->size();
  if (mode_ == Mode::kDirect) file_->sync();
  file_->close();
  if (mode_ == Mode::kAtomic) publish(write_path_, path_, /*replace=*/true);
  finished_ = true;
  report.path = path_;
  report.file_checksum = file_hash_.digest();
  report.tensors = order_;
  report.tensor_checksums = std::move(tensor_checksums_);
  report.seconds = now_seconds() - started_;
  return report;
}

}  // namespace detail

namespace detail {

IndexedTensors index_tensors(const NamedTensors& tensors) {
  IndexedTensors out;
  out.specs.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' is undefined");
    TensorInfo info;
    info.name = name;
    info.dtype = from_scalar_type(tensor.scalar_type(), name);
    info.shape = tensor.sizes().vec();
    out.specs.push_back(std::move(info));
    out.by_name[name] = &tensor;
  }
  return out;
}

SaveReport write_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata, SafetensorsWriter::Mode mode,
                             std::uint64_t chunk_bytes) {
  IndexedTensors indexed = index_tensors(tensors);
  SafetensorsWriter writer(path, std::move(indexed.specs), metadata, mode, chunk_bytes);
  for (const TensorInfo& t : writer.order()) writer.write(*indexed.by_name.at(t.name));
  return writer.finish();
}

}  // namespace detail

SaveReport save_safetensors(const std::string& path, const NamedTensors& tensors,
                            const std::map<std::string, std::string>& metadata, const SaveOptions& options) {
  return detail::with_torch_errors(ErrorCode::kInvalidArgument, "cannot save '" + path + "'", [&] {
    return detail::write_safetensors(path, tensors, metadata, detail::SafetensorsWriter::Mode::kAtomic,
                                     options.chunk_bytes);
  });
}

}  // namespace lorakeep
