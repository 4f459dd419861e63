/* RWKV-7 state recurrence on the CPU, fp32, for heads [h0, h1) of B sequences.
 * Layouts (row-major): state [B][H][N][N] indexed [value][key], updated in place;
 * r, w, k, v, a, b, y: [B][T][H][N]. Per step and head:
 *   sa = S a;  S = S diag(w) + sa b^T + v k^T;  y = S r
 * Each row of S is read once and written once per step; rows stay in L1. */
#include <stddef.h>

void wkv7_forward(int B, int T, int H, int N, int h0, int h1, float *state,
                  const float *r, const float *w, const float *k, const float *v,
                  const float *a, const float *b, float *y) {
    for (int bi = 0; bi < B; bi++) {
        for (int h = h0; h < h1; h++) {
            float *S = state + ((size_t)bi * H + h) * N * N;
            for (int t = 0; t < T; t++) {
                size_t off = (((size_t)bi * T + t) * H + h) * N;
                const float *rt = r + off, *wt = w + off, *kt = k + off;
                const float *vt = v + off, *at = a + off, *bt = b + off;
                float *yt = y + off;
                for (int i = 0; i < N; i++) {
                    float *row = S + (size_t)i * N;
                    float sa = 0.f;
#pragma omp simd reduction(+ : sa)
                    for (int j = 0; j < N; j++) sa += row[j] * at[j];
                    const float vi = vt[i];
                    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                    for (int j = 0; j < N; j++) {
                        float s = row[j] * wt[j] + sa * bt[j] + vi * kt[j];
                        row[j] = s;
                        acc += s * rt[j];
                    }
                    yt[i] = acc;
                }
            }
        }
    }
}
