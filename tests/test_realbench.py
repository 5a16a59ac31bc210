"The `smvwe synth-real` command end to end (OpenMoji benchmark): layout, exact masks, contexts, determinism, resume, bad arguments."
import json

import numpy as np
import pytest
from PIL import Image

from smvwe.cli import main
from smvwe.emoji import EMOJI_CLASSES, EMOJI_CONTEXTS, paint, place, render_glyph, render_emoji_scene
from smvwe.realbench import LAYOUT, load_or_train_detector, make_real_sample

TINY = ['--n_train', '6', '--n_val', '3', '--size', '64', '--det_images', '16', '--det_epochs', '1', '--det_size', '32', '--quiet']


def synth_real(*args):
    return main(['synth-real', *map(str, args)])


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp('rb') / 'bench'
    assert synth_real(out, *TINY) == 0
    return out


def test_cli_writes_voc_layout(bench):
    split = {s: (bench / 'ImageSets/Segmentation' / f'{s}.txt').read_text().split() for s in ('train', 'val')}
    assert len(split['train']) == 6 and len(split['val']) == 3 and not set(split['train']) & set(split['val'])
    assert (bench / 'classes.txt').read_text().split() == EMOJI_CLASSES
    assert json.loads((bench / 'contexts.json').read_text()) == EMOJI_CONTEXTS
    meta = json.loads((bench / 'meta.json').read_text())
    assert meta['generator'] == 'smvwe.realbench' and 'CC BY-SA 4.0' in meta['licence']
    for id in split['train'] + split['val']:
        for d in LAYOUT: assert (bench / d / f"{id}.{'jpg' if d == 'JPEGImages' else 'png'}").is_file(), (d, id)
        lab = Image.open(bench / 'SegmentationClass' / f'{id}.png')
        gt, ctx = np.array(lab), np.array(Image.open(bench / 'Context' / f'{id}.png'))
        assert lab.mode == 'P' and gt.shape == (64, 64) and set(np.unique(gt)) <= set(range(7)) | {255}
        assert not ((ctx > 0) & (gt > 0)).any() and set(np.unique(ctx)) <= {0, 1, 2}
        for d in ('saliency', 'saliency_cv2', 'saliency_sim'): assert Image.open(bench / d / f'{id}.png').mode == 'L'
    st = json.loads((bench / 'stats.json').read_text())
    assert st['n_images'] == 9 and set(st['saliency']) == {'saliency', 'saliency_cv2', 'saliency_sim'}
    net = load_or_train_detector(bench, 0, 16, 1, 32)
    s = make_real_sample(net, 0, 'train', 2, size=64, det_size=32)
    np.testing.assert_array_equal(np.array(Image.open(bench / 'SegmentationClass/train_00002.png')), s['gt'])
    np.testing.assert_array_equal(np.array(Image.open(bench / 'saliency/train_00002.png')), s['saliency'])
    assert not list(bench.rglob('*.tmp*')), 'temporary files left behind'


def test_mask_is_glyph_alpha():
    "Hand-checked: one car glyph at (x, y) = (20, 5) on a plain background; label = alpha >= 0.5, 255 on 0.1 < alpha < 0.9."
    g = render_glyph('\U0001F697', 36); h, w = g.shape[:2]
    alpha = np.zeros((64, 64), np.float32); alpha[5:5 + h, 20:20 + w] = g[..., 3][:64 - 5, :64 - 20]
    car = EMOJI_CLASSES.index('car')
    r = paint(np.full((64, 64, 3), .3, np.float32), [dict(kind='object', label=car, rgba=place(64, g, 20, 5))])
    want = np.where(alpha >= .5, car, 0); want[(alpha > .1) & (alpha < .9)] = 255
    np.testing.assert_array_equal(r['gt'], want)
    assert (r['gt'] == car).sum() == (alpha >= .9).sum() > 100
    occ = place(64, render_glyph('\U0001F333', 20), 30, 10)     # a tree in front hides part of the car
    r2 = paint(np.full((64, 64, 3), .3, np.float32), [dict(kind='object', label=car, rgba=place(64, g, 20, 5)),
                                                       dict(kind='clutter', label=0, rgba=occ)])
    hidden = occ[..., 3] >= .9
    assert (r['gt'][hidden] == car).any() and not (r2['gt'][hidden] == car).any()


def test_context_rates():
    n, rows = 300, []
    for i in range(n):
        s = render_emoji_scene(np.random.default_rng([2, i]), size=64)
        cls, ctx = {o['cls'] for o in s['objects']}, {c['name'] for c in s['contexts']}
        rows.append([('water' in ctx, 'boat' in cls), ('rails' in ctx, 'train' in cls)])
    a = np.array(rows)
    for j in range(2):
        with_c, without = a[a[:, j, 1], j, 0].mean(), a[~a[:, j, 1], j, 0].mean()
        assert .8 <= with_c <= 1 and .02 <= without <= .16, (j, with_c, without)


def test_same_seed_same_bytes_and_resume(bench, tmp_path, capsys):
    b, c = tmp_path / 'b', tmp_path / 'c'
    assert synth_real(b, *TINY) == 0 and synth_real(c, *TINY, '--seed', 3) == 0
    files = sorted(p.relative_to(bench) for p in bench.rglob('*') if p.is_file() and p.name != 'stats.json')
    for f in files: assert (bench / f).read_bytes() == (b / f).read_bytes(), f
    assert (b / 'JPEGImages/train_00000.jpg').read_bytes() != (c / 'JPEGImages/train_00000.jpg').read_bytes()
    gone = b / 'saliency_sim/val_00001.png'; old = gone.read_bytes(); gone.unlink()
    keep = b / 'JPEGImages/train_00000.jpg'; t0 = keep.stat().st_mtime_ns
    assert synth_real(b, *TINY) == 0                       # resume: rewrites only what is missing
    assert gone.read_bytes() == old and keep.stat().st_mtime_ns == t0
    capsys.readouterr()
    assert synth_real(b, *TINY, '--hue', '0.2') == 1
    err = capsys.readouterr().err
    assert str(b) in err and 'hue: 0.5 -> 0.2' in err and '--overwrite' in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('args,msg', [(['--n_train', '0'], 'n_train must be at least 1'),
                                      (['--size', '16'], 'size must be >= 32'),
                                      (['--cooc', '1.5'], 'cooc must be in [0, 1]'),
                                      (['--max_objects', '9'], 'max_objects must be in 1..8'),
                                      (['--det_images', '2'], 'det_images must be at least 8'),
                                      (['--cv2_method', 'magic'], 'cv2_method')])
def test_bad_arguments(tmp_path, capsys, args, msg):
    assert synth_real(tmp_path / 'bad', *args, '--quiet') == 1
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'bad').exists()


def test_refuses_foreign_folder(tmp_path, capsys):
    (tmp_path / 'voc' / 'JPEGImages').mkdir(parents=True)
    assert synth_real(tmp_path / 'voc', '--quiet') == 1
    assert 'not a benchmark folder written by smvwe synth-real' in capsys.readouterr().err
