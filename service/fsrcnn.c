/* Fused CPU kernels for the FSRCNN family (service/native.py drives them through ctypes).
 *
 * ONNX Runtime's CPU convolutions cannot fuse a PReLU with a slope per channel,
 * and they compute channels in blocks of 16, so FSRCNN's 12-channel mapping
 * layers cost as much as 16-channel ones. These kernels do neither: a
 * convolution vectorises along the image row (16 output pixels per AVX-512
 * register), keeps a block of output channels for two rows in registers, and
 * applies bias and PReLU to them before they are stored once.
 *
 * Layout: planar float32, a channel's rows one after another. Convolutions are
 * 'valid' and unpadded, like the network's (model/network.py).
 *
 * Built by setup.py as service/_fsrcnn*.so with no -march flags: the AVX-512
 * code is compiled for that target function by function, and fsrcnn_supported()
 * tells at run time whether this CPU can run it. Elsewhere than on x86-64 the
 * library builds with no kernels and fsrcnn_supported() is 0.
 *
 * The callers (service/native.py) check every shape; these functions trust them.
 */
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,fma")))

/* 1 where this CPU runs AVX-512F (the only instruction set these kernels are written for), else 0. */
int fsrcnn_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

/* Rows y and y + 1 of one block of CB output channels. Two rows share every weight broadcast; 2 * CB accumulators
 * + 3 registers fit the 32 of AVX-512 for CB <= 14. When only row y is left (rb == 1), the second row of
 * accumulators computes row y again and is not stored: simpler than a one-row variant, and one row per layer. */
