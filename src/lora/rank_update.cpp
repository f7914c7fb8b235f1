#include "lora/rank_update.h"

#include <cstring>

// Vectors only ever live inside always-inlined functions: GCC's notes about
// the ABI of passing them by value do not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace lorakeep::detail {
namespace {

// A vector of `Bytes` bytes of T (GCC's vector extensions: the compiler
// emits the instructions of the function's target).
template <class T, int Bytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
};

template <class V, class T>
__attribute__((always_inline)) inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // unaligned
  return v;
}

template <class V, class T>
__attribute__((always_inline)) inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// w[rows, cols] += c[rows, r] v[r, cols] for Rows rows, columns [j0, j0 +
// Vectors * lanes). The Rows x Vectors sums stay in registers while the r rows
// of v stream past them from the cache, each vector of v loaded once for all
// Rows rows.
template <class T, int Bytes, int Rows, int Vectors>
__attribute__((always_inline)) inline void block(T* __restrict w, const T* __restrict c, const T* __restrict v,
                                                 std::int64_t cols, std::int64_t r, std::int64_t j0) {
  using V = typename VecOf<T, Bytes>::type;
  constexpr std::int64_t lanes = Bytes / sizeof(T);
  V acc[Rows][Vectors] = {};  // the loops over i and u unroll fully
  for (std::int64_t k = 0; k < r; ++k) {
    const T* vk = v + k * cols + j0;
#pragma GCC unroll 8
    for (int u = 0; u < Vectors; ++u) {
      const V x = load<V>(vk + u * lanes);
#pragma GCC unroll 2
      for (int i = 0; i < Rows; ++i) acc[i][u] += c[i * r + k] * x;
    }
  }
#pragma GCC unroll 2
  for (int i = 0; i < Rows; ++i) {
    T* wi = w + i * cols + j0;
#pragma GCC unroll 8
    for (int u = 0; u < Vectors; ++u) store(wi + u * lanes, load<V>(wi + u * lanes) + acc[i][u]);
  }
}

// Each element gets its r products summed, then added once.
template <class T, int Bytes, int Rows, int Vectors>
__attribute__((always_inline)) inline void update(T* __restrict w, std::int64_t rows, std::int64_t cols,
                                                  const T* __restrict c, const T* __restrict v, std::int64_t r) {
  constexpr std::int64_t width = Vectors * Bytes / sizeof(T);
  const std::int64_t full = cols / width * width;
  std::int64_t i = 0;
  for (; i + Rows <= rows; i += Rows) {
    for (std::int64_t j0 = 0; j0 < full; j0 += width) {
      block<T, Bytes, Rows, Vectors>(w + i * cols, c + i * r, v, cols, r, j0);
    }
  }
  for (; i < rows; ++i) {
    for (std::int64_t j0 = 0; j0 < full; j0 += width) {
      block<T, Bytes, 1, Vectors>(w + i * cols, c + i * r, v, cols, r, j0);
    }
  }
  for (i = 0; i < rows; ++i) {  // the columns past the last whole block
    for (std::int64_t j = full; j < cols; ++j) {
      T sum = 0;
      for (std::int64_t k = 0; k < r; ++k) sum += c[i * r + k] * v[k * cols + j];
      w[i * cols + j] += sum;
    }
  }
}

// One version per instruction set, each with as many sums as its registers
// hold: 2 x 8 of AVX-512's 32, 2 x 4 of the 16 of AVX2 and SSE2.
template <class T>
void update_generic(T* w, std::int64_t rows, std::int64_t cols, const T* c, const T* v, std::int64_t r) {
  update<T, 16, 2, 4>(w, rows, cols, c, v, r);
}

#if defined(__x86_64__)
template <class T>
__attribute__((target("avx2,fma"))) void update_avx2(T* w, std::int64_t rows, std::int64_t cols, const T* c, const T* v,
                                                     std::int64_t r) {
  update<T, 32, 2, 4>(w, rows, cols, c, v, r);
}

template <class T>
__attribute__((target("avx512f"))) void update_avx512(T* w, std::int64_t rows, std::int64_t cols, const T* c,
                                                      const T* v, std::int64_t r) {
  update<T, 64, 2, 8>(w, rows, cols, c, v, r);
}
#endif

template <class T>
using Kernel = void (*)(T*, std::int64_t, std::int64_t, const T*, const T*, std::int64_t);

template <class T>
Kernel<T> kernel_for(RankUpdateIsa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case RankUpdateIsa::kAvx512: return update_avx512<T>;
    case RankUpdateIsa::kAvx2: return update_avx2<T>;
#endif
    default: return update_generic<T>;
  }
}

}  // namespace

std::vector<RankUpdateIsa> rank_update_isas() {
  std::vector<RankUpdateIsa> isas;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) isas.push_back(RankUpdateIsa::kAvx512);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas.push_back(RankUpdateIsa::kAvx2);
#endif
  isas.push_back(RankUpdateIsa::kGeneric);
  return isas;
}

void rank_update(RankUpdateIsa isa, float* w, std::int64_t rows, std::int64_t cols, const float* c, const float* v,
                 std::int64_t r) {
  kernel_for<float>(isa)(w, rows, cols, c, v, r);
}

void rank_update(RankUpdateIsa isa, double* w, std::int64_t rows, std::int64_t cols, const double* c, const double* v,
                 std::int64_t r) {
  kernel_for<double>(isa)(w, rows, cols, c, v, r);
}

void rank_update(float* w, std::int64_t rows, std::int64_t cols, const float* c, const float* v, std::int64_t r) {
  static const Kernel<float> kernel = kernel_for<float>(rank_update_isas().front());
  kernel(w, rows, cols, c, v, r);
}

void rank_update(double* w, std::int64_t rows, std::int64_t cols, const double* c, const double* v, std::int64_t r) {
  static const Kernel<double> kernel = kernel_for<double>(rank_update_isas().front());
  kernel(w, rows, cols, c, v, r);
}

}  // namespace lorakeep::detail
