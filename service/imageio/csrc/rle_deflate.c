/* Deflate (RFC 1951) with literals and runs only, for the PNG encoder's filtered rows (service/png.py).
 *
 * A general deflater (zlib, ISA-L) looks up a hash table at every byte to find earlier matches. Rows of an
 * upscaled image, once PNG's Up filter has taken the row above away, hold small numbers with few long
 * matches: what repeats is mostly one byte over and over (flat areas). This encoder only looks for such
 * runs (a match at distance 1, as zlib's Z_RLE strategy), with SSE2 comparing 64 bytes at a time, and
 * Huffman-codes the rest: one pass counts symbols, a second writes them with per-block dynamic codes.
 * On upscaled photos it writes files within a few percent of ISA-L's level 1, and faster
 * (bench/results/codecs.json).
 *
 * Each call compresses a part of the stream into whole blocks. A part that is not the last ends with an
 * empty stored block (zlib's sync flush), so the next part starts on a byte boundary; the caller adds the
 * zlib header and the Adler-32 around the parts. Plain C11; SSE2 where the machine is x86-64.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rle_deflate.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#endif

enum {
    LITLEN_SYMBOLS = 286, /* 0-255 literals, 256 end of block, 257-285 lengths */
    END_OF_BLOCK = 256,
    LITLEN_BITS = 14, /* deflate allows 15; 14 lets four literals share one write of at most 56 bits */
    CODE_LENGTH_BITS = 7,
    MIN_RUN = 4, /* runs of 3 cost about as many bits as 3 literals, and make more mispredicted branches */
    MAX_RUN = 258,
    BLOCK_BYTES = 1 << 17, /* input bytes per block: each block gets its own codes */
    WORDS = BLOCK_BYTES / 64 + 2,
    STORED_MAX = 65535,
};

static const uint8_t CODE_LENGTH_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
static const uint16_t LENGTH_BASE[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                         31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LENGTH_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                         2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};

/* ---- bit output ---- */

typedef struct {
    uint8_t *out;
    uint64_t bits;  /* pending bits, least significant first */
    unsigned count; /* how many; below 8 between calls */
} Writer;

/* Append n <= 56 bits. Stores 8 bytes at out each time, so the buffer needs 8 bytes of slack. */
static inline void put(Writer *w, uint64_t value, unsigned n) {
    w->bits |= value << w->count;
    w->count += n;
    memcpy(w->out, &w->bits, 8);
    w->out += w->count >> 3;
    w->bits >>= w->count & ~7u;
    w->count &= 7;
}

static void align(Writer *w) {
    if (w->count) put(w, 0, 8 - w->count);
}

/* ---- finding runs ---- */

typedef struct {
    uint64_t equal[WORDS]; /* bit i: byte i equals byte i - 1 (never for byte 0) */
    uint64_t start[WORDS]; /* bit i: bytes i .. i + MIN_RUN - 1 all equal byte i - 1, so a run may start at i */
} Runs;

/* Bit k: s[k] == s[k - 1], for the 64 bytes from s (s[-1] must be readable). */
static inline uint64_t equal_to_previous(const uint8_t *s) {
#if defined(__x86_64__) || defined(_M_X64)
    uint64_t m = 0;
    for (int q = 0; q < 4; q++) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + 16 * q));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16 * q - 1));
        m |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(a, b)) << (16 * q);
    }
    return m;
#else
    uint64_t m = 0;
    for (int k = 0; k < 64; k++) m |= (uint64_t)(s[k] == s[k - 1]) << k;
    return m;
#endif
}

static void find_runs(const uint8_t *s, size_t n, Runs *r) {
    size_t words = (n + 63) / 64;
    for (size_t w = 0; w < words; w++) {
        if (w > 0 && 64 * (w + 1) <= n) {
            r->equal[w] = equal_to_previous(s + 64 * w);
            continue;
        }
        uint64_t m = 0; /* the first word (no byte before it) and a partial last one */
        for (size_t i = 64 * w; i < 64 * (w + 1) && i < n; i++) m |= (uint64_t)(i > 0 && s[i] == s[i - 1]) << (i % 64);
        r->equal[w] = m;
    }
    r->equal[words] = r->equal[words + 1] = 0;
    for (size_t w = 0; w < words; w++) {
        uint64_t a = r->equal[w], b = r->equal[w + 1], m = a;
        for (int k = 1; k < MIN_RUN; k++) m &= a >> k | b << (64 - k);
        r->start[w] = m;
    }
}

