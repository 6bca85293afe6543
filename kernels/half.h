/*
 * IEEE binary16 and bfloat16 <-> f32 conversions for host code of both
 * backends (plain C, also compiles as C++ for nvcc). Rounding to nearest,
 * ties to even; NaN stays NaN, overflow gives infinity, f16 subnormals are
 * produced and read exactly.
 */
#ifndef SINKD_HALF_H
#define SINKD_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t sinkd__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float sinkd__f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float sinkd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;

    if (exp == 0x1f) /* inf / nan */
        return sinkd__f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in f32 */
        float f = (float)man * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    return sinkd__f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t sinkd_f32_to_f16(float f)
{
    uint32_t u = sinkd__f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a >= 0x7f800000u) /* inf / nan (keep a quiet nan) */
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) /* rounds to >= 65520: overflow */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {
        /* below the smallest normal 2^-14: subnormal or zero, step 2^-24 */
        if (a < 0x33000000u) /* < 2^-25: rounds to zero */
            return sign;
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round the 13 dropped bits to nearest even */
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

static inline float sinkd_bf16_to_f32(uint16_t h)
{
    return sinkd__f32_from_bits((uint32_t)h << 16);
}

static inline uint16_t sinkd_f32_to_bf16(float f)
{
    uint32_t u = sinkd__f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep it quiet */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif /* SINKD_HALF_H */
