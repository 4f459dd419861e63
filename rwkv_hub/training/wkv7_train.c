/* RWKV-7 state recurrence for training, forward and backward, fp32, on the CPU.
 * Per sequence and head, with the state S indexed [value][key] and S_{-1} = 0:
 *   sa_t = S_{t-1} a_t;  S_t = S_{t-1} diag(w_t) + sa_t b_t^T + v_t k_t^T;  y_t = S_t r_t
 * Inputs are (B, T, H, N) row-major. The forward pass keeps the state every CHUNK steps; the backward
 * pass recomputes a chunk's states and walks it in reverse carrying G = dLoss/dS_t. Work is split over the
 * (sequence, head) pairs [p0, p1) so that callers can run disjoint ranges on several threads. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define IDX(b, t, h, n) ((((size_t)(b) * T + (t)) * H + (h)) * N + (n))
#define CHUNK 16 /* the forward pass keeps the state before every CHUNK-th step; backward recomputes the rest */

/* One step: S = S diag(w) + (S a) b^T + v k^T written to `out` (may equal `s`), y = out r (if y). */
static void step(int N, const float *restrict s, float *out, const float *restrict rt, const float *restrict wt,
                 const float *restrict kt, const float *restrict vt, const float *restrict at,
                 const float *restrict bt, float *restrict yt) {
    float sa[N];
    for (int i = 0; i < N; i++) {
        float acc = 0.f;
        for (int j = 0; j < N; j++) acc += s[i * N + j] * at[j];
        sa[i] = acc;
    }
    for (int i = 0; i < N; i++) {
        const float *si = s + i * N;
        float *oi = out + i * N;
        float acc = 0.f;
        for (int j = 0; j < N; j++) {
            const float val = si[j] * wt[j] + sa[i] * bt[j] + vt[i] * kt[j];
            oi[j] = val;
            acc += val * rt[j];
        }
        if (yt) yt[i] = acc;
    }
}

/* ckpt: (B*H, ceil(T/CHUNK), N, N), the state before each chunk. */
void wkv7_forward(int B, int T, int H, int N, int p0, int p1, const float *r, const float *w, const float *k,
                  const float *v, const float *a, const float *bb, float *y, float *ckpt) {
    const int nc = (T + CHUNK - 1) / CHUNK;
    float s[N * N];
    for (int p = p0; p < p1; p++) {
        const int b = p / H, h = p % H;
        memset(s, 0, sizeof(s));
        for (int t = 0; t < T; t++) {
            if (t % CHUNK == 0) memcpy(ckpt + ((size_t)p * nc + t / CHUNK) * N * N, s, sizeof(s));
            const size_t o = IDX(b, t, h, 0);
            step(N, s, s, r + o, w + o, k + o, v + o, a + o, bb + o, y + o);
        }
    }
}

/* Gradients of the inputs given dy; every output gradient is overwritten (not accumulated). */
void wkv7_backward(int B, int T, int H, int N, int p0, int p1, const float *r, const float *w, const float *k,
                   const float *v, const float *a, const float *bb, const float *ckpt, const float *dy, float *dr,
                   float *dw, float *dk, float *dv, float *da, float *db) {
    const int nc = (T + CHUNK - 1) / CHUNK;
    float G[N * N], sa[N], dsa[N];
    float *buf = malloc(sizeof(float) * (size_t)(CHUNK + 1) * N * N); /* states before/after each step */
    for (int p = p0; p < p1; p++) {
        const int b = p / H, h = p % H;
        memset(G, 0, sizeof(G));
        for (int c = nc - 1; c >= 0; c--) {
            const int t0 = c * CHUNK, t1 = t0 + CHUNK < T ? t0 + CHUNK : T;
            memcpy(buf, ckpt + ((size_t)p * nc + c) * N * N, sizeof(float) * N * N);
            for (int t = t0; t < t1; t++) {
                const size_t o = IDX(b, t, h, 0);
                step(N, buf + (size_t)(t - t0) * N * N, buf + (size_t)(t - t0 + 1) * N * N, r + o, w + o, k + o,
                     v + o, a + o, bb + o, NULL);
            }
            for (int t = t1 - 1; t >= t0; t--) {
                const float *prev = buf + (size_t)(t - t0) * N * N, *s = prev + (size_t)N * N;
                const size_t o = IDX(b, t, h, 0);
                const float *restrict rt = r + o, *restrict wt = w + o, *restrict kt = k + o;
                const float *restrict vt = v + o, *restrict at = a + o, *restrict bt = bb + o;
                const float *restrict dyt = dy + o;
                float *restrict drt = dr + o, *restrict dwt = dw + o, *restrict dkt = dk + o;
                float *restrict dvt = dv + o, *restrict dat = da + o, *restrict dbt = db + o;
                for (int j = 0; j < N; j++) drt[j] = dkt[j] = dbt[j] = dwt[j] = dat[j] = 0.f;
                for (int i = 0; i < N; i++) {
                    float acc = 0.f;
                    for (int j = 0; j < N; j++) acc += prev[i * N + j] * at[j];
                    sa[i] = acc;
                }
                for (int i = 0; i < N; i++) {
                    float *restrict gi = G + i * N;
                    const float *restrict si = s + i * N;
                    const float dyi = dyt[i], vi = vt[i], sai = sa[i];
                    float dvi = 0.f, dsai = 0.f;
                    for (int j = 0; j < N; j++) {
                        const float gij = gi[j] + dyi * rt[j];
                        gi[j] = gij;
                        drt[j] += si[j] * dyi;
                        dvi += gij * kt[j];
                        dkt[j] += gij * vi;
                        dbt[j] += gij * sai;
                        dsai += gij * bt[j];
                    }
                    dvt[i] = dvi;
                    dsa[i] = dsai;
                }
                for (int i = 0; i < N; i++) {
                    float *restrict gi = G + i * N;
                    const float *restrict pi = prev + i * N;
                    const float dsai = dsa[i];
                    for (int j = 0; j < N; j++) {
                        dwt[j] += gi[j] * pi[j];
                        dat[j] += pi[j] * dsai;
                        gi[j] = gi[j] * wt[j] + dsai * at[j];
                    }
                }
            }
        }
    }
    free(buf);
}
