r"""The XNOR-popcount matrix product of packed bits: a small C kernel built on first use, and its pure-torch twin.

For rows of packed sign bits (bit 1 = -1, bit 0 = +1, 64 to a word), ``xor_popcount(a, b)[i, j]`` counts the bits
where row ``i`` of ``a`` and row ``j`` of ``b`` differ. Over ``K`` real bit positions, the dot product of the two
+-1 vectors is then ``K - 2 * xor_popcount``: agreements count +1, disagreements -1. Extra zero bits appended to both
operands (to fill a word) agree and cost nothing.

Two implementations, equal bit for bit (``tests/deploy/test_xnor_kernel.py``):

- ``"kernel"``: ~250 lines of C (the product, and sign packing and im2col for :mod:`~torchbop.deploy.bit_layout`;
  no torch headers, so ``cc -O3`` builds it in well under a second), loaded with ``ctypes``; the product runs on
  ``torch.get_num_threads()`` POSIX threads (a thread per 4M word pairs at least). A 4 x 2 register block of rows
  against filters: where the CPU has AVX2 (checked at run time), XOR and per-byte popcount by table lookup
  (``vpshufb``) on 256 bits at a time; elsewhere 64-bit XOR + ``popcount``. The scalar block alone is 3-4.5x faster than
  fp32 ``torch.mm`` of the same +-1 matrices on a 2-core AVX2 CPU, the AVX2 block another 1.6-1.9x (``torch._int_mm`` on
  that CPU was 30x *slower* than fp32, and the int8 convolutions of ``torch.ao`` are deprecated and reached 1.7x). The
  library goes to a private per-user temporary folder (mode 0o700, refused if others can write to it), named by the hash
  of its source and flags and written atomically, so concurrent processes share one build.
- ``"torch"``: unpack to {0, 1} floats and ``a @ (1 - b).T + (1 - a) @ b.T``; exact, as float32 sums of 0/1 terms
  are exact below 2**24. The reference the kernel is tested against.

:func:`kernel_available` says whether the C kernel builds here (a C compiler on the ``PATH`` as ``cc``/``gcc``).

Example:
    >>> from torchbop.deploy.bit_layout import pack_rows
    >>> a = pack_rows(torch.tensor([[True, False, True]]))  # (-1, +1, -1)
    >>> b = pack_rows(torch.tensor([[True, True, False], [False, True, False]]))
    >>> xor_popcount(a, b, backend="torch")
    tensor([[2, 3]], dtype=torch.int32)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["xor_popcount", "binary_dot", "kernel_available", "library", "resolve_backend", "BACKENDS"]

#: ``"kernel"`` (the C kernel), ``"torch"`` (pure torch) and ``"auto"`` (the kernel where it builds, else torch).
BACKENDS = ("auto", "kernel", "torch")

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <pthread.h>

/* out[i, j] for i in [r0, r1), j in [c0, c1) from the count s = sum_k popcount(A[i, k] ^ B[j, k]):
   counts (int32, when base is 0) or base[i % period, j] - 2 s (float32). A: [M, K] words, B: [N, K]. */
typedef struct {
    const uint64_t *A, *B; void *out; const float *base; int64_t period, N, K, r0, r1, c0, c1;
} job_t;

static inline void put(const job_t *t, int64_t i, int64_t j, int64_t s) {
    if (t->base) ((float *)t->out)[i * t->N + j] = t->base[(i % t->period) * t->N + j] - 2.0f * (float)s;
    else ((int32_t *)t->out)[i * t->N + j] = (int32_t)s;
}

static void block(const job_t *t) {
    const int64_t K = t->K;
    int64_t i = t->r0;
    for (; i + 4 <= t->r1; i += 4) {
        const uint64_t *a0 = t->A + i * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
        int64_t j = t->c0;
        for (; j + 2 <= t->c1; j += 2) {
            const uint64_t *b0 = t->B + j * K, *b1 = b0 + K;
            int64_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
            for (int64_t k = 0; k < K; k++) {
                uint64_t x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k], w0 = b0[k], w1 = b1[k];
                s00 += __builtin_popcountll(x0 ^ w0); s01 += __builtin_popcountll(x0 ^ w1);
                s10 += __builtin_popcountll(x1 ^ w0); s11 += __builtin_popcountll(x1 ^ w1);
                s20 += __builtin_popcountll(x2 ^ w0); s21 += __builtin_popcountll(x2 ^ w1);
                s30 += __builtin_popcountll(x3 ^ w0); s31 += __builtin_popcountll(x3 ^ w1);
            }
            put(t, i, j, s00); put(t, i, j + 1, s01); put(t, i + 1, j, s10); put(t, i + 1, j + 1, s11);
            put(t, i + 2, j, s20); put(t, i + 2, j + 1, s21); put(t, i + 3, j, s30); put(t, i + 3, j + 1, s31);
        }
        for (; j < t->c1; j++) {
            const uint64_t *b0 = t->B + j * K;
            int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int64_t k = 0; k < K; k++) {
                s0 += __builtin_popcountll(a0[k] ^ b0[k]); s1 += __builtin_popcountll(a1[k] ^ b0[k]);
                s2 += __builtin_popcountll(a2[k] ^ b0[k]); s3 += __builtin_popcountll(a3[k] ^ b0[k]);
            }
            put(t, i, j, s0); put(t, i + 1, j, s1); put(t, i + 2, j, s2); put(t, i + 3, j, s3);
        }
    }
    for (; i < t->r1; i++) {
        const uint64_t *a0 = t->A + i * K;
        for (int64_t j = t->c0; j < t->c1; j++) {
            const uint64_t *b0 = t->B + j * K;
            int64_t s = 0;
            for (int64_t k = 0; k < K; k++) s += __builtin_popcountll(a0[k] ^ b0[k]);
            put(t, i, j, s);
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* Per-byte popcounts of 32 bytes: two 16-entry table lookups (vpshufb) on the low and high nibbles (Mula et al.). */
__attribute__((target("avx2"))) static inline __m256i popcount_bytes(__m256i v) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

__attribute__((target("avx2"))) static inline int64_t horizontal_sum(__m256i bytes) {
    __m256i sums = _mm256_sad_epu8(bytes, _mm256_setzero_si256());  /* four 64-bit sums */
    return _mm256_extract_epi64(sums, 0) + _mm256_extract_epi64(sums, 1) + _mm256_extract_epi64(sums, 2)
           + _mm256_extract_epi64(sums, 3);
}

/* block() with 4 words at a time in AVX2 registers: 4 rows x 2 columns of per-byte counters, emptied into 64-bit
   sums every 31 steps (a byte gains at most 8 per step); the last K % 4 words and the edge rows and columns go to
   the scalar loops of block(). */
__attribute__((target("avx2"))) static void block_avx2(const job_t *t) {
    const int64_t K = t->K, K4 = K / 4 * 4;
    int64_t i = t->r0;
    for (; i + 4 <= t->r1; i += 4) {
        const uint64_t *a[4] = {t->A + i * K, t->A + (i + 1) * K, t->A + (i + 2) * K, t->A + (i + 3) * K};
        int64_t j = t->c0;
        for (; j + 2 <= t->c1; j += 2) {
            const uint64_t *b0 = t->B + j * K, *b1 = b0 + K;
            int64_t s[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
            for (int64_t k0 = 0; k0 < K4; k0 += 4 * 31) {
                int64_t k1 = k0 + 4 * 31 < K4 ? k0 + 4 * 31 : K4;
                __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
                        c30 = c00, c31 = c00;
                for (int64_t k = k0; k < k1; k += 4) {
                    __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + k));
                    __m256i w1 = _mm256_loadu_si256((const __m256i *)(b1 + k));
                    __m256i x0 = _mm256_loadu_si256((const __m256i *)(a[0] + k));
                    __m256i x1 = _mm256_loadu_si256((const __m256i *)(a[1] + k));
                    __m256i x2 = _mm256_loadu_si256((const __m256i *)(a[2] + k));
                    __m256i x3 = _mm256_loadu_si256((const __m256i *)(a[3] + k));
                    c00 = _mm256_add_epi8(c00, popcount_bytes(_mm256_xor_si256(x0, w0)));
                    c01 = _mm256_add_epi8(c01, popcount_bytes(_mm256_xor_si256(x0, w1)));
                    c10 = _mm256_add_epi8(c10, popcount_bytes(_mm256_xor_si256(x1, w0)));
                    c11 = _mm256_add_epi8(c11, popcount_bytes(_mm256_xor_si256(x1, w1)));
                    c20 = _mm256_add_epi8(c20, popcount_bytes(_mm256_xor_si256(x2, w0)));
                    c21 = _mm256_add_epi8(c21, popcount_bytes(_mm256_xor_si256(x2, w1)));
                    c30 = _mm256_add_epi8(c30, popcount_bytes(_mm256_xor_si256(x3, w0)));
                    c31 = _mm256_add_epi8(c31, popcount_bytes(_mm256_xor_si256(x3, w1)));
                }
                s[0][0] += horizontal_sum(c00); s[0][1] += horizontal_sum(c01);
                s[1][0] += horizontal_sum(c10); s[1][1] += horizontal_sum(c11);
                s[2][0] += horizontal_sum(c20); s[2][1] += horizontal_sum(c21);
                s[3][0] += horizontal_sum(c30); s[3][1] += horizontal_sum(c31);
            }
            for (int64_t k = K4; k < K; k++)
                for (int r = 0; r < 4; r++) {
                    s[r][0] += __builtin_popcountll(a[r][k] ^ b0[k]);
                    s[r][1] += __builtin_popcountll(a[r][k] ^ b1[k]);
                }
            for (int r = 0; r < 4; r++) { put(t, i + r, j, s[r][0]); put(t, i + r, j + 1, s[r][1]); }
        }
        if (j < t->c1) {  /* the last odd column of these rows */
            job_t edge = *t;
            edge.r0 = i; edge.r1 = i + 4; edge.c0 = j;
            block(&edge);
        }
    }
    if (i < t->r1) {  /* the last rows */
        job_t edge = *t;
        edge.r0 = i;
        block(&edge);
    }
}
#endif

static void run(const job_t *t) {
#ifdef HAVE_AVX2_PATH
    if (t->K >= 4 && __builtin_cpu_supports("avx2")) { block_avx2(t); return; }
#endif
    block(t);
}

/* Sign bits of float32 NHWC pixels, 8 channels to a byte (bit i of byte b: channel 8 b + i is < 0; -0.0 and NaN
   are not), written into the interior of a zeroed [N, Hp, Wp, Cb] buffer at (top, left). */
static void pack_pixels(const float *x, int64_t count, int64_t C, uint8_t *out, int64_t Cb) {
    for (int64_t p = 0; p < count; p++) {
        const float *px = x + p * C;
        uint8_t *o = out + p * Cb;
        for (int64_t b = 0; b * 8 < C; b++) {
            unsigned v = 0;
            for (int64_t i = 0; i < 8 && b * 8 + i < C; i++) v |= (unsigned)(px[b * 8 + i] < 0.0f) << i;
            o[b] = (uint8_t)v;
        }
    }
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void pack_pixels_avx2(const float *x, int64_t count, int64_t C,
                                                            uint8_t *out, int64_t Cb) {
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

void pack_signs(const float *x, uint8_t *out, int64_t N, int64_t H, int64_t W, int64_t C, int64_t Hp, int64_t Wp,
                int64_t top, int64_t left, int64_t Cb) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t h = 0; h < H; h++) {
            const float *row = x + ((n * H + h) * W) * C;
            uint8_t *dest = out + ((n * Hp + h + top) * Wp + left) * Cb;
#ifdef HAVE_AVX2_PATH
            if (__builtin_cpu_supports("avx2")) { pack_pixels_avx2(row, W, C, dest, Cb); continue; }
#endif
            pack_pixels(row, W, C, dest, Cb);
        }
}

/* im2col of packed pixels [N, Hp, Wp, Cb]: row (n, ho, wo) of `rows` (row_bytes apart) is the Cb bytes of each
   kernel position (kh, kw) in turn. */
void im2col_bytes(const uint8_t *pixels, uint8_t *rows, int64_t N, int64_t Hp, int64_t Wp, int64_t Cb, int64_t Ho,
                  int64_t Wo, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                  int64_t row_bytes) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t wo = 0; wo < Wo; wo++) {
                uint8_t *row = rows + ((n * Ho + ho) * Wo + wo) * row_bytes;
                for (int64_t kh = 0; kh < KH; kh++) {
                    const uint8_t *src = pixels + ((n * Hp + ho * sh + kh * dh) * Wp + wo * sw) * Cb;
                    for (int64_t kw = 0; kw < KW; kw++, row += Cb) memcpy(row, src + kw * dw * Cb, Cb);
                }
            }
}

/* Work shared by the threads: chunks of rows (or of columns) taken in turn from an atomic counter, so that a
   thread the OS delays leaves its share to the others. */
typedef struct { job_t job; int64_t next, chunk, extent; int by_rows; } shared_t;

static void *worker(void *arg) {
    shared_t *sh = (shared_t *)arg;
    for (;;) {
        int64_t lo = __atomic_fetch_add(&sh->next, sh->chunk, __ATOMIC_RELAXED);
        if (lo >= sh->extent) return 0;
        int64_t hi = lo + sh->chunk < sh->extent ? lo + sh->chunk : sh->extent;
        job_t part = sh->job;
        if (sh->by_rows) { part.r0 = lo; part.r1 = hi; } else { part.c0 = lo; part.c1 = hi; }
        run(&part);
    }
}

/* Splits the rows (or, for fewer than 8 rows per thread, the columns) over `threads` threads. */
int xor_popcount(const uint64_t *A, const uint64_t *B, void *out, const float *base, int64_t period,
                 int64_t M, int64_t N, int64_t K, int64_t threads) {
    job_t all = {A, B, out, base, period, N, K, 0, M, 0, N};
    if (threads > 64) threads = 64;
    /* a thread per 4M word pairs at least (a millisecond or two): below that, starting threads costs more than it
       saves, and on a busy machine a thread that is not scheduled at once delays the whole call */
    int64_t enough = M * N * K / ((int64_t)1 << 22);
    if (threads > enough) threads = enough;
    int by_rows = M >= 8 * threads;
    int64_t extent = by_rows ? M : N, align = by_rows ? 4 : 2;
    if (threads > extent / align) threads = extent / align;
    if (threads <= 1) { run(&all); return 0; }
    int64_t chunk = (extent / (8 * threads) + align - 1) / align * align;  /* about 8 chunks per thread */
    shared_t sh = {all, 0, chunk < align ? align : chunk, extent, by_rows};
    pthread_t ids[64];
    int started = 0;
    for (; started < threads - 1; started++)
        if (pthread_create(&ids[started], 0, worker, &sh) != 0) break;
    worker(&sh);  /* the calling thread works too; it alone finishes everything if no thread started */
    for (int t = 0; t < started; t++) pthread_join(ids[t], 0);
    return 0;
}
"""


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-pthread"]
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        flags.append("-mpopcnt")  # one instruction per word (else a bit-twiddling loop); every x86-64 since 2008
    return flags


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    """The built kernel, or None where no C compiler builds it (then :func:`_build_error` says why)."""
    try:
        return _load()
    except (OSError, subprocess.CalledProcessError) as error:
        _build_errors.append(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        return None


_build_errors: list[str] = []


def _cache_folder() -> Path:
    """A folder for built kernels that only this user can write: ``$TMPDIR/torchbop-kernels-<uid>``, made with mode
    0o700, or, if that path is someone else's or writable by others (a library planted there would be loaded), a
    fresh private temporary folder (the kernel is then built again by each process)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"torchbop-kernels-{uid if uid is not None else 0}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        private = (
            folder.is_dir()
            and not folder.is_symlink()
            and (uid is None or info.st_uid == uid)
            and not info.st_mode & 0o022
        )
    except OSError:
        private = False
    return folder if private else Path(tempfile.mkdtemp(prefix="torchbop-kernels-"))


def _load() -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or clang) on the PATH")
    flags = _flags()
    digest = hashlib.sha256((_SOURCE + " ".join(flags) + platform.machine()).encode()).hexdigest()[:16]
    folder = _cache_folder()
    library = folder / f"xor_popcount-{digest}.so"
    if not library.is_file():
        with tempfile.TemporaryDirectory(dir=folder) as work:
            source = Path(work) / "xor_popcount.c"
            source.write_text(_SOURCE)
            built = Path(work) / library.name
            subprocess.run([compiler, *flags, str(source), "-o", str(built)], check=True, capture_output=True)
            os.replace(built, library)  # atomic: a concurrent process sees no file or a whole one
    lib = ctypes.CDLL(str(library))
    lib.xor_popcount.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5
    lib.xor_popcount.restype = ctypes.c_int
    lib.pack_signs.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 9
    lib.pack_signs.restype = None
    lib.im2col_bytes.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 13
    lib.im2col_bytes.restype = None
    return lib


def library() -> ctypes.CDLL:
    """The loaded C library (after :func:`resolve_backend` said ``"kernel"``): ``xor_popcount``, ``pack_signs``,
    ``im2col_bytes``."""
    lib = _library()
    if lib is None:
        raise RuntimeError(f"the XNOR-popcount kernel could not be built ({_build_error()}); use backend='torch'")
    return lib


def kernel_available() -> bool:
    """True when the C kernel is built (or builds now) and loads."""
    return _library() is not None


def _build_error() -> str:
    _library()
    return _build_errors[-1] if _build_errors else "unknown reason"


def resolve_backend(backend: str) -> str:
    """``"kernel"`` or ``"torch"`` for a value of :data:`BACKENDS`; ``"kernel"`` that cannot build raises."""
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (expected one of {BACKENDS})")
    if backend == "auto":
        return "kernel" if kernel_available() else "torch"
    if backend == "kernel" and not kernel_available():
        raise RuntimeError(f"the XNOR-popcount kernel could not be built ({_build_error()}); use backend='torch'")
    return backend


# ----------------------------------------------------------------------------------------------------------------------
# The product


def _check_operands(a: Tensor, b: Tensor) -> None:
    if a.dtype != torch.int64 or b.dtype != torch.int64 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"xor_popcount needs int64 [M, K] and [N, K], got {a.dtype} {tuple(a.shape)} and {b.dtype} {tuple(b.shape)}"
        )


def _run_kernel(a: Tensor, b: Tensor, out: Tensor, base: Tensor | None) -> Tensor:
    if a.device.type != "cpu" or b.device.type != "cpu" or (base is not None and base.device.type != "cpu"):
        raise ValueError("the XNOR-popcount kernel runs on CPU tensors only; use backend='torch' on other devices")
    a, b = a.contiguous(), b.contiguous()
    if out.numel():
        lib = library()
        period = 1 if base is None else base.shape[0]
        status = lib.xor_popcount(
            a.data_ptr(),
            b.data_ptr(),
            out.data_ptr(),
            None if base is None else base.data_ptr(),
            period,
            a.shape[0],
            b.shape[0],
            a.shape[1],
            max(1, torch.get_num_threads()),
        )
        if status != 0:
            raise RuntimeError("xor_popcount: could not start its threads")
    return out


def xor_popcount(a: Tensor, b: Tensor, backend: str = "auto") -> Tensor:
    """``out[i, j] = popcount(a[i] ^ b[j])`` summed over the words: int32 ``[M, N]`` from int64 ``[M, K]``, ``[N, K]``.

    Args:
        a: packed rows (:func:`pack_rows`), int64.
        b: packed rows of the other operand, int64, same number of words.
        backend: ``"kernel"``, ``"torch"`` or ``"auto"`` (see the module docstring).
    """
    _check_operands(a, b)
    if resolve_backend(backend) == "torch":
        return _xor_popcount_torch(a, b)
    return _run_kernel(a, b, torch.empty(a.shape[0], b.shape[0], dtype=torch.int32), None)


def binary_dot(a: Tensor, b: Tensor, base: Tensor, backend: str = "auto") -> Tensor:
    """``base[i % P, j] - 2 * xor_popcount(a, b)[i, j]`` in float32 ``[M, N]``, for ``base`` float32 ``[P, N]``.

    With ``base`` = the number of real bit positions ``K`` this is the +-1 dot product of the rows; a ``base`` that
    varies with ``i % P`` adds a per-position term (a convolution's border, ``P`` = output positions per image). The
    kernel writes it in the same pass as the counts (exact: integers far below 2**24).
    """
    _check_operands(a, b)
    if base.dtype != torch.float32 or base.dim() != 2 or base.shape[1] != b.shape[0] or a.shape[0] % base.shape[0]:
        raise ValueError(
            f"binary_dot needs a float32 base [P, {b.shape[0]}] with P dividing {a.shape[0]}, got "
            f"{base.dtype} {tuple(base.shape)}"
        )
    if resolve_backend(backend) == "torch":
        counts = _xor_popcount_torch(a, b).float()
        return base.repeat(a.shape[0] // base.shape[0], 1) - 2 * counts
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float32)
    return _run_kernel(a, b, out, base.contiguous())


def _unpack(words: Tensor) -> Tensor:
    """int64 ``[M, K]`` words to float {0, 1} ``[M, 64 K]``, bit ``j`` of byte ``i`` at column ``8 i + j``."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bytes_ = words.contiguous().view(torch.uint8).view(words.shape[0], -1)
    return ((bytes_.unsqueeze(-1) >> shifts) & 1).reshape(words.shape[0], -1).float()


def _xor_popcount_torch(a: Tensor, b: Tensor) -> Tensor:
    fa, fb = _unpack(a), _unpack(b)
    differ = fa @ (1 - fb).T + (1 - fa) @ fb.T  # 0/1 terms: exact in float32 below 2**24 bits per row
    return differ.to(torch.int32)
