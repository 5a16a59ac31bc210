"smvwe.deeplab / smvwe.segment: models on the real backbones, the train-seg command end to end, resume after interruption, bad input."
import json, math, shutil

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from smvwe.cli import main
from smvwe.voc import make_tiny_voc, read_split, load_mask
from smvwe.maps import save_label_png
from smvwe.deeplab import DeepLab, DeepLabV1, DeepLabV2, SegLoss, seg_splitter
from smvwe.segment import seg_learner, train_seg, load_seg_model, predict, predict_folder
from smvwe.data import seg_dls
from fastai.torch_core import set_seed

CLASSES = ['background', 'boat', 'train']


@pytest.fixture
def tree(tmp_path):
    "A tiny VOC tree and a pseudo-label folder (ground truth with a band of 255)."
    root = make_tiny_voc(tmp_path/'voc', n=8, n_val=2, classes=CLASSES, size=(40, 48), seed=0)
    pseudo = tmp_path/'pseudo'
    for i in read_split(root, 'train'):
        m = load_mask(root, i).copy(); m[:5] = 255
        save_label_png(pseudo/f'{i}.png', m)
    return root, pseudo


def test_real_backbones_output_stride_8():
    "VGG16 LargeFOV and ResNet101 ASPP (torchvision, random init) at two tiny sizes: logits at ceil(H/8)."
    for m in (DeepLabV1(4), DeepLabV2(4)):
        m.eval()
        for H, W in ((33, 40), (65, 57)):
            with torch.no_grad(): y = m(torch.randn(1, 3, H, W))
            assert y.shape == (1, 4, math.ceil(H/8), math.ceil(W/8))
    v = DeepLabV1(4)
    assert (v.head.fc6.kernel_size, v.head.fc6.dilation, v.head.fc6.out_channels, v.head.fc7.out_channels) == ((3, 3), (12, 12), 1024, 1024)
    assert [b.dilation[0] for b in DeepLabV2(4).head.branches] == [6, 12, 18, 24]


def test_vgg_weights_file(tmp_path):
    "A torchvision VGG16 state dict loads into the backbone (classifier skipped); a missing key is named."
    import torchvision
    feats = torchvision.models.vgg16(weights=None).features  # torchvision's key names, without the 120M-parameter classifier
    sd = {f'features.{k}': v for k, v in feats.state_dict().items()}
    sd['classifier.6.weight'] = torch.zeros(1000, 4)            # a classifier key, to be skipped
    torch.save(sd, tmp_path/'vgg16.pth')
    m = DeepLabV1(3, weights=tmp_path/'vgg16.pth')
    assert torch.equal(m.backbone.features[28].weight, feats[28].weight)
    del sd['features.0.bias']; torch.save(sd, tmp_path/'bad.pth')
    with pytest.raises(ValueError, match='features.0.bias'): DeepLabV1(3, weights=tmp_path/'bad.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'): DeepLabV1(3, weights=tmp_path/'nope.pth')


def test_splitter_and_loss():
    m = DeepLab(3, 'v2', 'small')
    g = seg_splitter(m)
    ids = [id(p) for grp in g for p in grp]
    assert len(g) == 2 and len(ids) == len(set(ids)) == len(list(m.parameters()))
    # one labelled pixel out of two: -log softmax((0, log 3))[1] = log(4/3)
    lg = torch.tensor([[[[0., 0.]], [[math.log(3), 0.]]]])
    assert torch.isclose(SegLoss()(lg, torch.tensor([[[1, 255]]])), torch.tensor(math.log(4/3)))


def test_tiny_training_lowers_loss(tree):
    root, pseudo = tree
    set_seed(0)
    dls = seg_dls(root, mask_dir=str(pseudo), crop=32, bs=4, num_workers=0, device='cpu', seed=0)
    learn = seg_learner(dls, arch='v1', backbone='small', lr=0.01)
    xb, yb = dls.valid.one_batch()
    with torch.no_grad(): l0 = learn.loss_func(learn.model.eval()(xb), yb).item()
    with learn.no_bar(), learn.no_logging(): learn.fit(4)
    with torch.no_grad(): l1 = learn.loss_func(learn.model.eval()(xb), yb).item()
    assert l1 < 0.8 * l0, (l0, l1)


