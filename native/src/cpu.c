/* Run-time choice of the fast paths: AVX2 (with F16C, BMI2, POPCNT) when the CPU has it,
 * and AVX-512 (F, BW, VL, DQ, CD; the rANS encoder's sixteen-lane coder, enc_rans.c) on
 * top of it.  The build needs no -mavx2 / -mavx512f: the fast functions carry target
 * attributes.  The plain C paths give the same bits (tests/test_native.py,
 * tests/test_native_rans_simd.py check them).  $TKB_NATIVE_SIMD: "scalar" forces the
 * plain paths, "avx2" the AVX2 paths without AVX-512. */
#include <stdlib.h>
#include "internal.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

int tkb_cpu_avx2(void)
{
    const char *env = getenv("TKB_NATIVE_SIMD");   /* "scalar": force the plain paths */
    if (env && !strcmp(env, "scalar"))
        return 0;
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 29)))    /* F16C */
        return 0;
    __builtin_cpu_init();    /* AVX2 (with the OS saving the YMM state), BMI2, POPCNT */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2") &&
           __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

/* the CPU and the OS: AVX-512 F, DQ, CD, BW, VL with the ZMM state saved (and AVX2) */
static int probe_avx512(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (!tkb_cpu_avx2())
        return 0;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))    /* OSXSAVE: xgetbv */
        return 0;
    /* leaf 7 EBX: AVX512F (16), DQ (17), CD (28), BW (30), VL (31) */
    const unsigned need = 1u << 16 | 1u << 17 | 1u << 28 | 1u << 30 | 1u << 31;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || (b & need) != need)
        return 0;
    /* XCR0: the OS saves the SSE, AVX, opmask, ZMM_Hi256 and Hi16_ZMM states */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0u));
    (void)hi;
    if ((lo & 0xE6u) != 0xE6u)
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd");
#else
    return 0;
#endif
}

int tkb_cpu_avx512(void)
{
    const char *env = getenv("TKB_NATIVE_SIMD");   /* "scalar", "avx2": not AVX-512 */
    if (env && (!strcmp(env, "scalar") || !strcmp(env, "avx2")))
        return 0;
    static int hw = -1;                 /* probed once (cpuid can be slow in a VM) */
    int h = __atomic_load_n(&hw, __ATOMIC_RELAXED);
    if (h < 0) {
        h = probe_avx512();
        __atomic_store_n(&hw, h, __ATOMIC_RELAXED);
    }
    return h;
}
