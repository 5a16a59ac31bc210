"The combined SMVWE loss: Eq. 8 vs torch and a direct formula, term bookkeeping, gradients, fastai integration."
import math, pickle
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smvwe.losses import (LOSS_TERMS, CleanPreds, LossTermsLogger, SMVWELoss, clean_preds, loss_terms_metrics,
                          soft_margin_loss)
from smvwe.saliency import saliency_loss, saliency_map

Words = namedtuple('Words', 'D P Z z_word e_word')


@dataclass
class WordsDC:
    P: torch.Tensor
    z_word: torch.Tensor
    e_word: torch.Tensor


def fake_pred(B=3, L=4, N=6, h=5, seed=0, dtype=torch.float32, words_cls=Words):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    z = (torch.rand(B, N, generator=g) > .5).to(dtype)
    P = r(B, N, h, h).softmax(1)
    words = Words(None, P, P.argmax(1), z, P.mean((2, 3))) if words_cls is Words else WordsDC(P, z, P.mean((2, 3)))
    pred = dict(maps=r(B, L + 1, h, h) * 2, logits=r(B, L), words=words, s_word=r(B, N), p_w2i=r(B, L))
    label = (torch.rand(B, L, generator=g) > .5).to(dtype)
    sal = torch.rand(B, 1, 4 * h, 4 * h, generator=g, dtype=dtype)
    return pred, sal, label


@pytest.mark.parametrize('shape', [(1, 1), (4, 20), (2, 256), (7, 3)])
def test_soft_margin_vs_torch_and_direct_formula(shape):
    torch.manual_seed(sum(shape))
    s = torch.randn(*shape, dtype=torch.float64) * 4
    z = (torch.rand(*shape) > .5).double()
    direct = -(z * torch.log(1 / (1 + torch.exp(-s))) + (1 - z) * torch.log(1 - 1 / (1 + torch.exp(-s)))).mean(-1)
    torch.testing.assert_close(soft_margin_loss(s, z, 'none'), direct)
    torch.testing.assert_close(soft_margin_loss(s, z), F.multilabel_soft_margin_loss(s, z))
    torch.testing.assert_close(soft_margin_loss(s, z, 'sum'), direct.sum())


def test_soft_margin_is_stable_for_large_scores():
    s = torch.tensor([[100., -100., 100., -100.]])
    z = torch.tensor([[1., 0., 0., 1.]])
    v = soft_margin_loss(s, z)
    assert torch.isfinite(v) and v.item() == pytest.approx(100 / 2, rel=1e-6)  # two confident mistakes of 100


@pytest.mark.parametrize('words_cls', [Words, WordsDC, dict])
def test_total_is_weighted_sum_of_direct_terms(words_cls):
    pred, sal, label = fake_pred(words_cls=Words if words_cls is dict else words_cls)
    if words_cls is dict: pred['words'] = {'z_word': pred['words'].z_word}
    w = dict(w_cls=.3, w_word=1.7, w_w2i=.5, w_sal=2.)
    loss = SMVWELoss(**w, delta=.3, mu=.4)
    total = loss(pred, sal, label)
    o = saliency_map(pred['maps'].softmax(1), label, sal, delta=.3, mu=.4)
    z_word = pred['words']['z_word'] if isinstance(pred['words'], dict) else pred['words'].z_word
    direct = {'cls': F.multilabel_soft_margin_loss(pred['logits'], label),
              'word': F.multilabel_soft_margin_loss(pred['s_word'], z_word),
              'w2i': F.multilabel_soft_margin_loss(pred['p_w2i'], label),
              'sal': F.mse_loss(o.F_s, F.interpolate(sal, size=(5, 5), mode='bilinear', antialias=True))}
    for k, v in direct.items(): torch.testing.assert_close(loss.last[k], v)
    torch.testing.assert_close(total, sum(w['w_' + k] * v for k, v in direct.items()))
    assert set(loss.last) == set(LOSS_TERMS) | {'total'} and loss.active == LOSS_TERMS
    assert all(not t.requires_grad for t in loss.last.values())


def test_skipping_rules():
    pred, sal, label = fake_pred()
    cam = SMVWELoss(w_word=0, w_w2i=0, w_sal=0)
    torch.testing.assert_close(cam(pred, sal, label), F.multilabel_soft_margin_loss(pred['logits'], label))
    assert cam.active == ('cls',) and cam.last['sal'] == 0.
    full = SMVWELoss()
    full({**pred, 'words': None}, sal, label); assert full.active == ('cls', 'w2i', 'sal')
    full({k: v for k, v in pred.items() if k not in ('s_word', 'p_w2i')}, sal, label); assert full.active == ('cls', 'sal')
    full(pred, None, label); assert 'sal' not in full.active
    with pytest.raises(ValueError, match='no active term'): SMVWELoss(w_cls=0, w_sal=0)({'maps': pred['maps']}, None, label)


