/* Matrix-vector products for decoding: y[b][o] = sum_i W[o][i] * x[b][i] for a few rows b of x.
 *
 * Decoding one token reads every weight once, so a step is as fast as its weights stream through the
 * cores. On CPUs where oneDNN cannot prepack bf16 (AVX2 without AVX-512), PyTorch's bf16 product with one
 * row costs several times the memory traffic, and its int8 paths either need a packed copy of the
 * weights (fbgemm) or run far below bandwidth; even its fp32 products reach about two thirds of it for
 * the small matrices of a layer. These loops read fp32, bf16 or int8 weights as stored.
 *
 * Each weight row is read start to end, once, and meets every row of x while it sits in L1, with a
 * prefetch PREFETCH_BYTES ahead. Walking four weight rows side by side instead (sharing loads of x) looks
 * cheaper but only reached half the memory bandwidth on a 2-core Zen 3 (13 against 28 GB/s for int8): one
 * sequential stream per core is what the hardware prefetcher follows best. That holds for a single row of
 * x, where memory is the limit. With many rows the loads are: there, on AVX-512, four weight rows meet four
 * rows of x in sixteen registers while the next four weight rows are prefetched by hand, which halved the
 * time of a 16-row product on a 2-core Xeon (0.19B, 16 streams of fp32: 262 -> 390 tokens/s).
 *
 * The kernels compute output rows [r0, r1) so that callers can split a matrix between threads;
 * rwkv_gemv runs one over all rows on torch's OpenMP team.
 * W is row-major (out, in). x is (batch, in), y is (batch, out) fp32. A row of y is computed the same
 * way whatever the batch, so a sequence's result does not depend on the others decoded with it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#ifdef __AVX2__
#define PREFETCH_BYTES 3072
/* With many rows of x, a few weight rows at a time meet four rows of x at a time, so that both stay in L1. */
#define ROW_BLOCK 4

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_bf16x8(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* Eight weights from element i of a row of bf16 (widened in registers) or fp32 weights. */
static inline __m256 load_w8(const void *row, int i, int bf16) {
    return bf16 ? load_bf16x8((const uint16_t *)row + i) : _mm256_loadu_ps((const float *)row + i);
}

/* One weight row times rows [b0, b1) of x, four at a time. Every (row, b) pair sums the same way: two
 * accumulators (inputs i mod 16 below 8, and the rest) added at the end. `bf16` is a constant at each
 * call, so the compiler makes one copy of the loop per weight format. */
static inline __attribute__((always_inline)) void dense_row(const void *row, int bf16, const float *x, float *y,
                                                            int b0, int b1, int in, int out, int o) {
    const int line = bf16 ? 32 : 16; /* weights per 64-byte cache line */
    const char *bytes = row;
    int b = b0;
    for (; b + 4 <= b1; b += 4) {
        const float *x0 = x + (int64_t)b * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        __m256 p0 = _mm256_setzero_ps(), q0 = p0, p1 = p0, q1 = p0, p2 = p0, q2 = p0, p3 = p0, q3 = p0;
        for (int i = 0; i < in; i += 16) {
            if (b == b0 && i % line == 0) _mm_prefetch(bytes + (i << (2 - bf16)) + PREFETCH_BYTES, _MM_HINT_T0);
            const __m256 w = load_w8(row, i, bf16), v = load_w8(row, i + 8, bf16);
            p0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + i), p0);
            q0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x0 + i + 8), q0);
            p1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1 + i), p1);
            q1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x1 + i + 8), q1);
            p2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x2 + i), p2);
            q2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x2 + i + 8), q2);
            p3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x3 + i), p3);
            q3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x3 + i + 8), q3);
        }
        y[(int64_t)b * out + o] = hsum8(_mm256_add_ps(p0, q0));
        y[(int64_t)(b + 1) * out + o] = hsum8(_mm256_add_ps(p1, q1));
        y[(int64_t)(b + 2) * out + o] = hsum8(_mm256_add_ps(p2, q2));
        y[(int64_t)(b + 3) * out + o] = hsum8(_mm256_add_ps(p3, q3));
    }
    for (; b < b1; b++) {
        const float *xb = x + (int64_t)b * in;
        __m256 p = _mm256_setzero_ps(), q = p;
        for (int i = 0; i < in; i += 16) {
            if (b == b0 && i % line == 0) _mm_prefetch(bytes + (i << (2 - bf16)) + PREFETCH_BYTES, _MM_HINT_T0);
            p = _mm256_fmadd_ps(load_w8(row, i, bf16), _mm256_loadu_ps(xb + i), p);
            q = _mm256_fmadd_ps(load_w8(row, i + 8, bf16), _mm256_loadu_ps(xb + i + 8), q);
        }
        y[(int64_t)b * out + o] = hsum8(_mm256_add_ps(p, q));
    }
}

