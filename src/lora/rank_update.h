// Private: the arithmetic of merge-lora on one piece of a weight.
#pragma once

#include <cstdint>
#include <vector>

namespace lorakeep::detail {

// w[rows, cols] += c[rows, r] v[r, cols], all row-major and contiguous: the
// rank-r update W += s * B A of a few rows of a LoRA-adapted weight (c holds
// those rows of s * B, v is A). Each element gets its r products summed
// first and then added once, as a GEMM with beta = 1 does.
//
// Our own loop rather than BLAS: with r of 8 to 64 the update is bound by
// reading v from the cache, which a plain loop vectorized for the CPU at
// hand does at full speed, where a BLAS may pick generic kernels (OpenBLAS
// on CPUs it does not recognise: SSE3 only, 3x slower here). This runs the
// best version for the CPU at hand.
void rank_update(float* w, std::int64_t rows, std::int64_t cols, const float* c, const float* v, std::int64_t r);
void rank_update(double* w, std::int64_t rows, std::int64_t cols, const double* c, const double* v, std::int64_t r);

// The versions, one per instruction set; tests run each this CPU can.
enum class RankUpdateIsa { kGeneric, kAvx2, kAvx512 };
std::vector<RankUpdateIsa> rank_update_isas();  // those this CPU runs, best first
void rank_update(RankUpdateIsa isa, float* w, std::int64_t rows, std::int64_t cols, const float* c, const float* v,
                 std::int64_t r);
void rank_update(RankUpdateIsa isa, double* w, std::int64_t rows, std::int64_t cols, const double* c, const double* v,
                 std::int64_t r);

}  // namespace lorakeep::detail