def test_reduction_none_gives_per_image_totals():
    pred, sal, label = fake_pred(B=5)
    per = SMVWELoss(reduction='none')(pred, sal, label)
    assert per.shape == (5,)
    torch.testing.assert_close(per.mean(), SMVWELoss()(pred, sal, label))


def test_gradients_reach_outputs_not_word_labels():
    pred, sal, label = fake_pred()
    leaves = {k: pred[k].clone().requires_grad_() for k in ('maps', 'logits', 's_word', 'p_w2i')}
    zw = pred['words'].z_word.clone().requires_grad_()
    SMVWELoss()({**leaves, 'words': pred['words']._replace(z_word=zw)}, sal, label).backward()
    for k, v in leaves.items(): assert v.grad is not None and v.grad.abs().sum() > 0, k
    assert zw.grad is None
    # each term only reaches its own outputs
    leaves = {k: pred[k].clone().requires_grad_() for k in ('maps', 'logits', 's_word', 'p_w2i')}
    SMVWELoss(w_cls=0, w_word=0, w_w2i=0)({**leaves, 'words': pred['words']}, sal, label).backward()
    assert leaves['maps'].grad.abs().sum() > 0 and all(leaves[k].grad is None for k in ('logits', 's_word', 'p_w2i'))


def test_saliency_gradcheck_fixed_selection():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([[1., 0., 1., 1.], [0., 1., 0., 0.]], dtype=torch.float64)
    sal = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    fixed = torch.tensor([[True, False, False, True], [False, True, False, False]])
    for mu in (.3, 1.):
        f = lambda m: saliency_loss(saliency_map(m.softmax(1), label, sal, mu=mu, is_fg=fixed).F_s, sal)
        assert torch.autograd.gradcheck(f, (maps,))


