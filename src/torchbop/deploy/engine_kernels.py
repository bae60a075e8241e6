r"""The packed engine's C kernels (``csrc/bnn_engine.c``): which paths this CPU runs, and validated calls.

One shared library holds three implementations of the XNOR-popcount product, chosen per call:

- ``"portable"``: plain C (``__builtin_popcountll`` on 64-bit words), for any CPU; the reference of the C paths;
- ``"avx2"``: one ``vpshufb`` counts 16 filters x 8 bits: its indices are the filters' weight nibbles (split once
  in the panels), its 16-entry tables ``popcount(i ^ nibble of x)`` are chosen by the input byte ``x`` (a load from
  a 256-entry table of tables), then one ``vpaddb``: 4 vector operations per 256 binary MACs, against 6 for the
  XOR-then-lookup popcount of Mula, Kurz and Lemire (arXiv:1611.07612); per-byte counters widened to 16 bits;
- ``"avx512"``: 512-bit XOR and ``vpopcntq`` (AVX-512 VPOPCNTDQ).

Both SIMD paths put *filters in lanes*: each lane (a byte on AVX2, a 64-bit word on AVX-512) sums one filter's
count, so no horizontal reduction is needed, the reduction dimension is not padded to a vector's width (a short
row, 18 words, costs 18 steps), and the epilogue (batch norm and sign as one integer comparison per channel,
:mod:`torchbop.deploy.thresholds`) is one vector compare whose mask is the output byte. Weights are laid out once
as *panels* of 16 filters (:func:`weight_panels`); register tiles are 6 rows x 16 filters (AVX-512) and 4 rows x
32 filters (AVX2). Where a pixel is a whole number of words (channels a multiple of 64) the convolution reads the
rows straight from the NHWC image (a kernel row of ``KW`` pixels is contiguous), with no im2col; zero padding
then goes through one zero-padded copy. :func:`prepare_binary_conv` validates a layer's arguments once per input
shape and returns a :class:`PreparedCall` (what the packed engine calls at inference: a few microseconds of
Python per layer).

The library is built with ``cc -O3`` and no ``-march`` flag: each SIMD function carries its own
``__attribute__((target(...)))``, so the same file runs on every x86-64, and :func:`available_paths` asks the CPU
(``__builtin_cpu_supports``) which of them it can run. :func:`resolve_engine` turns a ``backend`` argument, or the
environment variable ``TORCHBOP_KERNEL`` (``portable``, ``avx2``, ``avx512``, ``torch``) when the argument is
``"auto"``, into one path, or ``"torch"`` (the pure-torch reference engine). Forcing a path this CPU lacks raises a
``ValueError`` that names the paths it has.

Every wrapper checks dtypes, shapes, contiguity and sizes before the C call (a C function trusts its arguments),
so a wrong argument is a ``ValueError`` here, never a crash in C. The library goes to a private per-user folder
(:func:`_cache_folder`), named by the hash of its source and flags and written atomically, so concurrent processes
share one build.

Example:
    >>> "portable" in available_paths() or not engine_available()
    True
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
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PATHS",
    "ENV_VAR",
    "available_paths",
    "engine_available",
    "resolve_engine",
    "binary_conv",
    "weight_panels",
    "prepare_binary_conv",
    "prepare_maxpool_bits",
    "PreparedCall",
    "maxpool_bits",
    "pack_signs_nhwc",
    "pack_thresholds_nhwc",
    "EPI_FLOAT",
    "EPI_BITS",
]

#: The C paths, slowest first.
PATHS = ("portable", "avx2", "avx512")
#: Environment variable that forces a path (or ``torch``) where ``backend="auto"``.
ENV_VAR = "TORCHBOP_KERNEL"
EPI_FLOAT, EPI_BITS = 0, 1
#: Filters per weight panel (:func:`weight_panels`).
PANEL = 16
_SOURCE = Path(__file__).with_name("csrc") / "bnn_engine.c"
_FLAGS = ["-O3", "-shared", "-fPIC", "-pthread"]
_errors: list[str] = []


def _cache_folder() -> Path:
    """A folder for the built library that only this user can write: ``$TMPDIR/torchbop-kernels-<uid>``, made with
    mode 0o700, or, if that path is someone else's or writable by others (a library planted there would be loaded), a
    fresh private temporary folder (the library is then built again by each process)."""
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


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    try:
        return _load()
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        text = (detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)) or str(error)
        _errors.append(text.strip().splitlines()[0] if text.strip() else type(error).__name__)
        return None


def _load() -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or clang) on the PATH")
    if not _SOURCE.is_file():
        raise OSError(f"the kernel source {_SOURCE} is missing from the installed package")
    source = _SOURCE.read_text()
    digest = hashlib.sha256((source + " ".join(_FLAGS) + platform.machine()).encode()).hexdigest()[:16]
    folder = _cache_folder()
    library = folder / f"bnn_engine-{digest}.so"
    if not library.is_file():
        with tempfile.TemporaryDirectory(dir=folder) as work:
            built = Path(work) / library.name
            subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(built)], check=True, capture_output=True)
            os.replace(built, library)
    lib = ctypes.CDLL(str(library))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.tb_paths.restype = ctypes.c_int
    lib.tb_panel_width.argtypes = [ctypes.c_int]
    lib.tb_panel_width.restype = ctypes.c_int
    lib.tb_binary_conv_args.argtypes = [ptr, ptr, ptr]
    lib.tb_binary_conv_args.restype = ctypes.c_int
    lib.tb_maxpool_bits_args.argtypes = [ptr, ptr, ptr]
    lib.tb_maxpool_bits_args.restype = None
    lib.tb_pack_signs.argtypes = [ptr, ptr, i64, i64, ctypes.c_int]
    lib.tb_pack_signs.restype = None
    lib.tb_pack_thresholds.argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ctypes.c_int]
    lib.tb_pack_thresholds.restype = None
    return lib


def engine_available() -> bool:
    """True when the engine's C library builds (or is built) and loads here."""
    return _library() is not None


