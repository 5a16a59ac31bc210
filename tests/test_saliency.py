"Saliency map feedback (Eq. 5-7, 9) against a direct per-pixel reference; the classical detector folder writer end to end."
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smvwe.sal_detectors import classical_saliency, saliency_folder, SALIENCY_METHODS
from smvwe.saliency import (overlap_ratio, resize_saliency, saliency_loss,
                            saliency_map)


def reference(maps, label, sal, delta, mu, thr=.5):
    "Eq. 5, 6, 7' and phi written pixel by pixel with Python loops (sal already at the maps' size)."
    B, C, H, W = maps.shape
    L = C - 1
    F_s = torch.zeros(B, 1, H, W, dtype=maps.dtype)
    phis, fgs = torch.zeros(B, L), torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        for i in range(L):
            ci = [(y, x) for y in range(H) for x in range(W) if maps[b, i, y, x] > thr]
            both = [(y, x) for (y, x) in ci if sal[b, 0, y, x] > thr]
            phis[b, i] = len(both) / len(ci) if ci else 0.
            fgs[b, i] = bool(label[b, i] > 0) and phis[b, i] > delta
        for y in range(H):
            for x in range(W):
                fg = sum(float(label[b, i]) * float(maps[b, i, y, x]) for i in range(L) if fgs[b, i])
                bg = float(maps[b, L, y, x]) + sum(float(label[b, i]) * float(maps[b, i, y, x])
                                                   for i in range(L) if label[b, i] > 0 and not fgs[b, i])
                F_s[b, 0, y, x] = min(max((1 - mu) * fg + mu * (1 - bg), 0.), 1.)
    return phis, fgs, F_s


@pytest.mark.parametrize('seed,delta,mu', [(0, .4, .5), (1, .2, .0), (2, .6, 1.), (3, 0., .3)])
def test_saliency_map_matches_pixel_reference(seed, delta, mu):
    g = torch.Generator().manual_seed(seed)
    B, L, H, W = 3, 4, 5, 6
    maps = (torch.randn(B, L + 1, H, W, generator=g, dtype=torch.float64) * 2).softmax(1)
    label = (torch.rand(B, L, generator=g) > .4).double()
    sal = (torch.rand(B, 1, H, W, generator=g, dtype=torch.float64) > .5).double()
    phis, fgs, F_s = reference(maps, label, sal, delta, mu)
    out = saliency_map(maps, label, sal, delta=delta, mu=mu)
    torch.testing.assert_close(overlap_ratio(maps[:, :L], sal).float(), phis)
    assert torch.equal(out.is_fg, fgs)
    torch.testing.assert_close(out.F_s, F_s)
    torch.testing.assert_close(saliency_loss(out.F_s, sal), ((F_s - sal) ** 2).mean())
    assert out.F_s.dtype == torch.float64


def test_shapes_and_resize():
    maps = torch.randn(2, 6, 7, 9).softmax(1)
    out = saliency_map(maps, torch.ones(2, 5), torch.rand(2, 1, 56, 72))
    for t in (out.F_s, out.F_fg, out.F_bg, out.sal): assert t.shape == (2, 1, 7, 9)
    assert out.is_fg.shape == (2, 5) and out.is_fg.dtype == torch.bool
    assert 0 <= out.F_s.min() and out.F_s.max() <= 1
    # upsampling works too, and a (B,H,W) saliency batch is accepted
    assert resize_saliency(torch.rand(2, 3, 3), (6, 6)).shape == (2, 1, 6, 6)
    # the loss resizes its target when needed: same as resizing first
    sal = torch.rand(2, 1, 28, 36)
    torch.testing.assert_close(saliency_loss(out.F_s, sal), F.mse_loss(out.F_s, resize_saliency(sal, (7, 9))))
    assert saliency_loss(out.F_s, sal, reduction='none').shape == (2,)


def test_edge_cases_are_finite():
    maps = torch.full((2, 4, 4, 4), .25)  # every map below the threshold
    for sal in (torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)):
        for label in (torch.zeros(2, 3), torch.ones(2, 3)):
            out = saliency_map(maps, label, sal)
            assert not out.is_fg.any()
            assert all(torch.isfinite(t).all() for t in out[:3])
            assert torch.isfinite(saliency_loss(out.F_s, sal))
    assert torch.equal(overlap_ratio(maps[:, :3], torch.ones(2, 1, 4, 4)), torch.zeros(2, 3))


def test_overlap_ratio_is_detached_and_hand_checked():
    m = torch.zeros(1, 2, 2, 2, requires_grad=True)
    maps = m + torch.tensor([[[[.9, .9], [.9, .1]], [[.1, .1], [.1, .1]]]])
    sal = torch.tensor([[[[1., 0.], [1., 1.]]]])
    phi = overlap_ratio(maps, sal)
    assert not phi.requires_grad
    torch.testing.assert_close(phi, torch.tensor([[2 / 3, 0.]]))


def test_bad_input():
    maps = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match='label must have shape'): saliency_map(maps, torch.ones(1, 3), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match='divide 8-bit maps by 255'): saliency_map(maps, torch.ones(1, 2), torch.full((1, 1, 4, 4), 255.))
    with pytest.raises(ValueError, match='batch size'): saliency_map(maps, torch.ones(1, 2), torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match='sal must have shape'): resize_saliency(torch.rand(1, 3, 4, 4), (2, 2))


@pytest.mark.parametrize('method', list(SALIENCY_METHODS))
def test_classical_saliency(method):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)
    for x in (img, img[..., 0].copy()):
        s = classical_saliency(x, method)
        assert s.dtype == np.float32 and s.shape == (40, 50)
        assert s.min() == 0 and s.max() == pytest.approx(1)
    with pytest.raises(ValueError, match='uint8'): classical_saliency(img[..., :2].copy(), method)


def _voc(tmp_path, n=3):
    (tmp_path / 'JPEGImages').mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((32, 40, 3), 90, np.uint8); img[8:20, 10 + i:24 + i] = (20, 40, 230)
        img = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / 'JPEGImages' / f'im{i}.jpg'), img)
    return tmp_path


def test_saliency_folder_end_to_end_and_resume(tmp_path):
    root = _voc(tmp_path)
    out = saliency_folder(root, progress=False)
    assert out == root / 'saliency_cv2'
    names = sorted(p.name for p in out.iterdir())
    assert names == ['im0.png', 'im1.png', 'im2.png']          # no temporary files left behind
    png = cv2.imread(str(out / 'im1.png'), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (32, 40) and png.max() == 255
    assert png[8:20, 11:25].mean() > 2 * png[24:, :].mean()    # the blue box is salient
    # resume: existing maps are kept unless overwrite=True
    sentinel = np.zeros((32, 40), np.uint8); cv2.imwrite(str(out / 'im0.png'), sentinel)
    saliency_folder(root, progress=False)
    assert cv2.imread(str(out / 'im0.png'), cv2.IMREAD_UNCHANGED).max() == 0
    saliency_folder(root, ids=['im0'], progress=False, overwrite=True, method='spectral_residual')
    assert cv2.imread(str(out / 'im0.png'), cv2.IMREAD_UNCHANGED).max() == 255
    # absolute output folder
    o2 = saliency_folder(root, out=str(tmp_path / 'abs'), ids=['im2'], progress=False)
    assert os.listdir(o2) == ['im2.png']


def test_saliency_folder_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match='JPEGImages'): saliency_folder(tmp_path)
    root = _voc(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match='nope.jpg'): saliency_folder(root, ids=['nope'], progress=False)
    with pytest.raises(ValueError, match='method must be one of'): saliency_folder(root, method='pfan', progress=False)