/* The first position at or after i where a run may start, or n. */
static inline size_t next_run(const Runs *r, size_t i, size_t n) {
    size_t w = i / 64;
    uint64_t m = r->start[w] & (~0ull << (i % 64));
    while (!m) {
        if (++w * 64 >= n) return n;
        m = r->start[w];
    }
    size_t j = 64 * w + (size_t)__builtin_ctzll(m);
    return j < n ? j : n;
}

/* How many bytes from i on equal byte i - 1 (at least MIN_RUN where a run starts), at most MAX_RUN. */
static inline size_t run_length(const Runs *r, size_t i) {
    size_t len = 0;
    for (;;) {
        uint64_t other = ~(r->equal[i / 64] >> (i % 64));
        size_t k = other ? (size_t)__builtin_ctzll(other) : 64 - i % 64;
        len += k;
        if (len >= MAX_RUN) return MAX_RUN;
        if (i % 64 + k < 64) return len;
        i += k;
    }
}

/* ---- Huffman codes ---- */

/* Moffat & Katajainen's in-place minimum-redundancy code: a[] holds n >= 2 weights in ascending order and
 * gets their code lengths. */
static void minimum_redundancy(uint32_t *a, int n) {
    int root = 0, leaf = 2, next;
    a[0] += a[1];
    for (next = 1; next < n - 1; next++) {
        if (leaf >= n || a[root] < a[leaf]) {
            a[next] = a[root];
            a[root++] = (uint32_t)next;
        } else {
            a[next] = a[leaf++];
        }
        if (leaf >= n || (root < next && a[root] < a[leaf])) {
            a[next] += a[root];
            a[root++] = (uint32_t)next;
        } else {
            a[next] += a[leaf++];
        }
    }
    a[n - 2] = 0;
    for (next = n - 3; next >= 0; next--) a[next] = a[a[next]] + 1;
    int available = 1, used = 0, depth = 0;
    root = n - 2;
    next = n - 1;
    while (available > 0) {
        while (root >= 0 && (int)a[root] == depth) {
            used++;
            root--;
        }
        while (available > used) {
            a[next--] = (uint32_t)depth;
            available--;
        }
        available = 2 * used;
        depth++;
        used = 0;
    }
}

static int ascending(const void *x, const void *y) {
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return (a > b) - (a < b);
}

/* Code lengths of at most max_bits for the n symbols' counts; at least two symbols get a code. */
static void code_lengths(const uint32_t *freq, int n, int max_bits, uint8_t *len) {
    uint64_t order[LITLEN_SYMBOLS]; /* count << 16 | symbol: sorting them sorts by count */
    uint32_t a[LITLEN_SYMBOLS];
    int m = 0, per_length[32] = {0};
    memset(len, 0, (size_t)n);
    for (int i = 0; i < n; i++)
        if (freq[i]) order[m++] = (uint64_t)freq[i] << 16 | (uint64_t)i;
    if (m < 2) { /* a complete code needs two: give a lone symbol a partner */
        int lone = m ? (int)(order[0] & 0xffff) : 0;
        len[lone] = 1;
        len[lone ? 0 : 1] = 1;
        return;
    }
    qsort(order, (size_t)m, sizeof order[0], ascending);
    for (int i = 0; i < m; i++) a[i] = (uint32_t)(order[i] >> 16);
    minimum_redundancy(a, m);
    /* Longer codes become max_bits long, then shorter ones are lengthened until the code is complete again. */
    for (int i = 0; i < m; i++) per_length[a[i] > (uint32_t)max_bits ? max_bits : (int)a[i]]++;
    uint32_t kraft = 0;
    for (int b = max_bits; b > 0; b--) kraft += (uint32_t)per_length[b] << (max_bits - b);
    while (kraft != 1u << max_bits) {
        per_length[max_bits]--;
        for (int b = max_bits - 1; b > 0; b--)
            if (per_length[b]) {
                per_length[b]--;
                per_length[b + 1] += 2;
                break;
            }
        kraft--;
    }
    for (int b = max_bits, k = 0; b > 0; b--) /* the rarest symbols get the longest codes */
        for (int j = 0; j < per_length[b]; j++) len[order[k++] & 0xffff] = (uint8_t)b;
}

/* Canonical codes for the lengths, bit-reversed as deflate writes them. */
static void canonical_codes(const uint8_t *len, int n, uint16_t *code) {
    int per_length[16] = {0};
    uint32_t next[16];
    for (int i = 0; i < n; i++) per_length[len[i]]++;
    per_length[0] = 0;
    uint32_t c = 0;
    for (int b = 1; b < 16; b++) next[b] = c = (c + (uint32_t)per_length[b - 1]) << 1;
    for (int i = 0; i < n; i++) {
        uint32_t v = len[i] ? next[len[i]]++ : 0, r = 0;
        for (int b = 0; b < len[i]; b++, v >>= 1) r = r << 1 | (v & 1);
        code[i] = (uint16_t)r;
    }
}

