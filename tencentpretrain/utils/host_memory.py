"""Keep freed host memory in the process during CPU training.

Why: each CPU training step allocates and frees the same large tensors (the LM loss's
logits chunk, the [vocab, hidden] gradients, activations). glibc hands blocks above its
mmap threshold (at most 32 MB) straight back to the kernel on free, so every step maps
them again and page-faults on first touch: measured at about 7% of a step at the reference
shape (docs/benchmarks.md). With mmap off for the main heap and no trimming, freed blocks
are reused by the next step. Peak RSS is what the run needs anyway; only memory freed
after the peak is no longer given back while the process lives. PyTorch's CPU tuning guide
reaches the same end with jemalloc or tcmalloc through LD_PRELOAD.
"""
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h


def keep_freed_memory():
    """Tell glibc's malloc to keep freed memory for reuse; returns whether it took.
    Elsewhere (another libc, another OS, an LD_PRELOADed allocator that ignores
    mallopt) nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
