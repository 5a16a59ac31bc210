"""The pretrained regime through the command line: `smvwe pretrain` at a tiny size, the shipped `openmoji-small`
weights (loaded by name, SHA-256 checked) in `train-cls` and `train-seg`, and the one-line errors around them."""
import json, shutil
from pathlib import Path

import pytest
import torch

import smvwe.weights
from smvwe.backbones import SmallCNN
from smvwe.cli import main
from smvwe.glyphs import benchmark_codes, corpus_classes, _plain
from smvwe.segment import load_seg_model
from smvwe.train import load_cls_model
from smvwe.voc import make_tiny_voc
from smvwe.weights import SHIPPED_WEIGHTS, shipped_weights

TINY = ['--crop', '32', '--n_words', '8', '--bs', '2', '--num_workers', '0', '--device', 'cpu', '--no-progress']


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp('voc')/'voc', n=4, n_val=2, classes=['background', 'disc', 'box'], size=(40, 48), seed=0)


def test_corpus_leaves_out_every_benchmark_glyph():
    codes, labels, classes = corpus_classes()
    assert not {_plain(c) for c in codes} & benchmark_codes()
    assert len(benchmark_codes()) >= 50 and len(classes) > 1000


def test_pretrain_tiny_resumes_and_writes_weights_and_record(tmp_path, capsys):
    args = ['pretrain', str(tmp_path/'pt'), '--epochs', '2', '--steps', '2', '--max_classes', '4', '--size', '24', '--glyph', '16',
            '--n_bg', '4', '--bs', '4', '--heldout', '1', '--valid_batches', '1', '--no-progress']
    assert main(args) == 0
    rec = json.loads((tmp_path/'pt'/'pretrain.json').read_text())
    assert rec['fingerprint']['n_classes'] == 4 and rec['heldout']['images'] == 4
    assert 0 <= rec['heldout']['top1'] <= rec['heldout']['top5'] <= 1
    assert set(rec['fingerprint']) >= {'glyphs', 'corpus', 'left_out'}
    w = torch.load(tmp_path/'pt'/'backbone.pth')
    SmallCNN(output_stride=4, layout='plain').load_state_dict(w)          # a small backbone, every key
    assert f"sha256 {rec['backbone_sha256']}" in capsys.readouterr().out
    before = (tmp_path/'pt'/'backbone.pth').read_bytes()
    assert main(args) == 0                                                # complete: read again, not retrained
    assert (tmp_path/'pt'/'backbone.pth').read_bytes() == before


def test_pretrain_refuses_a_bad_argument(capsys):
    assert main(['pretrain', 'unused', '--bs', '0']) == 1
    assert '--bs must be at least 1' in capsys.readouterr().err


def test_train_cls_starts_from_the_shipped_weights(voc, tmp_path):
    sd = torch.load(shipped_weights('openmoji-small'))
    assert main(['train-cls', str(voc), str(tmp_path/'run'), '--epochs', '1', '--weights', 'openmoji-small', '--variant', 'cam', *TINY]) == 0
    m = load_cls_model(tmp_path/'run'/'cls'/'model.pth')
    bb, cfg = m.backbone.state_dict(), torch.load(tmp_path/'run'/'cls'/'model.pth', weights_only=False)['config']
    assert cfg['weights'] == 'openmoji-small' and cfg['freeze_bn']
    assert torch.equal(bb['0.0.weight'], sd['0.0.weight'])                # the frozen stem is the shipped one, bit for bit
    assert torch.equal(bb['5.1.running_mean'], sd['5.1.running_mean'])    # BatchNorm frozen, as EPS with ImageNet weights
    assert not torch.equal(bb['5.0.weight'], sd['5.0.weight'])            # the rest fine-tuned


def test_train_seg_starts_from_the_shipped_weights(voc, tmp_path):
    labels = voc/'SegmentationClass'  # ground truth stands in for pseudo labels here
    assert main(['train-seg', str(voc), str(labels), str(tmp_path/'seg'), '--backbone', 'small', '--epochs', '1', '--bs', '2',
                 '--crop', '32', '--num_workers', '0', '--device', 'cpu', '--weights', 'openmoji-small', '--no-progress']) == 0
    m = load_seg_model(next((tmp_path/'seg').rglob('model.pth')))
    assert m.backbone[0][0].weight.shape == (32, 3, 3, 3)


def test_unknown_and_damaged_weights_fail_in_one_line(voc, tmp_path, monkeypatch, capsys):
    assert main(['train-cls', str(voc), str(tmp_path/'run'), '--epochs', '1', '--weights', 'openmoji-big', *TINY]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'openmoji-big' in err[0] and 'openmoji-small' in err[0]
    assets = tmp_path/'assets'; assets.mkdir()
    shutil.copy(shipped_weights('openmoji-small'), assets/'openmoji-small.pth')
    with open(assets/'openmoji-small.pth', 'r+b') as f: f.seek(100); f.write(b'\x00' * 8)   # one damaged block
    real = smvwe.weights.shipped_weights
    monkeypatch.setattr(smvwe.weights, 'shipped_weights', lambda name, root=None: real(name, root=assets))
    assert main(['train-cls', str(voc), str(tmp_path/'run2'), '--epochs', '1', '--weights', 'openmoji-small', *TINY]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'SHA-256' in err[0] and SHIPPED_WEIGHTS['openmoji-small']['command'] in err[0]
