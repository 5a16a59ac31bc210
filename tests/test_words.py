"Word distance and visual word encoder: exactness, gradients, both implementations, memory, bad input."
import json, os, subprocess, sys, textwrap

import pytest
import torch

from smvwe.distance import word_distance, word_distance_reference, load_ext, L1Chunked
from smvwe.cext import _build_key, _csrc
from smvwe.words import VisualWordEncoder, WordOutput, standardize, standardize_reference

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


def _train_bits(variant:str, amp:bool, steps:int=3, bs:int=4) -> list:
    "Every loss, parameter, gradient and word output of `steps` SGD steps at the demo recipe (batch `bs`), as bytes"
    from contextlib import nullcontext
    from smvwe.experiment import get_preset
    from smvwe.fit import _to_float
    from smvwe.losses import SMVWELoss
    from smvwe.model import SMVWENet
    from smvwe.train import variant_kwargs
    cfg = get_preset('default').cls
    mkw, lkw = variant_kwargs(variant)
    torch.manual_seed(0)
    model, loss_fn = SMVWENet(20, **{**mkw, **cfg.model_kw()}).train(), SMVWELoss(**{**lkw, **cfg.loss_kw()})
    g = torch.Generator().manual_seed(1)
    label = (torch.rand(bs, 20, generator=g) < 0.15).float(); label[:, 0] = 1
    x, sal = torch.randn(bs, 3, cfg.crop, cfg.crop, generator=g), torch.rand(bs, 1, cfg.crop, cfg.crop, generator=g)
    if amp: model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if amp else nullcontext
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    bits = lambda t: t.detach().reshape(-1).view(torch.uint8).numpy().tobytes()
    out = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with ctx(): o = model(x); l = loss_fn(_to_float(o), sal, label)
        l.backward(); opt.step()
        out += [bits(l)] + [bits(t) for p in model.parameters() for t in (p, p.grad) if t is not None]
        out += [bits(getattr(o['words'], k)) for k in ('D', 'P', 'Z', 'z_word', 'e_word')]
    return out


def _word_labels_torch(P):
    "Eq. 3 as torch computes it (the extension's word_argmax replaces P.argmax(1) on a CPU)"
    P = P.detach(); Z = P.argmax(1)
    return Z, torch.zeros(P.shape[:2], dtype=P.dtype).scatter_(1, Z.flatten(1), 1.)


@pytest.mark.parametrize('amp', [False, True], ids=['float32', 'bf16-channels-last'])
@pytest.mark.parametrize('variant', ['vwe', 'smvwe'])
def test_encoder_speedups_train_bitwise_as_before(variant, amp, monkeypatch):
    """Training steps at the demo recipe (float32, and its bf16 autocast + channels-last) give the same bits with the
    encoder's speed-ups as without them (the code the committed results were computed with): `standardize` (C++
    variance, fewer backward passes) against `standardize_reference` (autograd's graph), the C++ argmax of the word
    labels against `P.argmax(1)`, the backbone output's gradient converted to its layout (`grad_in_layout`) against
    none, `mean_hw`'s broadcast gradient against autograd's `x.mean((2, 3))`. Every loss, parameter, gradient and word
    output is compared."""
    import smvwe.words, smvwe.model
    new = _train_bits(variant, amp)
    monkeypatch.setattr(smvwe.words, 'standardize', standardize_reference)
    monkeypatch.setattr(smvwe.words, 'word_labels', _word_labels_torch)
    monkeypatch.setattr(smvwe.model, 'grad_in_layout', lambda x: x)
    monkeypatch.setattr(smvwe.model, 'mean_hw', lambda x: x.mean((2, 3), keepdim=True))
    ref = _train_bits(variant, amp)
    assert len(new) == len(ref) and all(a == b for a, b in zip(new, ref))


@pytest.mark.skipif(not HAS_EXT, reason='fused kernels not built')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_wide_features_take_the_fused_path_and_match_float64(dtype, monkeypatch):
    """From WIDE_K channels up (ResNet features) the encoder standardises and the s_word head pools in one C++ pass
    each: its distances, probabilities and gradients (features, codebook) match the float64 expressions, channels-last
    features keep their dtype and layout in the gradient."""
    import smvwe.words
    from smvwe.words import WIDE_K, mean_hw
    torch.manual_seed(0)
    enc = VisualWordEncoder(n_words=16, dim=WIDE_K)
    x0 = (torch.randn(2, WIDE_K, 5, 6) * 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    gP, gf = torch.randn(2, 16, 5, 6, dtype=torch.float64), torch.randn(2, WIDE_K, 1, 1, dtype=torch.float64)
    def run(x):
        x = x.clone().requires_grad_(); enc.zero_grad()
        o = enc(x); f = mean_hw(x)
        ((o.P.double() * gP).sum() + (f.double() * gf).sum()).backward()
        return o.D.double(), o.P.double(), x.grad, enc.codebook.grad.double().clone()
    calls = []
    monkeypatch.setattr(smvwe.words._StandardizeWide, 'apply', staticmethod(lambda *a, _f=smvwe.words._StandardizeWide.apply: calls.append(1) or _f(*a)))
    D, P, gx, gc = run(x0)
    assert calls, 'wide features did not take the fused standardisation'
    assert gx.dtype == dtype and gx.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(smvwe.words, 'standardize', standardize_reference)
    enc.double(); rD, rP, rgx, rgc = run(x0.double())
    assert (D - rD).abs().max() <= 1e-4 * rD.abs().max()
    assert (P - rP).abs().max() <= 1e-5
    tol = 1e-4 if dtype == torch.float32 else 1e-2   # bfloat16 gradients: their own rounding
    assert (gx.double() - rgx).abs().max() <= tol * rgx.abs().max()
    assert (gc - rgc).abs().max() <= 1e-4 * rgc.abs().max()


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
    from smvwe import cext
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    for name, age, kept in (('old_build', cext.STALE_LOCK_S + 60, False), ('new_build', 5, True)):
        d = tmp_path/name; d.mkdir(); lock = d/'lock'; lock.touch()
        t = time.time() - age; os.utime(lock, (t, t))
        cext._clear_stale_lock(name)
        assert lock.exists() == kept, name
