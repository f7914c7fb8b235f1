#include "base/openmp_threads.h"

#include <dlfcn.h>

#include <ATen/Parallel.h>

namespace lorakeep::detail {
namespace {

using SetNumThreads = void (*)(int);
using GetMaxThreads = int (*)();

// Looked up, not linked: the symbols of the runtime LibTorch brought.
SetNumThreads set_num_threads() {
  static const auto fn = reinterpret_cast<SetNumThreads>(::dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  return fn;
}

GetMaxThreads get_max_threads() {
  static const auto fn = reinterpret_cast<GetMaxThreads>(::dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
  return fn;
}

}  // namespace

OpenMpThreadLimit::OpenMpThreadLimit(int threads) {
  if (set_num_threads() == nullptr || get_max_threads() == nullptr) return;
  // LibTorch sets each thread's team size lazily, at its first parallel op:
  // done first, or that op would undo the limit.
  at::get_num_threads();
  before_ = get_max_threads()();
  set_num_threads()(threads);
}

OpenMpThreadLimit::~OpenMpThreadLimit() {
  if (before_ > 0) set_num_threads()(before_);
}

}  // namespace lorakeep::detail
