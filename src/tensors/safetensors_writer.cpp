#include "tensors/safetensors_writer.h"

#include <unistd.h>

#include <algorithm>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "lorakeep/error.h"
#include "base/clock.h"
#include "base/logging.h"
#include "format/header.h"
#include "tensors/device_bytes.h"
#include "tensors/torch_error.h"

namespace lorakeep {
namespace detail {

void for_each_host_piece(const at::Tensor& t, std::uint64_t chunk_bytes, HostStaging* staging,
                         const std::function<void(const void*, std::uint64_t)>& sink) {
  const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
  if (bytes == 0) return;
  if (t.device().is_cpu() && t.is_contiguous()) {
    const auto* p = static_cast<const std::uint8_t*>(t.data_ptr());
    for (std::uint64_t off = 0; off < bytes; off += chunk_bytes) sink(p + off, std::min(chunk_bytes, bytes - off));
    return;
  }
  c10::NoGradGuard no_grad;
  const auto per = static_cast<std::int64_t>(std::max<std::uint64_t>(1, chunk_bytes / t.element_size()));
  for_each_piece(t, per, [&](const at::Tensor& piece, std::int64_t) {
    at::Tensor host = staging->view(t.scalar_type(), piece.sizes(), /*pinned=*/t.is_cuda());
    host.copy_(piece);
    sink(host.data_ptr(), static_cast<std::uint64_t>(piece.numel()) * t.element_size());
  });
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
  if (::unlink(write_path_.c_str()) != 0) log_warn("cannot remove unfinished '{}'", write_path_);
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
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + spec.name + "' was streamed with " + std::to_string(written) +
                                                 " bytes, not " + std::to_string(spec.byte_size()));
  }
  tensor_checksums_.push_back(tensor_hash.digest());
  ++next_;
}

void SafetensorsWriter::write(const at::Tensor& tensor) {
  const TensorInfo& spec = expect_next();
  if (from_scalar_type(tensor.scalar_type(), spec.name) != spec.dtype ||
      tensor.sizes() != at::IntArrayRef(spec.shape)) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + spec.name + "' for '" + path_ + "' was announced as " +
                                                 std::string(dtype_name(spec.dtype)) + " " + format_shape(spec.shape) +
                                                 " but is " + std::string(c10::toString(tensor.scalar_type())) + " " +
                                                 format_shape(tensor.sizes().vec()));
  }
  write_pieces([&](const PieceSink& sink) { sink(tensor); });
}

SaveReport SafetensorsWriter::finish() {
  if (next_ != order_.size()) {
    throw Error(ErrorCode::kInvalidArgument, "'" + path_ + "' is missing tensor '" + order_[next_].name + "'");
  }
  staging_.reset();
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
  std::set<std::string> devices;
  for (const auto& [name, tensor] : tensors) devices.insert(tensor.device().str());
  const DeviceBytes device_bytes(devices);
  SafetensorsWriter writer(path, std::move(indexed.specs), metadata, mode, chunk_bytes);
  for (const TensorInfo& t : writer.order()) writer.write(*indexed.by_name.at(t.name));
  SaveReport report = writer.finish();
  report.device = device_bytes.device();
  report.peak_device_bytes = device_bytes.peak();
  report.device_bytes_unmeasured = device_bytes.unmeasured();
  return report;
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
