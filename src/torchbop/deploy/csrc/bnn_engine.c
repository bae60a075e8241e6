/* torchbop packed BNN engine: XNOR-popcount convolutions and dense layers on bitpacked NHWC activations.

   Built by torchbop.deploy.engine_kernels with `cc -O3 -shared -fPIC -pthread` (no -march flags): every SIMD
   function carries its own __attribute__((target(...))), so one shared library runs on any x86-64 (and, with the
   portable path only, on any other CPU); the caller picks the path (tb_paths says which this CPU runs).

   Layout. An activation is packed pixels [N, H, W, Cb]: the sign bits of the C channels of a pixel, 8 to a byte,
   channel 8b + i at bit i of byte b, bit 1 = -1 and bit 0 = +1 (Cb = ceil(C / 8); the last byte's unused bits are
   0). A convolution's row (one output position) is the Cb bytes of each kernel position (kh, kw) in turn, zero
   bytes for a position outside the image (they read as +1: the caller's `base` corrects for it): Kp = ceil(KH KW
   Cb / 8) 64-bit words. For a row a and a filter b, s = popcount(a ^ b) counts disagreements, and the +-1 dot
   product is base - 2 s, base = the number of real bit positions plus the padding correction (exact integers).

   Weights are panels of NB = 16 filters: word k of the 16 filters side by side ([ceil(O / 16), Kp, 16]; on the
   AVX2 path, per byte of word k, that byte's low nibbles of the 16 filters, then their high nibbles). The SIMD
   tiles put filters in lanes: on AVX-512 word k of a row is broadcast and XORed with word k of 8 filters, on AVX2
   a byte of the row chooses the lookup table of 16 filters' nibbles; each lane sums one filter's count: no
   horizontal sum, no padding of short rows to a vector's width, and the counts of 16 filters land as one vector.
   (The earlier layout, K in lanes, spent a transposing reduction per tile and padded an 18-word row to 24.)

   Rows. Where a pixel is whole words (Cb % 8 == 0) and the kernel's columns are adjacent (dilation 1 along W), a
   row is KH segments, each the KW adjacent pixels of one kernel row, contiguous in NHWC: the tiles read them in
   place (direct convolution, no im2col; zero padding through one zero-padded copy of the input). Otherwise an
   item builds its rows (bit-level im2col) in a private buffer that stays in L1/L2.

   Output ("epilogue"): float32 [M, O] = base - 2 s (EPI_FLOAT), or packed bits (EPI_BITS): bit j of output row i
   is ((base - 2 s) < thr[j]) ^ flip[j], the batch norm and sign that follow the layer folded into one integer
   comparison per channel (torchbop.deploy.thresholds derives thr and flip); with one base for every position it
   is s > floor((base - thr) / 2), two vector compares per 16 filters. Where the output is bits and the panels whole,
   the AVX-512 tile makes these comparisons on its accumulators and writes the bits itself (the AVX2 tile too, on
   16-bit counts, where the values fit); the epi functions serve the other cases.

   Work is split into items of (a block of RB output rows, a range of output channels); threads take items from an
   atomic counter, and each runs the register tile (rows x np panels) over its rows, a block of panels at a time
   (about 48 KiB of weights that stay in cache). */
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
enum { NB = 16, MAXMR = 6, MAXNP = 2, RB = 48, MAXSEG = 16 };

/* Bit 0: portable C (always); bit 1: AVX2; bit 2: AVX-512 F/BW/VL/DQ with VPOPCNTDQ. */
int tb_paths(void) {
    int mask = 1;
#ifdef TB_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) mask |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq"))
        mask |= 4;
#endif
    return mask;
}

/* Words per k step of a weight panel: NB filters, and on the AVX2 path their low and high nibbles apart. */
int tb_panel_width(int path) { return path == PATH_AVX2 ? 2 * NB : NB; }

/* ---------------------------------------------------------------------------------------------------------------
   Binary convolution (a dense layer is a convolution of a kernel-sized image). */

typedef struct conv_s conv_t;
/* s[p][r][q] = sum over the row's segments and words of popcount(a ^ filter q of panel p), rows r < mr; or, where
   the tile writes the output bits of rows i.. and filters j.. itself, nothing: it then returns 1. */
typedef int (*tile_fn)(const conv_t *c, const uint64_t *const *a, int mr, const uint64_t *panel, int np,
                       int64_t s[][MAXMR][NB], int64_t i, int64_t j, const int64_t *pos);
typedef void (*epi_fn)(const conv_t *c, int64_t i0, int mr, int64_t j0, int64_t s[MAXMR][NB], const int64_t *pos);

