"Pretrained weights from local files: MXNet .params reader, ResNet38 renaming, load_weights errors, torch-cache lookup."
import struct

import numpy as np
import pytest
import torch
from torch import nn

from smvwe.weights import (load_weights, read_mxnet_params, save_mxnet_params, read_state_dict, resnet38_key,
                           resnet38_mxnet_names, resolve_weights, LoadResult)
from smvwe.backbones import ResNet38, TorchvisionResNet, make_backbone


@pytest.mark.parametrize('version', ['legacy', 'v1', 'v2'])
def test_mxnet_roundtrip(tmp_path, version):
    rng = np.random.default_rng(0)
    arrays = {'arg:a': rng.standard_normal((3, 2, 1, 1)).astype(np.float32), 'aux:b': np.arange(5, dtype=np.float16),
              'arg:c': rng.integers(0, 9, (2, 2)).astype(np.int32), 'arg:d': np.full((1,), 2.5)}
    back = read_mxnet_params(save_mxnet_params(tmp_path / 'x.params', arrays, version=version))
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)


def test_mxnet_v1_built_by_hand(tmp_path):
    "A V1 file (int64 dims) with a float16 array, written with struct only: independent of save_mxnet_params."
    vals = np.array([[0.5, -1.0, 2.0]], np.float16)
    raw = struct.pack('<QQQ', 0x112, 0, 1) + struct.pack('<Ii2q', 0xF993FAC8, 2, 1, 3) + struct.pack('<iii', 1, 0, 2)
    raw += vals.tobytes() + struct.pack('<QQ', 1, 12) + b'aux:bn7_beta'
    (tmp_path / 'h.params').write_bytes(raw)
    got = read_mxnet_params(tmp_path / 'h.params')
    assert list(got) == ['aux:bn7_beta'] and got['aux:bn7_beta'].dtype == np.float16
    assert np.array_equal(got['aux:bn7_beta'], vals)


def test_mxnet_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.params'): read_mxnet_params(tmp_path / 'missing.params')
    (tmp_path / 'a.params').write_bytes(struct.pack('<QQQ', 0x999, 0, 0))
    with pytest.raises(ValueError, match='not an MXNet NDArray file'): read_mxnet_params(tmp_path / 'a.params')
    sparse = struct.pack('<QQQ', 0x112, 0, 1) + struct.pack('<Ii', 0xF993FAC9, 1)
    (tmp_path / 's.params').write_bytes(sparse)
    with pytest.raises(ValueError, match='sparse'): read_mxnet_params(tmp_path / 's.params')
    good = save_mxnet_params(tmp_path / 'g.params', {'w': np.ones((4, 4), np.float32)}).read_bytes()
    (tmp_path / 't.params').write_bytes(good[:60])
    with pytest.raises(ValueError, match='truncated'): read_mxnet_params(tmp_path / 't.params')


def test_resnet38_names():
    assert resnet38_key('arg:res2a_branch1_weight') == 'b2.conv_branch1.weight'
    assert resnet38_key('arg:res5b2_branch2b1_weight') == 'b5_2.conv_branch2b1.weight'
    assert resnet38_key('aux:bn4b3_branch2a_moving_mean') == 'b4_3.bn_branch2a.running_mean'
    assert resnet38_key('arg:bn7_gamma') == 'bn7.weight'
    assert resnet38_key('arg:linear1000_bias') is None
    assert resnet38_key('arg:something_else') == ''
    # every name of the MXNet file maps onto exactly the keys of our ResNet38 (BN counters aside)
    keys = {k for k in ResNet38(width=1 / 16).state_dict() if not k.endswith('num_batches_tracked')}
    mapped = [resnet38_key(k) for k in resnet38_mxnet_names(classifier=False)]
    assert len(mapped) == len(set(mapped)) and set(mapped) == keys


