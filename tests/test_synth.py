"The `smvwe synth` command end to end: layout, determinism, resume, bad arguments."
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smvwe.cli import main
from smvwe.scene import CLASSES
from smvwe.synth import LAYOUT, make_sample

SMALL = ['--n_train', '8', '--n_val', '4', '--quiet']


def synth(*args):
    return main(['synth', *map(str, args)])


def test_cli_writes_voc_layout(tmp_path):
    out = tmp_path / 'bench'
    assert synth(out, *SMALL) == 0
    split = {s: (out / 'ImageSets/Segmentation' / f'{s}.txt').read_text().split() for s in ('train', 'val')}
    assert len(split['train']) == 8 and len(split['val']) == 4 and not set(split['train']) & set(split['val'])
    assert (out / 'classes.txt').read_text().split() == CLASSES and CLASSES[0] == 'background'
    ctx = json.loads((out / 'contexts.json').read_text())
    assert ctx == {'water': {'id': 1, 'class': 'boat'}, 'rails': {'id': 2, 'class': 'train'}}
    for id in split['train'] + split['val']:
        for d in LAYOUT:
            assert (out / d / f"{id}.{'jpg' if d == 'JPEGImages' else 'png'}").is_file(), (d, id)
        img = np.array(Image.open(out / 'JPEGImages' / f'{id}.jpg'))
        lab = Image.open(out / 'SegmentationClass' / f'{id}.png')
        assert img.shape == (96, 96, 3) and lab.mode == 'P' and lab.getpalette()[3:6] == [128, 0, 0]
        gt, c = np.array(lab), np.array(Image.open(out / 'Context' / f'{id}.png'))
        assert gt.max() <= len(CLASSES) - 1 and gt.max() > 0          # labels in 0..L, at least one object
        assert not ((c > 0) & (gt > 0)).any() and set(np.unique(c)) <= {0, 1, 2}
        for d in ('saliency', 'saliency_cv2'):
            s = Image.open(out / d / f'{id}.png'); assert s.mode == 'L' and s.size == (96, 96)
    # the files hold exactly the in-memory sample
    np.testing.assert_array_equal(np.array(Image.open(out / 'SegmentationClass/val_00002.png')), make_sample(0, 'val', 2)['gt'])
    assert not list(out.rglob('*.tmp*')), 'temporary files left behind'


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    for o, seed in ((a, 0), (b, 0), (c, 5)): assert synth(o, *SMALL, '--seed', seed) == 0
    for f in sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / 'JPEGImages/train_00000.jpg').read_bytes() != (c / 'JPEGImages/train_00000.jpg').read_bytes()


def test_rerun_resumes_and_different_args_error(tmp_path, capsys):
    out = tmp_path / 'bench'
    assert synth(out, *SMALL) == 0
    gone = out / 'SegmentationClass/train_00003.png'; old = gone.read_bytes(); gone.unlink()
    keep = out / 'JPEGImages/train_00000.jpg'; t0 = keep.stat().st_mtime_ns
    assert synth(out, *SMALL) == 0                    # resume: rewrites only what is missing
    assert gone.read_bytes() == old and keep.stat().st_mtime_ns == t0
    capsys.readouterr()
    assert synth(out, '--n_train', '9', '--n_val', '4', '--quiet') == 1
    err = capsys.readouterr().err
    assert str(out) in err and 'n_train: 8 -> 9' in err and '--overwrite' in err
    assert synth(out, '--n_train', '3', '--n_val', '2', '--quiet', '--overwrite') == 0
    assert len(list((out / 'JPEGImages').iterdir())) == 5
    assert json.loads((out / 'meta.json').read_text())['args']['n_train'] == 3


@pytest.mark.parametrize('args,msg', [(['--n_train', '0'], 'n_train must be at least 1'),
                                      (['--size', '-8'], 'size must be an integer >= 32'),
                                      (['--sal_bias', '2'], 'sal_bias'),
                                      (['--cv2_method', 'magic'], 'cv2_method')])
def test_bad_arguments(tmp_path, capsys, args, msg):
    assert synth(tmp_path / 'bad', *args, '--quiet') == 1
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'bad').exists()


def test_refuses_foreign_folder(tmp_path, capsys):
    (tmp_path / 'voc').mkdir(); (tmp_path / 'voc' / 'JPEGImages').mkdir()
    assert synth(tmp_path / 'voc', *SMALL, '--overwrite') == 1
    assert 'no meta.json' in capsys.readouterr().err and (tmp_path / 'voc' / 'JPEGImages').is_dir()


def test_written_files_are_the_sample_and_meta_is_unchanged(tmp_path):
    "The shared writer (`smvwe.voc_writer`) writes each map of `make_sample` losslessly, and meta.json keeps its keys and order"
    from smvwe.synth import make_benchmark
    out = make_benchmark(tmp_path / 'b', n_train=2, n_val=1, size=48, seed=3, progress=False)
    s = make_sample(3, 'val', 0, size=48)
    for d, k in (('SegmentationClass', 'gt'), ('Parts', 'parts'), ('Context', 'context'), ('saliency', 'saliency'), ('saliency_cv2', 'saliency_cv2')):
        np.testing.assert_array_equal(np.array(Image.open(out / d / 'val_00000.png')), s[k], err_msg=d)
    assert Image.open(out / 'SegmentationClass/val_00000.png').mode == 'P' and Image.open(out / 'saliency/val_00000.png').mode == 'L'
    meta = (out / 'meta.json').read_text()  # a folder written before the shared writer must resume, not be refused
    assert meta == json.dumps(dict(generator='smvwe.synth', version=2, args=dict(
        n_train=2, n_val=1, size=48, seed=3, max_objects=2, cooc=0.92, ctx_alone=0.08, sal_blur=1.5, sal_miss=0.05, sal_bias=0.3,
        sal_bias_strength=0.6, sal_noise=0.03, sal_clutter=0.05, cv2_method='fine_grained')), indent=1) + '\n'