struct conv_s {
    const uint8_t *pix;  /* [N, H, W, Cb] (H, W: the zero-padded copy's in direct mode) */
    int64_t N, H, W, Cb, Ho, Wo, KH, KW, sh, sw, dh, dw, pt, pl;
    const uint64_t *P;   /* panels [ceil(O / NB), Kp, pw] */
    int64_t O, Kp, pw;
    const int32_t *base; /* [Ho * Wo, O], or [1, O] (base_rows 1) where every position has the same */
    int64_t base_rows;
    int64_t *half;       /* base_rows 1 and bits: floor((base - thr) / 2) per filter (past O: 0), else NULL */
    int kind;
    void *out;           /* float [M, O], or bit rows of out_stride bytes */
    int64_t out_stride;
    const int32_t *thr;  /* [O] */
    const uint8_t *flip; /* [O], 0 or 1 */
    uint16_t *flip16;    /* [ceil(O / NB)]: the flips of a panel's filters as bits */
    int direct, nseg, mr, np; /* np: panels a tile computes (at most MAXNP) */
    int16_t *lim16;      /* AVX2 tile's own epilogue (16-bit, see tile_avx2_body), or NULL: half or thr per filter */
    const int16_t *base16; /* with lim16 and base_rows > 1: base as int16 [base_rows, O] (the caller's) */
    int64_t seglen;
    tile_fn tile;
    epi_fn epi;
    int64_t M, col_ranges, col_width, items, next;
};

static int tile_portable(const conv_t *c, const uint64_t *const *a, int mr, const uint64_t *panel, int np,
                         int64_t s[][MAXMR][NB], int64_t i, int64_t j, const int64_t *pos) {
    (void)np; (void)i; (void)j; (void)pos;
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < NB; q++) {
            int64_t sum = 0;
            const uint64_t *w = panel + q;
            for (int g = 0; g < c->nseg; g++) {
                const uint64_t *x = a[r * c->nseg + g];
                for (int64_t k = 0; k < c->seglen; k++, w += NB) sum += __builtin_popcountll(x[k] ^ *w);
            }
            s[0][r][q] = sum;
        }
    return 0;
}

/* Bits 0-15 of bits as the 16 output bits of row i from filter j (a multiple of 8) on. */
static inline void store_bits16(const conv_t *c, int64_t i, int64_t j, unsigned bits) {
    uint8_t *out = (uint8_t *)c->out + i * c->out_stride + (j >> 3);
    out[0] = (uint8_t)bits;
    out[1] = (uint8_t)(bits >> 8);
}

/* Scalar epilogue (every path's reference; the last panel when O is not a multiple of NB; float output). */
static void epi_scalar(const conv_t *c, int64_t i0, int mr, int64_t j0, int64_t s[MAXMR][NB],
                       const int64_t *pos) {
    const int64_t nr = c->O - j0 < NB ? c->O - j0 : NB;
    for (int r = 0; r < mr; r++) {
        int64_t i = i0 + r;
        const int32_t *base = c->base + (c->base_rows == 1 ? 0 : pos[r]) * c->O + j0;
        if (c->kind == EPI_FLOAT) {
            float *out = (float *)c->out + i * c->O + j0;
            for (int64_t q = 0; q < nr; q++) out[q] = (float)(base[q] - 2 * (int32_t)s[r][q]);
        } else {  /* NB filters from a multiple of NB: whole output bytes (bits past O are 0) */
            uint8_t *out = (uint8_t *)c->out + i * c->out_stride + (j0 >> 3);
            unsigned bits = 0;
            for (int64_t q = 0; q < nr; q++)
                bits |= (unsigned)((base[q] - 2 * (int32_t)s[r][q] < c->thr[j0 + q]) ^ c->flip[j0 + q]) << q;
            out[0] = (uint8_t)bits;
            if (nr > 8) out[1] = (uint8_t)(bits >> 8);
        }
    }
}

