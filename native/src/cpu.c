/* Run-time choice of the fast paths: AVX2 (with F16C, BMI2, POPCNT) when the CPU has it.
 * The build needs no -mavx2: the fast functions carry target attributes.  The plain C
 * paths give the same bits (tests/test_native.py checks both). */
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
