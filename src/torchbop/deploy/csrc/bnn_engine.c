/* torchbop packed BNN engine: XNOR-popcount convolutions and dense layers on bitpacked NHWC activations.

   Built by torchbop.deploy.engine_kernels with `cc -O3 -shared -fPIC -pthread` (no -march flags): every SIMD
   function carries its own __attribute__((target(...))), so one shared library runs on any x86-64 (and, with the
   portable path only, on any other CPU); the caller picks the path (tb_paths says which this CPU runs).

   Layout. An activation is packed pixels [N, H, W, Cb]: the sign bits of the C channels of a pixel, 8 to a byte,
   channel 8b + i at bit i of byte b, bit 1 = -1 and bit 0 = +1 (Cb = ceil(C / 8); the last byte's unused bits are
   0). A convolution's row (one output position) is the Cb bytes of each kernel position (kh, kw) in turn, zero
   bytes for a position outside the image (they read as +1: the caller's `base` corrects for it), zero-filled to Kw
   words, Kw a multiple of 4. Weights are rows [O, Kw] of the same layout. For a row a and a filter b,
   s = popcount(a ^ b) counts disagreements, and the +-1 dot product is base - 2 s, base = the number of real bit
   positions plus the padding correction (exact integers).

   Output ("epilogue"): float32 [M, O] = base - 2 s (EPI_FLOAT), or packed bits (EPI_BITS): bit j of output row i
   is ((base - 2 s) < thr[j]) ^ flip[j], the batch norm and sign that follow the layer folded into one integer
   comparison per channel (torchbop.deploy.thresholds derives thr and flip).

   Work is split into items of (a block of RB output rows, a range of output channels); threads take items from an
   atomic counter. An item builds its rows (bit-level im2col) in a private buffer that stays in L1/L2, then runs
   the register tile over them, NCB filters at a time (a block of weights that stays in cache). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TB_X86 1
#endif

enum { PATH_PORTABLE = 0, PATH_AVX2 = 1, PATH_AVX512 = 2 };
enum { EPI_FLOAT = 0, EPI_BITS = 1 };
enum { MR = 2, NR = 8, RB = 48 };

/* Bit 0: portable C (always); bit 1: AVX2; bit 2: AVX-512 F/BW/VL with VPOPCNTDQ. */
int tb_paths(void) {
    int mask = 1;
#ifdef TB_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) mask |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512vpopcntdq"))
        mask |= 4;
#endif
    return mask;
}

/* ---------------------------------------------------------------------------------------------------------------
   Register tiles: s[r][c] = sum_k popcount(a[r][k] ^ b[c][k]) for MR rows and NR filters of Kw words. */

static void tile_portable(const uint64_t *const a[MR], const uint64_t *const b[NR], int64_t Kw,
                          int64_t s[MR][NR]) {
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) {
            int64_t sum = 0;
            for (int64_t k = 0; k < Kw; k++) sum += __builtin_popcountll(a[r][k] ^ b[c][k]);
            s[r][c] = sum;
        }
}

#ifdef TB_X86
/* Per-byte popcounts of 32 bytes: two 16-entry table lookups (vpshufb) on the nibbles (Mula, Kurz and Lemire,
   "Faster population counts using AVX2 instructions", arXiv:1611.07612). */
__attribute__((target("avx2"))) static inline __m256i popcount_bytes(__m256i v) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

__attribute__((target("avx2"))) static inline int64_t sum_bytes(__m256i bytes) {
    __m256i q = _mm256_sad_epu8(bytes, _mm256_setzero_si256());
    __m128i h = _mm_add_epi64(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    return _mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1);
}

