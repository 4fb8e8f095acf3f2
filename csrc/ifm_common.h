// Torch-free pieces of the IFM kernels shared by the CPU (.cpp) and CUDA (.cu) code.
//
// Tap order. Every kernel walks the K x K taps in "ring order": by Chebyshev
// distance from the centre (ring 0 = the centre, ring 1 = the 8 taps around it,
// ...), row-major inside a ring. A scale whose support is s x s (s odd) then
// covers exactly the first s*s taps, so "atom r is zero outside its support"
// becomes "scale r only contributes to taps q < s_r^2" - a prefix, which keeps
// every inner loop contiguous. Atoms are packed in this order once per call.
#pragma once

#include <cstdint>
#include <cstdlib>

#if defined(__CUDACC__)
#define INIK_HD __host__ __device__ __forceinline__
#else
#define INIK_HD inline
#endif

namespace inik {

// Ring index (Chebyshev radius) of tap offset (du, dv).
INIK_HD int tap_ring(int du, int dv) {
  const int a = du < 0 ? -du : du;
  const int b = dv < 0 ? -dv : dv;
  return a > b ? a : b;
}

// Fill du[q], dv[q] (q < K*K) with the tap offsets in ring order; the tap's
// row-major index in the K x K atom is (du + K/2) * K + (dv + K/2).
inline void ring_order(int K, int* du, int* dv) {
  const int h = K / 2;
  int q = 0;
  for (int ring = 0; ring <= h; ++ring)
    for (int u = -ring; u <= ring; ++u)
      for (int v = -ring; v <= ring; ++v)
        if (tap_ring(u, v) == ring) {
          du[q] = u;
          dv[q] = v;
          ++q;
        }
}

// Rows per backward work chunk. The CPU backward scatters each chunk's image
// gradient into rows [start - h, end + h); chunks of >= 2h rows processed in two
// phases (even chunks, then odd chunks) never write the same row concurrently.
INIK_HD int64_t bwd_chunk_rows(int64_t h) { return h * 2 > 16 ? h * 2 : 16; }

// Upper bound on the number of per-thread-group partial sums of the atom
// gradient (memory: this many R*N*K*K accumulators).
constexpr int64_t kMaxAtomPartials = 64;

}  // namespace inik