#ifdef TB_X86
/* AVX2: the input byte chooses the table. For a row byte x and a filter byte w, popcount(x ^ w) =
   Tlo(x)[w & 15] + Thi(x)[w >> 4], with Tlo(x)[i] = popcount(i ^ (x & 15)) and Thi(x)[i] = popcount(i ^ (x >> 4)).
   A panel holds, for each byte of a row, the low nibbles of that byte of its 16 filters (bytes 0-15 of a 32-byte
   step) and their high nibbles (bytes 16-31); tb_tables[x] holds Tlo(x) in its low 128-bit lane and Thi(x) in its
   high lane. So one vpshufb (indices: 32 weight nibbles; table: a load chosen by x) counts 16 filters x 8 bits and
   one vpaddb sums them: 4 vector operations per 256 binary MACs, where the XOR-then-lookup of Mula, Kurz and
   Lemire ("Faster population counts using AVX2 instructions", arXiv:1611.07612) spends 6 even with the nibbles
   split in advance (this file's previous AVX2 tile). Both do 2 lookups per 256 MACs, and where vpshufb is the
   bottleneck (one a cycle on the AMD Zen 4 VM this was written on) both run at about 128 binary MACs a cycle: here
   the new tile measured 5-9 % faster at batch 64. The weights' vectors are shared by the tile's rows (AVX2_MR rows
   x AVX2_NP panels of 16 filters); the tables (8 KiB) are loads, not operations. Per-byte counters (a lane's byte
   gains at most 4 a step) are widened to 16 bits every 63 steps (at most 252 a byte); the 16-bit sums (a filter's
   two lanes together at most 2 x 252 x 128 < 65536) go to the 64-bit counts every 128 widenings and at the end.
   Where the output is bits and every value fits 16 bits (rows of at most 16,383 bits, base - 2 s within +-32,767,
   whole panels), the tile writes the bits itself from the 16-bit counts: bit = (s > half) or (base - 2 s < thr),
   with half and thr clamped to 16 bits where that cannot change a comparison; this saves the widening to 64 bits and
   the 64-bit epilogue, a quarter of a tile's cost on a 3x3x128 layer. */
enum { AVX2_MR = 4, AVX2_NP = MAXNP };
static uint8_t tb_tables[256][32] __attribute__((aligned(32)));
static pthread_once_t tb_tables_once = PTHREAD_ONCE_INIT;

static void tb_tables_init(void) {
    for (int x = 0; x < 256; x++)
        for (int i = 0; i < 16; i++) {
            tb_tables[x][i] = (uint8_t)__builtin_popcount((unsigned)(i ^ (x & 15)));
            tb_tables[x][16 + i] = (uint8_t)__builtin_popcount((unsigned)(i ^ (x >> 4)));
        }
}

/* wide[r][q][h]: 16-bit sums of the unpacked byte counters (h 0: filters 0-7, h 1: filters 8-15; words 0-7 count
   the low nibbles, words 8-15 the high ones) written to (first) or added into the 64-bit counts s[q][r], then
   zeroed. */
__attribute__((always_inline, target("avx2"))) static inline void
tb_avx2_drain(uint16_t wide[AVX2_MR][AVX2_NP][2][16], int64_t s[][MAXMR][NB], const int MR, const int NP,
              const int first) {
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NP; q++)
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_load_si256((const __m256i *)wide[r][q][h]);
                __m128i f = _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                int64_t *out = s[q][r] + 8 * h;
                __m256i c0 = _mm256_cvtepu16_epi64(f), c1 = _mm256_cvtepu16_epi64(_mm_srli_si128(f, 8));
                if (!first) {
                    c0 = _mm256_add_epi64(c0, _mm256_loadu_si256((const __m256i *)out));
                    c1 = _mm256_add_epi64(c1, _mm256_loadu_si256((const __m256i *)(out + 4)));
                }
                _mm256_storeu_si256((__m256i *)out, c0);
                _mm256_storeu_si256((__m256i *)(out + 4), c1);
                _mm256_store_si256((__m256i *)wide[r][q][h], _mm256_setzero_si256());
            }
}

__attribute__((always_inline, target("avx2"))) static inline void
tb_avx2_widen(uint16_t wide[AVX2_MR][AVX2_NP][2][16], __m256i acc[AVX2_MR][AVX2_NP], const int MR, const int NP) {
    const __m256i z = _mm256_setzero_si256();
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NP; q++) {
            __m256i *lo = (__m256i *)wide[r][q][0], *hi = (__m256i *)wide[r][q][1];
            *lo = _mm256_add_epi16(*lo, _mm256_unpacklo_epi8(acc[r][q], z));
            *hi = _mm256_add_epi16(*hi, _mm256_unpackhi_epi8(acc[r][q], z));
            acc[r][q] = z;
        }
}

