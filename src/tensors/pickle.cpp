#include "tensors/pickle.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include "lorakeep/error.h"
#include "io/atomic_file.h"
#include "io/read_file.h"

namespace lorakeep::detail {

c10::IValue load_torch_archive(const std::string& path) {
  // Sniff first, so a wrong file gets a useful message instead of a zip error.
  const std::string head = read_file_prefix(path, 4);
  if (head != std::string("PK\x03\x04", 4)) {
    if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80) {
      throw Error(ErrorCode::kNotSupported,
                  "'" + path +
                      "' is in the legacy torch.save format (PyTorch < 1.6 or "
                      "_use_new_zipfile_serialization=False) (hint: load and save it again with a current torch.save)");
    }
    throw Error(ErrorCode::kCorruption, "'" + path + "' is not a torch.save archive (no zip signature)");
  }
  c10::IValue value;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    // The device argument maps every storage to the CPU, whatever device the
    // file names: a .bin saved from CUDA loads on a CPU-only LibTorch.
    value = torch::jit::readArchiveAndTensors("data", /*pickle_prefix=*/"", /*tensor_prefix=*/"",
                                              /*type_resolver=*/c10::nullopt, /*obj_loader=*/c10::nullopt,
                                              at::Device(at::kCPU), reader);
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    why = why.substr(0, why.find('\n'));
    throw Error(ErrorCode::kCorruption, "cannot read torch archive '" + path + "': " + why);
  }
  return value;
}

NamedTensors load_torch_pickle(const std::string& path) {
  const c10::IValue value = load_torch_archive(path);
  if (!value.isGenericDict()) {
    throw Error(ErrorCode::kNotSupported,
                "'" + path + "' holds a " + value.tagKind() + ", not a state dict of tensors");
  }
  NamedTensors out;
  for (const auto& item : value.toGenericDict()) {
    if (!item.key().isString()) {
      throw Error(ErrorCode::kNotSupported, "'" + path + "' has a state dict key that is not a string");
    }
    const std::string name = item.key().toStringRef();
    if (!item.value().isTensor()) {
      throw Error(ErrorCode::kNotSupported, "'" + path + "' entry '" + name + "' is a " + item.value().tagKind() +
                                                ", not a tensor (hint: only flat state dicts are read)");
    }
    at::Tensor t = item.value().toTensor();
    out.emplace_back(name, t.is_contiguous() ? t : t.contiguous());
  }
  return out;
}

void save_torch_pickle(const std::string& path, const NamedTensors& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : tensors) dict.insert(name, t.to(at::kCPU));
  const std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(dict));
  write_file_atomically(path, [&](WritableFile& f) { f.append(bytes.data(), bytes.size()); });
}

}  // namespace lorakeep::detail