/* ---- blocks ---- */

typedef struct {
    uint8_t symbol, extra_bits, extra;
} CodeLength;

/* The code lengths of both alphabets as code-length symbols (RFC 1951 3.2.7), with their counts. */
static int code_length_symbols(const uint8_t *lens, int n, CodeLength *out, uint32_t *freq) {
    int t = 0;
    for (int i = 0; i < n;) {
        uint8_t v = lens[i];
        int r = 1;
        while (i + r < n && lens[i + r] == v) r++;
        i += r;
        if (v == 0) {
            for (; r >= 11; r -= r > 138 ? 138 : r) out[t++] = (CodeLength){18, 7, (uint8_t)((r > 138 ? 138 : r) - 11)};
            if (r >= 3) {
                out[t++] = (CodeLength){17, 3, (uint8_t)(r - 3)};
                r = 0;
            }
        } else {
            out[t++] = (CodeLength){v, 0, 0};
            for (r--; r >= 3; r -= r > 6 ? 6 : r) out[t++] = (CodeLength){16, 2, (uint8_t)((r > 6 ? 6 : r) - 3)};
        }
        while (r-- > 0) out[t++] = (CodeLength){v, 0, 0};
    }
    for (int j = 0; j < t; j++) freq[out[j].symbol]++;
    return t;
}

static void stored_blocks(Writer *w, const uint8_t *s, size_t n, int final) {
    do {
        size_t k = n > STORED_MAX ? STORED_MAX : n;
        n -= k;
        put(w, (uint64_t)(final && !n), 3); /* BTYPE 00 */
        align(w);
        put(w, k | (uint64_t)(~k & 0xffff) << 16, 32);
        memcpy(w->out, s, k);
        w->out += k;
        s += k;
    } while (n);
}

/* Literal and run counts of the block, in the order the writer meets them. */
static void count_symbols(const uint8_t *s, size_t n, const Runs *r, const uint16_t *run_symbol, uint32_t *freq) {
    uint32_t lit[4][256] = {{0}}; /* four tables, so that repeated bytes do not wait on one counter */
    for (size_t i = 0; i < n;) {
        size_t j = next_run(r, i, n);
        for (; i + 4 <= j; i += 4) {
            lit[0][s[i]]++;
            lit[1][s[i + 1]]++;
            lit[2][s[i + 2]]++;
            lit[3][s[i + 3]]++;
        }
        for (; i < j; i++) lit[0][s[i]]++;
        if (j < n) {
            size_t len = run_length(r, j);
            freq[run_symbol[len]]++;
            i = j + len;
        }
    }
    for (int b = 0; b < 256; b++) freq[b] += lit[0][b] + lit[1][b] + lit[2][b] + lit[3][b];
}

static void write_symbols(Writer *w, const uint8_t *s, size_t n, const Runs *r, const uint32_t *lit,
                          const uint32_t *run_bits, const uint8_t *run_count) {
    for (size_t i = 0; i < n;) {
        size_t j = next_run(r, i, n);
        for (; i + 4 <= j; i += 4) { /* lit[b]: code | length << 16 */
            uint32_t a = lit[s[i]], b = lit[s[i + 1]], c = lit[s[i + 2]], d = lit[s[i + 3]];
            unsigned la = a >> 16, lb = b >> 16, lc = c >> 16;
            put(w,
                (a & 0xffff) | (uint64_t)(b & 0xffff) << la | (uint64_t)(c & 0xffff) << (la + lb) |
                    (uint64_t)(d & 0xffff) << (la + lb + lc),
                la + lb + lc + (d >> 16));
        }
        for (; i < j; i++) put(w, lit[s[i]] & 0xffff, lit[s[i]] >> 16);
        if (j < n) {
            size_t len = run_length(r, j);
            put(w, run_bits[len], run_count[len]);
            i = j + len;
        }
    }
}

