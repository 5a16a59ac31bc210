"Word distance and visual word encoder: exactness, gradients, both implementations, memory, bad input."
import json, os, subprocess, sys, textwrap

import pytest
import torch

from smvwe.distance import word_distance, word_distance_reference, load_ext, L1Chunked, _build_key, _csrc
from smvwe.words import VisualWordEncoder, WordOutput, standardize

from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
HAS_EXT = load_ext() is not None
IMPLS = ['torch'] + (['fused'] if HAS_EXT else [])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('shape', [(2, 64, 7, 9, 13), (1, 3, 1, 1, 1), (3, 33, 8, 8, 70)])
def test_forward_matches_broadcast(impl, shape):
    B, K, H, W, N = shape
    torch.manual_seed(0)
    x, c = torch.randn(B, K, H, W), torch.randn(N, K)
    d = word_distance(x, c, impl=impl)
    assert d.shape == (B, N, H, W) and d.dtype == torch.float32
    assert (d - word_distance_reference(x, c)).abs().max() <= 1e-4


@pytest.mark.parametrize('impl', IMPLS)
def test_gradcheck_float64(impl):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, requires_grad=True)   # 15 pixels: a partial tile
    c = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)         # 7 words: a partial word tile
    assert torch.autograd.gradcheck(lambda a, b: word_distance(a, b, impl=impl), (x, c), eps=1e-6, atol=1e-5)


@pytest.mark.skipif(not HAS_EXT, reason='fused kernel not built')
def test_fused_agrees_with_fallback_including_ties():
    torch.manual_seed(1)
    x, c = torch.randn(2, 40, 10, 13), torch.randn(11, 40)
    c[2] = x[1, :, 3, 4]                   # a word equal to a pixel: sign(0) = 0 in both
    g = torch.randn(2, 11, 10, 13)
    res = {}
    for impl in ('fused', 'torch'):
        xi, ci = x.clone().requires_grad_(), c.clone().requires_grad_()
        d = word_distance(xi, ci, impl=impl); d.backward(g)
        res[impl] = (d, xi.grad, ci.grad)
    for a, b in zip(res['fused'], res['torch']): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_fallback_saves_only_inputs_and_chunks_are_bounded():
    sizes = []
    x, c = torch.randn(1, 16, 6, 6, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        d = L1Chunked.apply(x.flatten(2), c, 256)
    assert sum(sizes) == x.numel() + c.numel()
    d.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(word_distance_reference(x, c).sum(), x)[0])


