/* RWKV-7 time-mix on the CPU, fp32: the state recurrence plus the elementwise work around it.
 * Per step and head, with the state S indexed [value][key]:
 *   sa = S a;  S = S diag(w) + sa b^T + v k^T;  y = S r
 * Each row of S is read once and written once per step; a head's S stays in L1. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* exp(x) as 2^n * 2^f with a degree-6 polynomial for 2^f on [-0.5, 0.5] (relative error about 2e-7).
 * Unlike the library's expf it vectorizes, and the elementwise work around the recurrence is
 * dominated by exponentials. */
#pragma omp declare simd
static inline float exp_(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    const float t = x * 1.44269504088896341f;
    const float n = floorf(t + 0.5f);
    const float f = t - n;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

#pragma omp declare simd
static inline float sigmoidf_(float x) { return 1.f / (1.f + exp_(-x)); }

/* One step of a head's state, row by row: sa = S_old a, then S = S_old diag(w) + sa b^T + v k^T and
 * y = S r. S may be S_old. */
static void state_step(const float *S_old, float *S, int N, const float *aa, const float *bb, const float *wv,
                       const float *kv, const float *vv, const float *rt, float *y) {
    for (int i = 0; i < N; i++) {
        const float *old = S_old + (size_t)i * N;
        float *row = S + (size_t)i * N;
        float sa = 0.f;
#pragma omp simd reduction(+ : sa)
        for (int j = 0; j < N; j++) sa += old[j] * aa[j];
        const float vi = vv[i];
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < N; j++) {
            const float s = old[j] * wv[j] + sa * bb[j] + vi * kv[j];
            row[j] = s;
            acc += s * rt[j];
        }
        y[i] = acc;
    }
}

#ifdef __AVX2__
#include <immintrin.h>

/* Lane r of the result is the sum of the lanes of a_r. */
static inline __m256 sums8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                           __m256 a7) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* `state_step` eight rows at a time (N a multiple of 8): the row sums go eight at a time through `sums8`
 * instead of a horizontal sum per row, which made the row loop about half of a prefill's time-mix. */
static inline __attribute__((always_inline)) void state_step8(const float *S_old, float *S, int N, const float *aa,
                                                              const float *bb, const float *wv, const float *kv,
                                                              const float *vv, const float *rt, float *y, int stream) {
    for (int i0 = 0; i0 < N; i0 += 8) {
        const float *o = S_old + (size_t)i0 * N;
        float *s = S + (size_t)i0 * N;
        __m256 c[8];
        for (int q = 0; q < 8; q++) c[q] = _mm256_setzero_ps();
        for (int j = 0; j < N; j += 8) {
            const __m256 a = _mm256_loadu_ps(aa + j);
            for (int q = 0; q < 8; q++) c[q] = _mm256_fmadd_ps(_mm256_loadu_ps(o + (size_t)q * N + j), a, c[q]);
        }
        float sa[8];
        _mm256_storeu_ps(sa, sums8(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]));
        for (int q = 0; q < 8; q++) {
            const __m256 saq = _mm256_set1_ps(sa[q]), vq = _mm256_set1_ps(vv[i0 + q]);
            const float *oq = o + (size_t)q * N;
            float *sq = s + (size_t)q * N;
            __m256 acc = _mm256_setzero_ps();
            for (int j = 0; j < N; j += 8) {
                __m256 x = _mm256_fmadd_ps(_mm256_loadu_ps(oq + j), _mm256_loadu_ps(wv + j),
                                           _mm256_mul_ps(saq, _mm256_loadu_ps(bb + j)));
                x = _mm256_fmadd_ps(vq, _mm256_loadu_ps(kv + j), x);
                if (stream) _mm256_stream_ps(sq + j, x);
                else _mm256_storeu_ps(sq + j, x);
                acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(rt + j), acc);
            }
            c[q] = acc;
        }
        _mm256_storeu_ps(y + i0, sums8(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]));
    }
}

#ifdef __AVX512F__
static inline __m256 fold16(__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
}

