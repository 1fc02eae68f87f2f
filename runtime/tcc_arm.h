// tcc aarch64 CPU features for the NEON kernels: which optional Armv8.2+ extensions this CPU has.
// A feature the compiler's baseline already has (-mcpu=cortex-a76 defines __ARM_FEATURE_DOTPROD) is a
// compile-time `true`; otherwise it is read once from the kernel's HWCAPs (getauxval), which under
// qemu-user are those of the emulated CPU (-cpu cortex-a53 has none of them).
#pragma once
#if defined(__aarch64__)
#include <sys/auxv.h>

#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1UL << 10)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif

namespace tcc {
namespace arm {

inline bool has_dotprod() {
#if defined(__ARM_FEATURE_DOTPROD)
  return true;
#else
  static const bool v = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return v;
#endif
}

inline bool has_i8mm() {
#if defined(__ARM_FEATURE_MATMUL_INT8)
  return true;
#else
  static const bool v = (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
  return v;
#endif
}

inline bool has_fp16() {
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
  return true;
#else
  static const bool v = (getauxval(AT_HWCAP) & HWCAP_ASIMDHP) != 0;
  return v;
#endif
}

}  // namespace arm
}  // namespace tcc

// Function attributes that let a kernel path use an extension the baseline lacks.
#define TCC_ARM_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
// The i8mm paths also use sdot for a leftover odd row (every CPU with i8mm has dotprod; callers check both).
#define TCC_ARM_I8MM __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))
#define TCC_ARM_FP16 __attribute__((target("arch=armv8.2-a+fp16")))
#endif