/* 2 rows x 2 filters with per-byte counters (a byte gains at most 8 per 256-bit step: emptied every 31 steps). */
__attribute__((target("avx2"))) static void tile_avx2_x2(const uint64_t *const a[MR], const uint64_t *b0,
                                                         const uint64_t *b1, int64_t Kw, int64_t s[MR][NR],
                                                         int c) {
    int64_t t00 = 0, t01 = 0, t10 = 0, t11 = 0;
    for (int64_t k0 = 0; k0 < Kw; k0 += 4 * 31) {
        int64_t k1 = k0 + 4 * 31 < Kw ? k0 + 4 * 31 : Kw;
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
        for (int64_t k = k0; k < k1; k += 4) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + k));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(b1 + k));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(a[0] + k));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a[1] + k));
            c00 = _mm256_add_epi8(c00, popcount_bytes(_mm256_xor_si256(x0, w0)));
            c01 = _mm256_add_epi8(c01, popcount_bytes(_mm256_xor_si256(x0, w1)));
            c10 = _mm256_add_epi8(c10, popcount_bytes(_mm256_xor_si256(x1, w0)));
            c11 = _mm256_add_epi8(c11, popcount_bytes(_mm256_xor_si256(x1, w1)));
        }
        t00 += sum_bytes(c00); t01 += sum_bytes(c01); t10 += sum_bytes(c10); t11 += sum_bytes(c11);
    }
    s[0][c] = t00; s[0][c + 1] = t01; s[1][c] = t10; s[1][c + 1] = t11;
}

__attribute__((target("avx2"))) static void tile_avx2(const uint64_t *const a[MR], const uint64_t *const b[NR],
                                                      int64_t Kw, int64_t s[MR][NR]) {
    for (int c = 0; c < NR; c += 2) tile_avx2_x2(a, b[c], b[c + 1], Kw, s, c);
}

#define TB_AVX512 "avx512f,avx512bw,avx512vl,avx512vpopcntdq"

/* The 8 sums of 8 vectors of 8 lanes each, as one vector (a transposing tree of adds: 21 instructions, against
   about 56 for eight horizontal reductions). */
__attribute__((target(TB_AVX512))) static inline __m512i sum8(__m512i v0, __m512i v1, __m512i v2, __m512i v3,
                                                              __m512i v4, __m512i v5, __m512i v6, __m512i v7) {
    __m512i t0 = _mm512_add_epi64(_mm512_unpacklo_epi64(v0, v1), _mm512_unpackhi_epi64(v0, v1));
    __m512i t1 = _mm512_add_epi64(_mm512_unpacklo_epi64(v2, v3), _mm512_unpackhi_epi64(v2, v3));
    __m512i t2 = _mm512_add_epi64(_mm512_unpacklo_epi64(v4, v5), _mm512_unpackhi_epi64(v4, v5));
    __m512i t3 = _mm512_add_epi64(_mm512_unpacklo_epi64(v6, v7), _mm512_unpackhi_epi64(v6, v7));
    __m512i u0 = _mm512_add_epi64(_mm512_shuffle_i64x2(t0, t1, 0x88), _mm512_shuffle_i64x2(t0, t1, 0xdd));
    __m512i u1 = _mm512_add_epi64(_mm512_shuffle_i64x2(t2, t3, 0x88), _mm512_shuffle_i64x2(t2, t3, 0xdd));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(u0, u1, 0x88), _mm512_shuffle_i64x2(u0, u1, 0xdd));
}

/* 2 rows x 8 filters, 64-bit lane counters (VPOPCNTQ), 8 words a step; the last Kw % 8 words by masked loads.
   (Named accumulators: 16 of the 32 zmm registers; with 24, GCC 12 spills.) */
