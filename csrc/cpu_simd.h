// Compiler settings shared by the CPU kernels (ifm_cpu.cpp, lstm_cpu.cpp).
#pragma once

#if !defined(__GNUC__)
#error "inik's CPU kernels use GCC/Clang vector extensions; build with GCC or Clang"
#endif

#define INIK_AI inline __attribute__((always_inline))
