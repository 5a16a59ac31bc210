"smvwe.pseudo: parallel == serial, resume, sharding, the command line (real model file), bad input."
import hashlib, json, os
from pathlib import Path

import numpy as np
import pytest
import torch, torch.nn as nn, torch.nn.functional as F
from fastcore.script import anno_parser
from PIL import Image

from smvwe.pseudo import make_pseudo, pseudo_cli, load_cams, load_logits
from smvwe.maps import save_label_png, pseudo_label, readout_labels, crf_params


def run_cli(f, argv):
    "Parse argv as `smvwe CMD ...` would and call the command."
    a = vars(anno_parser(f).parse_args(argv)); a.pop('pdb', None); a.pop('xtra', None)
    return f(**a)


def tiny_voc(root, n=6, hw=(24, 32), seed=0):
    "Red and blue rectangles on green; classes background/red/blue."
    root, rng = Path(root), np.random.default_rng(seed)
    for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'): (root/d).mkdir(parents=True, exist_ok=True)
    (root/'classes.txt').write_text('background\nred\nblue\n')
    ids = [f'img{i}' for i in range(n)]
    for i, id in enumerate(ids):
        H, W = hw; img = np.zeros((H, W, 3), np.uint8); img[:] = (30, 180, 40); m = np.zeros((H, W), np.uint8)
        for c, col in ((1, (200, 30, 30)), (2, (30, 30, 200))):
            if c == 2 and i % 2: continue
            y, x = rng.integers(0, H - 8), rng.integers(0, W - 10)
            img[y:y+8, x:x+10] = col; m[y:y+8, x:x+10] = c
        Image.fromarray(img).save(root/'JPEGImages'/f'{id}.jpg', quality=95)
        save_label_png(root/'SegmentationClass'/f'{id}.png', m)
    (root/'ImageSets/Segmentation/train.txt').write_text('\n'.join(ids) + '\n')
    return root


class ColourModel(nn.Module):
    "maps = 3 * (R, B, G) of the normalised image at stride 2: red, blue, background."
    def __init__(self):
        super().__init__(); self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad(): self.conv.weight.copy_(3 * torch.eye(3)[[0, 2, 1]][..., None, None])
    def forward(self, x): return {'maps': F.avg_pool2d(self.conv(x), 2)}


def snapshot(d):
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
            for p in sorted(Path(d).rglob('*')) if p.is_file() and p.name != 'pseudo_config.json'}


def contents(s): return {k: v[1] for k, v in s.items()}


@pytest.fixture
def voc(tmp_path): return tiny_voc(tmp_path/'voc')


@pytest.mark.parametrize('ctx', ['fork', 'spawn'])
def test_parallel_equals_serial_and_recovers_masks(voc, tmp_path, ctx):
    make_pseudo(ColourModel(), voc, 'train', tmp_path/'ser', crf=True, n_workers=0, progress=False)
    make_pseudo(ColourModel(), voc, 'train', tmp_path/'par', crf=True, n_workers=2, mp_context=ctx, progress=False)
    s, p = snapshot(tmp_path/'ser'), snapshot(tmp_path/'par')
    assert len(s) == 18 and contents(s) == contents(p)  # 6 images x (cams, logits, pseudo)
    for i in range(6):
        gt = np.array(Image.open(voc/'SegmentationClass'/f'img{i}.png'))
        pl = np.array(Image.open(tmp_path/'ser'/'pseudo'/f'img{i}.png'))
        assert (gt == pl).mean() > 0.95
    assert not list((tmp_path/'par').rglob('*.tmp'))