#ifdef __AVX512F__
/* Sixteen weights from element i of a row, as one 512-bit vector: the two 8-lane halves of dense_row. */
static inline __m512 load_w16(const void *row, int i, int bf16) {
    if (!bf16) return _mm512_loadu_ps((const float *)row + i);
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* The halves of a 16-lane sum added as dense_row adds its p and q, then summed as hsum8 sums. */
static inline float hsum16(__m512 v) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* Holds v in a register from here on: left to itself, GCC reloads a block's vectors for every
 * multiply-add that uses them (see dense_block4). */
#define PIN(v) __asm__("" : "+v"(v))
/* v0 .. v(nb-1) = LOAD(p + c * stride) for the nb rows of x of a block, each pinned. */
#define LOAD_X_PINNED(LOAD, p, stride)      \
    do {                                    \
        v0 = LOAD(p);                       \
        PIN(v0);                            \
        if (nb > 1) {                       \
            v1 = LOAD((p) + (stride));      \
            PIN(v1);                        \
        }                                   \
        if (nb > 2) {                       \
            v2 = LOAD((p) + 2 * (stride));  \
            PIN(v2);                        \
        }                                   \
        if (nb > 3) {                       \
            v3 = LOAD((p) + 3 * (stride));  \
            PIN(v3);                        \
        }                                   \
    } while (0)

/* Four weight rows times nb (2 to 4, a constant at each call) rows of x with AVX-512: up to sixteen
 * accumulators in registers, so each load feeds up to four multiply-adds (dense_row's inner loop has ten
 * loads for eight 8-lane ones and is bound by them once x has many rows). Lane j of an accumulator holds
 * what dense_row's p (j < 8) or q (j >= 8) holds, and the sum at the end is the same, so every (row, b)
 * pair gets the same bits either way. The accumulators are named variables and the loaded vectors are
 * pinned to registers (the empty asm statements): with arrays, GCC kept the inputs on the stack and
 * reloaded them for every multiply-add, which halved the speed (fp32, 16 rows: 31 against 96 GFLOP/s on
 * one Zen 4 core, whose peak is about 100). */
static inline __attribute__((always_inline)) void dense_block4(const void *w, size_t row_bytes, int bf16,
                                                               const float *x, float *y, int b, int nb, int in,
                                                               int out, int o, const char *pf, int pf_lines) {
    const char *r0 = (const char *)w + (size_t)o * row_bytes;
    const float *x0 = x + (int64_t)b * in;
    const size_t rs = row_bytes, xs = (size_t)in;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
           a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    __m512 v0, v1 = a00, v2 = a00, v3 = a00;
    const int steps = in / 16;
    int owed = 0; /* pf_lines spread evenly over the steps, without a division in the loop */
    for (int i = 0; i < in; i += 16) {
        for (owed += pf_lines; owed >= steps; owed -= steps, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
        LOAD_X_PINNED(_mm512_loadu_ps, x0 + i, xs);
#define DENSE_ROW4(k, row)                                       \
    do {                                                         \
        __m512 wr = load_w16(row, i, bf16);                      \
        PIN(wr);                                                 \
        a##k##0 = _mm512_fmadd_ps(wr, v0, a##k##0);              \
        if (nb > 1) a##k##1 = _mm512_fmadd_ps(wr, v1, a##k##1);  \
        if (nb > 2) a##k##2 = _mm512_fmadd_ps(wr, v2, a##k##2);  \
        if (nb > 3) a##k##3 = _mm512_fmadd_ps(wr, v3, a##k##3);  \
    } while (0)
        DENSE_ROW4(0, r0);
        DENSE_ROW4(1, r0 + rs);
        DENSE_ROW4(2, r0 + 2 * rs);
        DENSE_ROW4(3, r0 + 3 * rs);
#undef DENSE_ROW4
    }
    float *yb = y + (int64_t)b * out + o;
    yb[0] = hsum16(a00), yb[1] = hsum16(a10), yb[2] = hsum16(a20), yb[3] = hsum16(a30);
    if (nb < 2) return;
    yb += out;
    yb[0] = hsum16(a01), yb[1] = hsum16(a11), yb[2] = hsum16(a21), yb[3] = hsum16(a31);
    if (nb < 3) return;
    yb += out;
    yb[0] = hsum16(a02), yb[1] = hsum16(a12), yb[2] = hsum16(a22), yb[3] = hsum16(a32);
    if (nb < 4) return;
    yb += out;
    yb[0] = hsum16(a03), yb[1] = hsum16(a13), yb[2] = hsum16(a23), yb[3] = hsum16(a33);
}
#endif

/* Output rows [r0, r1): a few weight rows at a time meet up to four rows of x at a time, so both stay in
 * L1. A single row of x (decoding one sequence) reads one weight row at a time, the fastest way through
 * memory (see the top of this file). */
static inline __attribute__((always_inline)) void dense_rows(const void *w, int bf16, const float *x, float *y,
                                                             int batch, int in, int out, int r0, int r1) {
    const size_t row_bytes = (size_t)in * (bf16 ? 2 : 4);
    for (int o0 = r0; o0 < r1; o0 += ROW_BLOCK) {
        const int o1 = o0 + ROW_BLOCK < r1 ? o0 + ROW_BLOCK : r1;
#ifdef __AVX512F__
        /* The next four weight rows (one block of bytes) are prefetched a share at a time while this
         * block meets each group of rows of x, so that memory and the multiply-adds overlap. */
        const int groups = batch / 4 + (batch % 4 > 1), next = o1 + ROW_BLOCK <= r1 ? ROW_BLOCK : r1 - o1;
        const int lines = (int)((size_t)next * row_bytes / 64);
        const char *pf = (const char *)w + (size_t)o1 * row_bytes;
#endif
        for (int b = 0; b < batch; b += 4) {
#ifdef __AVX512F__
            const int nb = batch - b < 4 ? batch - b : 4;
            if (o1 - o0 == 4 && nb > 1) {
                const int g = b / 4, l0 = (int)((int64_t)lines * g / groups), l1 = (int)((int64_t)lines * (g + 1) / groups);
                const char *p = pf + 64 * (size_t)l0;
                if (nb == 4) dense_block4(w, row_bytes, bf16, x, y, b, 4, in, out, o0, p, l1 - l0);
                else if (nb == 3) dense_block4(w, row_bytes, bf16, x, y, b, 3, in, out, o0, p, l1 - l0);
                else dense_block4(w, row_bytes, bf16, x, y, b, 2, in, out, o0, p, l1 - l0);
                continue;
            }
#endif
            for (int o = o0; o < o1; o++)
                dense_row((const char *)w + o * row_bytes, bf16, x, y, b, b + 4 < batch ? b + 4 : batch, in, out, o);
        }
    }
}
#endif

/* The plain loop for any width: one dot product per (row, b), in the compiler's vector order. */
static inline __attribute__((always_inline)) void plain_rows(const void *w, int bf16, const float *x, float *y,
                                                             int batch, int in, int out, int r0, int r1) {
    for (int o = r0; o < r1; o++) {
        const float *row32 = (const float *)w + (int64_t)o * in;
        const uint16_t *row16 = (const uint16_t *)w + (int64_t)o * in;
        for (int b = 0; b < batch; b++) {
            const float *xb = x + (int64_t)b * in;
            float acc = 0.f;
#pragma omp simd reduction(+ : acc)
            for (int i = 0; i < in; i++) acc += (bf16 ? bf16_to_float(row16[i]) : row32[i]) * xb[i];
            y[(int64_t)b * out + o] = acc;
        }
    }
}

/* fp32 or bf16 weights (`bf16`); `in` must be a multiple of 16 for the vector loop (other widths take
 * the plain loop). Each branch passes a constant, so every loop is compiled once per weight format. */
static void dense_gemv(const void *w, int bf16, const float *x, float *y, int batch, int in, int out, int r0,
                       int r1) {
#ifdef __AVX2__
    if (in % 16 == 0) {
        if (bf16) dense_rows(w, 1, x, y, batch, in, out, r0, r1);
        else dense_rows(w, 0, x, y, batch, in, out, r0, r1);
        return;
    }
#endif
    if (bf16) plain_rows(w, 1, x, y, batch, in, out, r0, r1);
    else plain_rows(w, 0, x, y, batch, in, out, r0, r1);
}

/* int8 activations would lose precision and AVX2 has no 8-bit dot product that keeps it, so x is
 * quantized to 15 bits per row instead (rwkv_quantize_x) and multiplied with 16-bit products summed in
 * pairs (vpmaddwd). A pair is at most 2 * 16383 * 127 < 2^22, so an int32 lane can add 2^8 of them
 * safely: every I8_BLOCK inputs the lanes are added into one int64 total. The total is exact and becomes a
 * float once, at the end, so every path (each vector width, and the int8 GEMM of rwkv_join_bytes) gives
 * the same bits for a row. */
#define X_LEVELS 16383.f
#define I8_BLOCK 4096

#define BYTES_PARALLEL_MIN 65536 /* elements above which the byte split and join use torch's threads */

/* A row's step, max|x| / X_LEVELS (1 for an all-zero row), stored in *xs; returns its inverse. */
static float row_step(const float *xb, int in, float *xs) {
    float peak = 0.f;
#pragma omp simd reduction(max : peak)
    for (int i = 0; i < in; i++) {
        float a = xb[i] < 0 ? -xb[i] : xb[i];
        peak = a > peak ? a : peak;
    }
    *xs = peak > 0.f ? peak / X_LEVELS : 1.f;
    return 1.f / *xs;
}

static inline int level(float x, float inv) {
    float v = x * inv;
    return (int)(v < 0 ? v - 0.5f : v + 0.5f);
}

/* An exact integer total as a float: total * (scale * xs). Every int8 path scales through here, and the
 * empty asm keeps the product of the scales whole, so -fassociative-math cannot regroup it one way in one
 * path and another way in the next: all of them give the same bits. */
static inline float i8_scaled(int64_t total, float scale, float xs) {
    float s = scale * xs;
    __asm__("" : "+g"(s));
    return (float)total * s;
}

/* xq[b][i] = round(x[b][i] / xs[b]) with xs[b] = max|x[b]| / X_LEVELS (1 for an all-zero row). */
void rwkv_quantize_x(const float *x, int16_t *xq, float *xs, int batch, int in) {
    for (int b = 0; b < batch; b++) {
        const float *xb = x + (int64_t)b * in;
        const float inv = row_step(xb, in, xs + b);
        int16_t *qb = xq + (int64_t)b * in;
        for (int i = 0; i < in; i++) qb[i] = (int16_t)level(xb[i], inv);
    }
}

/* Weights to int8 with one scale per row, as linear.quantize_int8_torch makes them, to the bit for finite
 * weights: scale = max(max|w|, 1e-12) / 127 and q = round-half-even(w / scale) clamped to +-127, all in
 * fp32 (IEEE division; rintf rounds to even). `w` is fp32, or bf16 with `bf16`. Two passes over a row,
 * where the PyTorch version makes seven over a converted copy: loading an int8 model is mostly this. */
static inline __attribute__((always_inline)) void quantize_row(const void *w, int bf16, int8_t *q, float *scale,
                                                               int in) {
    const float *wf = w;
    const uint16_t *wh = w;
    float m = 0.f;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < in; i++) {
        const float a = fabsf(bf16 ? bf16_to_float(wh[i]) : wf[i]);
        m = a > m ? a : m;
    }
    const float sc = (m > 1e-12f ? m : 1e-12f) / 127.0f;
#pragma omp simd
    for (int i = 0; i < in; i++) {
        const float v = rintf((bf16 ? bf16_to_float(wh[i]) : wf[i]) / sc);
        q[i] = (int8_t)(v > 127.f ? 127.f : v < -127.f ? -127.f : v);
    }
    *scale = sc;
}

void rwkv_quantize_w(const void *w, int bf16, int8_t *q, float *scale, int rows, int in) {
#pragma omp parallel for schedule(static) if ((int64_t)rows * in >= BYTES_PARALLEL_MIN)
    for (int o = 0; o < rows; o++) {
        const int64_t at = (int64_t)o * in;
        if (bf16) quantize_row((const uint16_t *)w + at, 1, q + at, scale + o, in);
        else quantize_row((const float *)w + at, 0, q + at, scale + o, in);
    }
}

/* The same levels as two int8 rows each, for an int8 x int8 GEMM (torch._int_mm) where VNNI or AMX makes
 * one fast: level = 128 * hi + lo with hi in [-128, 127] (rows [0, batch) of `bytes`) and lo in [0, 127]
 * (rows [batch, 2 * batch)). */
void rwkv_quantize_x_bytes(const float *x, int8_t *bytes, float *xs, int batch, int in) {
#pragma omp parallel for schedule(static) if ((int64_t)batch * in >= BYTES_PARALLEL_MIN)
    for (int b = 0; b < batch; b++) {
        const float *xb = x + (int64_t)b * in;
        const float inv = row_step(xb, in, xs + b);
        int8_t *hi = bytes + (int64_t)b * in, *lo = bytes + (int64_t)(batch + b) * in;
        for (int i = 0; i < in; i++) {
            const unsigned v = (unsigned)(level(xb[i], inv) + 16384); /* >= 0: shifts are floor division */
            hi[i] = (int8_t)((int)(v >> 7) - 128);
            lo[i] = (int8_t)(v & 127);
        }
    }
}

/* y[b][o] = (128 * sums[b][o] + sums[batch + b][o]) * scale[o] * xs[b]: the integer total of
 * rwkv_quantize_x_bytes' halves, scaled as the C kernel scales (i8_scaled). */
void rwkv_join_bytes(const int32_t *sums, const float *scale, const float *xs, float *y, int batch, int out) {
#pragma omp parallel for schedule(static) if ((int64_t)batch * out >= BYTES_PARALLEL_MIN)
    for (int b = 0; b < batch; b++) {
        const int32_t *hi = sums + (int64_t)b * out, *lo = sums + (int64_t)(batch + b) * out;
        float *yb = y + (int64_t)b * out;
        int o = 0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
        /* i8_scaled on 8 outputs at a time: the same float product of the scales and the same rounding of
         * the int64 total, where the scalar loop stays scalar (about 4x slower on a 2-core Zen 4). */
        const __m256 xb = _mm256_set1_ps(xs[b]);
        for (; o + 8 <= out; o += 8) {
            __m256 s = _mm256_mul_ps(_mm256_loadu_ps(scale + o), xb);
            __asm__("" : "+x"(s));
            const __m512i total = _mm512_add_epi64(
                _mm512_slli_epi64(_mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(hi + o))), 7),
                _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(lo + o))));
            _mm256_storeu_ps(yb + o, _mm256_mul_ps(_mm512_cvtepi64_ps(total), s));
        }