/* `state_step8` with 16-wide vectors (N a multiple of 16): half the instructions for the same arithmetic;
 * each row's 16 lanes are folded to 8 before the eight-row sums. */
static inline __attribute__((always_inline)) void state_step16(const float *S_old, float *S, int N, const float *aa,
                                                               const float *bb, const float *wv, const float *kv,
                                                               const float *vv, const float *rt, float *y,
                                                               int stream) {
    for (int i0 = 0; i0 < N; i0 += 8) {
        const float *o = S_old + (size_t)i0 * N;
        float *s = S + (size_t)i0 * N;
        __m512 c[8];
        for (int q = 0; q < 8; q++) c[q] = _mm512_setzero_ps();
        for (int j = 0; j < N; j += 16) {
            const __m512 a = _mm512_loadu_ps(aa + j);
            for (int q = 0; q < 8; q++) c[q] = _mm512_fmadd_ps(_mm512_loadu_ps(o + (size_t)q * N + j), a, c[q]);
        }
        float sa[8];
        _mm256_storeu_ps(sa, sums8(fold16(c[0]), fold16(c[1]), fold16(c[2]), fold16(c[3]), fold16(c[4]),
                                   fold16(c[5]), fold16(c[6]), fold16(c[7])));
        for (int q = 0; q < 8; q++) {
            const __m512 saq = _mm512_set1_ps(sa[q]), vq = _mm512_set1_ps(vv[i0 + q]);
            const float *oq = o + (size_t)q * N;
            float *sq = s + (size_t)q * N;
            __m512 acc = _mm512_setzero_ps();
            for (int j = 0; j < N; j += 16) {
                __m512 x = _mm512_fmadd_ps(_mm512_loadu_ps(oq + j), _mm512_loadu_ps(wv + j),
                                           _mm512_mul_ps(saq, _mm512_loadu_ps(bb + j)));
                x = _mm512_fmadd_ps(vq, _mm512_loadu_ps(kv + j), x);
                if (stream) _mm512_stream_ps(sq + j, x);
                else _mm512_storeu_ps(sq + j, x);
                acc = _mm512_fmadd_ps(x, _mm512_loadu_ps(rt + j), acc);
            }
            c[q] = acc;
        }
        _mm256_storeu_ps(y + i0, sums8(fold16(c[0]), fold16(c[1]), fold16(c[2]), fold16(c[3]), fold16(c[4]),
                                       fold16(c[5]), fold16(c[6]), fold16(c[7])));
    }
}
#endif
#endif

/* A step's new state is written around the caches (non-temporal stores, `stream`) when it is the last
 * of a call: the next read of it comes a whole pass over the weights later, by which time it would have
 * been evicted anyway, and a plain store first reads each line it writes. That read is a third of a
 * decode step's state traffic (0.19B: 196 KB a layer per sequence). Returns whether it streamed; the caller
 * then fences before other threads may read the state. */
static int state_update(const float *S_old, float *S, int N, const float *aa, const float *bb, const float *wv,
                        const float *kv, const float *vv, const float *rt, float *y, int last) {
    const int stream = last && ((uintptr_t)S & 63) == 0;
#ifdef __AVX512F__
    if (N % 16 == 0) {
        if (stream) state_step16(S_old, S, N, aa, bb, wv, kv, vv, rt, y, 1);
        else state_step16(S_old, S, N, aa, bb, wv, kv, vv, rt, y, 0);
        return stream;
    }
#endif
#ifdef __AVX2__
    if (N % 8 == 0) {
        if (stream) state_step8(S_old, S, N, aa, bb, wv, kv, vv, rt, y, 1);
        else state_step8(S_old, S, N, aa, bb, wv, kv, vv, rt, y, 0);
        return stream;
    }
#endif
    (void)stream; /* the plain loop has no streaming stores */
    state_step(S_old, S, N, aa, bb, wv, kv, vv, rt, y);
    return 0;
}