__attribute__((always_inline, target("avx2"))) static inline int
tile_avx2_body(const conv_t *c, const uint64_t *const *a, const uint64_t *panel, int64_t s[][MAXMR][NB],
               const int MR, const int NP, int mr, int64_t i, int64_t j, const int64_t *pos) {
    const int nseg = c->nseg;
    const int64_t L = c->seglen * 8, stride = c->Kp * c->pw * 8;  /* bytes per segment; bytes per panel */
    uint16_t wide[AVX2_MR][AVX2_NP][2][16] __attribute__((aligned(32)));
    memset(wide, 0, sizeof wide);
    __m256i acc[AVX2_MR][AVX2_NP];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NP; q++) acc[r][q] = _mm256_setzero_si256();
    int steps = 0, widenings = 0, drained = 0;
    const uint8_t *w = (const uint8_t *)panel;
    for (int g = 0; g < nseg; g++) {
        const uint8_t *x[AVX2_MR];
        for (int r = 0; r < MR; r++) x[r] = (const uint8_t *)a[r * nseg + g];
        for (int64_t k0 = 0; k0 < L;) {  /* runs of at most 63 steps between widenings, no test inside a run */
            int64_t n = L - k0 < 63 - steps ? L - k0 : 63 - steps;
            if (n == 0) {
                tb_avx2_widen(wide, acc, MR, NP);
                steps = 0;
                if (++widenings == 128) { tb_avx2_drain(wide, s, MR, NP, !drained); widenings = 0; drained = 1; }
                continue;
            }
            for (int64_t k = k0; k < k0 + n; k++, w += 32) {
                for (int r = 0; r < MR; r++) {
                    const __m256i t = _mm256_load_si256((const __m256i *)tb_tables[x[r][k]]);
                    for (int q = 0; q < NP; q++)
                        acc[r][q] = _mm256_add_epi8(acc[r][q], _mm256_shuffle_epi8(
                                        t, _mm256_loadu_si256((const __m256i *)(w + q * stride))));
                }
            }
            steps += (int)n;
            k0 += n;
        }
    }
    if (c->lim16) {  /* bits straight from the counters (set up where every value fits 16 bits, no drain happened) */
        const __m256i z = _mm256_setzero_si256();
        for (int r = 0; r < MR; r++)
            for (int q = 0; q < NP; q++) {
                if (r >= mr) break;  /* rows past mr repeat the last */
                __m256i lo = _mm256_add_epi16(_mm256_unpacklo_epi8(acc[r][q], z),
                                              _mm256_load_si256((const __m256i *)wide[r][q][0]));
                __m256i hi = _mm256_add_epi16(_mm256_unpackhi_epi8(acc[r][q], z),
                                              _mm256_load_si256((const __m256i *)wide[r][q][1]));
                /* lo: filters 0-7 low nibbles | 0-7 high; hi: 8-15 low | 8-15 high -> the 16 counts in order */
                __m256i count = _mm256_add_epi16(_mm256_permute2x128_si256(lo, hi, 0x20),
                                                 _mm256_permute2x128_si256(lo, hi, 0x31));
                const int64_t jq = j + q * NB;
                const __m256i lim = _mm256_loadu_si256((const __m256i *)(c->lim16 + jq));
                __m256i below;
                if (c->base16) {  /* base - 2 s < thr */
                    __m256i b = _mm256_loadu_si256((const __m256i *)(c->base16 + pos[r] * c->O + jq));
                    below = _mm256_cmpgt_epi16(lim, _mm256_sub_epi16(b, _mm256_add_epi16(count, count)));
                } else {          /* s > floor((base - thr) / 2) */
                    below = _mm256_cmpgt_epi16(count, lim);
                }
                unsigned m = (unsigned)_mm256_movemask_epi8(_mm256_packs_epi16(below, below));
                store_bits16(c, i + r, jq, ((m & 0xFFu) | ((m >> 8) & 0xFF00u)) ^ c->flip16[jq / NB]);
            }
        return 1;
    }
    tb_avx2_widen(wide, acc, MR, NP);
    tb_avx2_drain(wide, s, MR, NP, !drained);
    return 0;
}

__attribute__((target("avx2"), flatten)) static int tile_avx2(const conv_t *c, const uint64_t *const *a, int mr,
                                                              const uint64_t *panel, int np, int64_t s[][MAXMR][NB],
                                                              int64_t i, int64_t j, const int64_t *pos) {
    if (np == AVX2_NP) return tile_avx2_body(c, a, panel, s, AVX2_MR, AVX2_NP, mr, i, j, pos);
    return tile_avx2_body(c, a, panel, s, AVX2_MR, 1, mr, i, j, pos);  /* the last, odd panel */
}

/* Bits of a full panel: with one base for every position, bit = (s > floor((base - thr) / 2)) ^ flip (the same
   integer test as (base - 2 s < thr) ^ flip), 4 filters a pcmpgtq; else v = base - 2 s against thr. */