#define TB_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define TB_MLOAD(p) _mm512_maskz_loadu_epi64(tail, (const void *)(p))
__attribute__((target(TB_AVX512))) static void tile_avx512(const uint64_t *const a[MR], const uint64_t *const b[NR],
                                                           int64_t Kw, int64_t s[MR][NR]) {
    const __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c02 = z, c03 = z, c04 = z, c05 = z, c06 = z, c07 = z, c10 = z, c11 = z, c12 = z, c13 = z, c14 = z, c15 = z, c16 = z, c17 = z;
    __m512i x0, x1, w;
    int64_t k = 0;
    for (; k + 8 <= Kw; k += 8) {
        x0 = TB_LOAD(a[0] + k); x1 = TB_LOAD(a[1] + k);
        w = TB_LOAD(b[0] + k);
        c00 = _mm512_add_epi64(c00, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c10 = _mm512_add_epi64(c10, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[1] + k);
        c01 = _mm512_add_epi64(c01, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c11 = _mm512_add_epi64(c11, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[2] + k);
        c02 = _mm512_add_epi64(c02, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c12 = _mm512_add_epi64(c12, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[3] + k);
        c03 = _mm512_add_epi64(c03, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c13 = _mm512_add_epi64(c13, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[4] + k);
        c04 = _mm512_add_epi64(c04, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c14 = _mm512_add_epi64(c14, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[5] + k);
        c05 = _mm512_add_epi64(c05, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c15 = _mm512_add_epi64(c15, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[6] + k);
        c06 = _mm512_add_epi64(c06, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c16 = _mm512_add_epi64(c16, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_LOAD(b[7] + k);
        c07 = _mm512_add_epi64(c07, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c17 = _mm512_add_epi64(c17, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
    }
    if (k < Kw) {
        __mmask8 tail = (__mmask8)((1u << (Kw - k)) - 1);
        x0 = TB_MLOAD(a[0] + k); x1 = TB_MLOAD(a[1] + k);
        w = TB_MLOAD(b[0] + k);
        c00 = _mm512_add_epi64(c00, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c10 = _mm512_add_epi64(c10, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[1] + k);
        c01 = _mm512_add_epi64(c01, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c11 = _mm512_add_epi64(c11, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[2] + k);
        c02 = _mm512_add_epi64(c02, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c12 = _mm512_add_epi64(c12, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[3] + k);
        c03 = _mm512_add_epi64(c03, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c13 = _mm512_add_epi64(c13, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[4] + k);
        c04 = _mm512_add_epi64(c04, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c14 = _mm512_add_epi64(c14, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[5] + k);
        c05 = _mm512_add_epi64(c05, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c15 = _mm512_add_epi64(c15, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[6] + k);
        c06 = _mm512_add_epi64(c06, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c16 = _mm512_add_epi64(c16, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
        w = TB_MLOAD(b[7] + k);
        c07 = _mm512_add_epi64(c07, _mm512_popcnt_epi64(_mm512_xor_si512(x0, w)));
        c17 = _mm512_add_epi64(c17, _mm512_popcnt_epi64(_mm512_xor_si512(x1, w)));
    }
    _mm512_storeu_si512((void *)s[0], sum8(c00, c01, c02, c03, c04, c05, c06, c07));
    _mm512_storeu_si512((void *)s[1], sum8(c10, c11, c12, c13, c14, c15, c16, c17));
}
#undef TB_LOAD
#undef TB_MLOAD
#endif

typedef void (*tile_fn)(const uint64_t *const a[MR], const uint64_t *const b[NR], int64_t Kw, int64_t s[MR][NR]);

static tile_fn tile_for(int path) {
#ifdef TB_X86
    if (path == PATH_AVX512) return tile_avx512;
    if (path == PATH_AVX2) return tile_avx2;
#endif
    (void)path;
    return tile_portable;
}

/* ---------------------------------------------------------------------------------------------------------------
   Binary convolution (a dense layer is a 1 x 1 convolution of a 1 x 1 image). */

typedef struct {
    const uint8_t *pix;  /* [N, H, W, Cb] */
    int64_t N, H, W, Cb, Ho, Wo, KH, KW, sh, sw, dh, dw, pt, pl;
    const uint64_t *B;   /* [O, Kw] */
    int64_t O, Kw;
    const int32_t *base; /* [Ho * Wo, O] */
    int kind;
    void *out;           /* float [M, O], or bit rows of out_stride bytes, zeroed by the caller */
    int64_t out_stride;
    const int32_t *thr;  /* [O] */
    const uint8_t *flip; /* [O], 0 or 1 */
    tile_fn tile;
    int64_t M, col_ranges, col_width, items, next;
} conv_t;

/* Rows r0 .. r1 of the bit-level im2col into buf (Kw words each). */
static void build_rows(const conv_t *c, int64_t r0, int64_t r1, uint64_t *buf) {
    const int64_t row_bytes = c->Kw * 8, used = c->KH * c->KW * c->Cb, per_image = c->Ho * c->Wo;
    for (int64_t r = r0; r < r1; r++) {
        uint8_t *row = (uint8_t *)(buf + (r - r0) * c->Kw);
        int64_t n = r / per_image, p = r % per_image, ho = p / c->Wo, wo = p % c->Wo;
        for (int64_t kh = 0; kh < c->KH; kh++) {
            int64_t y = ho * c->sh - c->pt + kh * c->dh;
            for (int64_t kw = 0; kw < c->KW; kw++, row += c->Cb) {
                int64_t x = wo * c->sw - c->pl + kw * c->dw;
                if (y < 0 || y >= c->H || x < 0 || x >= c->W) memset(row, 0, (size_t)c->Cb);
                else memcpy(row, c->pix + ((n * c->H + y) * c->W + x) * c->Cb, (size_t)c->Cb);
            }
        }
        memset(row, 0, (size_t)(row_bytes - used));
    }
}

static void epilogue(const conv_t *c, int64_t i0, int64_t mr, int64_t j0, int64_t nr, int64_t s[MR][NR]) {
    const int64_t per_image = c->Ho * c->Wo;
    for (int64_t r = 0; r < mr; r++) {
        int64_t i = i0 + r;
        const int32_t *base = c->base + (i % per_image) * c->O + j0;
        if (c->kind == EPI_FLOAT) {
            float *out = (float *)c->out + i * c->O + j0;
            for (int64_t q = 0; q < nr; q++) out[q] = (float)(base[q] - 2 * (int32_t)s[r][q]);
        } else {  /* NR = 8 filters from a multiple of 8: one whole output byte (bits past O stay 0) */
            const int32_t *thr = c->thr + j0;
            const uint8_t *flip = c->flip + j0;
            unsigned byte = 0;
            for (int64_t q = 0; q < nr; q++)
                byte |= (unsigned)((base[q] - 2 * (int32_t)s[r][q] < thr[q]) ^ flip[q]) << q;
            ((uint8_t *)c->out)[i * c->out_stride + (j0 >> 3)] = (uint8_t)byte;
        }
    }
}

static void run_item(const conv_t *c, int64_t item, uint64_t *buf) {
    int64_t rb = item / c->col_ranges, cr = item % c->col_ranges;
    int64_t r0 = rb * RB, r1 = r0 + RB < c->M ? r0 + RB : c->M;
    int64_t c0 = cr * c->col_width, c1 = c0 + c->col_width < c->O ? c0 + c->col_width : c->O;
    if (c0 >= c1) return;
    build_rows(c, r0, r1, buf);
    /* filters a block at a time: NCB rows of weights (about 48 KiB) stay in cache while every row passes */
    int64_t ncb = (48 * 1024) / (c->Kw * 8) / NR * NR;
    if (ncb < NR) ncb = NR;
    int64_t s[MR][NR];
    for (int64_t jb = c0; jb < c1; jb += ncb) {
        int64_t je = jb + ncb < c1 ? jb + ncb : c1;
        for (int64_t i = r0; i < r1; i += MR) {
            int64_t mr = r1 - i < MR ? r1 - i : MR;
            const uint64_t *a[MR];
            for (int r = 0; r < MR; r++) a[r] = buf + (i - r0 + (r < mr ? r : mr - 1)) * c->Kw;
            for (int64_t j = jb; j < je; j += NR) {
                int64_t nr = je - j < NR ? je - j : NR;
                const uint64_t *b[NR];
                for (int q = 0; q < NR; q++) b[q] = c->B + (j + (q < nr ? q : nr - 1)) * c->Kw;
                c->tile(a, b, c->Kw, s);
                epilogue(c, i, mr, j, nr, s);
            }
        }
    }
}

static void *conv_worker(void *arg) {
    conv_t *c = (conv_t *)arg;
    uint64_t *buf = (uint64_t *)malloc((size_t)(RB * c->Kw * 8));
    if (!buf) return (void *)1;
    for (;;) {
        int64_t item = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED);
        if (item >= c->items) break;
        run_item(c, item, buf);
    }
    free(buf);
    return 0;
}

/* Returns 0, or -1 when memory for a row buffer could not be had. Arguments are validated by the caller. */
int tb_binary_conv(const uint8_t *pix, int64_t N, int64_t H, int64_t W, int64_t Cb, int64_t Ho, int64_t Wo,
                   int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl,
                   const uint64_t *B, int64_t O, int64_t Kw, const int32_t *base, int kind, void *out,
                   int64_t out_stride, const int32_t *thr, const uint8_t *flip, int path, int threads) {
    conv_t c = {pix, N, H, W, Cb, Ho, Wo, KH, KW, sh, sw, dh, dw, pt, pl, B, O, Kw, base, kind, out, out_stride,
                thr, flip, tile_for(path), 0, 1, 0, 0, 0};
    c.M = N * Ho * Wo;
    int64_t row_blocks = (c.M + RB - 1) / RB;
    if (threads > 64) threads = 64;
    /* a thread per 2M word pairs at least: below that, starting a thread costs more than it saves */
    int64_t enough = c.M * O * Kw / ((int64_t)1 << 21);
    if (threads > enough) threads = (int)enough;
    if (threads < 1) threads = 1;
    if (row_blocks < 4 * threads) {  /* few rows (batch 1, dense layers): split the filters too, 8 at a time */
        int64_t want = (4 * threads + row_blocks - 1) / row_blocks;
        int64_t width = ((O + want - 1) / want + 7) / 8 * 8;
        c.col_width = width < 8 ? 8 : width;
    } else {
        c.col_width = O;
    }
    c.col_ranges = (O + c.col_width - 1) / c.col_width;
    c.items = row_blocks * c.col_ranges;
    if (threads > c.items) threads = (int)c.items;
    pthread_t ids[64];
    int started = 0;
    for (; started < threads - 1; started++)
        if (pthread_create(&ids[started], 0, conv_worker, &c) != 0) break;
    void *failed = conv_worker(&c);
    for (int t = 0; t < started; t++) {
        void *status;
        pthread_join(ids[t], &status);
        if (status) failed = status;
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------------------------
   Max pooling on packed bits: the maximum of +-1 values is +1 unless all are -1, so with bit 1 = -1 it is the AND
   of the window's bytes (positions outside the image are skipped, as torch pads max pooling with -inf). Then
   out ^= flip (Cb bytes, or NULL): see torchbop.deploy.thresholds for channels whose sign falls as x grows. */
void tb_maxpool_bits(const uint8_t *in, uint8_t *out, int64_t N, int64_t H, int64_t W, int64_t Cb, int64_t Ho,
                     int64_t Wo, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                     int64_t dh, int64_t dw, const uint8_t *flip) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t wo = 0; wo < Wo; wo++) {
                uint8_t *o = out + ((n * Ho + ho) * Wo + wo) * Cb;
                memset(o, 0xff, (size_t)Cb);
                for (int64_t kh = 0; kh < KH; kh++) {
                    int64_t y = ho * sh - ph + kh * dh;
                    if (y < 0 || y >= H) continue;
                    for (int64_t kw = 0; kw < KW; kw++) {
                        int64_t x = wo * sw - pw + kw * dw;
                        if (x < 0 || x >= W) continue;
                        const uint8_t *p = in + ((n * H + y) * W + x) * Cb;
                        for (int64_t b = 0; b < Cb; b++) o[b] &= p[b];
                    }
                }
                if (flip)
                    for (int64_t b = 0; b < Cb; b++) o[b] ^= flip[b];
            }
}

/* ---------------------------------------------------------------------------------------------------------------
   Sign bits of float32 NHWC pixels [count, C] into [count, Cb] (bit 1 where x < 0: -0.0 and NaN give +1, as
   torchbop.quantizers.sign). */
static void pack_portable(const float *x, int64_t count, int64_t C, uint8_t *out, int64_t Cb) {
    for (int64_t p = 0; p < count; p++) {
        const float *px = x + p * C;
        uint8_t *o = out + p * Cb;
        for (int64_t b = 0; b < Cb; b++) {
            unsigned v = 0;
            for (int64_t i = 0; i < 8 && b * 8 + i < C; i++) v |= (unsigned)(px[b * 8 + i] < 0.0f) << i;
            o[b] = (uint8_t)v;
        }
    }
}

#ifdef TB_X86
__attribute__((target("avx2"))) static void pack_avx2(const float *x, int64_t count, int64_t C, uint8_t *out,
                                                      int64_t Cb) {
    const __m256 zero = _mm256_setzero_ps();
    const int64_t C8 = C / 8 * 8;
    for (int64_t p = 0; p < count; p++) {
        const float *px = x + p * C;
        uint8_t *o = out + p * Cb;
        for (int64_t c = 0; c < C8; c += 8)
            o[c / 8] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(px + c), zero, _CMP_LT_OQ));
        if (C8 < C) {
            unsigned v = 0;
            for (int64_t i = 0; C8 + i < C; i++) v |= (unsigned)(px[C8 + i] < 0.0f) << i;
            o[C8 / 8] = (uint8_t)v;
        }
    }
}
#endif

void tb_pack_signs(const float *x, uint8_t *out, int64_t count, int64_t C, int path) {
    int64_t Cb = (C + 7) / 8;
#ifdef TB_X86
    if (path != PATH_PORTABLE) { pack_avx2(x, count, C, out, Cb); return; }
#endif
    (void)path;
    pack_portable(x, count, C, out, Cb);
}

/* Bits of float32 NHWC pixels [count, C] through per-channel float thresholds: bit c is (x[c] < thr[c]) ^ flip[c]
   (a batch norm and the sign on a real-valued layer's output; torchbop.deploy.thresholds derives thr, flip). */
static void pack_thr_portable(const float *x, int64_t count, int64_t C, const float *thr, const uint8_t *flip,
                              uint8_t *out, int64_t Cb) {
    for (int64_t p = 0; p < count; p++) {
        const float *px = x + p * C;
        uint8_t *o = out + p * Cb;
        for (int64_t b = 0; b < Cb; b++) {
            unsigned v = 0;
            for (int64_t i = 0; i < 8 && b * 8 + i < C; i++)
                v |= (unsigned)((px[b * 8 + i] < thr[b * 8 + i]) ^ flip[b * 8 + i]) << i;
            o[b] = (uint8_t)v;
        }
    }
}

#ifdef TB_X86
__attribute__((target("avx2"))) static void pack_thr_avx2(const float *x, int64_t count, int64_t C,
                                                          const float *thr, const uint8_t *flipbytes,
                                                          uint8_t *out, int64_t Cb) {
    const int64_t C8 = C / 8 * 8;
    for (int64_t p = 0; p < count; p++) {
        const float *px = x + p * C;
        uint8_t *o = out + p * Cb;
        for (int64_t c = 0; c < C8; c += 8)
            o[c / 8] = (uint8_t)(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(px + c), _mm256_loadu_ps(thr + c),
                                                                  _CMP_LT_OQ)) ^ flipbytes[c / 8]);
        if (C8 < C) {
            unsigned v = 0;
            for (int64_t i = 0; C8 + i < C; i++) v |= (unsigned)(px[C8 + i] < thr[C8 + i]) << i;
            o[C8 / 8] = (uint8_t)(v ^ flipbytes[C8 / 8]);
        }
    }
}
#endif

/* flip: one byte per channel (portable) and flipbytes: the same bits packed 8 to a byte (SIMD). */
void tb_pack_thresholds(const float *x, uint8_t *out, int64_t count, int64_t C, const float *thr,
                        const uint8_t *flip, const uint8_t *flipbytes, int path) {
    int64_t Cb = (C + 7) / 8;
#ifdef TB_X86
    if (path != PATH_PORTABLE) { pack_thr_avx2(x, count, C, thr, flipbytes, out, Cb); return; }
#endif
    (void)path; (void)flipbytes;
    pack_thr_portable(x, count, C, thr, flip, out, Cb);
}