/* The whole time-mix of one layer after its matrix products, for heads [h0, h1).
 * Tokens of sequence bi are rows starts[bi] .. starts[bi]+lengths[bi]-1 of the (rows, C) inputs.
 * The recurrent state is read from state_in and the new one written to state (they may be the same). A
 * sequence with no new tokens keeps its state.
 * Inputs per row: r, k, v (big-matrix outputs), w_l, a_l, v_l (LoRA outputs before activation), g.
 * v_first is NULL for layer 0. Writes out = (group_norm(S r) + bonus * v) * g. */
void rwkv7_tmix(int B, int H, int N, int h0, int h1, const int *starts, const int *lengths,
                const float *state_in, float *state, const float *r, const float *k, const float *v, const float *v_first,
                const float *w_l, const float *a_l, const float *v_l, const float *g,
                const float *w0, const float *a0, const float *v0, const float *k_k, const float *k_a,
                const float *r_k, const float *lnx_w, const float *lnx_b, float eps,
                float *out) {
    const int C = H * N;
    float wv[256], aa[256], bb[256], kv[256], vv[256], y[256];
    int streamed = 0;
    if (N > 256) return;
    for (int bi = 0; bi < B; bi++) {
        for (int h = h0; h < h1; h++) {
            float *S = state + ((size_t)bi * H + h) * N * N;
            const float *S_in = state_in + ((size_t)bi * H + h) * N * N;
            if (lengths[bi] == 0 && S != S_in) memcpy(S, S_in, (size_t)N * N * sizeof(float));
            for (int t = 0; t < lengths[bi]; t++) {
                const size_t off = (size_t)(starts[bi] + t) * C + (size_t)h * N;
                if (t + 1 < lengths[bi]) {
                    /* The next token's inputs lie a row of C floats further in eight arrays: fetch them now. */
                    const float *next[8] = {r, k, v, w_l, a_l, v_l, g, v_first ? v_first : r};
                    for (int p = 0; p < 8; p++)
                        for (int j = 0; j < N; j += 16) __builtin_prefetch(next[p] + off + C + j);
                }
                const float *rt = r + off;
                const int c0 = h * N;
                float norm = 0.f;
#pragma omp simd reduction(+ : norm)
                for (int j = 0; j < N; j++) {
                    const float kk = k[off + j] * k_k[c0 + j];
                    aa[j] = kk;
                    norm += kk * kk;
                }
                norm = sqrtf(norm);
                const float inv = 1.f / (norm > 1e-12f ? norm : 1e-12f);
                float bonus = 0.f;
#pragma omp simd reduction(+ : bonus)
                for (int j = 0; j < N; j++) {
                    const float a = sigmoidf_(a0[c0 + j] + a_l[off + j]);
                    const float kk = aa[j] * inv;
                    aa[j] = -kk;
                    bb[j] = kk * a;
                    kv[j] = k[off + j] * (1.f + (a - 1.f) * k_a[c0 + j]);
                    wv[j] = exp_(-0.606531f * sigmoidf_(w0[c0 + j] + w_l[off + j]));
                    bonus += rt[j] * kv[j] * r_k[c0 + j];
                }
#pragma omp simd
                for (int i = 0; i < N; i++) {
                    float vi = v[off + i];
                    if (v_first) vi += (v_first[off + i] - vi) * sigmoidf_(v0[c0 + i] + v_l[off + i]);
                    vv[i] = vi;
                }
                const float *S_old = t == 0 ? S_in : S;
                streamed |= state_update(S_old, S, N, aa, bb, wv, kv, vv, rt, y, t + 1 == lengths[bi]);
                float mean = 0.f;
                for (int i = 0; i < N; i++) mean += y[i];
                mean /= (float)N;
                float var = 0.f;
                for (int i = 0; i < N; i++) var += (y[i] - mean) * (y[i] - mean);
                const float rstd = 1.f / sqrtf(var / (float)N + eps);
                for (int i = 0; i < N; i++) {
                    const float yn = (y[i] - mean) * rstd * lnx_w[c0 + i] + lnx_b[c0 + i];
                    out[off + i] = (yn + bonus * vv[i]) * g[off + i];
                }
            }
        }
    }
#ifdef __AVX2__
    if (streamed) _mm_sfence(); /* streamed stores are weakly ordered: finish them before any barrier */
#else
    (void)streamed;
#endif
}