__attribute__((target("avx2"))) static void epi_avx2(const conv_t *c, int64_t i0, int mr, int64_t j0,
                                                     int64_t s[MAXMR][NB], const int64_t *pos) {
    if (c->kind != EPI_BITS || j0 + NB > c->O) { epi_scalar(c, i0, mr, j0, s, pos); return; }
    __m256i thr[4];
    if (c->half)
        for (int q = 0; q < 4; q++) thr[q] = _mm256_loadu_si256((const __m256i *)(c->half + j0 + 4 * q));
    else
        for (int q = 0; q < 4; q++)
            thr[q] = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(c->thr + j0 + 4 * q)));
    const unsigned flip = c->flip16[j0 / NB];
    for (int r = 0; r < mr; r++) {
        int64_t i = i0 + r;
        unsigned bits = 0;
        if (c->half) {
            for (int q = 0; q < 4; q++)
                bits |= (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(
                            _mm256_loadu_si256((const __m256i *)(s[r] + 4 * q)), thr[q]))) << (4 * q);
        } else {
            const int32_t *base = c->base + (c->base_rows == 1 ? 0 : pos[r]) * c->O + j0;
            for (int q = 0; q < 4; q++) {
                __m256i b = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(base + 4 * q)));
                __m256i twice = _mm256_slli_epi64(_mm256_loadu_si256((const __m256i *)(s[r] + 4 * q)), 1);
                __m256i v = _mm256_sub_epi64(b, twice);
                bits |= (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(thr[q], v))) << (4 * q);
            }
        }
        store_bits16(c, i, j0, bits ^ flip);
    }
}

#define TB_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq"

/* AVX-512 VPOPCNTDQ, filters in lanes as on the AVX2 path: a row's word is broadcast to 8 lanes, XORed with word
   k of 8 filters, counted by vpopcntq into 64-bit lanes; MR rows x 16 filters (2 * MR accumulators). */
__attribute__((always_inline, target(TB_AVX512))) static inline int
tile512_body(const conv_t *c, const uint64_t *const *a, const uint64_t *panel, int64_t s[MAXMR][NB], const int MR,
             int64_t i, int64_t j, const int64_t *pos) {
    const int nseg = c->nseg;
    const int64_t L = c->seglen;
    __m512i acc0[MAXMR], acc1[MAXMR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) { acc0[r] = _mm512_setzero_si512(); acc1[r] = acc0[r]; }
    const uint64_t *w = panel;
    for (int g = 0; g < nseg; g++) {
        const uint64_t *x[MAXMR];
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) x[r] = a[r * nseg + g];
        for (int64_t k = 0; k < L; k++, w += NB) {
            __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 8));
#pragma GCC unroll 6
            for (int r = 0; r < MR; r++) {
                __m512i v = _mm512_set1_epi64((long long)x[r][k]);
                acc0[r] = _mm512_add_epi64(acc0[r], _mm512_popcnt_epi64(_mm512_xor_si512(v, w0)));
                acc1[r] = _mm512_add_epi64(acc1[r], _mm512_popcnt_epi64(_mm512_xor_si512(v, w1)));
            }
        }
    }
    if (c->kind == EPI_BITS && j + NB <= c->O) {  /* bits straight from the accumulators (whole panels) */
        const unsigned flip = c->flip16[j / NB];
        if (c->half) {
            const __m512i h0 = _mm512_loadu_si512((const void *)(c->half + j));
            const __m512i h1 = _mm512_loadu_si512((const void *)(c->half + j + 8));
#pragma GCC unroll 6
            for (int r = 0; r < MR; r++) {
                store_bits16(c, i + r, j, ((unsigned)_mm512_cmpgt_epi64_mask(acc0[r], h0)
                                           | (unsigned)_mm512_cmpgt_epi64_mask(acc1[r], h1) << 8) ^ flip);
            }
            return 1;
        }
        const __m512i thr = _mm512_loadu_si512((const void *)(c->thr + j));
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m512i sum = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc0[r])),
                                             _mm512_cvtepi64_epi32(acc1[r]), 1);
            const int32_t *base = c->base + (c->base_rows == 1 ? 0 : pos[r]) * c->O + j;
            __m512i v = _mm512_sub_epi32(_mm512_loadu_si512((const void *)base), _mm512_slli_epi32(sum, 1));
            store_bits16(c, i + r, j, (unsigned)_mm512_cmplt_epi32_mask(v, thr) ^ flip);
        }
        return 1;
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        _mm512_storeu_si512((void *)s[r], acc0[r]);
        _mm512_storeu_si512((void *)(s[r] + 8), acc1[r]);
    }
    return 0;
}

__attribute__((target(TB_AVX512))) static int tile_avx512(const conv_t *c, const uint64_t *const *a, int mr,
                                                          const uint64_t *panel, int np, int64_t s[][MAXMR][NB],
                                                          int64_t i, int64_t j, const int64_t *pos) {
    (void)np;
    switch (mr) {
    case 6: return tile512_body(c, a, panel, s[0], 6, i, j, pos);
    case 5: return tile512_body(c, a, panel, s[0], 5, i, j, pos);
    case 4: return tile512_body(c, a, panel, s[0], 4, i, j, pos);
    case 3: return tile512_body(c, a, panel, s[0], 3, i, j, pos);
    case 2: return tile512_body(c, a, panel, s[0], 2, i, j, pos);
    default: return tile512_body(c, a, panel, s[0], 1, i, j, pos);
    }
}