#endif
        for (; o < out; o++) yb[o] = i8_scaled(128 * (int64_t)hi[o] + lo[o], scale[o], xs[b]);
    }
}

static void i8_rows(const int8_t *q, const float *scale, const int16_t *xq, const float *xs, float *y, int batch,
                    int in, int out, int r0, int r1) {
    for (int o = r0; o < r1; o++) {
        const int8_t *row = q + (int64_t)o * in;
        for (int b = 0; b < batch; b++) {
            const int16_t *xb = xq + (int64_t)b * in;
            int64_t total = 0;
            for (int lo = 0; lo < in; lo += I8_BLOCK) {
                int hi = lo + I8_BLOCK < in ? lo + I8_BLOCK : in;
                int64_t acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int i = lo; i < hi; i++) acc += (int32_t)row[i] * (int32_t)xb[i];
                total += acc;
            }
            y[(int64_t)b * out + o] = i8_scaled(total, scale[o], xs[b]);
        }
    }
}

#ifdef __AVX2__
/* 16 int8 weights widened to int16 times 16 activations, summed in pairs into 8 int32 lanes. */
static inline __m256i i8_madd(const int8_t *w, const int16_t *x) {
    return _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w)),
                             _mm256_loadu_si256((const __m256i *)x));
}

/* The eight int32 lanes' sum, in int64 (their sum may not fit 32 bits). */
static inline int64_t hsum_i32x8(__m256i v) {
    const __m256i w = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                       _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    return _mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1);
}

/* One int8 weight row times rows [b0, b1) of x, four at a time; the integer sums are exact, so how they
 * are grouped changes nothing. */
static void i8_row(const int8_t *row, float scale, const int16_t *xq, const float *xs, float *y, int b0, int b1,
                   int in, int out, int o) {
    int b = b0;
    for (; b + 4 <= b1; b += 4) {
        const int16_t *x0 = xq + (int64_t)b * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        int64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (int lo = 0; lo < in; lo += I8_BLOCK) {
            const int hi = lo + I8_BLOCK < in ? lo + I8_BLOCK : in;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int i = lo; i < hi; i += 16) {
                if (b == b0 && (i & 63) == 0) _mm_prefetch((const char *)(row + i) + PREFETCH_BYTES, _MM_HINT_T0);
                const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + i)));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)(x0 + i))));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)(x1 + i))));
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)(x2 + i))));
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)(x3 + i))));
            }
            t0 += hsum_i32x8(a0);
            t1 += hsum_i32x8(a1);
            t2 += hsum_i32x8(a2);
            t3 += hsum_i32x8(a3);
        }
        y[(int64_t)b * out + o] = i8_scaled(t0, scale, xs[b]);
        y[(int64_t)(b + 1) * out + o] = i8_scaled(t1, scale, xs[b + 1]);
        y[(int64_t)(b + 2) * out + o] = i8_scaled(t2, scale, xs[b + 2]);
        y[(int64_t)(b + 3) * out + o] = i8_scaled(t3, scale, xs[b + 3]);
    }
    for (; b < b1; b++) {
        const int16_t *xb = xq + (int64_t)b * in;
        int64_t t = 0;
        for (int lo = 0; lo < in; lo += I8_BLOCK) {
            const int hi = lo + I8_BLOCK < in ? lo + I8_BLOCK : in;
            __m256i a = _mm256_setzero_si256(), c = a;
            for (int i = lo; i < hi; i += 32) {
                if (b == b0 && (i & 63) == 0) _mm_prefetch((const char *)(row + i) + PREFETCH_BYTES, _MM_HINT_T0);
                a = _mm256_add_epi32(a, i8_madd(row + i, xb + i));
                c = _mm256_add_epi32(c, i8_madd(row + i + 16, xb + i + 16));
            }
            t += hsum_i32x8(_mm256_add_epi32(a, c));
        }
        y[(int64_t)b * out + o] = i8_scaled(t, scale, xs[b]);
    }
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* The same row with AVX-512 VNNI: vpdpwssd multiplies 32 int16 pairs and adds them into 16 int32 lanes in
 * one instruction, where AVX2 needs a widening multiply-add and an add for 16. A lane gains at most 2^22
 * per instruction and sees I8_BLOCK / 32 of them, so the int32 sums stay exact here too. Prompts and
 * batches are bound by these multiplies (one row of x is bound by memory, and gains little).
 * `in` must be a multiple of 64. */
static inline __m512i widen32(const int8_t *w) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)w));
}

static inline __m512i load_x32(const int16_t *x) { return _mm512_loadu_si512((const void *)x); }

static inline int64_t hsum_i32x16(__m512i v) {
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)),
                                                    _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1))));
}

static void i8_row_vnni(const int8_t *row, float scale, const int16_t *xq, const float *xs, float *y, int b0,
                        int b1, int in, int out, int o) {
    int b = b0;
    for (; b + 4 <= b1; b += 4) {
        const int16_t *x0 = xq + (int64_t)b * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        int64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (int lo = 0; lo < in; lo += I8_BLOCK) {
            const int hi = lo + I8_BLOCK < in ? lo + I8_BLOCK : in;
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            for (int i = lo; i < hi; i += 32) {
                if (b == b0 && (i & 63) == 0) _mm_prefetch((const char *)(row + i) + PREFETCH_BYTES, _MM_HINT_T0);
                const __m512i w = widen32(row + i);
                a0 = _mm512_dpwssd_epi32(a0, w, load_x32(x0 + i));
                a1 = _mm512_dpwssd_epi32(a1, w, load_x32(x1 + i));
                a2 = _mm512_dpwssd_epi32(a2, w, load_x32(x2 + i));
                a3 = _mm512_dpwssd_epi32(a3, w, load_x32(x3 + i));
            }
            t0 += hsum_i32x16(a0);
            t1 += hsum_i32x16(a1);
            t2 += hsum_i32x16(a2);
            t3 += hsum_i32x16(a3);
        }
        y[(int64_t)b * out + o] = i8_scaled(t0, scale, xs[b]);
        y[(int64_t)(b + 1) * out + o] = i8_scaled(t1, scale, xs[b + 1]);
        y[(int64_t)(b + 2) * out + o] = i8_scaled(t2, scale, xs[b + 2]);
        y[(int64_t)(b + 3) * out + o] = i8_scaled(t3, scale, xs[b + 3]);
    }
    for (; b < b1; b++) {
        const int16_t *xb = xq + (int64_t)b * in;
        int64_t t = 0;
        for (int lo = 0; lo < in; lo += I8_BLOCK) {
            const int hi = lo + I8_BLOCK < in ? lo + I8_BLOCK : in;
            __m512i a = _mm512_setzero_si512(), c = a;
            for (int i = lo; i < hi; i += 64) {
                if (b == b0) _mm_prefetch((const char *)(row + i) + PREFETCH_BYTES, _MM_HINT_T0);
                a = _mm512_dpwssd_epi32(a, widen32(row + i), load_x32(xb + i));
                c = _mm512_dpwssd_epi32(c, widen32(row + i + 32), load_x32(xb + i + 32));
            }
            t += hsum_i32x16(_mm512_add_epi32(a, c));
        }
        y[(int64_t)b * out + o] = i8_scaled(t, scale, xs[b]);
    }
}
#define I8_ROW(in) ((in) % 64 == 0 ? i8_row_vnni : i8_row)

