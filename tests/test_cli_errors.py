"""Every failure a user can cause is one line on stderr naming the file or argument and the fix, exit status 1
(2 for a usage error), through the command line (`smvwe.cli.main`), case by case from one table."""
import errno, json, os, shutil
from pathlib import Path

import numpy as np
import pytest

import smvwe.files
from smvwe.cli import main
from smvwe.files import save_gray_png, save_label_png
from smvwe.train import train_cls
from smvwe.voc import make_tiny_voc, read_split

TINY = ['--crop', '32', '--n_words', '8', '--bs', '2', '--num_workers', '0', '--device', 'cpu', '--no-progress']
PSEUDO = ['--n_workers', '0', '--device', 'cpu', '--no-save_logits']


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A tiny dataset and a classifier trained on it for one epoch"
    d = tmp_path_factory.mktemp('base')
    root = make_tiny_voc(d/'voc', n=4, n_val=2, classes=['background', 'disc', 'box'], size=(40, 48), seed=0)
    train_cls(root, d/'run', epochs=1, crop=32, n_words=8, bs=2, num_workers=0, device='cpu', progress=False)
    return root, d/'run'


def copy_root(base, tmp):
    return Path(shutil.copytree(base[0], tmp/'voc2'))

def garbage(p): Path(p).write_bytes(b'this is not an image file at all')

def first(root, split='train'): return read_split(root, split)[0]


def corrupt_model(base, tmp, mp):
    run = Path(shutil.copytree(base[1], tmp/'run2')); garbage(run/'cls'/'model.pth')
    return ['pseudo', run, base[0], *PSEUDO], [str(run/'cls'/'model.pth'), 'unreadable', '--no-resume']

def corrupt_checkpoint(base, tmp, mp):
    run = Path(shutil.copytree(base[1], tmp/'run2')); ck = run/'cls'/'checkpoint.pth'; ck.write_bytes(ck.read_bytes()[:100])
    return ['train-cls', base[0], run, '--epochs', '1', *TINY], [str(ck), 'unreadable', '--no-resume']

def permission(base, tmp, mp):
    def deny(src, dst): raise PermissionError(errno.EACCES, 'Permission denied', str(dst))
    mp.setattr(smvwe.files.os, 'replace', deny)   # as a read-only folder would (root may write anywhere)
    return ['pseudo', base[1], base[0], '--out', tmp/'out', *PSEUDO], ['permission denied', str(tmp/'out'), 'choose an output folder']

def disk_full(base, tmp, mp):
    def full(src, dst): raise OSError(errno.ENOSPC, 'No space left on device', str(dst))
    mp.setattr(smvwe.files.os, 'replace', full)
    return ['pseudo', base[1], base[0], '--out', tmp/'out', *PSEUDO], ['no space left on the device writing', str(tmp/'out'), 'rerun']

def corrupt_jpeg(base, tmp, mp):
    r = copy_root(base, tmp); garbage(r/'JPEGImages'/f'{first(r)}.jpg')
    return ['pseudo', base[1], r, '--out', tmp/'out', *PSEUDO], [str(r/'JPEGImages'/f'{first(r)}.jpg'), 'unreadable', '--skip-bad']

def skip_bad(base, tmp, mp):
    args, _ = corrupt_jpeg(base, tmp, mp)
    return args + ['--skip-bad'], ['skipped 1 image', first(args[2])]

def corrupt_saliency(base, tmp, mp):
    r = copy_root(base, tmp); garbage(r/'saliency'/f'{first(r)}.png')
    return ['pseudo', base[1], r, '--out', tmp/'out', '--sal_dir', 'saliency', *PSEUDO], [str(r/'saliency'/f'{first(r)}.png'), 'unreadable', '--skip-bad']

def saliency_size(base, tmp, mp):
    r = copy_root(base, tmp); save_gray_png(r/'saliency'/f'{first(r)}.png', np.zeros((10, 12), np.uint8))
    return ['pseudo', base[1], r, '--out', tmp/'out', '--sal_dir', 'saliency', *PSEUDO], ['12x10 (WxH)', '48x40', 'regenerate the map at the image size']

def pseudo_other_options(base, tmp, mp):
    assert main(['pseudo', str(base[1]), str(base[0]), '--out', str(tmp/'out'), *PSEUDO]) == 0
    return ['pseudo', base[1], base[0], '--out', tmp/'out', '--mode', 'threshold', *PSEUDO], ["mode: 'argmax' there, 'threshold' now", '--no-resume']

def preds(base, tmp):
    p = tmp/'pred'; p.mkdir()
    for i in read_split(base[0], 'val'): shutil.copy(base[0]/'SegmentationClass'/f'{i}.png', p/f'{i}.png')
    return p

