/* The interface of service/png_unfilter.c, declared once: the C includes it and service/png_reader.py hands it to
 * cffi, which reads plain declarations only (no #include, no include guard). */

/* Undo the filters of height rows of stride bytes with bpp bytes per pixel (1-4 for 8-bit samples): src holds
 * height rows of 1 + stride bytes (the filter type, then the filtered bytes), dst has room for height rows of
 * stride bytes. Returns -1 when every row was done, or the index of the first row whose filter type is not 0-4
 * (the rows above it are done, the rest of dst is untouched). On the first row, the row above is taken as zeros,
 * as the spec says. */
long png_unfilter(const uint8_t *src, long height, long stride, long bpp, uint8_t *dst);