/* Four weight rows times nb (2 to 4, a constant at each call) rows of x with VNNI: sixteen sums in
 * registers, so each loaded vector feeds up to four vpdpwssd instead of one weight row meeting four rows of
 * x (five loads for four multiplies, which bound batches). The vectors are pinned to registers as in
 * dense_block4. Integer sums are exact, so every (row, b) pair gets i8_row_vnni's total. The weight rows
 * are prefetched ahead on the first group of x (`first`), whose pass brings them from memory. */
static inline __attribute__((always_inline)) void i8_block4_vnni(const int8_t *q, const float *scale,
                                                                 const int16_t *xq, const float *xs, float *y,
                                                                 int b, int nb, int in, int out, int o,
                                                                 int first) {
    const int8_t *w0 = q + (int64_t)o * in;
    const int16_t *x0 = xq + (int64_t)b * in;
    const size_t xs_ = (size_t)in, ws = (size_t)in;
    int64_t t[4][4] = {{0}};
    for (int lo = 0; lo < in; lo += I8_BLOCK) {
        const int hi = lo + I8_BLOCK < in ? lo + I8_BLOCK : in;
        __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
        __m512i v0, v1 = a00, v2 = a00, v3 = a00;
        for (int i = lo; i < hi; i += 32) {
            if (first && (i & 63) == 0)
                for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(w0 + r * ws + i) + PREFETCH_BYTES, _MM_HINT_T0);
            LOAD_X_PINNED(load_x32, x0 + i, xs_);
#define I8_ROW4(k)                                                   \
    do {                                                             \
        __m512i wr = widen32(w0 + k * ws + i);                       \
        PIN(wr);                                                     \
        a##k##0 = _mm512_dpwssd_epi32(a##k##0, wr, v0);              \
        if (nb > 1) a##k##1 = _mm512_dpwssd_epi32(a##k##1, wr, v1);  \
        if (nb > 2) a##k##2 = _mm512_dpwssd_epi32(a##k##2, wr, v2);  \
        if (nb > 3) a##k##3 = _mm512_dpwssd_epi32(a##k##3, wr, v3);  \
    } while (0)
            I8_ROW4(0);
            I8_ROW4(1);
            I8_ROW4(2);
            I8_ROW4(3);
#undef I8_ROW4
        }
        t[0][0] += hsum_i32x16(a00), t[1][0] += hsum_i32x16(a10), t[2][0] += hsum_i32x16(a20), t[3][0] += hsum_i32x16(a30);
        if (nb > 1) t[0][1] += hsum_i32x16(a01), t[1][1] += hsum_i32x16(a11), t[2][1] += hsum_i32x16(a21), t[3][1] += hsum_i32x16(a31);
        if (nb > 2) t[0][2] += hsum_i32x16(a02), t[1][2] += hsum_i32x16(a12), t[2][2] += hsum_i32x16(a22), t[3][2] += hsum_i32x16(a32);
        if (nb > 3) t[0][3] += hsum_i32x16(a03), t[1][3] += hsum_i32x16(a13), t[2][3] += hsum_i32x16(a23), t[3][3] += hsum_i32x16(a33);
    }
    for (int c = 0; c < nb; c++)
        for (int r = 0; r < 4; r++) y[(int64_t)(b + c) * out + o + r] = i8_scaled(t[r][c], scale[o + r], xs[b + c]);
}
#define I8_BLOCKS
#else
#define I8_ROW(in) i8_row
#endif

/* Rows of x per pass over the weights: a block of them stays in cache while every weight row meets it. */
#define X_BLOCK 64

/* int8 weights with one scale per output row: y[b][o] = scale[o] * xs[b] * sum_i q[o][i] * xq[b][i], any
 * number of rows b. `in` must be a multiple of 32 for the vector loop (other widths take the plain loop). */
void rwkv_gemv_i8(const int8_t *q, const float *scale, const int16_t *xq, const float *xs, float *y, int batch,
                  int in, int out, int r0, int r1) {
    for (int b0 = 0; b0 < batch; b0 += X_BLOCK) {
        const int b1 = b0 + X_BLOCK < batch ? b0 + X_BLOCK : batch;
#ifdef __AVX2__
        if (in % 32 == 0) {
            void (*row_fn)(const int8_t *, float, const int16_t *, const float *, float *, int, int, int, int,
                           int) = I8_ROW(in);
            for (int o0 = r0; o0 < r1; o0 += ROW_BLOCK) {
                const int o1 = o0 + ROW_BLOCK < r1 ? o0 + ROW_BLOCK : r1;
                for (int b = b0; b < b1; b += 4) {
#ifdef I8_BLOCKS
                    const int nb = b1 - b < 4 ? b1 - b : 4;
                    if (in % 64 == 0 && o1 - o0 == 4 && nb > 1) {
                        if (nb == 4) i8_block4_vnni(q, scale, xq, xs, y, b, 4, in, out, o0, b == b0);
                        else if (nb == 3) i8_block4_vnni(q, scale, xq, xs, y, b, 3, in, out, o0, b == b0);
                        else i8_block4_vnni(q, scale, xq, xs, y, b, 2, in, out, o0, b == b0);
                        continue;
                    }
#endif
                    for (int o = o0; o < o1; o++)
                        row_fn(q + (int64_t)o * in, scale[o], xq, xs, y, b, b + 4 < b1 ? b + 4 : b1, in, out, o);
                }
            }
            continue;
        }
#endif
        i8_rows(q, scale, xq + (int64_t)b0 * in, xs + b0, y + (int64_t)b0 * out, b1 - b0, in, out, r0, r1);
    }
}

/* ---- int8 weights in row pairs, for inputs that are mostly zero ----
 * A feed-forward's second matrix multiplies relu(k)^2, which in a trained model is mostly zero: 89-95% in
 * every layer of the built-in model (about half with random weights). Stored as it is, (out, in), every
 * byte of W is read whatever x holds. Here W is stored by pairs of inputs instead: qp[j][o] holds the two
 * int8 weights W[o][2j] and W[o][2j+1] side by side, so y is a sum over the pairs j whose inputs are not
 * both zero, and a decode step reads only those pairs' rows. vpdpwssd multiplies a pair's 32 weights,
 * widened, by its two levels and adds both products into each of 16 output sums: no shuffles, and the
 * same instruction count per product as rwkv_gemv_i8. A 2-core Zen 4, 3072 x 768 (one layer's matrix of
 * 0.19B) out of cache, against rwkv_gemv_i8: 2.2x faster with 90% zero inputs, 0.6x with half of them
 * zero; in cache, 1.9-2.3x with 4 and 16 rows at 90% zeros. So it is used only where a model's feed-forward
 * inputs are mostly zero (`core/sparse_ffn.py`). The sums are the same exact integers, scaled by
 * i8_scaled, so both layouts give the same bits. */

#define I8P_FLUSH 256       /* pairs summed in int32 before the sums move to int64: 256 * 2 * 128 * 16383 < 2^31 */
#define I8P_WIDTH 256       /* outputs per pass over the listed pairs */
#define I8P_STACK_PAIRS 512 /* pairs listed at a time when there is no memory for the whole list */

/* The pairs j in [j0, j0 + npair) (of inputs 2j and 2j+1 < in) at which row x is not zero, into idx, and
 * their two levels as the halves of a word into lev, as vpdpwssd multiplies a pair's interleaved weights
 * by them. Returns how many pairs. */
static int nonzero_pairs(const int16_t *x, int in, int j0, int npair, int32_t *idx, int32_t *lev) {
    int n = 0;
    for (int j = j0; j < j0 + npair; j++) {
        const uint32_t lo = (uint16_t)x[2 * j], hi = 2 * j + 1 < in ? (uint16_t)x[2 * j + 1] : 0;
        if (lo | hi) {
            idx[n] = j;
            lev[n++] = (int32_t)(lo | (hi << 16));
        }
    }
    return n;
}

