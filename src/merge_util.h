// Private helpers shared by the offline merges (merge.cpp, lora merge).
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "lorakeep/tensor_source.h"

namespace lorakeep::detail {

// Elements [begin, begin + count) of tensor `name` of `source` as a flat CPU
// tensor of `type` (its stored dtype), read into `*scratch` (grown as needed,
// then reused): the file is read, never mapped, so the RSS does not grow.
at::Tensor piece_view(const TensorSource& source, const std::string& name, c10::ScalarType type, std::int64_t begin,
                      std::int64_t count, at::Tensor* scratch);

}  // namespace lorakeep::detail
