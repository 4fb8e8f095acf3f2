// Float lanes for the CPU kernels (lstm_cpu.cpp, winograd_cpu.cpp): GCC vectors of
// L floats, loads and stores from float32 and bfloat16 storage, and tails of fewer
// than L channels. A kernel takes the width of its instruction set: Vec<16> (one
// zmm register) on AVX-512, Vec<8> on AVX2, Vec<4> on a baseline build.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "cpu_simd.h"

namespace inik {
namespace simd {

// The vector types of each width, and the bfloat16 bit conversions on them as plain
// overloads (GCC's __builtin_convertvector refuses template-dependent types).
template <int L> struct VecTypes;
#define INIK_VEC_TYPES(L)                                                                     \
  template <> struct VecTypes<L> {                                                           \
    typedef float f __attribute__((vector_size(L * sizeof(float))));                         \
    typedef int32_t i __attribute__((vector_size(L * sizeof(int32_t))));                     \
    typedef uint32_t u __attribute__((vector_size(L * sizeof(uint32_t))));                   \
    typedef uint16_t h __attribute__((vector_size(L * sizeof(uint16_t))));                   \
  };                                                                                         \
  INIK_AI VecTypes<L>::u widen(VecTypes<L>::h x) { return __builtin_convertvector(x, VecTypes<L>::u); } \
  INIK_AI VecTypes<L>::h narrow(VecTypes<L>::u x) { return __builtin_convertvector(x, VecTypes<L>::h); } \
  INIK_AI VecTypes<L>::i to_int(VecTypes<L>::f x) { return __builtin_convertvector(x, VecTypes<L>::i); } \
  INIK_AI VecTypes<L>::f to_float(VecTypes<L>::i x) { return __builtin_convertvector(x, VecTypes<L>::f); }
INIK_VEC_TYPES(4)
INIK_VEC_TYPES(8)
INIK_VEC_TYPES(16)
#undef INIK_VEC_TYPES

template <int L>
struct Vec {
  static constexpr int kLanes = L;
  typedef typename VecTypes<L>::f f;
  typedef typename VecTypes<L>::i i;
  typedef typename VecTypes<L>::u u;
  typedef typename VecTypes<L>::h h;

  // Storage <-> float lanes: float as is, bfloat16 as the top half of a float.
  static INIK_AI f load(const float* p) {
    f v;
    std::memcpy(&v, p, sizeof(f));
    return v;
  }
  static INIK_AI void store(float* p, f v) { std::memcpy(p, &v, sizeof(f)); }
  static INIK_AI f load(const at::BFloat16* p) {
    h x;
    std::memcpy(&x, p, sizeof(h));
    const u bits = widen(x) << 16;
    f v;
    std::memcpy(&v, &bits, sizeof(f));
    return v;
  }
  static INIK_AI void store(at::BFloat16* p, f v) {
    u bits;
    std::memcpy(&bits, &v, sizeof(f));
    const u rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // round to nearest even
    const u nan = u{} + 0x7fc0u;
    const u out = v != v ? nan : rounded;
    const h x = narrow(out);
    std::memcpy(p, &x, sizeof(h));
  }

  // A tail of fewer than L channels goes through a zero-filled bounce buffer.
  template <class T>
  static INIK_AI f get(const T* p, int64_t n) {
    if (n == L) return load(p);
    T tmp[L] = {};
    std::memcpy(tmp, p, n * sizeof(T));
    return load(tmp);
  }
  template <class T>
  static INIK_AI void put(T* p, f v, int64_t n) {
    if (n == L) return store(p, v);
    T tmp[L];
    store(tmp, v);
    std::memcpy(p, tmp, n * sizeof(T));
  }
};

}  // namespace simd
}  // namespace inik