/* tot[o - o0] += the listed pairs' products, outputs [o0, o1). */
static void i8p_plain(const int8_t *qp, const int32_t *idx, const int32_t *lev, int n, int out, int o0, int o1,
                      int64_t *tot) {
    for (int p = 0; p < n; p++) {
        const int8_t *w = qp + (int64_t)idx[p] * out * 2;
        const int32_t lo = (int16_t)(lev[p] & 0xFFFF), hi = (int16_t)((uint32_t)lev[p] >> 16);
        for (int o = o0; o < o1; o++) tot[o - o0] += w[2 * o] * lo + w[2 * o + 1] * hi;
    }
}

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* nv * 16 outputs from o0 (nv <= 16, a constant at each call), the sums in registers. */
static inline __attribute__((always_inline)) void i8p_block(const int8_t *qp, const int32_t *idx, const int32_t *lev,
                                                            int n, int out, int o0, int nv, int64_t *tot) {
    for (int k = 0; k < n; k += I8P_FLUSH) {
        const int k1 = k + I8P_FLUSH < n ? k + I8P_FLUSH : n;
        __m512i acc[16];
        for (int v = 0; v < nv; v++) acc[v] = _mm512_setzero_si512();
        for (int p = k; p < k1; p++) {
            const int8_t *w = qp + ((int64_t)idx[p] * out + o0) * 2;
            if (p + 8 < n) {
                const char *f = (const char *)(qp + ((int64_t)idx[p + 8] * out + o0) * 2);
                for (int l = 0; l < (nv + 1) / 2; l++) _mm_prefetch(f + 64 * l, _MM_HINT_T0);
            }
            const __m512i x = _mm512_set1_epi32(lev[p]);
            for (int v = 0; v < nv; v++) {
                const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + 32 * v)));
                acc[v] = _mm512_dpwssd_epi32(acc[v], wv, x);
            }
        }
        for (int v = 0; v < nv; v++) {
            int32_t t[16];
            _mm512_storeu_si512((void *)t, acc[v]);
            for (int j = 0; j < 16; j++) tot[16 * v + j] += t[j];
        }
    }
}

/* Outputs [o0, o0 + width) in register blocks of 256, 128, 64 and 16 outputs; the last few in plain C. */
static void i8p_sums(const int8_t *qp, const int32_t *idx, const int32_t *lev, int n, int out, int o0, int width,
                     int64_t *tot) {
    int o = 0;
    if (o + 256 <= width) o = (i8p_block(qp, idx, lev, n, out, o0 + o, 16, tot + o), o + 256);
    if (o + 128 <= width) o = (i8p_block(qp, idx, lev, n, out, o0 + o, 8, tot + o), o + 128);
    if (o + 64 <= width) o = (i8p_block(qp, idx, lev, n, out, o0 + o, 4, tot + o), o + 64);
    for (; o + 16 <= width; o += 16) i8p_block(qp, idx, lev, n, out, o0 + o, 1, tot + o);
    if (o < width) i8p_plain(qp, idx, lev, n, out, o0 + o, o0 + width, tot + o);
}
#else
static void i8p_sums(const int8_t *qp, const int32_t *idx, const int32_t *lev, int n, int out, int o0, int width,
                     int64_t *tot) {
    i8p_plain(qp, idx, lev, n, out, o0, o0 + width, tot);
}
#endif

/* Output rows [r0, r1) of y = W x for `batch` rows of x, W given as qp (pairs of inputs, see above) with
 * scale[o] per output; x as rwkv_quantize_x left it. Rows of x go one at a time, each over its own pairs:
 * sharing one list between four rows made 4 and 16 rows 1.3-1.5x slower with 90% zeros on a 2-core Zen 4,
 * since the four rows' lists together hold a third of the pairs. */
void rwkv_gemv_i8p(const int8_t *qp, const float *scale, const int16_t *xq, const float *xs, float *y, int batch,
                   int in, int out, int r0, int r1) {
    const int npair = (in + 1) / 2;
    int32_t small[2 * I8P_STACK_PAIRS], *list = malloc(2 * (size_t)npair * sizeof *list);
    const int chunk = list ? npair : I8P_STACK_PAIRS; /* no memory for the whole list: a chunk at a time */
    if (!list) list = small;
    int64_t tot[I8P_WIDTH];
    for (int b = 0; b < batch; b++) {
        const int16_t *x = xq + (int64_t)b * in;
        int n = chunk == npair ? nonzero_pairs(x, in, 0, npair, list, list + chunk) : 0;
        for (int o0 = r0; o0 < r1; o0 += I8P_WIDTH) {
            const int width = r1 - o0 < I8P_WIDTH ? r1 - o0 : I8P_WIDTH;
            memset(tot, 0, sizeof tot);
            for (int j0 = 0; j0 < npair; j0 += chunk) {
                if (chunk < npair) n = nonzero_pairs(x, in, j0, npair - j0 < chunk ? npair - j0 : chunk, list, list + chunk);
                i8p_sums(qp, list, list + chunk, n, out, o0, width, tot);
            }
            for (int o = 0; o < width; o++) y[(int64_t)b * out + o0 + o] = i8_scaled(tot[o], scale[o0 + o], xs[b]);
        }
    }
    if (list != small) free(list);
}

/* W^T, (in, out), from the paired layout: the int8 GEMM of a prompt multiplies by it. Row by row of pairs,
 * so it runs at about memory speed (a strided copy through PyTorch moved two bytes at a time and slowed
 * an int8 prompt by a fifth). */
void rwkv_unpair_i8(const int8_t *qp, int8_t *wt, int in, int out) {
    const int npair = (in + 1) / 2;
#pragma omp parallel for schedule(static) if ((int64_t)in * out >= BYTES_PARALLEL_MIN)
    for (int j = 0; j < npair; j++) {
        const int8_t *src = qp + (int64_t)j * out * 2;
        int8_t *even = wt + (int64_t)(2 * j) * out, *odd = even + out;
        if (2 * j + 1 < in)
            for (int o = 0; o < out; o++) {
                even[o] = src[2 * o];
                odd[o] = src[2 * o + 1];
            }
        else
            for (int o = 0; o < out; o++) even[o] = src[2 * o];
    }
}

/* ---- Threads ----
 * One core cannot pull the weights from memory as fast as two, so the products are split between
 * threads. They must be torch's own OpenMP threads: a second pool of workers spinning beside torch's makes
 * the two fight over the cores (measured: a decode step three times slower). Built with -fopenmp, this
 * library binds to the libgomp that torch has already loaded (the same soname), so it shares torch's team. */
static void split_rows(int out, int part, int parts, int *r0, int *r1) {
    int groups = (out + 15) / 16; /* sixteen rows per unit: an AMX tile's, four of the vector loops' groups */
    *r0 = 16 * (int)((int64_t)groups * part / parts);
    *r1 = 16 * (int)((int64_t)groups * (part + 1) / parts);
    if (*r1 > out) *r1 = out;
}

/* C_BF16, C_INT8, C_F32, C_BF16_RX, C_INT8_PAIRS, C_BF16_AMX, ... in linear.py. GEMV_BF16_RX is bf16 weights times
 * inputs that the caller has rounded to bf16, as a bf16 GEMM sees them (rx_gemv); GEMV_BF16_AMX the same
 * product on weights in AMX tiles (amx_rows); GEMV_INT8_AMX is GEMV_INT8's product on weights in AMX tiles, with
 * x as rwkv_quantize_x_bytes' two bytes (amx_i8_rows). The BYIN kinds are fp32 and bf16 weights stored by input
 * (byin_gemv), GEMV_BF16_BYIN_RX with the inputs rounded to bf16. */
enum {
    GEMV_BF16, GEMV_INT8, GEMV_F32, GEMV_BF16_RX, GEMV_INT8_PAIRS, GEMV_BF16_AMX, GEMV_INT8_AMX,
    GEMV_F32_BYIN, GEMV_BF16_BYIN, GEMV_BF16_BYIN_RX
};

/* Whether a kind's kernel reads x as rwkv_quantize_x leaves it (xq, xs). */
static inline int takes_levels(int kind) { return kind == GEMV_INT8 || kind == GEMV_INT8_PAIRS; }


#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define RX_TILES
/* bf16 weights times bf16 inputs with vdpbf16ps: 32 products a step summed in pairs into 16 fp32 lanes,
 * where the widening loop needs two conversions and two multiply-adds for them. A tile is nr weight rows
 * times nb rows of x, one accumulator per (row, x row) pair that every tile shape fills the same way, so a
 * row's result has the same bits alone or batched. The next weight rows (pf, pf_lines cache lines) are
 * prefetched a share per step. nr and nb are constants at each call, so each shape is its own loop. */
