/* Fused CPU kernels for the FSRCNN family (interface and contracts: service/fsrcnn.h; service/native.py drives
 * them through cffi).
 *
 * ONNX Runtime's CPU convolutions cannot fuse a PReLU with a slope per channel, and they compute channels in
 * blocks of 16, so FSRCNN's 12-channel mapping layers cost as much as 16-channel ones. These kernels do neither: a
 * convolution vectorises along the image row, keeps a block of output channels for two rows in registers, and
 * applies bias and PReLU to them before they are stored once.
 *
 * One source for every instruction set: the convolution below is written once against a handful of vector
 * operations (load, masked load, broadcast, fused multiply-add, PReLU, store) and instantiated per instruction
 * set with that set's operations and register budget: AVX-512F (16 floats a vector, 32 registers) and AVX2 + FMA
 * (8 floats, 16 registers). Each instantiation is compiled for its target function by function, with no -march
 * flags, so one build serves every x86-64 CPU; the caller picks the instruction set at run time
 * (fsrcnn_isa_supported). Elsewhere than on x86-64 the library builds with no convolutions.
 *
 * Layout: planar float32, a channel's rows one after another. Convolutions are 'valid' and unpadded, like the
 * network's (model/network.py). The callers (service/native.py) check every shape; these functions trust them.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fsrcnn.h"

typedef void (*BlockKernel)(const float *in, int cin, long in_plane, long in_row, const float *wp, const float *bias,
                            const float *slope, int k, float *out, int oh, int ow, int y, int rb);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* ---- AVX-512F: 16 floats a vector; a mask register selects the lanes of a row's last, partial vector ---- */
#define avx512_TARGET __attribute__((target("avx512f,fma")))
#define avx512_WIDTH 16
typedef __m512 avx512_vec;
typedef __mmask16 avx512_lanes;
avx512_TARGET static inline avx512_lanes avx512_first(int n) { return (__mmask16)((1u << n) - 1); } /* n < 16 */
#define avx512_load_all(p, m) _mm512_loadu_ps(p)
#define avx512_store_all(p, m, v) _mm512_storeu_ps(p, v)
avx512_TARGET static inline avx512_vec avx512_load_part(const float *p, avx512_lanes m) {
    return _mm512_maskz_loadu_ps(m, p);
}
avx512_TARGET static inline void avx512_store_part(float *p, avx512_lanes m, avx512_vec v) {
    _mm512_mask_storeu_ps(p, m, v);
}
avx512_TARGET static inline avx512_vec avx512_set1(float f) { return _mm512_set1_ps(f); }
avx512_TARGET static inline avx512_vec avx512_fmadd(avx512_vec a, avx512_vec b, avx512_vec c) {
    return _mm512_fmadd_ps(a, b, c);
}
avx512_TARGET static inline avx512_vec avx512_prelu(avx512_vec v, avx512_vec slope) { /* v < 0 ? v * slope : v */
    return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, slope);
}