def test_resume_skips_done_and_redoes_corrupt(voc, tmp_path):
    out = tmp_path/'run'
    make_pseudo(ColourModel(), voc, 'train', out, crf=True, n_workers=0, progress=False)
    s1 = snapshot(out)
    make_pseudo(ColourModel(), voc, 'train', out, crf=True, n_workers=0, progress=False)
    assert snapshot(out) == s1                                          # nothing rewritten
    (out/'pseudo'/'img0.png').write_bytes((out/'pseudo'/'img0.png').read_bytes()[:40])   # truncated PNG
    b = (out/'cams'/'img3.npy').read_bytes(); (out/'cams'/'img3.npy').write_bytes(b[:len(b)//2])  # partial npy
    save_label_png(out/'pseudo'/'img4.png', np.full((24, 32), 9, np.uint8))             # out-of-range labels
    (out/'pseudo'/'img5.png').unlink()
    b = (out/'logits'/'img1.npy').read_bytes(); (out/'logits'/'img1.npy').write_bytes(b[:len(b)//2])  # partial logits
    for p in out.rglob('*'):
        if p.is_file(): os.utime(p, ns=(10**18, 10**18))               # an old stamp: a file written again loses it
    make_pseudo(ColourModel(), voc, 'train', out, crf=True, n_workers=2, progress=False)
    s2 = snapshot(out)
    assert contents(s2) == contents(s1)
    redone = {k.split('/')[1].split('.')[0] for k in s1 if s2[k][0] != 10**18}
    assert redone == {'img0', 'img1', 'img3', 'img4', 'img5'}


def test_resume_refuses_other_options(voc, tmp_path):
    make_pseudo(ColourModel(), voc, 'train', tmp_path/'r', crf=True, n_workers=0, progress=False)
    with pytest.raises(ValueError, match='made by another run'):
        make_pseudo(ColourModel(), voc, 'train', tmp_path/'r', crf=False, n_workers=0, progress=False)
    make_pseudo(ColourModel(), voc, 'train', tmp_path/'r', crf=False, resume=False, n_workers=0, progress=False)


def test_shards_partition_the_split(voc, tmp_path):
    make_pseudo(ColourModel(), voc, 'train', tmp_path/'full', crf=True, n_workers=0, progress=False)
    for r in range(3):
        make_pseudo(ColourModel(), voc, 'train', tmp_path/f's{r}', crf=True, n_workers=0, rank=r, world_size=3, progress=False)
    names = [set(snapshot(tmp_path/f's{r}')) for r in range(3)]
    assert all(len(n) == 6 for n in names)  # 2 images x (cams, logits, pseudo) and not (names[0] & names[1]) and not (names[1] & names[2])
    merged = {}
    for r in range(3): merged.update(contents(snapshot(tmp_path/f's{r}')))
    assert merged == contents(snapshot(tmp_path/'full'))


def test_cams_reproduce_labels(voc, tmp_path):
    out = make_pseudo(ColourModel(), voc, 'train', tmp_path/'r', mode='threshold', crf=True, n_workers=0, progress=False)
    lab = np.array([1., 1.])
    img = np.array(Image.open(voc/'JPEGImages'/'img0.jpg').convert('RGB'))
    maps = load_cams(out/'cams'/'img0.npy', lab)
    assert maps.shape == (3, 24, 32) and maps.dtype == np.float32
    assert np.array_equal(pseudo_label(img, maps, lab, 'threshold', crf=True, crf_kw={'ref_size': 500}),
                          np.array(Image.open(out/'pseudo'/'img0.png')))


def test_bad_input(voc, tmp_path):
    with pytest.raises(ValueError, match="'argmax', 'eps', 'threshold'"):
        make_pseudo(ColourModel(), voc, 'train', tmp_path/'x', mode='mean', crf=True, n_workers=0)
    with pytest.raises(FileNotFoundError, match='val.txt'):
        make_pseudo(ColourModel(), voc, 'val', tmp_path/'x', crf=True, n_workers=0)
    with pytest.raises(FileNotFoundError, match=r'saliency folder .*sal not found: pass --sal_dir'):   # the whole folder is missing
        make_pseudo(ColourModel(), voc, 'train', tmp_path/'y', sal_dir='sal', crf=True, n_workers=0, progress=False)
    with pytest.raises(ValueError, match='labels has 2 rows'):
        make_pseudo(ColourModel(), voc, 'train', tmp_path/'z', labels=np.ones((2, 2)), crf=True, n_workers=0)


def test_one_pass_gives_every_readout(voc, tmp_path):
    "eps / threshold / argmax runs without CRF write the labels that `readout_labels` computes from one run's logits."
    base = make_pseudo(ColourModel(), voc, 'train', tmp_path/'argmax', crf=False, n_workers=0, progress=False)
    for mode in ('eps', 'threshold'):
        o = make_pseudo(ColourModel(), voc, 'train', tmp_path/mode, mode=mode, bg_thr=0.3, crf=False, n_workers=0, progress=False)
        for i in range(6):
            lab = np.array([1., 1.]) if i % 2 == 0 else np.array([1., 0.])
            z = load_logits(base/'logits'/f'img{i}.npy', lab)
            got = readout_labels(z, lab, mode, bg_thr=0.3)
            want = np.array(Image.open(o/'pseudo'/f'img{i}.png'))
            assert (got == want).mean() > 0.99, (mode, i)   # float16 logits vs float32 maps: ties may flip a pixel
            assert np.array_equal(np.load(o/'logits'/f'img{i}.npy'), np.load(base/'logits'/f'img{i}.npy'))  # mode-independent


def test_crf_preset_recorded_and_bad_preset(voc, tmp_path, capsys):
    out = make_pseudo(ColourModel(), voc, 'train', tmp_path/'d', crf_preset='deeplab', crf=True, n_workers=0, progress=False)
    assert json.loads((out/'pseudo_config.json').read_text())['crf_kw'] == crf_params('deeplab')
    with pytest.raises(ValueError, match="unknown CRF preset 'dense'"):
        make_pseudo(ColourModel(), voc, 'train', tmp_path/'e', crf_preset='dense', crf=True, n_workers=0, progress=False)
    from smvwe.cli import main
    (tmp_path/'run'/'cls').mkdir(parents=True); (tmp_path/'run'/'cls'/'model.pth').write_bytes(b'')
    assert main(['pseudo', str(tmp_path/'run'), str(voc), '--crf', '--crf-preset', 'psa,sigma=2']) == 1
    assert "unknown CRF parameter 'sigma'" in capsys.readouterr().err


def test_cli_with_a_real_model_file(tmp_path):
    "`smvwe pseudo RUN ROOT --crf` on a saved (untrained) SMVWENet and the data module's tiny dataset."
    from smvwe.voc import make_tiny_voc, read_classes, read_split, image_labels
    from smvwe.model import SMVWENet
    root = make_tiny_voc(tmp_path/'voc', n=3, n_val=1, seed=0)
    classes = read_classes(root)
    torch.manual_seed(0)
    m = SMVWENet(len(classes) - 1, backbone='small', n_words=8)
    (tmp_path/'run'/'cls').mkdir(parents=True)
    torch.save(dict(model=m.state_dict(), config=m.config, classes=classes, variant='smvwe'), tmp_path/'run'/'cls'/'model.pth')
    from smvwe.cli import main
    assert main(['pseudo', str(tmp_path/'run'), str(root), '--crf', '--n-workers', '0', '--scales', '1,0.5']) == 0
    ids, labs = read_split(root, 'train'), image_labels(root, read_split(root, 'train'))
    for i, lab in zip(ids, labs):
        p = np.array(Image.open(tmp_path/'run'/'pseudo'/f'{i}.png'))
        assert p.shape == (48, 64) and set(np.unique(p)) <= {0} | set((np.flatnonzero(lab) + 1).tolist())
        assert np.load(tmp_path/'run'/'cams'/f'{i}.npy').shape == (int(lab.sum()) + 1, 48, 64)
        assert np.load(tmp_path/'run'/'logits'/f'{i}.npy').shape == (int(lab.sum()) + 2, 48, 64)
    cfg = json.loads((tmp_path/'run'/'pseudo_config.json').read_text())
    assert cfg['crf'] is True and cfg['scales'] == [1.0, 0.5] and cfg['mode'] == 'argmax'


def test_cli_missing_model(voc, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match='model.pth'):
        run_cli(pseudo_cli, [str(tmp_path/'nothing'), str(voc)])
    from smvwe.cli import main
    assert main(['pseudo', str(tmp_path/'nothing'), str(voc)]) == 1
    assert 'model.pth' in capsys.readouterr().err