static inline __attribute__((always_inline)) void rx_tile(const uint16_t *w, const uint16_t *xb, float *y, int in,
                                                          int out, int o, int b, int nr, int nb, const char *pf,
                                                          int pf_lines) {
    __m512 a[4][4];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nb; c++) a[r][c] = _mm512_setzero_ps();
    const int steps = in / 32;
    int owed = 0;
    for (int i = 0; i < in; i += 32) {
        for (owed += pf_lines; owed >= steps; owed -= steps, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
        __m512bh v[4], u[4];
        for (int c = 0; c < nb; c++) v[c] = (__m512bh)_mm512_loadu_si512((const void *)(xb + (size_t)(b + c) * in + i));
        for (int r = 0; r < nr; r++) u[r] = (__m512bh)_mm512_loadu_si512((const void *)(w + (size_t)(o + r) * in + i));
        for (int r = 0; r < nr; r++)
            for (int c = 0; c < nb; c++) a[r][c] = _mm512_dpbf16_ps(a[r][c], u[r], v[c]);
    }
    for (int c = 0; c < nb; c++)
        for (int r = 0; r < nr; r++) y[(int64_t)(b + c) * out + o + r] = hsum16(a[r][c]);
}

/* Output rows [r0, r1) for bf16 inputs xb (batch, in), in a multiple of 32. Blocks of four weight rows meet
 * four rows of x at a time while the next block is prefetched. Fewer rows of x are bound by memory, which
 * one weight row at a time reads fastest (the hardware prefetcher follows one stream best), with a
 * prefetch PREFETCH_BYTES ahead on the first pass. */
static void rx_rows(const uint16_t *w, const uint16_t *xb, float *y, int batch, int in, int out, int r0, int r1) {
    const int steps = in / 32;
    for (int o = r0; o < r1; o += 4) {
        const int nr = r1 - o < 4 ? r1 - o : 4, next = r1 - o - nr < 4 ? r1 - o - nr : 4;
        const char *pf = (const char *)(w + (size_t)(o + nr) * in);
        const int lines = (int)((size_t)next * in * 2 / 64), groups = batch / 4;
        for (int b = 0; b < batch; b += 4) {
            const int nb = batch - b < 4 ? batch - b : 4;
            if (nr == 4 && nb == 4) {
                const int g = b / 4, l0 = (int)((int64_t)lines * g / groups), l1 = (int)((int64_t)lines * (g + 1) / groups);
                rx_tile(w, xb, y, in, out, o, b, 4, 4, pf + 64 * (size_t)l0, l1 - l0);
                continue;
            }
            for (int r = 0; r < nr; r++) {
                const char *ahead = (const char *)(w + (size_t)(o + r) * in) + PREFETCH_BYTES;
                const int pl = b == 0 ? steps : 0;
                if (nb == 4) rx_tile(w, xb, y, in, out, o + r, b, 1, 4, ahead, pl);
                else if (nb == 3) rx_tile(w, xb, y, in, out, o + r, b, 1, 3, ahead, pl);
                else if (nb == 2) rx_tile(w, xb, y, in, out, o + r, b, 1, 2, ahead, pl);
                else rx_tile(w, xb, y, in, out, o + r, b, 1, 1, ahead, pl);
            }
        }
    }
}
#define RX_BITS(in) ((in) % 32 == 0) /* the widths the tiles take */
#else
#define RX_BITS(in) 0
#endif

#if defined(RX_TILES) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define AMX_TILES
#include <sys/syscall.h>
#include <unistd.h>
/* bf16 products on AMX (Intel Sapphire Rapids and later): one instruction multiplies a 16x32 bf16 tile of
 * inputs by a 32x16 tile of weights into 16x16 fp32 sums. The weights are stored tile by tile, as the
 * instruction reads them: for each block of 16 output rows, for each block of 32 inputs, 16 pairs of
 * inputs times 16 outputs times the pair ([out/16][in/32][16][16][2]; linear.AmxBf16Linear), so a
 * product streams them start to end whatever the number of rows of x. Each output is one fp32 sum that
 * takes its pairs in order, the same for every row of x, so a row gets the same bits alone or batched.
 * From 32 rows of x on, tiles 0-3 hold the sums of two blocks of 16 rows by two of 16 outputs, 4-5 the
 * inputs and 6-7 the weights, so each tile loaded serves two products; fewer rows take one tile of sums. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static void amx_configure(int rows) {
    amx_config c __attribute__((aligned(64)));
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 6; t++) {
        c.rows[t] = (uint8_t)rows;
        c.colsb[t] = 64;
    }
    c.rows[6] = c.rows[7] = 16;
    c.colsb[6] = c.colsb[7] = 64;
    _tile_loadconfig(&c);
}

/* The next group of rows of x, from `left` rows still to do: one block of up to 16 rows, or two blocks of
 * 16 from 32 rows on. The tiles are configured for the block's height when it changes (`*configured`).
 * Returns the rows per block and sets *blocks. */
static inline int amx_group(int left, int *blocks, int *configured) {
    const int rows = left < 16 ? left : 16;
    *blocks = left >= 32 ? 2 : 1;
    if (rows != *configured) amx_configure(*configured = rows);
    return rows;
}

/* Linux lends the AMX registers to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA);
 * 1 if it may use them. */
int rwkv_amx_enable(void) { return syscall(SYS_arch_prctl, 0x1023, 18) == 0; }

/* Output rows [r0, r1), 16-aligned (the last may end with the matrix), for bf16 inputs xb (batch, in). A
 * prompt's many rows meet the weights AMX_CHUNK_ROWS output rows at a time, which stay in L2 while every
 * group of 32 rows of x passes them: reading all the weights once per group instead made a 512-row
 * product of a 3072x768 matrix read 38 MB from memory where it needs 4.7. Two row blocks by two output
 * blocks (tiles 0-3) took 512 rows of 0.19B's matrices in 338-1203 us, where four row blocks by one
 * took 396-1463 and oneDNN's packed AMX GEMM 322-1393 (2-core Xeon, cold weights). */
#define AMX_CHUNK_ROWS 128
/* How far ahead a few rows' product prefetches the weights' tiles: the hardware prefetcher alone left a
 * one-row int8 product of a 3072x768 matrix at 16 GB/s, against 21 GB/s with it (cold weights, 2-core
 * Xeon). */
#define AMX_PREFETCH_BYTES 4096
static void amx_rows(const uint16_t *w, const uint16_t *xb, float *y, int batch, int in, int out, int r0, int r1) {
    const int kbs = in / 32;
    const size_t xstride = (size_t)in * 2, ystride = (size_t)out * 4, r16 = 16 * (size_t)in;
    int configured = 0;
    for (int c0 = r0; c0 < r1; c0 += AMX_CHUNK_ROWS) {
        const int c1 = r1 - c0 < AMX_CHUNK_ROWS ? r1 : c0 + AMX_CHUNK_ROWS;
        for (int b = 0; b < batch;) {
            int blocks;
            const int rows = amx_group(batch - b, &blocks, &configured);
            const uint16_t *x0 = xb + (size_t)b * in;
            for (int o = c0; o < c1;) {
                const uint16_t *wt = w + (size_t)(o / 16) * kbs * 512;
                float *y0 = y + (size_t)b * out + o;
                if (blocks == 2 && o + 32 <= c1) {
                    const uint16_t *wt1 = wt + (size_t)kbs * 512;
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                    for (int kb = 0; kb < kbs; kb++) {
                        _tile_loadd(6, wt + (size_t)kb * 512, 64);
                        _tile_loadd(4, x0 + kb * 32, xstride);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_loadd(7, wt1 + (size_t)kb * 512, 64);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_loadd(5, x0 + r16 + kb * 32, xstride);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    _tile_stored(0, y0, ystride);
                    _tile_stored(1, y0 + 16, ystride);
                    _tile_stored(2, y0 + 16 * (size_t)out, ystride);
                    _tile_stored(3, y0 + 16 * (size_t)out + 16, ystride);
                    o += 32;
                    continue;
                }
                for (int j = 0; j < blocks; j++) {
                    const uint16_t *xj = x0 + j * r16;
                    _tile_zero(0);
                    for (int kb = 0; kb < kbs; kb++) {
                        const char *ahead = (const char *)(wt + (size_t)kb * 512) + AMX_PREFETCH_BYTES;
                        for (int l = 0; l < 1024; l += 64) _mm_prefetch(ahead + l, _MM_HINT_T0);
                        _tile_loadd(6, wt + (size_t)kb * 512, 64);
                        _tile_loadd(4, xj + kb * 32, xstride);
                        _tile_dpbf16ps(0, 4, 6);
                    }
                    _tile_stored(0, y0 + j * 16 * (size_t)out, ystride);
                }
                o += 16;
            }
            b += blocks * rows;
        }
    }
    _tile_release();
}
#define AMX_BITS(in, out) ((in) % 32 == 0 && (out) % 16 == 0) /* the shapes the tiles take */

/* y = W x for GEMV_BF16_AMX weights and inputs xb that are bf16 already (a bf16 prompt's rows), on
 * `threads` threads: rwkv_gemv without its pass that rounds fp32 inputs. */
void rwkv_gemv_amx_bf16(const uint16_t *w, const uint16_t *xb, float *y, int batch, int in, int out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int p = 0; p < threads; p++) {
        int r0, r1;
        split_rows(out, p, threads, &r0, &r1);
        if (r0 < r1) amx_rows(w, xb, y, batch, in, out, r0, r1);
    }
}
#else
int rwkv_amx_enable(void) { return 0; }
#define AMX_BITS(in, out) 0
#endif

