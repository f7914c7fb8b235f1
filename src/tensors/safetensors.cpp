#include "lorakeep/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "base/logging.h"
#include "format/header.h"
#include "io/mapped_file.h"
#include "tensors/torch_compat.h"
#include "tensors/torch_error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; so is every host we build for");

namespace lorakeep {
namespace {

[[noreturn]] void unsupported_dtype(Dtype dtype, const std::string& what) {
  throw Error(ErrorCode::kNotSupported, "tensor '" + what + "' has dtype " + std::string(dtype_name(dtype)) +
                                            ", which LibTorch " + detail::torch_version_string() + " cannot hold");
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
    throw Error(ErrorCode::kCorruption, "'" + path +
                                            "' is a Git LFS pointer, not the file's content "
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
  return at::from_blob(
      data, t.shape, [keep](void*) {}, options);
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

}  // namespace lorakeep