/* Float output of a full panel: v = base - 2 s in 16 int32 lanes, through vcvtdq2ps (bits output is written by the
   tile itself). */
__attribute__((target(TB_AVX512))) static void epi_avx512(const conv_t *c, int64_t i0, int mr, int64_t j0,
                                                          int64_t s[MAXMR][NB], const int64_t *pos) {
    if (c->kind != EPI_FLOAT || j0 + NB > c->O) { epi_scalar(c, i0, mr, j0, s, pos); return; }
    for (int r = 0; r < mr; r++) {
        __m256i lo = _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)s[r]));
        __m256i hi = _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)(s[r] + 8)));
        __m512i sum = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        const int32_t *base = c->base + (c->base_rows == 1 ? 0 : pos[r]) * c->O + j0;
        __m512i v = _mm512_sub_epi32(_mm512_loadu_si512((const void *)base), _mm512_slli_epi32(sum, 1));
        _mm512_storeu_ps((float *)c->out + (i0 + r) * c->O + j0, _mm512_cvtepi32_ps(v));
    }
}
#endif

/* Row pointers of rows r0 .. r0 + mr - 1 (the last one repeated up to MAXMR), nseg segments each. Direct mode: a
   row's segment kh is the KW pixels (ho * sh + kh * dh, wo * sw ...) of the image, contiguous in NHWC; else the
   row is the im2col row in buf. */
static void row_pointers(const conv_t *c, int64_t i, int mr, int64_t r0, const uint64_t *buf,
                         const uint64_t **a, int64_t *pos) {
    const int64_t per_image = c->Ho * c->Wo;
    int64_t n = i / per_image, p = i % per_image, ho = p / c->Wo, wo = p % c->Wo;  /* then stepped: no division */
    for (int r = 0; r < c->mr; r++) {
        if (r > 0 && r < mr) {  /* the next row (rows past mr repeat the last) */
            p++;
            if (++wo == c->Wo) {
                wo = 0;
                if (++ho == c->Ho) { ho = 0; p = 0; n++; }
            }
        }
        pos[r] = p;
        if (!c->direct) { a[r] = buf + (i + (r < mr ? r : mr - 1) - r0) * c->Kp; continue; }
        for (int64_t kh = 0; kh < c->KH; kh++)
            a[r * c->nseg + kh] = (const uint64_t *)(c->pix + ((n * c->H + ho * c->sh + kh * c->dh) * c->W
                                                               + wo * c->sw) * c->Cb);
    }
}

/* Rows r0 .. r1 of the bit-level im2col into buf (Kp words each, zero-filled past the KH * KW * Cb bytes). */
static void build_rows(const conv_t *c, int64_t r0, int64_t r1, uint64_t *buf) {
    const int64_t row_bytes = c->Kp * 8, used = c->KH * c->KW * c->Cb, per_image = c->Ho * c->Wo;
    for (int64_t r = r0; r < r1; r++) {
        uint8_t *row = (uint8_t *)(buf + (r - r0) * c->Kp);
        int64_t n = r / per_image, p = r % per_image, ho = p / c->Wo, wo = p % c->Wo;
        for (int64_t kh = 0; kh < c->KH; kh++) {
            int64_t y = ho * c->sh - c->pt + kh * c->dh, x0 = wo * c->sw - c->pl;
            if (c->dw == 1 && y >= 0 && y < c->H && x0 >= 0 && x0 + c->KW <= c->W) {  /* the kernel row at once */
                memcpy(row, c->pix + ((n * c->H + y) * c->W + x0) * c->Cb, (size_t)(c->KW * c->Cb));
                row += c->KW * c->Cb;
                continue;
            }
            for (int64_t kw = 0; kw < c->KW; kw++, row += c->Cb) {
                int64_t x = x0 + kw * c->dw;
                if (y < 0 || y >= c->H || x < 0 || x >= c->W) memset(row, 0, (size_t)c->Cb);
                else memcpy(row, c->pix + ((n * c->H + y) * c->W + x) * c->Cb, (size_t)c->Cb);
            }
        }
        memset(row, 0, (size_t)(row_bytes - used));
    }
}