#if defined(AMX_TILES) && defined(__AMX_INT8__)
#define AMX_INT8_TILES
/* int8 weights on AMX, the same exact integer sums as the other int8 kernels: x comes as the two bytes of
 * its 15-bit levels (rwkv_quantize_x_bytes: rows [0, batch) the high bytes, [batch, 2 * batch) the low),
 * each byte plane times the weights in int32, joined and scaled by i8_scaled, so a row gets the same bits
 * here as in i8_rows or the int8 GEMM. The weights are in tile order, [out/16][in/64][16 quads of inputs][16
 * outputs][4] (linear.AmxInt8Linear). Tiles 0-3 hold the high and low sums of up to two blocks of 16
 * rows of x, 4-5 the byte planes, 6 the weights. Sums stay exact in int32: 128 * 127 * in < 2^31 for any
 * in below 131072. */
static inline void amx_i8_join(const int32_t *hi, const int32_t *lo, const float *scale, const float *xs,
                               float *y, int rows, int out) {
    for (int m = 0; m < rows; m++)
        for (int n = 0; n < 16; n++)
            y[(size_t)m * out + n] = i8_scaled(128 * (int64_t)hi[m * 16 + n] + lo[m * 16 + n], scale[n], xs[m]);
}

static void amx_i8_rows(const int8_t *w, const float *scale, const int8_t *planes, const float *xs, float *y,
                        int batch, int in, int out, int r0, int r1) {
    const int kbs = in / 64;
    const int8_t *lows = planes + (size_t)batch * in;
    int32_t hi[2][256] __attribute__((aligned(64))), lo[2][256] __attribute__((aligned(64)));
    int configured = 0;
    for (int c0 = r0; c0 < r1; c0 += AMX_CHUNK_ROWS) {
        const int c1 = r1 - c0 < AMX_CHUNK_ROWS ? r1 : c0 + AMX_CHUNK_ROWS;
        for (int b = 0; b < batch;) {
            int blocks;
            const int rows = amx_group(batch - b, &blocks, &configured);
            const int8_t *h0 = planes + (size_t)b * in, *l0 = lows + (size_t)b * in;
            for (int o = c0; o < c1; o += 16) {
                const int8_t *wt = w + (size_t)(o / 16) * kbs * 1024;
                _tile_zero(0);
                _tile_zero(1);
                if (blocks == 2) {
                    _tile_zero(2);
                    _tile_zero(3);
                    for (int kb = 0; kb < kbs; kb++) {
                        const int8_t *hk = h0 + kb * 64, *lk = l0 + kb * 64;
                        const size_t r16 = 16 * (size_t)in;
                        _tile_loadd(6, wt + (size_t)kb * 1024, 64);
                        _tile_loadd(4, hk, in);
                        _tile_dpbssd(0, 4, 6);
                        _tile_loadd(5, lk, in);
                        _tile_dpbssd(1, 5, 6);
                        _tile_loadd(4, hk + r16, in);
                        _tile_dpbssd(2, 4, 6);
                        _tile_loadd(5, lk + r16, in);
                        _tile_dpbssd(3, 5, 6);
                    }
                    _tile_stored(2, hi[1], 64);
                    _tile_stored(3, lo[1], 64);
                } else {
                    for (int kb = 0; kb < kbs; kb++) {
                        const char *ahead = (const char *)(wt + (size_t)kb * 1024) + AMX_PREFETCH_BYTES;
                        for (int l = 0; l < 1024; l += 64) _mm_prefetch(ahead + l, _MM_HINT_T0);
                        _tile_loadd(6, wt + (size_t)kb * 1024, 64);
                        _tile_loadd(4, h0 + kb * 64, in);
                        _tile_dpbssd(0, 4, 6);
                        _tile_loadd(5, l0 + kb * 64, in);
                        _tile_dpbssd(1, 5, 6);
                    }
                }
                _tile_stored(0, hi[0], 64);
                _tile_stored(1, lo[0], 64);
                float *y0 = y + (size_t)b * out + o;
                amx_i8_join(hi[0], lo[0], scale + o, xs + b, y0, rows, out);
                if (blocks == 2) amx_i8_join(hi[1], lo[1], scale + o, xs + b + 16, y0 + 16 * (size_t)out, rows, out);
            }
            b += blocks * rows;
        }
    }
    _tile_release();
}
#define AMX_INT8_BITS(in, out) ((in) % 64 == 0 && (out) % 16 == 0) /* the shapes the tiles take */
#else
#define AMX_INT8_BITS(in, out) 0
#endif

/* Which AMX kernels this build has: 1 for bf16, 2 for int8 (linear.py asks before it stores weights in
 * their tile order). */
int rwkv_amx_kernels(void) {
    int k = 0;
#ifdef AMX_TILES
    k |= 1;
#endif
#ifdef AMX_INT8_TILES
    k |= 2;
#endif
    return k;
}

/* f rounded to the nearest bfloat16 (ties to even), as torch's conversion rounds it; a NaN stays one. */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* n inputs of GEMV_BF16_RX (rows of `in`) rounded to bf16 as its kernel reads them, once before threads
 * share the rows: packed into xb where the AVX-512 BF16 tiles take the width, else as floats into xr. */
static void rx_prepare(const float *x, uint16_t *xb, float *xr, size_t n, int in) {
    if (RX_BITS(in))
        for (size_t i = 0; i < n; i++) xb[i] = float_to_bf16(x[i]);
    else
        for (size_t i = 0; i < n; i++) xr[i] = bf16_to_float(float_to_bf16(x[i]));
}

/* bf16 weights times inputs rounded to bf16 by rx_prepare: the AVX-512 BF16 tiles on xb where they take
 * the width, else the widening loop on xr. */
static void rx_gemv(const void *w, const float *xr, const uint16_t *xb, float *y, int batch, int in, int out,
                    int r0, int r1) {
#ifdef RX_TILES
    if (RX_BITS(in)) {
        rx_rows(w, xb, y, batch, in, out, r0, r1);
        return;
    }
#endif
    dense_gemv(w, 1, xr, y, batch, in, out, r0, r1);
}

/* ---- fp32 and bf16 weights by input, for inputs that are mostly zero ----
 * The float counterpart of the paired int8 layout: W^T, (in, out), so that a row of y is the sum of the
 * weight rows of its row of x's nonzero inputs, each scaled by its input, and a decode step reads only
 * those rows (a trained model's feed-forward value matrix gets 89-95% zeros). Rows of x go one at a time,
 * each over its own inputs: sharing a list between four rows (as the int8 pairs do) made 16 rows 1.2-1.3x
 * slower with 90-95% zeros on a 2-core Zen 4, since the four rows' lists together hold a third of the
 * inputs. Each output sums its terms in the order of the inputs, so a row gets the same bits alone or
 * batched. Inputs are listed BI_CHUNK at a time (on the stack), the sums carried from one chunk to the
 * next in y. fp32 with BI_SHARED_ROWS rows or more goes chunk by chunk, all rows of x through a chunk
 * before the next, the chunk small enough (BI_SHARED_BYTES of weights) to stay in L2: the rows' lists
 * overlap (16 rows with 10% nonzeros touch 81% of the inputs), and one row after another over the whole
 * matrix would read it again from L3 at half the speed an fp32 multiply-add needs. bf16 weights, half the
 * bytes per multiply-add, are bound by their widening instead and gain nothing; the sums are the same
 * bits either way. */
#define BI_CHUNK 1024 /* inputs listed at a time */
#define BI_SHARED_ROWS 8
#define BI_SHARED_BYTES (384 << 10)

/* The inputs j in [j0, j1) where x is not zero, into idx, and their values, rounded to bf16 with rx, into
 * val. Returns how many. */
