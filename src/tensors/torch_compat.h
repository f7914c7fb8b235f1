// The one place for code that differs between LibTorch versions. lorakeep
// builds against LibTorch 1.13 (Debian) and current 2.x; everything else in
// the tree stays on the API the two share.
#pragma once

#include <sstream>
#include <string>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#define LORAKEEP_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// float8 (E5M2, E4M3FN) arrived in 2.1; unsigned 16/32/64-bit in 2.3;
// float8 E8M0 in 2.7.
#define LORAKEEP_HAS_FLOAT8 LORAKEEP_TORCH_AT_LEAST(2, 1)
#define LORAKEEP_HAS_UINT_WIDE LORAKEEP_TORCH_AT_LEAST(2, 3)
#define LORAKEEP_HAS_FLOAT8_E8M0 LORAKEEP_TORCH_AT_LEAST(2, 7)

namespace lorakeep::detail {

// The LibTorch version this translation unit was compiled against: "1.13.0".
inline const char* torch_version_string() { return TORCH_VERSION; }

// The key of `param`'s entry in optimizer.state(): LibTorch keys the state by
// the parameter's TensorImpl, as its address printed into a std::string in
// 1.x and as the pointer itself (void*) in 2.x.
template <class Optimizer>
auto optimizer_state_key(Optimizer& optimizer, const at::Tensor& param) {
  using Key = typename std::decay_t<decltype(optimizer.state())>::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;
    key << param.unsafeGetTensorImpl();
    return key.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

}  // namespace lorakeep::detail

// c10::Allocator::allocate lost its const in 2.3, which also added the pure
// virtual copy_data.
#if LORAKEEP_TORCH_AT_LEAST(2, 3)
#define LORAKEEP_ALLOCATE_CONST
#define LORAKEEP_ALLOCATOR_HAS_COPY_DATA 1
#else
#define LORAKEEP_ALLOCATE_CONST const
#define LORAKEEP_ALLOCATOR_HAS_COPY_DATA 0
#endif
