// Compiler settings shared by the CPU kernels (ifm_cpu.cpp, lstm_cpu.cpp).
#pragma once

#if !defined(__GNUC__)
#error "inik's CPU kernels use GCC/Clang vector extensions; build with GCC or Clang"
#endif

// Generic-wheel vectorisation: one copy of each hot function per x86-64 ISA
// level, the best picked at load time (glibc ifunc). -march=native builds
// (INIK_CPU_NATIVE=1) and other compilers/architectures get one plain copy.
// GCC clones plain functions only: templates are wrapped in cloned overloads.
#if defined(__x86_64__) && defined(__linux__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(INIK_NO_CLONES)
#define INIK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define INIK_CLONES
#endif
#define INIK_AI inline __attribute__((always_inline))
