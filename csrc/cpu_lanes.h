// Float lanes for the CPU kernels (lstm_cpu.cpp, winograd_cpu.cpp): a 16-float GCC
// vector, loads and stores from float32 and bfloat16 storage, and tails of fewer
// than 16 channels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "cpu_simd.h"

namespace inik {
namespace simd {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(kLanes * sizeof(uint16_t))));

// Storage <-> float lanes: float as is, bfloat16 as the top half of a float.
INIK_AI vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
INIK_AI void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
INIK_AI vf load(const at::BFloat16* p) {
  vh h;
  std::memcpy(&h, p, sizeof(vh));
  const vu u = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &u, sizeof(vf));
  return v;
}
INIK_AI void store(at::BFloat16* p, vf v) {
  vu u;
  std::memcpy(&u, &v, sizeof(vf));
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  const vu nan = vu{} + 0x7fc0u;
  const vu out = v != v ? nan : rounded;
  const vh h = __builtin_convertvector(out, vh);
  std::memcpy(p, &h, sizeof(vh));
}

// A tail of fewer than kLanes channels goes through a zero-filled bounce buffer.
template <class T> struct Lanes {
  static INIK_AI vf get(const T* p, int64_t n) {
    if (n == kLanes) return load(p);
    T tmp[kLanes] = {};
    std::memcpy(tmp, p, n * sizeof(T));
    return load(tmp);
  }
  static INIK_AI void put(T* p, vf v, int64_t n) {
    if (n == kLanes) return store(p, v);
    T tmp[kLanes];
    store(tmp, v);
    std::memcpy(p, tmp, n * sizeof(T));
  }
};

}  // namespace simd
}  // namespace inik
