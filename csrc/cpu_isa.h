// The CPU kernels' instruction sets, picked at run time (pick_isa, defined in
// winograd_cpu.cpp), and AVX512-BF16's dot product for kernels that use it.
#pragma once

#include <c10/util/string_view.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// Explicit per-ISA kernels (GCC 11+ on x86-64 Linux): AVX-512 and AVX2; with GCC 12+
// also AVX-512 with AVX512-BF16's dot product (INIK_DOT_BF16). Otherwise only the
// generic build.
#if defined(__x86_64__) && defined(__linux__) && !defined(__clang__) && __GNUC__ >= 11 && !defined(INIK_NO_CLONES)
#define INIK_CPU_ISAS 1
#define INIK_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define INIK_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#endif
#if defined(INIK_CPU_ISAS) && __GNUC__ >= 12
#define INIK_DOT_BF16 1
#define INIK_TARGET_AVX512_BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#else
#define INIK_DOT_BF16 0
#endif

namespace inik {

// The best the CPU supports for isa = "", or the named one (avx512_bf16, avx512, avx2,
// generic: INIK_CPU_ISA, passed by the Python caller) to test or time a lesser one;
// asking for more than the CPU has is an error.
// avx512_bf16 differs from avx512 for bfloat16 input only.
enum Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };
Isa pick_isa(c10::string_view isa);

#if INIK_DOT_BF16
// vdpbf16ps: acc + a.lo * b.lo + a.hi * b.hi for each float lane's pair of bfloat16s
// (the builtin, not the intrinsic, so that it can sit in always-inline code that
// only a target("avx512bf16") function instantiates). V: 16 float lanes, I: 16 int32.
template <class V, class I>
inline __attribute__((always_inline)) V dot_bf16(V acc, I a, I b) {
  return (V)__builtin_ia32_dpbf16ps_v16sf((__m512)acc, (__m512bh)a, (__m512bh)b);
}
#endif

}  // namespace inik
