/* PNG's row filters undone (PNG specification, section 9): the last step of reading a plain 8-bit PNG.
 *
 * service/png_reader.py inflates the image data with ISA-L and hands the rows over; this undoes each row's filter
 * in place of Pillow's decoder, which spent more time on it than ISA-L on inflating (bench/results/codecs.json).
 * The caller checks the sizes: src holds height rows of 1 + stride bytes (the filter type, then the filtered
 * bytes), dst has room for height rows of stride bytes. Nothing is allocated and no state is kept, so any number of
 * threads may call it at once.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "png_unfilter.h"

/* Paeth's predictor without branches: of a (left), b (above) and c (upper left), the one nearest to a + b - c,
 * ties going to a, then b. pa, pb and pc are the spec's |p - a|, |p - b| and |p - c|. */
static inline int paeth(int a, int b, int c) {
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    int nearer = pa <= pb ? a : b;
    int distance = pa <= pb ? pa : pb;
    return distance <= pc ? nearer : c;
}

long png_unfilter(const uint8_t *src, long height, long stride, long bpp, uint8_t *dst) {
    long first = bpp < stride ? bpp : stride; /* the bytes of the first pixel, which have nothing to their left */
    for (long y = 0; y < height; y++) {
        const uint8_t *in = src + y * (stride + 1) + 1;
        uint8_t *out = dst + y * stride;
        const uint8_t *up = y ? out - stride : NULL;
        switch (in[-1]) {
        case 0: /* None */
            memcpy(out, in, stride);
            break;
        case 1: /* Sub */
            memcpy(out, in, first);
            for (long i = bpp; i < stride; i++) out[i] = in[i] + out[i - bpp];
            break;
        case 2: /* Up */
            if (up) {
                for (long i = 0; i < stride; i++) out[i] = in[i] + up[i];
            } else {
                memcpy(out, in, stride);
            }
            break;
        case 3: /* Average */
            if (up) {
                for (long i = 0; i < first; i++) out[i] = in[i] + (up[i] >> 1);
                for (long i = bpp; i < stride; i++) out[i] = in[i] + ((out[i - bpp] + up[i]) >> 1);
            } else {
                memcpy(out, in, first);
                for (long i = bpp; i < stride; i++) out[i] = in[i] + (out[i - bpp] >> 1);
            }
            break;
        case 4: /* Paeth */
            if (up) {
                for (long i = 0; i < first; i++) out[i] = in[i] + up[i]; /* paeth(0, b, 0) is b */
                for (long i = bpp; i < stride; i++) out[i] = in[i] + paeth(out[i - bpp], up[i], up[i - bpp]);
            } else { /* b and c are 0, so the predictor is a: the same as Sub */
                memcpy(out, in, first);
                for (long i = bpp; i < stride; i++) out[i] = in[i] + out[i - bpp];
            }
            break;
        default:
            return y;
        }
    }
    return -1;
}