def available_paths() -> tuple[str, ...]:
    """The C paths this CPU runs (``()`` where the library does not build)."""
    lib = _library()
    if lib is None:
        return ()
    mask = lib.tb_paths()
    return tuple(name for bit, name in enumerate(PATHS) if mask >> bit & 1)


def resolve_engine(backend: str = "auto") -> str:
    """One of :data:`PATHS` or ``"torch"`` for ``backend`` in ``auto``, ``kernel`` (the fastest C path),
    ``torch`` or a path name; ``auto`` reads ``$TORCHBOP_KERNEL`` first, then picks the fastest C path, or torch
    where the library does not build.

    Raises:
        ValueError: an unknown name, or a C path this CPU (or this machine's compiler) cannot run.
    """
    known = ("auto", "kernel", "torch", *PATHS)
    origin = "backend"
    if backend == "auto" and os.environ.get(ENV_VAR):
        backend, origin = os.environ[ENV_VAR].strip().lower(), f"${ENV_VAR}"
        if backend == "auto":
            origin = "backend"
    if backend not in known:
        raise ValueError(f"Invalid {origin}: {backend!r} (expected one of {known})")
    if backend == "torch":
        return "torch"
    paths = available_paths()
    if backend == "auto":
        return paths[-1] if paths else "torch"
    if not paths:
        raise ValueError(
            f"{origin}={backend!r}: the engine's C library could not be built "
            f"({_errors[-1] if _errors else 'unknown reason'}); use backend='torch'"
        )
    if backend == "kernel":
        return paths[-1]
    if backend not in paths:
        raise ValueError(
            f"{origin}={backend!r}: this CPU does not run the {backend} path (it runs "
            f"{', '.join(paths)}); choose one of those"
        )
    return backend


def _check(t: Tensor, name: str, dtype: torch.dtype, dims: int) -> None:
    if (
        not isinstance(t, Tensor)
        or t.dtype != dtype
        or t.dim() != dims
        or t.device.type != "cpu"
        or not t.is_contiguous()
    ):
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name}: needs a contiguous CPU {dtype} tensor of {dims} dimensions, got {got}")