def test_train_seg_cli_end_to_end(tree, tmp_path, capsys):
    root, pseudo = tree
    out = tmp_path/'run'
    args = ['train-seg', str(root), str(pseudo), str(out), '--backbone', 'small', '--epochs', '1', '--bs', '4', '--crop', '32', '--lr', '0.01',
            '--scales', '1,0.5', '--device', 'cpu', '--no-progress', '--n_workers', '0']
    assert main(args) == 0
    assert (out/'seg'/'model.pth').exists() and (out/'seg'/'checkpoint.pth').exists()
    assert sorted(p.stem for p in (out/'pred').glob('*.png')) == sorted(read_split(root, 'val'))
    res = json.loads((out/'metrics_seg.json').read_text())
    assert 0 <= res['miou'] <= 1 and set(res['iou']) == set(CLASSES)
    assert json.loads((out/'config.json').read_text())['train_seg']['epochs'] == 1
    m = load_seg_model(out/'seg'/'model.pth', 'cpu')
    assert m.classes == CLASSES and m.config['arch'] == 'v1' and not m.training
    # the written predictions are the argmax of `predict` with the same options
    i = read_split(root, 'val')[0]
    from smvwe.voc import load_image
    p = predict(m, load_image(root, i), scales=(1.0, 0.5)).argmax(0)
    assert np.array_equal(p, load_mask(out, i, 'pred'))
    # a second call resumes: nothing is retrained or re-predicted; the CRF variant writes another folder
    t = (out/'pred'/f'{i}.png').stat().st_mtime_ns
    assert main(args) == 0
    assert (out/'pred'/f'{i}.png').stat().st_mtime_ns == t
    pred = predict_folder(m, root, 'val', tmp_path/'crf', crf=True, scales=(1.0,), n_workers=0, progress=False)
    assert len(list(pred.glob('*.png'))) == 2


class Crash(Callback):
    "Simulate an interruption after the second epoch of this fit (once its checkpoint is written)."
    order = 90
    def after_epoch(self):
        if self.epoch == 1: raise RuntimeError('interrupted')

class CountBatches(Callback):
    def __init__(self): self.n = 0
    def after_batch(self):
        if self.training: self.n += 1


def test_resume_after_interruption(tree, tmp_path):
    root, pseudo = tree
    out = tmp_path/'run'
    kw = dict(arch='v1', backbone='small', epochs=3, bs=4, crop=32, lr=0.01, device='cpu', progress=False)
    with pytest.raises(RuntimeError, match='interrupted'): train_seg(root, pseudo, out, cbs=[Crash()], **kw)
    ck = torch.load(out/'seg'/'checkpoint.pth', weights_only=True)
    assert ck['epoch'] == 1 and not (out/'seg'/'model.pth').exists()
    with pytest.raises(ValueError, match='different run'): train_seg(root, pseudo, out, **{**kw, 'lr': 0.02})
    cnt = CountBatches()
    p = train_seg(root, pseudo, out, cbs=[cnt], **kw)
    n_iter = len(read_split(root, 'train')) // 4
    assert cnt.n == n_iter                      # only the third epoch ran
    assert torch.load(out/'seg'/'checkpoint.pth', weights_only=True)['epoch'] == 2
    assert p.exists() and load_seg_model(p, 'cpu').config['backbone'] == 'small'
    cnt2 = CountBatches()
    assert train_seg(root, pseudo, out, cbs=[cnt2], **kw) == p and cnt2.n == 0  # finished: returns at once