def _fake_resnet38_params(path, width=1 / 16, version='v2'):
    shapes = {k: v.shape for k, v in ResNet38(width=width).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    arrays = {k: torch.rand(shapes[resnet38_key(k)], generator=g) + 0.5 for k in resnet38_mxnet_names(classifier=False)}
    arrays['arg:linear1000_weight'] = torch.zeros(1000, shapes['bn7.weight'][0])
    arrays['arg:linear1000_bias'] = torch.zeros(1000)
    save_mxnet_params(path, arrays, version=version)
    return arrays


@pytest.mark.parametrize('version', ['legacy', 'v2'])
def test_resnet38_params_file_loads(tmp_path, version):
    arrays = _fake_resnet38_params(tmp_path / 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params', version=version)
    net = make_backbone('resnet38', weights=tmp_path / 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params', backbone_kwargs=dict(width=1 / 16))
    sd = net.state_dict()
    for k, v in arrays.items():
        if resnet38_key(k): assert torch.equal(sd[resnet38_key(k)], v), k
    # pretrained: BN frozen (eval, no grad) and conv1a frozen, as EPS/SEAM
    net.train()
    assert not net.bn7.training and not net.bn7.weight.requires_grad and not net.conv1a.weight.requires_grad
    assert net.b7.conv_branch2b2.weight.requires_grad
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 256, 4, 4)


def test_resnet38_converted_pth_loads(tmp_path):
    src = ResNet38(width=1 / 16)
    torch.save(src.state_dict(), tmp_path / 'resnet38d.pth')
    net = make_backbone('resnet38', weights=str(tmp_path / 'resnet38d.pth'), backbone_kwargs=dict(width=1 / 16))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), src.state_dict().values()))


def test_load_weights_errors(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    torch.save({'0.weight': torch.zeros(5, 3, 1, 1), '0.bias': torch.zeros(4), 'head.w': torch.zeros(1)}, tmp_path / 'w.pth')
    with pytest.raises(ValueError) as e: load_weights(net, tmp_path / 'w.pth')
    msg = str(e.value)
    assert 'w.pth' in msg and 'missing keys (4): 1.weight, 1.bias, 1.running_mean, 1.running_var' in msg
    assert 'unexpected keys (1): head.w' in msg and '0.weight: file (5, 3, 1, 1) vs model (4, 3, 1, 1)' in msg
    with pytest.warns(UserWarning):
        r = load_weights(net, tmp_path / 'w.pth', strict=False)
    assert r.unexpected == ['head.w'] and r.mismatched == ['0.weight'] and torch.equal(net[0].bias, torch.zeros(4))
    with pytest.raises(FileNotFoundError, match='nothere.pth'): load_weights(net, tmp_path / 'nothere.pth')
    torch.save([1, 2], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match='expected a state dict'): read_state_dict(tmp_path / 'list.pth')
    # a .params file of the wrong width names the file and the mismatched shapes
    _fake_resnet38_params(tmp_path / 'r38.params')
    with pytest.raises(ValueError, match=r'(?s)r38.params does not match ResNet38.*shape mismatches'):
        load_weights(ResNet38(width=1 / 8), tmp_path / 'r38.params')


def test_torch_cache_lookup_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    expected = tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth'
    with pytest.raises(FileNotFoundError) as e: make_backbone('resnet50', weights='imagenet')
    assert str(expected) in str(e.value) and "weights='IMAGENET1K_V1'" in str(e.value) and 'download' in str(e.value)
    with pytest.raises(FileNotFoundError, match='ilsvrc-cls_rna-a1_cls1000_ep-0001.params'):
        resolve_weights('resnet38', 'imagenet')
    # the torchvision file (with its ImageNet classifier) in the cache: found and loaded, fc ignored
    src = TorchvisionResNet(50)
    expected.parent.mkdir(parents=True)
    torch.save(src.state_dict() | {'fc.weight': torch.zeros(1000, 2048), 'fc.bias': torch.zeros(1000)}, expected)
    net = make_backbone('resnet50', weights='imagenet')
    assert torch.equal(net.layer3[5].conv2.weight, src.layer3[5].conv2.weight)
    assert not net.bn1.weight.requires_grad
    # ResNet38's MXNet file in the cache
    _fake_resnet38_params(expected.parent / 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params')
    assert resolve_weights('resnet38', 'imagenet').name == 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params'
    make_backbone('resnet38', weights='imagenet', backbone_kwargs=dict(width=1 / 16))


def test_resolve_weights_bad_names(tmp_path):
    assert resolve_weights('small', None) is None
    with pytest.raises(ValueError, match="no named weights 'imagenet' for backbone 'small'"): resolve_weights('small', 'imagenet')
    with pytest.raises(ValueError, match='IMAGENET1K_V2'): resolve_weights('resnet101', 'COCO')
    with pytest.raises(FileNotFoundError, match='x.pth'): resolve_weights('resnet50', str(tmp_path / 'x.pth'))
