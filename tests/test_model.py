"Backbones and the SMVWE classifier: shapes for every backbone, output strides, switches, gradients, config, splitter."
import json, math

import pytest
import torch

from smvwe.backbones import make_backbone
from smvwe.weights import load_weights


def _fwd_bwd(net, size, B=1):
    x = torch.randn(B, 3, size, size, requires_grad=True)
    f = net(x)
    f.float().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    return f


@pytest.mark.parametrize('os_', [4, 8, 16])
@pytest.mark.parametrize('size', [64, 96])
def test_small_backbone_shapes(size, os_):
    net = make_backbone('small', output_stride=os_)
    f = _fwd_bwd(net, size, B=2)
    assert f.shape == (2, 128, size // os_, size // os_) and (f >= 0).all()
    assert make_backbone('small', output_stride=os_)(torch.randn(1, 3, size + 3, size + 3)).shape[-1] == math.ceil((size + 3) / os_)


@pytest.mark.parametrize('name,C', [('resnet50', 2048), ('resnet101', 2048), ('resnet38', 4096)])
def test_heavy_backbone_shapes(name, C):
    "One forward/backward per heavy backbone at 32 px, batch 1 (output stride 8 via dilation)."
    net = make_backbone(name)
    assert net.out_channels == C and net.output_stride == 8
    assert _fwd_bwd(net, 32).shape == (1, C, 4, 4)


def test_backbone_bad_args():
    with pytest.raises(ValueError, match='unknown backbone'): make_backbone('vgg')
    with pytest.raises(ValueError, match='output_stride'): make_backbone('small', output_stride=32)


@pytest.fixture(scope='module')
def M():
    import smvwe.model as M
    return M


def test_model_outputs(M):
    torch.manual_seed(0)
    model = M.SMVWENet(4, n_words=16)
    out = model(torch.randn(2, 3, 64, 96))
    assert set(out) == {'maps', 'logits', 'words', 's_word', 'p_w2i'}
    assert out['maps'].shape == (2, 5, 16, 24) and out['logits'].shape == (2, 4)   # the small backbone: output stride 4
    assert out['s_word'].shape == (2, 16) and out['p_w2i'].shape == (2, 4)
    w = out['words']
    assert w.P.shape == w.D.shape == (2, 16, 16, 24) and w.Z.shape == (2, 16, 24) and w.e_word.shape == (2, 16)
    assert torch.allclose(out['logits'], out['maps'][:, :4].mean((2, 3)))
    assert torch.allclose(out['p_w2i'], (16 * w.e_word) @ model.w2i.weight.flatten(1).T, atol=1e-5)  # W^w2i (N e_word)


def test_gradients_reach_codebook_and_backbone(M):
    model = M.SMVWENet(3, n_words=8)
    out = model(torch.randn(2, 3, 64, 64))
    out['p_w2i'].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.words.parameters())
    assert model.backbone[0][0].weight.grad.abs().sum() > 0


def test_use_words_false(M):
    model = M.SMVWENet(3, use_words=False)
    out = model(torch.randn(1, 3, 64, 64))
    assert out['words'] is None and out['s_word'] is None and out['p_w2i'] is None
    assert out['maps'].shape == (1, 4, 16, 16)
    assert not any('words' in n for n, _ in model.named_parameters())


def test_word_dim_and_stride16(M):
    model = M.SMVWENet(2, n_words=8, word_dim=32, output_stride=16)
    out = model(torch.randn(1, 3, 64, 64))
    assert out['maps'].shape == (1, 3, 4, 4) and out['words'].D.shape == (1, 8, 4, 4)


def test_config_roundtrip_and_load_weights(M, tmp_path):
    model = M.SMVWENet(3, n_words=8, tau=2.0).eval()
    cfg = json.loads(json.dumps(model.config))
    assert cfg['n_classes'] == 3 and cfg['tau'] == 2.0 and cfg['freeze_bn'] is False
    torch.save(model.state_dict(), tmp_path / 'm.pth')
    clone = M.SMVWENet.from_config(cfg).eval()
    load_weights(clone, tmp_path / 'm.pth')
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(clone(x)['maps'], model(x)['maps'])
    with pytest.raises(ValueError, match=r'(?s)m.pth does not match SMVWENet.*classifier.weight: file \(4, 128, 1, 1\) vs model \(6, 128, 1, 1\)'):
        load_weights(M.SMVWENet(5, n_words=8), tmp_path / 'm.pth')
    with pytest.raises(ValueError, match='n_classes'): M.SMVWENet(0)


def test_cls_splitter_partition(M):
    model = M.SMVWENet(3, n_words=8)
    bb, new = M.cls_splitter(model)
    assert {id(p) for p in bb} == {id(p) for p in model.backbone.parameters()}
    assert len(bb) + len(new) == len(list(model.parameters()))
    assert {id(model.classifier.weight), id(model.w2i.weight), id(model.word_cls.weight)} <= {id(p) for p in new}


def test_channels_last_autocast(M):
    model = M.SMVWENet(3, n_words=8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out['maps'].shape == (2, 4, 16, 16)
    assert all(torch.isfinite(out[k].float()).all() for k in ('maps', 'logits', 's_word', 'p_w2i'))
    (out['logits'].float().sum() + out['p_w2i'].float().sum()).backward()
    assert model.classifier.weight.grad is not None


def test_word_to_image_head_learns(M):
    "Tiny separable case (red = class 1, blue = class 2): L_cls(p_w2i, z_img) alone, 10 SGD steps at the recipe's rates"
    import torch.nn.functional as F
    def loss_after(w2i_scale, steps=10):
        torch.manual_seed(0)
        img = torch.rand(8, 3, 16, 16) * 0.2; y = torch.zeros(8, 2)
        img[:4, 0] += 0.8; y[:4, 0] = 1; img[4:, 2] += 0.8; y[4:, 1] = 1
        m = M.SMVWENet(2, n_words=16, w2i_scale=w2i_scale)
        bb, new = M.cls_splitter(m)
        opt = torch.optim.SGD([dict(params=bb, lr=0.01), dict(params=new, lr=0.1)], momentum=0.9)
        for _ in range(steps):
            loss = F.multilabel_soft_margin_loss(m(img)['p_w2i'], y)
            opt.zero_grad(); loss.backward(); opt.step()
        return loss.item()
    assert loss_after(None) < 0.1 < math.log(2)  # N e_word: well below log 2
    assert loss_after(1.) > 0.5                  # e_word as printed (entries ~1/N): the head has barely moved