def weight_panels(rows: Tensor, words: int, path: str) -> Tensor:
    """Weight rows int64 ``[O, Kw]`` (``Kw >= words``) as the kernel's panels int64 ``[ceil(O / 16), words, W]``:
    word ``k`` of 16 filters side by side (filters past ``O`` zero); ``W = 16``, or 32 on the AVX2 path: for each
    byte ``b`` of word ``k``, 32 bytes: byte ``b`` of the 16 filters' low nibbles, then their high nibbles (the
    ``vpshufb`` indices)."""
    _check(rows, "rows", torch.int64, 2)
    if path not in PATHS:
        raise ValueError(f"Invalid path: {path!r} (expected one of {PATHS})")
    o, kw_words = rows.shape
    if not 0 < words <= kw_words:
        raise ValueError(f"weight_panels: words={words} for rows of {kw_words} words")
    panels = F.pad(rows[:, :words], (0, 0, 0, -o % PANEL)).view(-1, PANEL, words).transpose(1, 2)
    if path == "avx2":  # per byte b of a word: the 16 filters' low nibbles of byte b, then their high nibbles
        by_byte = panels.contiguous().view(torch.uint8).view(*panels.shape, 8).transpose(2, 3)
        nibbles = torch.cat([by_byte & 15, by_byte >> 4], dim=3)
        panels = nibbles.contiguous().view(panels.shape[0], words, 8 * 2 * PANEL).view(torch.int64)
    return panels.contiguous()


def binary_conv(
    pixels: Tensor,
    weights: Tensor,
    base: Tensor,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int, int, int],
    path: str,
    threads: int,
    thresholds: tuple[Tensor, Tensor] | None = None,
    out_channels: int | None = None,
) -> Tensor:
    """XNOR-popcount convolution of packed pixels ``[N, H, W, Cb]`` (uint8) with weight rows ``[O, Kw]`` (int64),
    or their panels for ``path`` (:func:`weight_panels`; then ``out_channels`` gives ``O``).

    Returns float32 ``[N * Ho * Wo, O]`` = ``base[p] - 2 * popcount`` (``base`` int32 ``[Ho * Wo, O]``, or ``[1, O]``
    when every output position has the same: the epilogue then folds it into the thresholds), or, with
    ``thresholds = (thr int32 [O], flip uint8 [O])``, packed bits uint8 ``[N, Ho, Wo, ceil(O / 8)]``, bit
    ``((base - 2 s) < thr) ^ flip``. ``pad`` is ``(left, right, top, bottom)``, read as +1 (zero bits).
    """
    _check(pixels, "pixels", torch.uint8, 4)
    return prepare_binary_conv(
        tuple(pixels.shape),
        weights,
        base,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        pad=pad,
        path=path,
        threads=threads,
        thresholds=thresholds,
        out_channels=out_channels,
    )(pixels)


class PreparedCall:
    """A kernel call whose arguments were validated once, for inputs of one shape: ``call(x) -> out`` checks only
    ``x`` (a contiguous CPU tensor of that dtype and shape), allocates the output and calls C with three pointers:
    the arguments (an int64 array made here, pointers as integers), the input and the output (the batch-1 cost of
    a layer is then a few microseconds of Python)."""

    __slots__ = ("name", "shape", "dtype", "out_shape", "out_dtype", "fn", "args", "address", "keep", "empty")

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        out_shape: tuple[int, ...],
        out_dtype: torch.dtype,
        fn,
        args: tuple[int | None, ...],
        keep: tuple,
        empty: bool,
    ) -> None:
        self.name, self.shape, self.dtype, self.out_shape, self.out_dtype = name, shape, dtype, out_shape, out_dtype
        self.fn, self.keep, self.empty = fn, keep, empty  # keep: the tensors whose pointers are in args
        self.args = torch.tensor([0 if v is None else int(v) for v in args], dtype=torch.int64)
        self.address = self.args.data_ptr()

    def __call__(self, x: Tensor) -> Tensor:
        if (
            not isinstance(x, Tensor)
            or x.dtype != self.dtype
            or x.shape != self.shape
            or x.device.type != "cpu"
            or not x.is_contiguous()
        ):
            got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: prepared for a contiguous CPU {self.dtype} tensor {self.shape}, got {got}")
        out = torch.empty(self.out_shape, dtype=self.out_dtype)
        if not self.empty and self.fn(self.address, x.data_ptr(), out.data_ptr()) not in (None, 0):
            raise MemoryError(f"{self.name}: out of memory for the row buffers")
        return out