/* ---- AVX2 + FMA: 8 floats a vector; a lane mask (all ones or zero per lane) for the partial vector ---- */
#define avx2_TARGET __attribute__((target("avx2,fma")))
#define avx2_WIDTH 8
typedef __m256 avx2_vec;
typedef __m256i avx2_lanes;
static const int32_t avx2_lane_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
avx2_TARGET static inline avx2_lanes avx2_first(int n) { /* n < 8 */
    return _mm256_loadu_si256((const __m256i *)(avx2_lane_table + 8 - n));
}
#define avx2_load_all(p, m) _mm256_loadu_ps(p)
#define avx2_store_all(p, m, v) _mm256_storeu_ps(p, v)
avx2_TARGET static inline avx2_vec avx2_load_part(const float *p, avx2_lanes m) { return _mm256_maskload_ps(p, m); }
avx2_TARGET static inline void avx2_store_part(float *p, avx2_lanes m, avx2_vec v) { _mm256_maskstore_ps(p, m, v); }
avx2_TARGET static inline avx2_vec avx2_set1(float f) { return _mm256_set1_ps(f); }
avx2_TARGET static inline avx2_vec avx2_fmadd(avx2_vec a, avx2_vec b, avx2_vec c) { return _mm256_fmadd_ps(a, b, c); }
avx2_TARGET static inline avx2_vec avx2_prelu(avx2_vec v, avx2_vec slope) {
    return _mm256_blendv_ps(v, _mm256_mul_ps(v, slope), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
}

/* One step of a block kernel: CB output channels of rows y and y + 1 at columns x .. x + WIDTH - 1. Two rows
 * share every weight broadcast, so a block needs 2 * CB accumulators + 3 registers (the two rows' inputs and the
 * weight): CB <= 14 on AVX-512, CB <= 6 on AVX2. When only row y is left (rb == 1), the second row of accumulators
 * computes row y again and is not stored: simpler than a one-row variant, and one row per layer. LOAD(p, m) and
 * STORE(p, m, v) move whole vectors inside the row (m unused), or lanes m of the row's last, partial vector. */
#define BLOCK_STEP(ISA, CB, LOAD, STORE, m)                                                                            \
    do {                                                                                                             \
        ISA##_vec a0[CB], a1[CB];                                                                                    \
        _Pragma("GCC unroll 16") for (int c = 0; c < CB; c++) a0[c] = a1[c] = ISA##_set1(bias[c]);                \
        const float *w = wp;                                                                                         \
        for (int ci = 0; ci < cin; ci++) {                                                                           \
            for (int ky = 0; ky < k; ky++) {                                                                         \
                const float *row = in + ci * in_plane + (y + ky) * in_row + x;                                       \
                for (int kx = 0; kx < k; kx++, w += CB) {                                                            \
                    const ISA##_vec v0 = LOAD(row + kx, m), v1 = LOAD(row + down + kx, m);                                 \
                    _Pragma("GCC unroll 16") for (int c = 0; c < CB; c++) {                                          \
                        const ISA##_vec wc = ISA##_set1(w[c]);                                                       \
                        a0[c] = ISA##_fmadd(v0, wc, a0[c]);                                                          \
                        a1[c] = ISA##_fmadd(v1, wc, a1[c]);                                                          \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        _Pragma("GCC unroll 16") for (int c = 0; c < CB; c++) {                                                      \
            ISA##_vec r0 = a0[c], r1 = a1[c];                                                                        \
            if (slope) {                                                                                             \
                const ISA##_vec s = ISA##_set1(slope[c]);                                                            \
                r0 = ISA##_prelu(r0, s);                                                                             \
                r1 = ISA##_prelu(r1, s);                                                                             \
            }                                                                                                        \
            STORE(out + c * op + (long)y * ow + x, m, r0);                                                           \
            if (rb > 1) STORE(out + c * op + (long)(y + 1) * ow + x, m, r1);                                         \
        }                                                                                                            \
    } while (0)

/* Rows y and y + 1 (or y alone, rb == 1) of one block of CB output channels, whole vectors then the last part. */
#define DEFINE_BLOCK(ISA, CB)                                                                                        \
    ISA##_TARGET static void ISA##_block##CB(const float *in, int cin, long in_plane, long in_row, const float *wp,  \
                                             const float *bias, const float *slope, int k, float *out, int oh,       \
                                             int ow, int y, int rb) {                                                \
        const long op = (long)oh * ow, down = rb > 1 ? in_row : 0;                                                   \
        int x = 0;                                                                                                   \
        for (; x + ISA##_WIDTH <= ow; x += ISA##_WIDTH) BLOCK_STEP(ISA, CB, ISA##_load_all, ISA##_store_all, 0);     \
        if (x < ow) {                                                                                                \
            const ISA##_lanes lanes = ISA##_first(ow - x);                                                           \
            BLOCK_STEP(ISA, CB, ISA##_load_part, ISA##_store_part, lanes);                                           \
        }                                                                                                            \
    }

/* The blocks each instruction set has kernels for, largest first (service/native.py packs weights for them). */
DEFINE_BLOCK(avx512, 14)
DEFINE_BLOCK(avx512, 12)
DEFINE_BLOCK(avx512, 9)
DEFINE_BLOCK(avx512, 8)
DEFINE_BLOCK(avx512, 4)
DEFINE_BLOCK(avx512, 3)
DEFINE_BLOCK(avx512, 2)
DEFINE_BLOCK(avx512, 1)
static const int avx512_sizes[] = {14, 12, 9, 8, 4, 3, 2, 1};
static const BlockKernel avx512_kernels[] = {avx512_block14, avx512_block12, avx512_block9, avx512_block8,
                                             avx512_block4,  avx512_block3,  avx512_block2, avx512_block1};

DEFINE_BLOCK(avx2, 6)
DEFINE_BLOCK(avx2, 4)
DEFINE_BLOCK(avx2, 3)
DEFINE_BLOCK(avx2, 2)
DEFINE_BLOCK(avx2, 1)
static const int avx2_sizes[] = {6, 4, 3, 2, 1};
static const BlockKernel avx2_kernels[] = {avx2_block6, avx2_block4, avx2_block3, avx2_block2, avx2_block1};

int fsrcnn_isa_supported(int isa) {
    __builtin_cpu_init();
    switch (isa) {
    case FSRCNN_AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    case FSRCNN_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return 0;
    }
}

/* The block sizes and kernels of `isa`; returns how many (0 for none). */
static int kernels_of(int isa, const int **sizes, const BlockKernel **kernels) {
    switch (isa) {
    case FSRCNN_AVX512: *sizes = avx512_sizes, *kernels = avx512_kernels; return sizeof avx512_sizes / sizeof(int);
    case FSRCNN_AVX2: *sizes = avx2_sizes, *kernels = avx2_kernels; return sizeof avx2_sizes / sizeof(int);
    default: return 0;
    }
}

/* For the 8-bit cut below: one copy per instruction set, picked by the loader at the first call. */
#define PER_ISA __attribute__((target_clones("avx512f", "avx2", "default")))

#else /* not x86-64: no convolutions; service/native.py sees fsrcnn_isa_supported() == 0 and never calls them */
int fsrcnn_isa_supported(int isa) { return 0; }
static int kernels_of(int isa, const int **sizes, const BlockKernel **kernels) { return 0; }
#define PER_ISA
#endif

int fsrcnn_block_sizes(int isa, int *sizes, int capacity) {
    const int *own;
    const BlockKernel *kernels;
    const int n = kernels_of(isa, &own, &kernels);
    for (int i = 0; i < n && i < capacity; i++) sizes[i] = own[i];
    return n;
}

/* The kernel for blocks of cb on `isa`, or NULL. */
static BlockKernel kernel_for(int isa, int cb) {
    const int *sizes;
    const BlockKernel *kernels;
    const int n = kernels_of(isa, &sizes, &kernels);
    for (int i = 0; i < n; i++)
        if (sizes[i] == cb) return kernels[i];
    return NULL;
}

/* Rows y0 .. y1 of a convolution whose output planes are plane_rows x ow (row y reads input rows y .. y + k - 1). */
static int conv_rows(int isa, const float *in, int cin, long in_plane, long in_row, const float *wp, const float *bias,
                     const float *slope, int cout, int cb, int k, float *out, int plane_rows, int ow, int y0, int y1) {
    const BlockKernel block = cb >= 1 && cout % cb == 0 && fsrcnn_isa_supported(isa) ? kernel_for(isa, cb) : NULL;
    if (!block) return -1;
    for (int y = y0; y < y1; y += 2) { /* every block of channels, then the next two rows: their input stays in cache */
        const int rb = y1 - y < 2 ? 1 : 2;
        for (int b = 0; b < cout / cb; b++)
            block(in, cin, in_plane, in_row, wp + (long)b * cin * k * k * cb, bias + b * cb, slope ? slope + b * cb : 0,
                  k, out + (long)b * cb * plane_rows * ow, plane_rows, ow, y, rb);
    }
    return 0;
}

int fsrcnn_conv(int isa, const float *in, int cin, long in_plane, long in_row, const float *wp, const float *bias,
                const float *slope, int cout, int cb, int k, float *out, int oh, int ow) {
    return conv_rows(isa, in, cin, in_plane, in_row, wp, bias, slope, cout, cb, k, out, oh, ow, 0, oh);
}

void fsrcnn_assemble(const float *skip, const float *learned, int c, int s, int h, int w, int lh, int lw,
                     const int *lag, float *out_f32, uint8_t *out_u8) {
    const long sw = (long)s * w, out_plane = (long)s * h * sw;
    for (int ch = 0; ch < c; ch++)
        for (int ry = 0; ry < s; ry++)
            for (int rx = 0; rx < s; rx++) {
                const int phase = (ch * s + ry) * s + rx;
                const float *sk = skip + (long)phase * h * w;
                const float *le = learned + (long)phase * lh * lw + (long)lag[ry] * lw + lag[rx];
                for (int y = 0; y < h; y++) {
                    const long o = (long)(s * y + ry) * sw + rx;
                    if (out_f32) {
                        float *dst = out_f32 + ch * out_plane + o;
                        for (int x = 0; x < w; x++) dst[(long)s * x] = sk[(long)y * w + x] + le[(long)y * lw + x];
                    } else {
                        uint8_t *dst = out_u8 + o * c + ch;
                        for (int x = 0; x < w; x++) {
                            /* rounded after each step, as numpy does: built with -ffp-contract=off (setup.py) */
                            float v = (sk[(long)y * w + x] + le[(long)y * lw + x]) * 255.0f + 0.5f;
                            v = v > 0.0f ? (v < 255.0f ? v : 255.0f) : 0.0f; /* NaN -> 0 */
                            dst[(long)s * x * c] = (uint8_t)v;
                        }
                    }
                }
            }
}

/* What the batcher's numpy cut did in four passes over the tile, in one; for RGB the compiler vectorises the three
 * planes' loop. */
PER_ISA void fsrcnn_planes_from_u8(const uint8_t *src, long row_stride, int size, int c, float scale, float *dst) {
    const long plane = (long)size * size;
    for (int y = 0; y < size; y++) {
        const uint8_t *row = src + y * row_stride;
        float *r = dst + (long)y * size, *g = r + plane, *b = g + plane;
        if (c != 3) {
            for (int ch = 0; ch < c; ch++)
                for (int x = 0; x < size; x++) r[ch * plane + x] = (float)row[(long)x * c + ch] * scale;
            continue;
        }
        for (long x = 0; x < size; x++) { /* long: with -fwrapv (Python's build flags) an int 3 * x may wrap */
            r[x] = (float)row[3 * x] * scale;
            g[x] = (float)row[3 * x + 1] * scale;
            b[x] = (float)row[3 * x + 2] * scale;
        }
    }
}

/* The rows of layer i's line buffer, whose output has oh rows: a band, plus what the next layer's kernel reaches
 * past it; never more than the whole output. */
static int line_rows(const FsrcnnLayer *layer, int i, int oh, int band) {
    const int rows = band + layer[i + 1].k - 1;
    return rows < oh ? rows : oh;
}

long fsrcnn_line_floats(const FsrcnnLayer *layer, int body, int h, int w, int band) {
    long total = 0;
    for (int i = 0; i < body; i++) {
        h -= layer[i].k - 1, w -= layer[i].k - 1;
        total += (long)layer[i].cout * line_rows(layer, i, h, band) * w;
    }
    return total;
}

/* The body and the phases as a pipeline of line buffers: layer i < body keeps only the rows of its output that the
 * next layer has not used yet (at most band + k_next - 1 of them), layer body (the phases) writes its whole output.
 * Each pass over the layers lets every layer compute what its input and its buffer's room allow, at most `band`
 * rows, so a wide map (56 channels at tile 128: 32 KB a row) passes through a few rows at a time, in cache. A
 * buffer always holds at least k_next rows, so its consumer can always move: the pipeline never stalls. */
static int body_in_bands(int isa, const FsrcnnLayer *layer, int body, const float *x, int h, int w, float *lines,
                         int band, float *learned) {
    enum { MAX_LAYERS = 64 };
    if (body + 1 > MAX_LAYERS || band < 1) return -1;
    int oh[MAX_LAYERS], ow[MAX_LAYERS], cap[MAX_LAYERS], done[MAX_LAYERS], base[MAX_LAYERS];
    float *buf[MAX_LAYERS];
    for (int i = 0, ih = h, iw = w; i <= body; i++) {
        oh[i] = ih - layer[i].k + 1, ow[i] = iw - layer[i].k + 1;
        ih = oh[i], iw = ow[i];
        done[i] = base[i] = 0;
        if (i < body) {
            cap[i] = line_rows(layer, i, oh[i], band);
            buf[i] = lines;
            lines += (long)layer[i].cout * cap[i] * ow[i];
        } else {
            cap[i] = oh[i];
            buf[i] = learned;
        }
    }
    while (done[body] < oh[body]) {
        for (int i = 0; i <= body; i++) {
            const FsrcnnLayer *l = &layer[i];
            if (i < body && done[i + 1] > base[i]) { /* drop the rows the next layer has used */
                const int drop = done[i + 1] - base[i], keep = done[i] - done[i + 1];
                for (int c = 0; c < l->cout; c++) {
                    float *plane = buf[i] + (long)c * cap[i] * ow[i];
                    memmove(plane, plane + (long)drop * ow[i], sizeof(float) * keep * ow[i]);
                }
                base[i] = done[i + 1];
            }
            int end = i == 0 ? oh[0] : done[i - 1] - l->k + 1; /* the rows its input allows */
            end = end < base[i] + cap[i] ? end : base[i] + cap[i];
            end = end < done[i] + band ? end : done[i] + band;
            if (end <= done[i]) continue;
            const float *in = i == 0 ? x : buf[i - 1] - (long)base[i - 1] * ow[i - 1]; /* row r of the input at r */
            const long in_plane = i == 0 ? (long)h * w : (long)cap[i - 1] * ow[i - 1], in_row = i == 0 ? w : ow[i - 1];
            float *out = buf[i] - (long)base[i] * ow[i];
            if (conv_rows(isa, in, l->cin, in_plane, in_row, l->weight, l->bias, l->slope, l->cout, l->block, l->k, out,
                          cap[i], ow[i], done[i], end))
                return -1;
            done[i] = end;
        }
    }
    return 0;
}

int fsrcnn_forward(int isa, const FsrcnnLayer *layer, int body, int channels, int scale, int crop, const int *lag,
                   const float *x, int h, int w, float *lines, int band, float *learned, float *skip, float *out_f32,
                   uint8_t *out_u8) {
    if (body_in_bands(isa, layer, body, x, h, w, lines, band, learned)) return -1;
    int ih = h, iw = w;
    for (int i = 0; i <= body; i++) ih -= layer[i].k - 1, iw -= layer[i].k - 1;
    const FsrcnnLayer *sk = &layer[body + 1];
    const int th = h - 2 * crop - sk->k + 1, tw = w - 2 * crop - sk->k + 1;
    for (int c = 0; c < channels; c++, sk++)
        if (fsrcnn_conv(isa, x + (long)c * h * w + (long)crop * w + crop, 1, (long)h * w, w, sk->weight, sk->bias,
                        sk->slope, sk->cout, sk->block, sk->k, skip + (long)c * sk->cout * th * tw, th, tw))
            return -1;
    fsrcnn_assemble(skip, learned, channels, scale, th, tw, ih, iw, lag, out_f32, out_u8);
    return 0;
}