static int nonzero_inputs(const float *x, int j0, int j1, int rx, int32_t *idx, float *val) {
    int n = 0;
    for (int j = j0; j < j1; j++)
        if (x[j] != 0.f) {
            idx[n] = j;
            val[n++] = rx ? bf16_to_float(float_to_bf16(x[j])) : x[j];
        }
    return n;
}

/* y[o] (+)= the listed inputs' terms for outputs [o0, o1); `first`: y starts at 0. The sums of BI_PLAIN_WIDTH
 * outputs at a time stay in an array that the compiler keeps in vector registers (AVX2 takes this path). */
#define BI_PLAIN_WIDTH 64
static void bi_plain(const void *wt, int bf16, const int32_t *idx, const float *val, int n, int out, int o0,
                     int o1, int first, float *y) {
    for (int o = o0; o < o1; o += BI_PLAIN_WIDTH) {
        const int m = o1 - o < BI_PLAIN_WIDTH ? o1 - o : BI_PLAIN_WIDTH;
        float acc[BI_PLAIN_WIDTH];
        for (int k = 0; k < m; k++) acc[k] = first ? 0.f : y[o + k];
        for (int p = 0; p < n; p++) {
            const float v = val[p];
            const int64_t row = (int64_t)idx[p] * out + o;
            if (bf16) {
                const uint16_t *w = (const uint16_t *)wt + row;
                for (int k = 0; k < m; k++) acc[k] = fmaf(v, bf16_to_float(w[k]), acc[k]);
            } else {
                const float *w = (const float *)wt + row;
                for (int k = 0; k < m; k++) acc[k] = fmaf(v, w[k], acc[k]);
            }
        }
        for (int k = 0; k < m; k++) y[o + k] = acc[k];
    }
}

#ifdef __AVX512F__
/* nv * 16 outputs from o0 (nv <= 16, a constant at each call), the sums in registers; the weight rows of
 * the input 8 places ahead are prefetched. */
static inline __attribute__((always_inline)) void bi_block(const void *wt, int bf16, const int32_t *idx,
                                                           const float *val, int n, int out, int o0, int nv,
                                                           int first, float *y) {
    const size_t esize = bf16 ? 2 : 4, lines = (nv * 16 * esize + 63) / 64;
    __m512 acc[16];
    for (int v = 0; v < nv; v++) acc[v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + o0 + 16 * v);
    for (int p = 0; p < n; p++) {
        const char *w = (const char *)wt + ((size_t)idx[p] * out + o0) * esize;
        if (p + 8 < n) {
            const char *f = (const char *)wt + ((size_t)idx[p + 8] * out + o0) * esize;
            for (size_t l = 0; l < lines; l++) _mm_prefetch(f + 64 * l, _MM_HINT_T0);
        }
        const __m512 xv = _mm512_set1_ps(val[p]);
        for (int v = 0; v < nv; v++) acc[v] = _mm512_fmadd_ps(xv, load_w16(w, 16 * v, bf16), acc[v]);
    }
    for (int v = 0; v < nv; v++) _mm512_storeu_ps(y + o0 + 16 * v, acc[v]);
}

/* Outputs [o0, o1) in blocks of 256, then one of 128, 64 and 16 each as they fit, then 16; the last few in
 * plain C. (A thread's share of a 768-output matrix is 384: 256 + 128.) */
static void bi_sums(const void *wt, int bf16, const int32_t *idx, const float *val, int n, int out, int o0,
                    int o1, int first, float *y) {
    int o = o0;
    for (; o + 256 <= o1; o += 256) bi_block(wt, bf16, idx, val, n, out, o, 16, first, y);
    if (o + 128 <= o1) o = (bi_block(wt, bf16, idx, val, n, out, o, 8, first, y), o + 128);
    if (o + 64 <= o1) o = (bi_block(wt, bf16, idx, val, n, out, o, 4, first, y), o + 64);
    for (; o + 16 <= o1; o += 16) bi_block(wt, bf16, idx, val, n, out, o, 1, first, y);
    if (o < o1) bi_plain(wt, bf16, idx, val, n, out, o, o1, first, y);
}
#else
static void bi_sums(const void *wt, int bf16, const int32_t *idx, const float *val, int n, int out, int o0,
                    int o1, int first, float *y) {
    bi_plain(wt, bf16, idx, val, n, out, o0, o1, first, y);
}
#endif

/* Output rows [r0, r1) of y = W x for `batch` rows of x, W given as wt = W^T (fp32 or bf16); with rx the
 * inputs are rounded to bf16 first, as a bf16 GEMM takes them. */
static void byin_gemv(const void *wt, int bf16, int rx, const float *x, float *y, int batch, int in, int out,
                         int r0, int r1) {
    int32_t idx[BI_CHUNK];
    float val[BI_CHUNK];
    int chunk = BI_CHUNK, together = 1; /* inputs listed at a time; rows of x that go through them together */
    if (!bf16 && batch >= BI_SHARED_ROWS && r1 > r0) {
        const int fit = BI_SHARED_BYTES / (int)((r1 - r0) * sizeof(float));
        chunk = fit < 16 ? 16 : fit > BI_CHUNK ? BI_CHUNK : fit;
        together = batch;
    }
    for (int b0 = 0; b0 < batch; b0 += together)
        for (int j0 = 0; j0 < in; j0 += chunk) {
            const int j1 = in - j0 < chunk ? in : j0 + chunk;
            for (int b = b0; b < b0 + together; b++) {
                const int n = nonzero_inputs(x + (int64_t)b * in, j0, j1, rx, idx, val);
                bi_sums(wt, bf16, idx, val, n, out, r0, r1, j0 == 0, y + (int64_t)b * out);
            }
        }
}

/* Output rows [r0, r1) of y = W x for any of the weight formats; int8 reads x as rwkv_quantize_x left it
 * in xq, xs, GEMV_BF16_RX as rx_prepare left it in x (floats) or xq (packed bf16), the others read x. */
void rwkv_gemv_rows(int kind, const void *w, const float *scale, const float *x, const int16_t *xq,
                    const float *xs, float *y, int batch, int in, int out, int r0, int r1) {
    if (kind == GEMV_INT8) rwkv_gemv_i8(w, scale, xq, xs, y, batch, in, out, r0, r1);
    else if (kind == GEMV_INT8_PAIRS) rwkv_gemv_i8p(w, scale, xq, xs, y, batch, in, out, r0, r1);
    else if (kind == GEMV_BF16_RX) rx_gemv(w, x, (const uint16_t *)xq, y, batch, in, out, r0, r1);
    else if (kind >= GEMV_F32_BYIN)
        byin_gemv(w, kind != GEMV_F32_BYIN, kind == GEMV_BF16_BYIN_RX, x, y, batch, in, out, r0, r1);
#ifdef AMX_TILES
    else if (kind == GEMV_BF16_AMX) amx_rows(w, (const uint16_t *)xq, y, batch, in, out, r0, r1);
#endif
#ifdef AMX_INT8_TILES
    else if (kind == GEMV_INT8_AMX) amx_i8_rows(w, scale, (const int8_t *)xq, xs, y, batch, in, out, r0, r1);
#endif
    else dense_gemv(w, kind == GEMV_BF16, x, y, batch, in, out, r0, r1);
}

/* y = W x over all output rows on `threads` threads (the caller's among them); int8 quantizes x first and
 * GEMV_BF16_RX, whose x comes rounded to bf16, packs it for the tiles (or, short of memory for that, takes
 * the widening loop on x as it is). */
void rwkv_gemv(int kind, const void *w, const float *scale, const float *x, float *y, int batch, int in, int out,
               int threads) {
    int16_t *xq = NULL;
    float *xs = NULL;
    if ((kind == GEMV_BF16_RX && RX_BITS(in)) || kind == GEMV_BF16_AMX) {
        xq = malloc((size_t)batch * in * sizeof *xq);
        if (!xq && kind == GEMV_BF16_AMX) return;
        if (xq) rx_prepare(x, (uint16_t *)xq, NULL, (size_t)batch * in, in);
        else kind = GEMV_BF16;
    }
    if (takes_levels(kind) || kind == GEMV_INT8_AMX) {
        xq = malloc((size_t)batch * in * sizeof *xq);
        xs = malloc((size_t)batch * sizeof *xs);
        if (!xq || !xs) {
            free(xq);
            free(xs);
            return;
        }
        if (kind == GEMV_INT8_AMX) rwkv_quantize_x_bytes(x, (int8_t *)xq, xs, batch, in);
        else rwkv_quantize_x(x, xq, xs, batch, in);
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int p = 0; p < threads; p++) {
        int r0, r1;
        split_rows(out, p, threads, &r0, &r1);
        if (r0 < r1) rwkv_gemv_rows(kind, w, scale, x, xq, xs, y, batch, in, out, r0, r1);
    }
    free(xq);
    free(xs);
}