def prepare_binary_conv(
    shape: tuple[int, int, int, int],
    weights: Tensor,
    base: Tensor,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int, int, int],
    path: str,
    threads: int,
    thresholds: tuple[Tensor, Tensor] | None = None,
    out_channels: int | None = None,
) -> PreparedCall:
    """:func:`binary_conv` for pixels of ``shape`` ``[N, H, W, Cb]``, every argument validated now."""
    if path not in PATHS:
        raise ValueError(f"Invalid path: {path!r} (expected one of {PATHS})")
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"binary_conv: pixels of shape {shape}, expected [N, H, W, Cb]")
    n, h, w, cb = (int(v) for v in shape)
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    words = (kh * kw * cb + 7) // 8
    if isinstance(weights, Tensor) and weights.dim() == 3:
        _check(weights, "weights", torch.int64, 3)
        width = 2 * PANEL if path == "avx2" else PANEL
        o = -1 if out_channels is None else int(out_channels)
        if o < 0 or tuple(weights.shape) != ((o + PANEL - 1) // PANEL, words, width):
            raise ValueError(
                f"binary_conv: panels {tuple(weights.shape)} for {out_channels} filters of {words} "
                f"words on the {path} path (see weight_panels)"
            )
        panels = weights
    else:
        _check(weights, "weights", torch.int64, 2)
        o, kw_words = weights.shape
        if kw_words < words:
            raise ValueError(f"binary_conv: weight rows of {kw_words} words cannot hold {kh}x{kw} pixels of {cb} bytes")
        panels = weight_panels(weights, words, path) if o else weights
    _check(base, "base", torch.int32, 2)
    left, right, top, bottom = pad
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(pad) < 0:
        raise ValueError(
            f"binary_conv: invalid geometry kernel {kernel_size}, stride {stride}, dilation {dilation}, pad {pad}"
        )
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"binary_conv: input {h}x{w} is smaller than the kernel {kernel_size} (with padding)")
    if tuple(base.shape) not in ((ho * wo, o), (1, o)):
        raise ValueError(f"binary_conv: base {tuple(base.shape)} should be [{ho * wo}, {o}] or [1, {o}]")
    if path not in available_paths():
        raise ValueError(f"path {path!r} does not run on this CPU (it runs {available_paths()})")
    lib = _library()
    rows = n * ho * wo
    if thresholds is None:
        out_shape, out_dtype = (rows, o), torch.float32
        thr_ptr = flip_ptr = None
        kind, stride_bytes = EPI_FLOAT, 0
    else:
        thr, flip = thresholds
        _check(thr, "thresholds", torch.int32, 1)
        _check(flip, "flip", torch.uint8, 1)
        if thr.numel() != o or flip.numel() != o:
            raise ValueError(f"binary_conv: thresholds of {thr.numel()} and {flip.numel()} channels for {o} filters")
        out_shape, out_dtype = (n, ho, wo, (o + 7) // 8), torch.uint8  # every byte is written
        thr_ptr, flip_ptr = thr.data_ptr(), flip.data_ptr()
        kind, stride_bytes = EPI_BITS, (o + 7) // 8
    head = (
        n,
        h,
        w,
        cb,
        ho,
        wo,
        kh,
        kw,
        sh,
        sw,
        dh,
        dw,
        top,
        left,
        panels.data_ptr(),
        o,
        words,
        base.data_ptr(),
        base.shape[0],
        kind,
    )
    base16 = None  # the AVX2 tile's 16-bit epilogue: base per position as int16 where every base - 2 s fits
    if path == "avx2" and thresholds is not None and base.shape[0] > 1 and o % PANEL == 0 and 64 * words <= 16383:
        if int(base.max()) <= 32766 and int(base.min()) - 128 * words >= -32767:
            base16 = base.to(torch.int16).contiguous()
    tail = (
        stride_bytes,
        thr_ptr,
        flip_ptr,
        PATHS.index(path),
        max(1, int(threads)),
        None if base16 is None else base16.data_ptr(),
    )
    return PreparedCall(
        "binary_conv",
        (n, h, w, cb),
        torch.uint8,
        out_shape,
        out_dtype,
        lib.tb_binary_conv_args,
        head + tail,
        (panels, base, thresholds, base16),
        not (rows and o),
    )


def maxpool_bits(
    bits: Tensor,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool,
    flip: Tensor | None = None,
) -> Tensor:
    """Max pooling of packed +-1 pixels ``[N, H, W, Cb]``: the AND of each window's bits (bit 1 = -1), torch's
    output size (``ceil_mode`` included), then ``^ flip`` (uint8 ``[Cb]``) when given."""
    _check(bits, "bits", torch.uint8, 4)
    return prepare_maxpool_bits(
        tuple(bits.shape),
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
        flip=flip,
    )(bits)


def prepare_maxpool_bits(
    shape: tuple[int, int, int, int],
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool,
    flip: Tensor | None = None,
) -> PreparedCall:
    """:func:`maxpool_bits` for bits of ``shape`` ``[N, H, W, Cb]``, every argument validated now."""
    n, h, w, cb = (int(v) for v in shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"maxpool_bits: invalid kernel {kernel_size}, stride {stride}, padding {padding}")

    def size(length: int, k: int, s: int, p: int, d: int) -> int:
        span = length + 2 * p - d * (k - 1) - 1
        out = (span + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= length + p:
            out -= 1
        return out

    ho, wo = size(h, kh, sh, ph, dh), size(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"maxpool_bits: input {h}x{w} is smaller than the window {kernel_size}")
    if flip is not None:
        _check(flip, "flip", torch.uint8, 1)
        if flip.numel() != cb:
            raise ValueError(f"maxpool_bits: flip of {flip.numel()} bytes for pixels of {cb}")
    tail = (n, h, w, cb, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, None if flip is None else flip.data_ptr())
    return PreparedCall(
        "maxpool_bits",
        (n, h, w, cb),
        torch.uint8,
        (n, ho, wo, cb),
        torch.uint8,
        _library().tb_maxpool_bits_args,
        tail,
        (flip,),
        n * ho * wo * cb == 0,
    )


def pack_signs_nhwc(x: Tensor, path: str) -> Tensor:
    """Sign bits of float32 ``x`` ``[N, C, H, W]`` (any memory format) or ``[N, C]``: uint8 ``[N, H, W, ceil(C/8)]``
    (``[N, 1, 1, ceil(C/8)]`` for 2-D), bit 1 where ``x < 0``."""
    nhwc = _nhwc(x, "pack_signs_nhwc")
    n, h, w, c = nhwc.shape
    out = torch.empty(n, h, w, (c + 7) // 8, dtype=torch.uint8)
    if out.numel():
        _library().tb_pack_signs(nhwc.data_ptr(), out.data_ptr(), n * h * w, c, PATHS.index(path))
    return out


def _nhwc(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() not in (2, 4) or x.device.type != "cpu":
        got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: needs a float32 CPU tensor [N, C, H, W] or [N, C], got {got}")
    return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x[:, None, None, :]).contiguous()


def pack_thresholds_nhwc(
    x: Tensor, threshold: Tensor, flip: Tensor, path: str, flipbytes: Tensor | None = None
) -> Tensor:
    """Bits ``(x < threshold) ^ flip`` per channel of float32 ``x`` ``[N, C, H, W]`` or ``[N, C]``: uint8
    ``[N, H, W, ceil(C / 8)]`` (``threshold`` float32 ``[C]``, ``flip`` uint8 ``[C]`` of 0 and 1; ``flipbytes``:
    :func:`pack_flip` of ``flip``, when the caller keeps it)."""
    nhwc = _nhwc(x, "pack_thresholds_nhwc")
    n, h, w, c = nhwc.shape
    _check(threshold, "threshold", torch.float32, 1)
    _check(flip, "flip", torch.uint8, 1)
    if threshold.numel() != c or flip.numel() != c:
        raise ValueError(f"pack_thresholds_nhwc: {threshold.numel()} thresholds for {c} channels")
    if flipbytes is None:
        flipbytes = pack_flip(flip)
    _check(flipbytes, "flipbytes", torch.uint8, 1)
    if flipbytes.numel() != (c + 7) // 8:
        raise ValueError(f"pack_thresholds_nhwc: {flipbytes.numel()} flip bytes for {c} channels")
    out = torch.empty(n, h, w, (c + 7) // 8, dtype=torch.uint8)
    if out.numel():
        _library().tb_pack_thresholds(
            nhwc.data_ptr(),
            out.data_ptr(),
            n * h * w,
            c,
            threshold.data_ptr(),
            flip.data_ptr(),
            flipbytes.data_ptr(),
            PATHS.index(path),
        )
    return out


def pack_flip(flip: Tensor) -> Tensor:
    """uint8 0/1 per channel ``[C]`` to bytes ``[ceil(C / 8)]`` (channel 8b + i at bit i of byte b)."""
    bits = flip.to(torch.int64)
    bits = torch.nn.functional.pad(bits, (0, -bits.numel() % 8)).view(-1, 8)
    return (bits << torch.arange(8)).sum(1).to(torch.uint8).contiguous()