@pytest.mark.parametrize('impl', IMPLS)
def test_peak_memory_is_far_below_broadcast(impl, tmp_path):
    """In a fresh process: B=1, K=256, 32x32, N=128 -> broadcasting needs 3 x 128 MB; we allow a quarter of that (96 MB) over the inputs.

    The peak depends on the allocator and the kernel's huge-page setting: 58 MB (transparent huge pages off) to 90 MB (madvise)
    for the chunked path on one machine, a few MB for the fused kernel; broadcasting would need 384 MB."""
    code = textwrap.dedent(f'''
        import resource, torch, json
        torch.set_num_threads(1)
        from smvwe.distance import word_distance
        x = torch.randn(1, 256, 32, 32, requires_grad=True); c = torch.randn(128, 256, requires_grad=True)
        g = torch.randn(1, 128, 32, 32)
        word_distance(x[:, :, :2, :2], c[:2], impl="{impl}").sum().backward()   # warm-up (threads, kernel)
        x.grad = c.grad = None
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        word_distance(x, c, impl="{impl}").backward(g)
        print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024))
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=tmp_path)
    extra_mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert extra_mb < 96, extra_mb


def test_encoder_outputs():
    torch.manual_seed(0)
    enc = VisualWordEncoder(n_words=12, dim=24)
    x = torch.randn(3, 24, 5, 4, requires_grad=True)
    o = enc(x)
    assert isinstance(o, WordOutput)
    assert o.D.shape == o.P.shape == (3, 12, 5, 4) and o.Z.shape == (3, 5, 4) and o.Z.dtype == torch.long
    assert o.z_word.shape == o.e_word.shape == (3, 12)
    torch.testing.assert_close(o.e_word.sum(1), torch.ones(3))
    assert not o.z_word.requires_grad and o.e_word.requires_grad
    for b in range(3): assert set(o.z_word[b].nonzero().flatten().tolist()) == set(o.Z[b].unique().tolist())
    # Eq. 2 by hand
    P = torch.softmax(-word_distance_reference(standardize(x), enc.codebook) / enc.tau, 1)
    torch.testing.assert_close(o.P, P, rtol=1e-4, atol=1e-6)
    assert enc.tau == pytest.approx(24 ** 0.5)


def test_encoder_learns_codebook():
    "A few steps pulling each pixel's probability towards its nearest word lower the quantisation loss."
    torch.manual_seed(0)
    enc = VisualWordEncoder(n_words=8, dim=16)
    x = torch.randn(2, 16, 6, 6)
    opt = torch.optim.Adam(enc.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        o = enc(x)
        loss = (o.P * o.D).sum(1).mean() / 16
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_input():
    with pytest.raises(ValueError, match='K = feats.shape'): word_distance(torch.randn(1, 3, 2, 2), torch.randn(4, 5))
    with pytest.raises(ValueError, match='set dim='): VisualWordEncoder(4, 8)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match='sign must be'): VisualWordEncoder(sign=2)


def test_no_ext_env_falls_back(tmp_path):
    code = ('import os, torch; from smvwe.distance import word_distance, ext_status; '
            'print(ext_status()); x=torch.randn(1,3,2,2); print(float(word_distance(x, torch.randn(2,3)).sum()))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env=dict(os.environ, SMVWE_NO_EXT='1'))
    assert 'disabled by SMVWE_NO_EXT' in out.stdout


def test_cpp_source_ships_with_the_package_and_names_the_build():
    "The kernel's C++ file is package data, and editing it changes the build's name (no stale binary is reused)."
    src = _csrc('word_distance.cpp')
    assert src.exists() and src.parent == ROOT / 'smvwe' / 'csrc'
    assert 'recursive-include smvwe/csrc *.cpp' in (ROOT / 'MANIFEST.in').read_text()
    text = src.read_text()
    assert _build_key(text) == _build_key(text) != _build_key(text + '\n// edited')


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    "A build killed midway leaves torch's lock file; without removal every later load of the kernel would wait forever"
    import os, time
    from smvwe import distance
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    for name, age, kept in (('old_build', distance.STALE_LOCK_S + 60, False), ('new_build', 5, True)):
        d = tmp_path/name; d.mkdir(); lock = d/'lock'; lock.touch()
        t = time.time() - age; os.utime(lock, (t, t))
        distance._clear_stale_lock(name)
        assert lock.exists() == kept, name


@pytest.mark.skipif(not (HAS_EXT and load_ext().has_rows()), reason='rows kernel not built (needs AVX-512)')
@pytest.mark.parametrize('shape', [(2, 64, 7, 9, 13), (1, 3, 1, 1, 1), (3, 33, 8, 8, 70), (1, 600, 3, 5, 9), (2, 16, 1, 3, 8)])
def test_channels_last_rows_kernel_matches_float64_reference(shape):
    "Channels-last float32 features take the rows kernel: D comes out channels-last; D and both gradients match float64, ties included."
    B, K, H, W, N = shape
    torch.manual_seed(0)
    x = torch.randn(B, K, H, W).contiguous(memory_format=torch.channels_last); c = torch.randn(N, K)
    if N > 2: c[2] = x[B - 1, :, H - 1, W - 1]               # a word equal to a pixel: sign(0) = 0
    g = torch.randn(B, N, H, W)
    xr, cr = x.clone().requires_grad_(), c.clone().requires_grad_()
    d = word_distance(xr, cr); d.backward(g)
    assert d.permute(0, 2, 3, 1).is_contiguous() and xr.grad.permute(0, 2, 3, 1).is_contiguous()   # channels-last out
    x2, c2 = x.double().requires_grad_(), c.double().requires_grad_()
    d2 = word_distance_reference(x2, c2); d2.backward(g.double())
    tol = 2e-7 * K * 8
    assert (d.double() - d2).abs().max() <= tol
    assert (xr.grad.double() - x2.grad).abs().max() <= 1e-4 and (cr.grad.double() - c2.grad).abs().max() <= 1e-4
    # the same values as the (B,K,HW) kernel on the channels-first copy
    torch.testing.assert_close(d, word_distance(x.contiguous(), c), rtol=1e-5, atol=1e-4)


def test_encoder_channels_last_bf16_matches_float32_channels_first():
    "A bf16 channels-last feature map (what the bf16 channels-last backbone gives) gives the fp32 encoder's outputs on the same values."
    torch.manual_seed(0)
    enc = VisualWordEncoder(n_words=12, dim=40)
    xb = torch.randn(2, 40, 6, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    a, b = enc(xb), enc(xb.float().contiguous())
    for f in ('D', 'P', 'e_word'): torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-5, atol=1e-4)
    assert torch.equal(a.Z, b.Z) and torch.equal(a.z_word, b.z_word)
    assert a.D.dtype == torch.float32 and a.D.permute(0, 2, 3, 1).is_contiguous()


@pytest.mark.skipif(not HAS_EXT, reason='fused kernel not built')
@pytest.mark.parametrize('case', ['no AVX-512', 'non-contiguous', 'float64'])
def test_fallbacks_of_the_rows_kernel_match_the_reference(case, monkeypatch):
    "Where the rows kernel does not run (a CPU without AVX-512, a strided view that is not channels-last, float64), the result is the reference's"
    import smvwe.distance as dist
    torch.manual_seed(0)
    x, c = torch.randn(2, 24, 6, 7).contiguous(memory_format=torch.channels_last), torch.randn(9, 24)
    if case == 'no AVX-512': monkeypatch.setattr(dist, '_rows_ok', lambda dt: False)
    if case == 'non-contiguous': x = torch.randn(2, 48, 6, 7)[:, ::2]                       # every other channel: neither layout
    if case == 'float64': x, c = x.double(), c.double()
    assert case == 'no AVX-512' or not (dist._is_channels_last(x) and dist._rows_ok(torch.promote_types(x.dtype, c.dtype)))
    xr, cr = x.detach().requires_grad_(), c.detach().requires_grad_()        # the same strides
    assert (case == 'non-contiguous') == (not xr.is_contiguous() and not dist._is_channels_last(xr))
    g = torch.randn(2, 9, 6, 7, dtype=x.dtype)
    d = word_distance(xr, cr, impl='fused'); d.backward(g)
    x2, c2 = x.double().requires_grad_(), c.double().requires_grad_()
    d2 = word_distance_reference(x2, c2); d2.backward(g.double())
    tol = 1e-12 if case == 'float64' else 1e-4
    assert d.dtype == x.dtype and (d.double() - d2).abs().max() <= tol
    assert (xr.grad.double() - x2.grad).abs().max() <= tol and (cr.grad.double() - c2.grad).abs().max() <= tol