#define DEFINE_BLOCK(CB)                                                                                           \
    AVX512 static void block##CB(const float *in, int cin, long in_plane, long in_row, const float *wp,            \
                                 const float *bias, const float *slope, int k, float *out, int oh, int ow, int y,    \
                                 int rb) {                                                                           \
        const long op = (long)oh * ow, down = rb > 1 ? in_row : 0;                                                   \
        for (int x = 0; x < ow; x += 16) {                                                                           \
            const __mmask16 m = ow - x >= 16 ? 0xFFFF : (__mmask16)((1u << (ow - x)) - 1);                          \
            __m512 a0[CB], a1[CB];                                                                                   \
            _Pragma("GCC unroll 16") for (int c = 0; c < CB; c++) a0[c] = a1[c] = _mm512_set1_ps(bias[c]);         \
            const float *w = wp;                                                                                     \
            for (int ci = 0; ci < cin; ci++) {                                                                       \
                for (int ky = 0; ky < k; ky++) {                                                                     \
                    const float *row = in + ci * in_plane + (y + ky) * in_row + x;                                   \
                    for (int kx = 0; kx < k; kx++, w += CB) {                                                        \
                        const __m512 v0 = _mm512_maskz_loadu_ps(m, row + kx);                                        \
                        const __m512 v1 = _mm512_maskz_loadu_ps(m, row + down + kx);                                 \
                        _Pragma("GCC unroll 16") for (int c = 0; c < CB; c++) {                                      \
                            const __m512 wc = _mm512_set1_ps(w[c]);                                                  \
                            a0[c] = _mm512_fmadd_ps(v0, wc, a0[c]);                                                  \
                            a1[c] = _mm512_fmadd_ps(v1, wc, a1[c]);                                                  \
                        }                                                                                            \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
            _Pragma("GCC unroll 16") for (int c = 0; c < CB; c++) {                                                  \
                __m512 r0 = a0[c], r1 = a1[c];                                                                       \
                if (slope) { /* PReLU: negative values times the channel's slope */                                 \
                    const __m512 s = _mm512_set1_ps(slope[c]), zero = _mm512_setzero_ps();                           \
                    r0 = _mm512_mask_mul_ps(r0, _mm512_cmp_ps_mask(r0, zero, _CMP_LT_OQ), r0, s);                   \
                    r1 = _mm512_mask_mul_ps(r1, _mm512_cmp_ps_mask(r1, zero, _CMP_LT_OQ), r1, s);                   \
                }                                                                                                    \
                _mm512_mask_storeu_ps(out + c * op + (long)y * ow + x, m, r0);                                       \
                if (rb > 1) _mm512_mask_storeu_ps(out + c * op + (long)(y + 1) * ow + x, m, r1);                     \
            }                                                                                                        \
        }                                                                                                            \
    }

DEFINE_BLOCK(1)
DEFINE_BLOCK(2)
DEFINE_BLOCK(3)
DEFINE_BLOCK(4)
DEFINE_BLOCK(8)
DEFINE_BLOCK(9)
DEFINE_BLOCK(12)
DEFINE_BLOCK(14)

/* out[co][y][x] = prelu(bias[co] + sum over ci, ky, kx of w[co][ci][ky][kx] * in[ci][y + ky][x + kx])
 *
 * in:    cin planes, in_plane floats apart, rows in_row floats apart (a crop of a larger plane is fine);
 * wp:    the weights packed as [cout / cb][cin][k][k][cb] (service/native.py packs them);
 * slope: cout PReLU slopes, or NULL for none;
 * out:   cout contiguous planes of oh x ow.
 * Returns 0, or -1 for a block size cb it has no kernel for (nothing is written then). */
int fsrcnn_conv(const float *in, int cin, long in_plane, long in_row, const float *wp, const float *bias,
                const float *slope, int cout, int cb, int k, float *out, int oh, int ow) {
    if (cb < 1 || cout % cb) return -1;
    switch (cb) {
    case 1: case 2: case 3: case 4: case 8: case 9: case 12: case 14: break;
    default: return -1;
    }
    for (int y = 0; y < oh; y += 2) { /* every block of channels, then the next two rows: their input stays in cache */
        const int rb = oh - y < 2 ? 1 : 2;
        for (int b = 0; b < cout / cb; b++) {
            const float *w = wp + (long)b * cin * k * k * cb, *bb = bias + b * cb, *s = slope ? slope + b * cb : 0;
            float *o = out + (long)b * cb * oh * ow;
#define CALL(CB) block##CB(in, cin, in_plane, in_row, w, bb, s, k, o, oh, ow, y, rb)
            switch (cb) {
            case 1: CALL(1); break;
            case 2: CALL(2); break;
            case 3: CALL(3); break;
            case 4: CALL(4); break;
            case 8: CALL(8); break;
            case 9: CALL(9); break;
            case 12: CALL(12); break;
            case 14: CALL(14); break;
            }
#undef CALL
        }
    }
    return 0;
}

#else /* not x86-64: no kernels; service/native.py sees fsrcnn_supported() == 0 and never calls the others */
int fsrcnn_supported(void) { return 0; }
int fsrcnn_conv(const float *in, int cin, long in_plane, long in_row, const float *wp, const float *bias,
                const float *slope, int cout, int cb, int k, float *out, int oh, int ow) {
    return -1;
}
#endif

/* The output image of a tile from its s*s phases: channel c * s * s + ry * s + rx of each holds output pixels
 * (s * y + ry, s * x + rx) of colour c, as PyTorch's pixel shuffle orders them.
 *
 *   value = skip[phase][y][x] + learned[phase][y + lag[ry]][x + lag[rx]]
 *
 * skip:    c*s*s planes of h x w (the bicubic path); learned: c*s*s planes of lh x lw (the transposed
 *          convolution's phases, whose windows start lag[r] pixels later for phase r).
 * Writes either out_f32, (c, s*h, s*w) floats, or out_u8, (s*h, s*w, c) pixels rounded as
 * service.engine.to_pixels rounds them: clip(value * 255 + 0.5, 0, 255), truncated. */
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

/* A tile of 8-bit pixels as the network reads it: the (size, size, c) window at src, its rows row_stride bytes
 * apart, becomes c planes of size x size floats at dst, each pixel times scale (rounded as numpy rounds
 * astype(float32) * float32(scale)). What the batcher's numpy cut did in four passes over the tile, in one; for RGB
 * the compiler vectorises the three planes' loop (12 us a 142-px tile, against 28 us unvectorised). */
#ifdef AVX512
AVX512
#endif
void fsrcnn_planes_from_u8(const uint8_t *src, long row_stride, int size, int c, float scale, float *dst) {
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

/* One layer as fsrcnn_conv takes it: weights packed in blocks of `block` output channels, slope NULL for none. */
typedef struct {
    const float *weight, *bias, *slope;
    int cin, cout, block, k;
} FsrcnnLayer;

/* A whole tile in one call (one release of Python's GIL instead of one per layer):
 *
 *   layer[0 .. body)      the body, from x (channels, h, w) through ws0, ws1, ws0, ... in turn;
 *   layer[body]           the transposed convolution's phases, into the buffer after the last body layer's;
 *   layer[body + 1 + c]   the skip's s*s phases of colour c, from x cropped by `crop`, into `skip`;
 *
 * then fsrcnn_assemble into out_f32 or out_u8. Returns fsrcnn_conv's -1 if a layer has no kernel. */
int fsrcnn_forward(const FsrcnnLayer *layer, int body, int channels, int scale, int crop, const int *lag,
                   const float *x, int h, int w, float *ws0, float *ws1, float *skip, float *out_f32,
                   uint8_t *out_u8) {
    float *ws[2] = {ws0, ws1};
    const float *in = x;
    int ih = h, iw = w;
    for (int i = 0; i <= body; i++) {
        const FsrcnnLayer *l = &layer[i];
        const int oh = ih - l->k + 1, ow = iw - l->k + 1;
        if (fsrcnn_conv(in, l->cin, (long)ih * iw, iw, l->weight, l->bias, l->slope, l->cout, l->block, l->k,
                        ws[i % 2], oh, ow))
            return -1;
        in = ws[i % 2];
        ih = oh;
        iw = ow;
    }
    const FsrcnnLayer *sk = &layer[body + 1];
    const int th = h - 2 * crop - sk->k + 1, tw = w - 2 * crop - sk->k + 1;
    for (int c = 0; c < channels; c++, sk++)
        if (fsrcnn_conv(x + (long)c * h * w + (long)crop * w + crop, 1, (long)h * w, w, sk->weight, sk->bias,
                        sk->slope, sk->cout, sk->block, sk->k, skip + (long)c * sk->cout * th * tw, th, tw))
            return -1;
    fsrcnn_assemble(skip, in, channels, scale, th, tw, ih, iw, lag, out_f32, out_u8);
    return 0;
}