def test_bad_input(tree, tmp_path, capsys):
    root, pseudo = tree
    assert main(['train-seg', str(tmp_path/'nope'), str(pseudo), str(tmp_path/'o')]) == 1
    assert 'nope' in capsys.readouterr().err
    assert main(['train-seg', str(root), str(tmp_path/'nopseudo'), str(tmp_path/'o')]) == 1
    assert 'smvwe pseudo' in capsys.readouterr().err
    assert main(['train-seg', str(root), str(pseudo), str(tmp_path/'o'), '--arch', 'v3']) == 1
    assert "'v1'" in capsys.readouterr().err
    assert main(['train-seg', str(root), str(pseudo), str(tmp_path/'o'), '--amp', 'fp8']) == 1
    with pytest.raises(FileNotFoundError, match='train-seg'): load_seg_model(tmp_path/'none.pth')
    torch.save({'x': 1}, tmp_path/'x.pth')
    with pytest.raises(ValueError, match='train_seg'): load_seg_model(tmp_path/'x.pth')
    with pytest.raises(ValueError, match='img'): predict(DeepLab(3, 'v1', 'small'), np.zeros((8, 8), np.uint8))


def test_train_seg_cli_and_python_signature_come_from_one_definition():
    "The options of `smvwe train-seg` are the fields of `SegConfig` + `PredictConfig`; `train_seg`'s keywords are `SegConfig`'s"
    import inspect, typing
    from dataclasses import asdict, fields
    from fastcore.script import anno_parser
    from smvwe.config import field_docs, from_cli
    from smvwe.segment import SegConfig, PredictConfig, train_seg_cli
    opts = [a for a in anno_parser(train_seg_cli)._actions if a.dest not in ('help', 'pdb', 'xtra', 'root', 'pseudo_dir', 'out')]
    params = list(inspect.signature(train_seg).parameters.values())
    assert [q.name for q in params[:6]] == ['root', 'pseudo_dir', 'out', 'cfg', 'cbs', 'dls_kw']
    names = [f.name for f in fields(SegConfig)]
    assert [a.dest for a in opts] == names + [f.name for f in fields(PredictConfig)] and [q.name for q in params[6:]] == names
    hints = typing.get_type_hints(SegConfig) | typing.get_type_hints(PredictConfig)
    docs = field_docs(SegConfig) | field_docs(PredictConfig)
    assert {a.dest: from_cli(a.dest, a.default, hints[a.dest]) for a in opts} == asdict(SegConfig()) | asdict(PredictConfig())
    assert {q.name: q.default for q in params[6:]} == asdict(SegConfig())
    for a in opts: assert docs[a.dest] and a.help.startswith(docs[a.dest]), a.dest
    with pytest.raises(ValueError, match="unknown key 'lr_mul'; valid keys: arch, backbone"): SegConfig.make(lr_mul=2)


def test_predictions_refuse_an_image_over_the_memory_limit(tree, tmp_path, monkeypatch):
    "predict_folder estimates the largest image before any work (smvwe.doctor.check_memory, the model's measured width)"
    from smvwe.maps import activation_px_bytes
    from smvwe.doctor import inference_gb
    root, _ = tree
    m = DeepLab(3, backbone='small').eval()
    gb = inference_gb((40, 48), (1.0, 2.0), True, activation_px_bytes(m), 3)
    monkeypatch.setenv('SMVWE_MAX_GB', str(gb * 0.9))
    with pytest.raises(ValueError, match=r'predictions: image .*2008_000000\.jpg \(48x40\) at scales 1,2 needs about .* GB, over the .* GB limit'):
        predict_folder(m, root, 'val', tmp_path/'p', scales=(1.0, 2.0), n_workers=0, progress=False)
    assert not list((tmp_path/'p').glob('*.png'))
    monkeypatch.setenv('SMVWE_MAX_GB', str(gb * 1.1))   # just above the estimate: predicted
    predict_folder(m, root, 'val', tmp_path/'p', scales=(1.0, 2.0), n_workers=0, progress=False)
    assert len(list((tmp_path/'p').glob('*.png'))) == 2
