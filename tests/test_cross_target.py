"""The C++ kernels promise the same bits on every target: the AVX-512 path, the AVX2 path (intrinsics for the float
backward) and the portable loops (GCC vector extensions) do, per pixel, the same operations in the same order. The
package builds with -march=native only, so on any one machine its own tests see one path; here the extension is built
again for the x86-64 levels below this CPU's and every build's outputs are compared bit for bit with the native one."""
import hashlib, platform, re
from pathlib import Path

import pytest
import torch

from smvwe import cext

LEVELS = {'x86-64-v2': 'sse4_2', 'x86-64-v3': 'avx2'}   # -march level -> a flag this CPU needs to run it
pytestmark = pytest.mark.skipif(platform.machine() not in ('x86_64', 'AMD64') or cext.load_ext() is None,
                                reason='x86-64 levels with a built native extension only')


def build(level):
    "The package's sources built with -march=LEVEL (named by their text and the flags, cached as load_ext's build is)"
    from torch.utils.cpp_extension import load
    flags = [f'-march={level}' if f == '-march=native' else f for f in cext._CFLAGS]
    key = hashlib.sha1('\n'.join([cext._sources_text(), ' '.join(flags), torch.__version__]).encode()).hexdigest()[:12]
    return load(f'smvwe_xtarget_{level.replace("-", "_")}_{key}', sources=[str(cext._csrc(s)) for s in cext._SOURCES],
                extra_cflags=flags, extra_ldflags=['-fopenmp'])


def bits(t): return t.contiguous().view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def cases():
    "Shapes with partial pixel tiles, channel blocks and word blocks; random values, then ties, signed zeros, inf and NaN"
    g = torch.Generator().manual_seed(0)
    for (B, K, HW, N) in [(2, 16, 64, 4), (1, 37, 130, 7), (2, 64, 576, 13), (1, 5, 17, 3)]:
        for dt in (torch.float32, torch.float64):
            for ties in (False, True):
                M, C, G = (torch.randn(*s, generator=g, dtype=dt) for s in ((B, K, HW), (N, K), (B, N, HW)))
                if ties:
                    M, C = (M * 2).round() / 2, (C * 2).round() / 2; G[G.abs() < 0.3] = 0.; G[..., :3] = -0.
                    M[0, 0, :5] = float('nan'); M[0, 1, :3] = float('inf'); C[0, 1] = float('inf')
                yield M, C, G


@pytest.mark.parametrize('level', list(LEVELS))
def test_every_target_gives_the_native_bits(level):
    flags = next((l for l in open('/proc/cpuinfo') if l.startswith('flags')), '')
    if not re.search(rf'\b{LEVELS[level]}\b', flags): pytest.skip(f'this CPU cannot run {level}')
    native, other = cext.load_ext(), build(level)
    n = 0
    for M, C, G in cases():
        assert torch.equal(bits(native.l1_forward(M, C)), bits(other.l1_forward(M, C)))
        for gd in ((None, torch.bfloat16, torch.float16) if M.dtype == torch.float32 else (None,)):
            for a, b in zip(native.l1_backward(M, C, G, gd), other.l1_backward(M, C, G, gd)): assert torch.equal(bits(a), bits(b)), (M.shape, M.dtype, gd)
        n += 1
    assert n == 16