def eval_corrupt_pred(base, tmp, mp):
    p = preds(base, tmp); garbage(p/f'{first(base[0], "val")}.png')
    return ['eval', p, base[0]], [str(p/f'{first(base[0], "val")}.png'), 'unreadable']

def eval_corrupt_gt(base, tmp, mp):
    r = copy_root(base, tmp); p = preds(base, tmp); gt = r/'SegmentationClass'/f'{first(r, "val")}.png'; garbage(gt)
    return ['eval', p, r], [str(gt), 'unreadable']

def eval_gt_labels(base, tmp, mp):
    r = copy_root(base, tmp); p = preds(base, tmp); gt = r/'SegmentationClass'/f'{first(r, "val")}.png'
    save_label_png(gt, np.full((40, 48), 9, np.uint8))
    return ['eval', p, r], [f'ground truth {gt}', 'outside 0..2']

def seg_classes(base, tmp, mp):
    (tmp/'p'/'pseudo').mkdir(parents=True)
    (tmp/'p'/'pseudo_config.json').write_text(json.dumps({'source': {'classes': ['background', 'cat']}}))
    return ['train-seg', base[0], tmp/'p'/'pseudo', tmp/'out', '--backbone', 'small'], ["made for classes ['background', 'cat']", "['background', 'disc', 'box']"]

def simple(f): return lambda base, tmp, mp: f(base, tmp)

def doctor_broken(base, tmp, mp):
    r = copy_root(base, tmp); garbage(r/'JPEGImages'/f'{first(r)}.jpg')
    return ['doctor', r], [f'{r}: 1 problem(s)', 'unreadable', '--skip-bad']

CASES = [  # (name, make(base, tmp, monkeypatch) -> (argv, expected pieces of the message), exit status)
    ('unknown command',        simple(lambda b, t: (['frobnicate'], ['unknown command', 'train-cls'])), 2),
    ('missing argument',       simple(lambda b, t: (['train-cls'], ['required'])), 2),
    ('wrong type',             simple(lambda b, t: (['train-cls', b[0], t/'o', '--epochs', 'many'], ['--epochs', 'invalid int'])), 2),
    ('negative epochs',        simple(lambda b, t: (['train-cls', b[0], t/'o', '--epochs', '-1'], ['epochs must be at least 1, got -1'])), 1),
    ('unknown variant',        simple(lambda b, t: (['train-cls', b[0], t/'o', '--variant', 'eps'], ["Unknown variant 'eps'", 'cam, vwe, sal, smvwe'])), 1),
    ('bad jitter',             simple(lambda b, t: (['train-cls', b[0], t/'o', '--jitter', '1,2'], ['jitter must be 4 numbers'])), 1),
    ('unknown amp',            simple(lambda b, t: (['train-seg', b[0], b[1], t/'o', '--amp', 'fp8'], ["amp='fp8'", "'bf16' or 'fp16'"])), 1),
    ('bad scales',             simple(lambda b, t: (['pseudo', b[1], b[0], '--scales', 'a,b'], ['--scales', "'a,b'"])), 1),
    ('missing dataset',        simple(lambda b, t: (['train-cls', t/'nope', t/'o'], [str(t/'nope'), 'smvwe synth'])), 1),
    ('missing classifier',     simple(lambda b, t: (['pseudo', t/'norun', b[0]], [str(t/'norun'/'cls'/'model.pth'), 'smvwe train-cls'])), 1),
    ('corrupt model.pth',      corrupt_model, 1),
    ('corrupt checkpoint',     corrupt_checkpoint, 1),
    ('permission denied',      permission, 1),
    ('disk full',              disk_full, 1),
    ('corrupt JPEG (pseudo)',  corrupt_jpeg, 1),
    ('--skip-bad lists it',    skip_bad, 0),
    ('corrupt saliency PNG',   corrupt_saliency, 1),
    ('saliency of wrong size', saliency_size, 1),
    ('pseudo, other options',  pseudo_other_options, 1),
    ('eval, corrupt pred PNG', eval_corrupt_pred, 1),
    ('eval, corrupt GT PNG',   eval_corrupt_gt, 1),
    ('eval, GT label range',   eval_gt_labels, 1),
    ('train-seg classes',      seg_classes, 1),
    ('doctor, broken dataset', doctor_broken, 1),
]


@pytest.mark.parametrize('name,make,code', CASES, ids=[c[0] for c in CASES])
def test_cli_error(name, make, code, base, tmp_path, monkeypatch, capsys):
    args, pieces = make(base, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main([str(a) for a in args]) == code
    err = capsys.readouterr().err
    for p in pieces: assert p in err, (name, p, err)
    if code == 1:
        lines = [l for l in err.splitlines() if l.startswith('smvwe ')]
        assert len(lines) == 1 and 'Traceback' not in err, err   # one line, no traceback
    if name == 'eval, corrupt GT PNG': assert str(tmp_path/'pred') not in err   # the ground truth is named, not the prediction
