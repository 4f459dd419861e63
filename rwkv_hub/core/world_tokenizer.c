// Greedy longest-match tokenization over a byte trie: the World tokenizer's inner loop.
//
// The trie's edges live in one open-addressing hash table keyed by (node << 8 | byte); the root's
// 256 edges are a plain array, since every token starts there. Built once per vocabulary from
// Python (rwkv_hub/core/tokenizer/world.py), which keeps an equivalent pure-Python version.

#include <stdint.h>
#include <stdlib.h>

#define EMPTY UINT32_MAX

typedef struct {
    uint32_t key;    // node << 8 | byte, or EMPTY
    uint32_t child;
} edge;

typedef struct {
    int32_t root[256];  // child node of the root per byte, or -1
    int32_t *token;     // token id ending at each node, or -1
    edge *edges;
    uint32_t mask;      // hash table size - 1 (a power of two)
} trie;

static inline uint32_t slot(uint32_t key, uint32_t mask) {
    return (uint32_t)((key * 2654435761u) >> 7) & mask;
}

static inline int32_t child(const trie *t, uint32_t node, uint8_t byte) {
    uint32_t key = node << 8 | byte;
    for (uint32_t i = slot(key, t->mask);; i = (i + 1) & t->mask) {
        if (t->edges[i].key == key) return (int32_t)t->edges[i].child;
        if (t->edges[i].key == EMPTY) return -1;
    }
}

void wt_free(trie *t) {
    if (!t) return;
    free(t->token);
    free(t->edges);
    free(t);
}

// Token k has the bytes data[offsets[k]:offsets[k+1]] and the id ids[k]; a later token with the same
// bytes replaces an earlier one. Nodes are numbered from 1 (0 is the root), so a key never reaches
// EMPTY while there are fewer than 2^24 nodes. Returns NULL when out of memory or too large.
trie *wt_build(const uint8_t *data, const int64_t *offsets, const int32_t *ids, int32_t n) {
    int64_t total = offsets[n];
    if (total >= (1 << 24) - 1) return NULL;
    uint32_t size = 1024;
    while (size < 2 * (uint64_t)total + 2) size <<= 1;
    trie *t = calloc(1, sizeof(trie));
    if (!t) return NULL;
    t->token = malloc(sizeof(int32_t) * (size_t)(total + 1));
    t->edges = malloc(sizeof(edge) * (size_t)size);
    if (!t->token || !t->edges) {
        wt_free(t);
        return NULL;
    }
    t->mask = size - 1;
    for (uint32_t i = 0; i < size; i++) t->edges[i].key = EMPTY;
    for (int i = 0; i < 256; i++) t->root[i] = -1;
    t->token[0] = -1;
    uint32_t nodes = 1;
    for (int32_t k = 0; k < n; k++) {
        uint32_t node = 0;
        for (int64_t p = offsets[k]; p < offsets[k + 1]; p++) {
            uint8_t b = data[p];
            int32_t next = node ? child(t, node, b) : t->root[b];
            if (next < 0) {
                next = (int32_t)nodes++;
                t->token[next] = -1;
                if (node == 0) {
                    t->root[b] = next;
                } else {
                    uint32_t key = node << 8 | b;
                    uint32_t i = slot(key, t->mask);
                    while (t->edges[i].key != EMPTY) i = (i + 1) & t->mask;
                    t->edges[i].key = key;
                    t->edges[i].child = (uint32_t)next;
                }
            }
            node = (uint32_t)next;
        }
        if (node) t->token[node] = ids[k];
    }
    return t;
}

// Writes at most n ids to out and returns how many; or -(p + 1) when no token starts the bytes at p.
int64_t wt_encode(const trie *t, const uint8_t *src, int64_t n, int32_t *out) {
    int64_t count = 0, p = 0;
    while (p < n) {
        int32_t node = t->root[src[p]];
        int32_t best = -1;
        int64_t end = p, q = p + 1;
        while (node >= 0) {
            if (t->token[node] >= 0) {
                best = t->token[node];
                end = q;
            }
            if (q == n) break;
            node = child(t, (uint32_t)node, src[q++]);
        }
        if (best < 0) return -(p + 1);
        out[count++] = best;
        p = end;
    }
    return count;
}
