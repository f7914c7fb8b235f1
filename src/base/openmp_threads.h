// Private: the OpenMP team size of the calling thread.
#pragma once

namespace lorakeep::detail {

// Limits, until it goes out of scope, the OpenMP team of parallel regions
// the calling thread starts (LibTorch's parallel ops, OpenBLAS's GEMM), in
// whichever OpenMP runtime LibTorch loaded: Debian's libgomp, or the copy a
// LibTorch download bundles under another file name. Threads of lorakeep's
// own that already keep every core busy use it so that LibTorch does not
// fork a team per thread. Does nothing without an OpenMP runtime. Only this
// thread is affected.
class OpenMpThreadLimit {
 public:
  explicit OpenMpThreadLimit(int threads);
  ~OpenMpThreadLimit();
  OpenMpThreadLimit(const OpenMpThreadLimit&) = delete;
  OpenMpThreadLimit& operator=(const OpenMpThreadLimit&) = delete;

 private:
  int before_ = 0;  // 0: nothing to restore
};

}  // namespace lorakeep::detail
