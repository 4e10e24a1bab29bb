/* The interface of service/fsrcnn.c: the CPU kernels of the FSRCNN family.
 *
 * Declared once: fsrcnn.c includes this file, so the compiler checks its definitions against it, and
 * service/native.py hands the same text to cffi, which builds the Python binding from it. cffi reads plain C
 * declarations only, so this file has no #include, no include guard and no #define but integer constants.
 */

/* Instruction sets the convolutions are compiled for (the `isa` argument below). */
#define FSRCNN_AVX2 1   /* x86-64 with AVX2 and FMA: 8 floats a vector, 16 registers */
#define FSRCNN_AVX512 2 /* x86-64 with AVX-512F: 16 floats a vector, 32 registers */

/* One layer as fsrcnn_conv takes it: weights packed in blocks of `block` output channels, slope NULL for none. */
typedef struct {
    const float *weight, *bias, *slope;
    int cin, cout, block, k;
} FsrcnnLayer;

/* 1 where this CPU runs the kernels compiled for `isa`, else 0 (always 0 for an unknown isa or off x86-64). */
int fsrcnn_isa_supported(int isa);

/* The blocks of output channels fsrcnn_conv has kernels for on `isa`, largest first: writes at most `capacity`
 * of them to `sizes` and returns how many there are (0 for an isa this build has no kernels for). */
int fsrcnn_block_sizes(int isa, int *sizes, int capacity);

/* out[co][y][x] = prelu(bias[co] + sum over ci, ky, kx of w[co][ci][ky][kx] * in[ci][y + ky][x + kx])
 *
 * in:    cin planes, in_plane floats apart, rows in_row floats apart (a crop of a larger plane is fine);
 * wp:    the weights packed as [cout / cb][cin][k][k][cb];
 * slope: cout PReLU slopes, or NULL for none;
 * out:   cout contiguous planes of oh x ow.
 * Returns 0, or -1 when `isa` is not supported here or has no kernel for blocks of cb (nothing is written then). */
int fsrcnn_conv(int isa, const float *in, int cin, long in_plane, long in_row, const float *wp, const float *bias,
                const float *slope, int cout, int cb, int k, float *out, int oh, int ow);

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
                     const int *lag, float *out_f32, uint8_t *out_u8);

/* A tile of 8-bit pixels as the network reads it: the (size, size, c) window at src, its rows row_stride bytes
 * apart, becomes c planes of size x size floats at dst, each pixel times scale (rounded as numpy rounds
 * astype(float32) * float32(scale)). */
void fsrcnn_planes_from_u8(const uint8_t *src, long row_stride, int size, int c, float scale, float *dst);

/* A whole tile in one call (one release of Python's GIL instead of one per layer), on `isa`:
 *
 *   layer[0 .. body)      the body, from x (channels, h, w), each layer's output kept in a line buffer of at most
 *                         band + k - 1 rows (k the next layer's kernel) in `lines`: the layers run as a pipeline,
 *                         a few rows at a time, so no wide map is ever written whole;
 *   layer[body]           the transposed convolution's phases, into `learned` (whole planes);
 *   layer[body + 1 + c]   the skip's s*s phases of colour c, from x cropped by `crop`, into `skip`;
 *
 * then fsrcnn_assemble into out_f32 or out_u8. `lines` holds fsrcnn_line_floats(layer, body, h, w, band) floats.
 * Returns fsrcnn_conv's -1 if a layer has no kernel (or band < 1). */
int fsrcnn_forward(int isa, const FsrcnnLayer *layer, int body, int channels, int scale, int crop, const int *lag,
                   const float *x, int h, int w, float *lines, int band, float *learned, float *skip, float *out_f32,
                   uint8_t *out_u8);

/* The floats fsrcnn_forward's line buffers take for a tile of h x w and rows of `band`. */
long fsrcnn_line_floats(const FsrcnnLayer *layer, int body, int h, int w, int band);