static void run_item(conv_t *c, int64_t item, uint64_t *buf) {
    int64_t rb = item / c->col_ranges, cr = item % c->col_ranges;
    int64_t r0 = rb * RB, r1 = r0 + RB < c->M ? r0 + RB : c->M;
    int64_t c0 = cr * c->col_width, c1 = c0 + c->col_width < c->O ? c0 + c->col_width : c->O;
    if (c0 >= c1) return;
    if (!c->direct) build_rows(c, r0, r1, buf);
    /* panels a block at a time: about 48 KiB of weights stay in L1/L2 while every row of the block passes */
    int64_t pan = c->Kp * c->pw * 8, per = (48 * 1024) / (pan > 0 ? pan : 1);
    int64_t ncb = ((per < 1 ? 1 : per) + c->np - 1) / c->np * c->np * NB;
    int64_t s[MAXNP][MAXMR][NB], pos[MAXMR];
    const uint64_t *a[MAXMR * MAXSEG];
    for (int64_t jb = c0; jb < c1; jb += ncb) {
        int64_t je = jb + ncb < c1 ? jb + ncb : c1;
        for (int64_t i = r0; i < r1; i += c->mr) {
            int mr = (int)(r1 - i < c->mr ? r1 - i : c->mr);
            row_pointers(c, i, mr, r0, buf, a, pos);
            for (int64_t j = jb; j < je; j += c->np * NB) {
                int64_t left = (je - j + NB - 1) / NB;
                int np = left < c->np ? (int)left : c->np;
                if (!c->tile(c, a, mr, c->P + (j / NB) * c->Kp * c->pw, np, s, i, j, pos))
                    for (int q = 0; q < np; q++) c->epi(c, i, mr, j + q * NB, s[q], pos);
            }
        }
    }
}

static void *conv_worker(void *arg) {
    conv_t *c = (conv_t *)arg;
    uint64_t *buf = 0;
    if (!c->direct && !(buf = (uint64_t *)malloc((size_t)(RB * c->Kp * 8 + 8)))) return (void *)1;
    for (;;) {
        int64_t item = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED);
        if (item >= c->items) break;
        run_item(c, item, buf);
    }
    free(buf);
    return 0;
}

/* Returns 0, or -1 when memory could not be had. Arguments are validated by the caller: P holds ceil(O / NB)
   panels of Kp = ceil(KH * KW * Cb / 8) steps of tb_panel_width(path) words (filter q of a panel at word q of a
   step; on the AVX2 path its low nibbles, then at word NB + q its high nibbles; filters past O are 0). */
