/* How fast this machine streams memory into the cores: the ceiling of a decode step, which reads every
 * weight once. Reads a 512 MB buffer with AVX2 loads on 1 and 2 OpenMP threads; best of 5 passes.
 *
 *   cc -O2 -mavx2 -fopenmp benchmarks/read_bandwidth.c -o /tmp/read_bandwidth && /tmp/read_bandwidth
 *
 * Divide a model's bytes read per token (weights plus the recurrent state, twice) by the two-thread
 * figure for the fastest a single sequence can decode here. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    const size_t n = (size_t)512 << 20;
    char *a = aligned_alloc(64, n);
    if (!a) return 1;
    memset(a, 1, n);
    for (int threads = 1; threads <= 2; threads++) {
        double best = 1e9;
        long long check = 0;
        for (int pass = 0; pass < 5; pass++) {
            const double t0 = omp_get_wtime();
            __m256i total = _mm256_setzero_si256();
#pragma omp parallel num_threads(threads)
            {
                __m256i acc = _mm256_setzero_si256();
#pragma omp for
                for (size_t i = 0; i < n; i += 128) {
                    acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(a + i)));
                    acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(a + i + 32)));
                    acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(a + i + 64)));
                    acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(a + i + 96)));
                }
#pragma omp critical
                total = _mm256_add_epi64(total, acc);
            }
            const double t = omp_get_wtime() - t0;
            best = t < best ? t : best;
            check += _mm256_extract_epi64(total, 0);
        }
        printf("%d thread%s: %.1f GB/s read (checksum %lld)\n", threads, threads > 1 ? "s" : "", n / best / 1e9,
               check);
    }
    free(a);
    return 0;
}
