/* The interface of service/rle_deflate.c, declared once: the C includes it and service/rle_deflate.py hands it to
 * cffi, which reads plain declarations only (no #include, no include guard). */

/* The most bytes rle_deflate writes for n input bytes, slack included. */
long rle_deflate_bound(long n);

/* Deflate s[0 .. n) into dst (rle_deflate_bound(n) bytes) as whole blocks; the last one is final when `final`,
 * otherwise an empty stored block follows. Returns the bytes written, or -1 when out of memory. */
long rle_deflate(const uint8_t *s, long n, int final, uint8_t *dst);