static int tb_binary_conv(const uint8_t *pix, int64_t N, int64_t H, int64_t W, int64_t Cb, int64_t Ho, int64_t Wo,
                   int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl,
                   const uint64_t *P, int64_t O, int64_t Kp, const int32_t *base, int64_t base_rows, int kind,
                   void *out, int64_t out_stride, const int32_t *thr, const uint8_t *flip, int path, int threads,
                   const int16_t *base16) {
    conv_t c;
    memset(&c, 0, sizeof c);
    c.pix = pix; c.N = N; c.H = H; c.W = W; c.Cb = Cb; c.Ho = Ho; c.Wo = Wo; c.KH = KH; c.KW = KW;
    c.sh = sh; c.sw = sw; c.dh = dh; c.dw = dw; c.pt = pt; c.pl = pl; c.P = P; c.O = O; c.Kp = Kp;
    c.pw = tb_panel_width(path); c.base = base; c.base_rows = base_rows; c.kind = kind; c.out = out;
    c.out_stride = out_stride;
    c.thr = thr; c.flip = flip;
    c.tile = tile_portable; c.epi = epi_scalar; c.mr = 1; c.np = 1;
#ifdef TB_X86
    if (path == PATH_AVX2) {
        pthread_once(&tb_tables_once, tb_tables_init);
        c.tile = tile_avx2; c.epi = epi_avx2; c.mr = AVX2_MR; c.np = AVX2_NP;
    }
    if (path == PATH_AVX512) { c.tile = tile_avx512; c.epi = epi_avx512; c.mr = MAXMR; }
#endif
    c.M = N * Ho * Wo;
    int64_t panels = (O + NB - 1) / NB;
    uint8_t *padded = 0;
    c.flip16 = (uint16_t *)calloc((size_t)panels + 1, sizeof(uint16_t));
    if (!c.flip16) return -1;
    if (kind == EPI_BITS)
        for (int64_t j = 0; j < O; j++) c.flip16[j / NB] |= (uint16_t)((flip[j] & 1) << (j % NB));
    if (kind == EPI_BITS && base_rows == 1) {  /* base - 2 s < thr  <=>  2 s > base - thr  <=>  s > floor(/ 2) */
        c.half = (int64_t *)calloc((size_t)(panels * NB), sizeof(int64_t));
        if (!c.half) { free(c.flip16); return -1; }
        for (int64_t j = 0; j < O; j++) {
            int64_t d = (int64_t)base[j] - thr[j];
            c.half[j] = d >= 0 ? d / 2 : -((-d + 1) / 2);
        }
    }
    /* The AVX2 tile's own 16-bit epilogue where every value fits: with one base (s <= 64 Kp is compared with half),
       or with the caller's int16 copy of a base per position, given only where every base - 2 s (s <= 64 Kp) is
       within +-32,767 and base <= 32,766 (then thr clamps to 16 bits without changing a comparison). */
    const int fits = base_rows == 1 || base16 != NULL;
    if (path == PATH_AVX2 && kind == EPI_BITS && O % NB == 0 && Kp * 64 <= 16383 && fits) {
        c.lim16 = (int16_t *)malloc((size_t)O * sizeof(int16_t));
        if (!c.lim16) { free(c.flip16); free(c.half); return -1; }
        for (int64_t jj = 0; jj < O; jj++) {  /* clamped where the comparison's outcome does not change */
            int64_t v = base_rows == 1 ? c.half[jj] : thr[jj], low = base_rows == 1 ? -1 : -32767;
            c.lim16[jj] = (int16_t)(v < low ? low : v > 32767 ? 32767 : v);
        }
        c.base16 = base_rows > 1 ? base16 : NULL;
    }
    /* Direct mode (no im2col): whole words per pixel and contiguous kernel rows. Padding: a zero-padded copy. */
    c.direct = Cb % 8 == 0 && dw == 1 && KH <= MAXSEG;
    c.nseg = 1; c.seglen = Kp;
    if (c.direct) {
        int64_t Hp = (Ho - 1) * sh + (KH - 1) * dh + 1, Wp = (Wo - 1) * sw + KW;
        if (pt || pl || Hp > H || Wp > W) {
            int64_t Hc = Hp > H + pt ? Hp : H + pt, Wc = Wp > W + pl ? Wp : W + pl;
            padded = (uint8_t *)calloc((size_t)(N * Hc * Wc * Cb) + 8, 1);
            if (!padded) { free(c.flip16); free(c.half); free(c.lim16); return -1; }
            for (int64_t n = 0; n < N; n++)
                for (int64_t y = 0; y < H; y++)
                    memcpy(padded + ((n * Hc + y + pt) * Wc + pl) * Cb, pix + ((n * H + y) * W) * Cb, (size_t)(W * Cb));
            c.pix = padded; c.H = Hc; c.W = Wc; c.pt = 0; c.pl = 0;
        }
        c.nseg = (int)KH; c.seglen = KW * Cb / 8;
    }
    int64_t row_blocks = (c.M + RB - 1) / RB;
    if (threads > 64) threads = 64;
    /* a thread per 2M word pairs at least: below that, starting a thread costs more than it saves */
    int64_t enough = c.M * O * Kp / ((int64_t)1 << 21);
    if (threads > enough) threads = (int)enough;
    if (threads < 1) threads = 1;
    if (row_blocks < 4 * threads) {  /* few rows (batch 1, dense layers): split the filters too, NB at a time */
        int64_t want = (4 * threads + row_blocks - 1) / row_blocks;
        int64_t width = ((O + want - 1) / want + NB - 1) / NB * NB;
        c.col_width = width < NB ? NB : width;
    } else {
        c.col_width = (O + NB - 1) / NB * NB;
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
    free(padded);
    free(c.flip16);
    free(c.half);
    free(c.lim16);
    return failed ? -1 : 0;
}

/* tb_binary_conv with its arguments but the input and the output in one int64 array (pointers as integers, 0 for
   NULL), in tb_binary_conv's order (base16 last): a prepared call passes 3 arguments through ctypes instead of 27 (about 3 us of
   Python less per layer, most of a small layer's cost at batch 1). */
int tb_binary_conv_args(const int64_t *v, const uint8_t *pix, void *out) {
    return tb_binary_conv(pix, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13],
                          (const uint64_t *)(intptr_t)v[14], v[15], v[16], (const int32_t *)(intptr_t)v[17], v[18],
                          (int)v[19], out, v[20], (const int32_t *)(intptr_t)v[21], (const uint8_t *)(intptr_t)v[22],
                          (int)v[23], (int)v[24], (const int16_t *)(intptr_t)v[25]);
}

/* ---------------------------------------------------------------------------------------------------------------
   Max pooling on packed bits: the maximum of +-1 values is +1 unless all are -1, so with bit 1 = -1 it is the AND
   of the window's bytes (positions outside the image are skipped, as torch pads max pooling with -inf). Then
   out ^= flip (Cb bytes, or NULL): see torchbop.deploy.thresholds for channels whose sign falls as x grows. */
static void tb_maxpool_bits(const uint8_t *in, uint8_t *out, int64_t N, int64_t H, int64_t W, int64_t Cb, int64_t Ho,
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

/* tb_maxpool_bits with its arguments but the input and the output in one int64 array (as tb_binary_conv_args). */
void tb_maxpool_bits_args(const int64_t *v, const uint8_t *in, uint8_t *out) {
    tb_maxpool_bits(in, out, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13],
                    (const uint8_t *)(intptr_t)v[14]);
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