/* One block: dynamic codes, or stored when those would not be smaller. */
static void block(Writer *w, const uint8_t *s, size_t n, int final, Runs *r) {
    uint16_t run_symbol[MAX_RUN + 1];
    uint8_t run_extra_bits[MAX_RUN + 1];
    for (int c = 0, len = 3; c < 29; c++)
        for (; len < (c == 28 ? MAX_RUN + 1 : LENGTH_BASE[c + 1]); len++) {
            run_symbol[len] = (uint16_t)(257 + c);
            run_extra_bits[len] = LENGTH_EXTRA[c];
        }

    uint32_t freq[LITLEN_SYMBOLS] = {0}, cl_freq[19] = {0};
    uint8_t lens[LITLEN_SYMBOLS + 2], cl_lens[19];
    uint16_t code[LITLEN_SYMBOLS], cl_code[19];
    CodeLength header[LITLEN_SYMBOLS + 2];
    find_runs(s, n, r);
    count_symbols(s, n, r, run_symbol, freq);
    freq[END_OF_BLOCK] = 1;
    code_lengths(freq, LITLEN_SYMBOLS, LITLEN_BITS, lens);
    int hlit = LITLEN_SYMBOLS;
    while (hlit > 257 && !lens[hlit - 1]) hlit--;
    lens[hlit] = lens[hlit + 1] = 1; /* distance codes 0 and 1, a bit each; runs use code 0 (distance 1) */
    int symbols = code_length_symbols(lens, hlit + 2, header, cl_freq);
    code_lengths(cl_freq, 19, CODE_LENGTH_BITS, cl_lens);
    int hclen = 19;
    while (hclen > 4 && !cl_lens[CODE_LENGTH_ORDER[hclen - 1]]) hclen--;

    uint64_t bits = 17 + 3 * (uint64_t)hclen;
    for (int j = 0; j < symbols; j++) bits += cl_lens[header[j].symbol] + header[j].extra_bits;
    for (int i = 0; i < hlit; i++) bits += (uint64_t)freq[i] * lens[i];
    for (int i = 257; i < LITLEN_SYMBOLS; i++) bits += (uint64_t)freq[i] * (LENGTH_EXTRA[i - 257] + 1u);
    if (bits > 8 * (n + 5 * (n / STORED_MAX + 1))) {
        stored_blocks(w, s, n, final);
        return;
    }

    canonical_codes(lens, hlit, code);
    canonical_codes(cl_lens, 19, cl_code);
    /* BFINAL, BTYPE 10 (dynamic), HLIT - 257, HDIST - 1 = 1, HCLEN - 4 */
    put(w, (uint64_t)final | 2u << 1 | (uint64_t)(hlit - 257) << 3 | 1u << 8 | (uint64_t)(hclen - 4) << 13, 17);
    for (int j = 0; j < hclen; j++) put(w, cl_lens[CODE_LENGTH_ORDER[j]], 3);
    for (int j = 0; j < symbols; j++) {
        unsigned sym = header[j].symbol;
        put(w, cl_code[sym] | (uint64_t)header[j].extra << cl_lens[sym], cl_lens[sym] + header[j].extra_bits);
    }

    uint32_t lit[256], run_bits[MAX_RUN + 1];
    uint8_t run_count[MAX_RUN + 1];
    for (int b = 0; b < 256; b++) lit[b] = code[b] | (uint32_t)lens[b] << 16;
    for (int len = 3; len <= MAX_RUN; len++) { /* length code, its extra bits, distance code 0: one field */
        int sym = run_symbol[len];
        run_bits[len] = code[sym] | (uint32_t)(len - LENGTH_BASE[sym - 257]) << lens[sym];
        run_count[len] = (uint8_t)(lens[sym] + run_extra_bits[len] + 1);
    }
    write_symbols(w, s, n, r, lit, run_bits, run_count);
    put(w, code[END_OF_BLOCK], lens[END_OF_BLOCK]);
}

/* ---- public ---- */

long rle_deflate_bound(long n) {
    return n + 5 * (n / STORED_MAX + 2) + 8 * (n / BLOCK_BYTES + 1) + 16;
}

long rle_deflate(const uint8_t *s, long n, int final, uint8_t *dst) {
    Writer w = {dst, 0, 0};
    if (n == 0) { /* nothing to add: a final empty block with the fixed code (BFINAL, BTYPE 01, end of block), or
                   * a sync flush */
        if (final)
            put(&w, 3, 10);
        else
            stored_blocks(&w, s, 0, 0);
        align(&w);
        return (long)(w.out - dst);
    }
    Runs *runs = malloc(sizeof *runs);
    if (!runs) return -1;
    size_t left = (size_t)n;
    do {
        size_t k = left > BLOCK_BYTES ? BLOCK_BYTES : left;
        left -= k;
        block(&w, s, k, final && !left, runs);
        s += k;
    } while (left);
    free(runs);
    if (!final) stored_blocks(&w, s, 0, 0);
    align(&w);
    return (long)(w.out - dst);
}