def test_full_loss_gradcheck():
    g = torch.Generator().manual_seed(4)
    shapes = dict(maps=(2, 4, 3, 3), logits=(2, 3), s_word=(2, 5), p_w2i=(2, 3))
    xs = [torch.randn(*v, generator=g, dtype=torch.float64, requires_grad=True) for v in shapes.values()]
    zw = torch.tensor([[1., 0, 0, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float64)
    label = torch.tensor([[1., 0, 1], [0, 1, 1]], dtype=torch.float64)
    sal = torch.rand(2, 1, 9, 9, generator=g, dtype=torch.float64)
    loss = SMVWELoss(w_cls=.7, w_word=1.3, w_w2i=.9, w_sal=2.)
    f = lambda maps, logits, s_word, p_w2i: loss(dict(maps=maps, logits=logits, s_word=s_word, p_w2i=p_w2i,
                                                     words={'z_word': zw}), sal, label)
    assert torch.autograd.gradcheck(f, tuple(xs))


def test_loss_pickles_with_its_state():
    pred, sal, label = fake_pred()
    loss = SMVWELoss(w_sal=.5, delta=.3)
    loss(pred, sal, label)
    l2 = pickle.loads(pickle.dumps(loss))
    assert (l2.w_sal, l2.delta, l2.reduction) == (.5, .3, 'mean')
    torch.testing.assert_close(l2(pred, sal, label), loss(pred, sal, label))


def test_clean_preds_makes_outputs_fastai_safe():
    from fastai.torch_core import to_concat, to_detach, to_float
    pred, _, _ = fake_pred()
    pred['extra'] = None
    with pytest.raises(Exception): to_float(pred)            # why CleanPreds exists
    for wc in (Words, WordsDC):
        p = fake_pred(words_cls=wc)[0]; p['extra'] = None
        c = clean_preds(p)
        assert 'extra' not in c and isinstance(c['words'], dict) and 'z_word' in c['words']
        cat = to_concat([to_detach(to_float(c)), to_detach(to_float(c))])
        assert cat['maps'].shape[0] == 6 and cat['words']['z_word'].shape[0] == 6
        assert sorted(clean_preds(p, ('z_word',))['words']) == ['z_word']
    assert clean_preds(pred['maps']) is pred['maps']
    # the loss accepts the cleaned dict
    pred, sal, label = fake_pred()
    torch.testing.assert_close(SMVWELoss()(clean_preds(pred), sal, label), SMVWELoss()(pred, sal, label))


def test_metrics_names_and_validation():
    loss = SMVWELoss(w_word=0)
    assert [m.name for m in loss_terms_metrics(loss)] == ['cls_loss', 'w2i_loss', 'sal_loss']
    assert [m.name for m in loss_terms_metrics(loss, ['total'])] == ['total_loss']
    with pytest.raises(ValueError, match='unknown loss terms'): loss_terms_metrics(loss, ['foo'])


# ---- a real fastai Learner on a fake model ----
class TinyNet(nn.Module):
    def __init__(self, L=3, N=8, words=True):
        super().__init__()
        self.conv, self.word, self.w2i, self.L, self.words = nn.Conv2d(3, L + 1, 3, padding=1), nn.Linear(3, N), nn.Linear(N, L), L, words
    def forward(self, img):
        maps = self.conv(F.avg_pool2d(img, 4))
        out = dict(maps=maps, logits=maps[:, :self.L].mean((2, 3)), words=None, s_word=None, p_w2i=None)
        if self.words:
            f = img.mean((2, 3)); e = self.word(f).softmax(1)
            z = torch.zeros_like(e); z[:, ::2] = 1
            out.update(words=Words(None, None, None, z, e), s_word=self.word(f), p_w2i=self.w2i(e) * 5)
        return out


def tiny_dls(n=12, L=3, size=16, bs=4):  # train 6, valid 6: batches of 4 and 2
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        img, sal = torch.randn(3, size, size, generator=g) * .1, torch.zeros(1, size, size)
        label = torch.zeros(L); label[i % L] = 1
        img[i % 3, 2:10, 2:10] += 2; sal[:, 2:10, 2:10] = 1
        items.append((img, sal, label))
    dls = DataLoaders(DataLoader(items[:-6], bs=bs, shuffle=True), DataLoader(items[-6:], bs=bs))
    dls.n_inp = 1
    return dls


@pytest.mark.parametrize('variant', ['smvwe', 'cam'])
def test_learner_shows_terms_and_get_preds_works(variant):
    from fastai.learner import Learner, Recorder
    from fastai.optimizer import SGD
    torch.manual_seed(0)
    lf = SMVWELoss() if variant == 'smvwe' else SMVWELoss(w_word=0, w_w2i=0, w_sal=0)
    logger = LossTermsLogger()
    learn = Learner(tiny_dls(), TinyNet(words=variant == 'smvwe'), loss_func=lf, opt_func=SGD, lr=.1,
                    metrics=loss_terms_metrics(lf), cbs=[CleanPreds(), logger])
    learn.recorder.train_metrics = True
    with learn.no_logging(): learn.fit(2)
    terms = LOSS_TERMS if variant == 'smvwe' else ('cls',)
    names = list(learn.recorder.metric_names)
    for t in terms: assert f'train_{t}_loss' in names and f'valid_{t}_loss' in names, names
    if variant == 'cam': assert 'valid_sal_loss' not in names
    assert all(math.isfinite(v) for row in learn.recorder.values for v in row)
    assert len(logger.history) == 2 * 2 and all(math.isfinite(r[t]) for r in logger.history for t in terms)
    (probs, lab_probs), (sal, label), losses = learn.get_preds(with_loss=True)
    assert probs.shape == (6, 4, 4, 4) and lab_probs.shape == (6, 3) and losses.shape == (6,)
    torch.testing.assert_close(probs.sum(1), torch.ones(6, 4, 4))
    vals = learn.validate()
    assert losses.mean().item() == pytest.approx(vals[0], rel=1e-4)
    learn.model.eval()
    with torch.no_grad():
        check = SMVWELoss(**{k: getattr(lf, k) for k in ('w_cls', 'w_word', 'w_w2i', 'w_sal')})
        xb = torch.stack([learn.dls.valid.dataset[i][0] for i in range(6)])
        check(learn.model(xb), sal, label)
    # per term: the batch-size-weighted mean over the batches (4 + 2) = the mean over the 6 images
    for t, v in zip(terms, vals[1:]): assert v == pytest.approx(float(check.last[t]), rel=1e-4), t
    assert lf.reduction == 'mean'
    _, _, dec = learn.get_preds(with_decoded=True)
    assert torch.equal(dec, (lab_probs > .5).float())


def test_with_real_words_module():
    import smvwe.words as words
    torch.manual_seed(0)
    enc = words.VisualWordEncoder(n_words=8, dim=6)
    feats = torch.randn(2, 6, 5, 5, requires_grad=True)
    w = enc(feats)
    pred = dict(maps=torch.randn(2, 4, 5, 5, requires_grad=True), logits=torch.randn(2, 3, requires_grad=True),
                words=w, s_word=torch.randn(2, 8, requires_grad=True), p_w2i=torch.randn(2, 3, requires_grad=True))
    loss = SMVWELoss()
    loss(pred, torch.rand(2, 1, 20, 20), torch.tensor([[1., 0, 1], [0, 1, 0]])).backward()
    assert loss.active == LOSS_TERMS and all(math.isfinite(float(v)) for v in loss.last.values())
    assert sorted(clean_preds(pred, ('z_word', 'e_word'))['words']) == ['e_word', 'z_word']
