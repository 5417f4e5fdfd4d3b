/* CRC-32C (spec clause 3.4; RFC 3720): reflected polynomial 0x82F63B78, initial value
 * and final exclusive or 0xFFFFFFFF.  Table-driven, eight bytes at a time (slicing-by-8),
 * and the SSE4.2 crc32 instruction when the CPU has it (same results). */
#include "internal.h"
#include "../include/tkb_enc.h"
#include <pthread.h>
#include <stdlib.h>

static uint32_t T[8][256];
static pthread_once_t t_once = PTHREAD_ONCE_INIT;

static void init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        T[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            T[t][i] = (T[t - 1][i] >> 8) ^ T[0][T[t - 1][i] & 0xFF];
}

static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t n)
{
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = T[7][lo & 0xFF] ^ T[6][(lo >> 8) & 0xFF] ^ T[5][(lo >> 16) & 0xFF] ^
            T[4][lo >> 24] ^ T[3][hi & 0xFF] ^ T[2][(hi >> 8) & 0xFF] ^
            T[1][(hi >> 16) & 0xFF] ^ T[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ T[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
/* Three streams at once (the crc32 instruction has a latency of three cycles and a
 * throughput of one): blocks of 3 * LANE bytes, the three CRCs joined by linearity,
 * crc(A || B) = shift(crc(A), |B|) ^ crc0(B), where shift by LANE bytes (the register
 * times x^(8 LANE) mod P) is read from four tables of 256 entries. */
#define LANE 4096
static uint32_t SH[4][256];
static pthread_once_t sh_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2"))) static void sh_init(void)
{
    for (int k = 0; k < 4; k++)
        for (uint32_t v = 0; v < 256; v++) {
            uint64_t c = (uint64_t)v << (8 * k);
            for (int i = 0; i < LANE / 8; i++)
                c = _mm_crc32_u64(c, 0);
            SH[k][v] = (uint32_t)c;
        }
}

static inline uint32_t shift_lane(uint32_t c)
{
    return SH[0][c & 0xFF] ^ SH[1][(c >> 8) & 0xFF] ^ SH[2][(c >> 16) & 0xFF] ^ SH[3][c >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n)
{
    uint64_t c64 = c;
    if (n >= 3 * LANE) {
        pthread_once(&sh_once, sh_init);
        while (n >= 3 * LANE) {
            uint64_t a = c64, b = 0, d = 0;
            for (size_t i = 0; i < LANE; i += 8) {
                uint64_t w0, w1, w2;
                memcpy(&w0, p + i, 8);
                memcpy(&w1, p + LANE + i, 8);
                memcpy(&w2, p + 2 * LANE + i, 8);
                a = _mm_crc32_u64(a, w0);
                b = _mm_crc32_u64(b, w1);
                d = _mm_crc32_u64(d, w2);
            }
            uint32_t r = shift_lane((uint32_t)a) ^ (uint32_t)b;
            c64 = shift_lane(r) ^ (uint32_t)d;
            p += 3 * LANE;
            n -= 3 * LANE;
        }
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);    /* little-endian host: bytes in stream order */
        c64 = _mm_crc32_u64(c64, w);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--)
        c = _mm_crc32_u8(c, *p++);
    return c;
}
static int hw;
static pthread_once_t hw_once = PTHREAD_ONCE_INIT;
static void hw_init(void) { hw = __builtin_cpu_supports("sse4.2") ? 1 : 0; }
#endif

/* thread-safe: the decoder checks units' CRCs on a helper thread too (decoder.c) */
static uint32_t crc_choose(const uint8_t *p, size_t n, int allow_hw)
{
#if defined(__x86_64__) && defined(__GNUC__)
    pthread_once(&hw_once, hw_init);
    if (hw && allow_hw)
        return crc_hw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
#else
    (void)allow_hw;
#endif
    pthread_once(&t_once, init);
    return crc_table(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
}

uint32_t tkb_crc32c(const uint8_t *p, size_t n)
{
    return crc_choose(p, n, 1);
}

/* the encoder's units (Annex B.8, tokenbits.native.encoder): the same CRC, the plain
 * table path when $TKB_NATIVE_SIMD=scalar (so that tests compare both paths) */
uint32_t tkb_enc_crc32c(const void *p, size_t n)
{
    const char *env = getenv("TKB_NATIVE_SIMD");
    return crc_choose((const uint8_t *)p, n, !(env && !strcmp(env, "scalar")));
}
