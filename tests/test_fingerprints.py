"""No stale output survives: each stage records what made its output (dataset, upstream model file, recipe) and a
rerun with another dataset, classifier or recipe stops with one line saying what differs, until --no-resume.
(DeepLab's recipe, pseudo labels and predictions: 09b_segment's notebook tests.)"""
import json

import pytest

from smvwe.cli import main
from smvwe.files import file_hash
from smvwe.train import train_cls
from smvwe.voc import make_tiny_voc

C = ['background', 'disc', 'box']
TINY = dict(epochs=1, crop=32, n_words=8, bs=2, num_workers=0, device='cpu', progress=False)


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    d = tmp_path_factory.mktemp('fp')
    return (make_tiny_voc(d/'a', n=4, n_val=2, classes=C, size=(40, 48), seed=0),
            make_tiny_voc(d/'b', n=4, n_val=2, classes=C, size=(40, 48), seed=1))


def test_train_cls_refuses_another_dataset(roots, tmp_path):
    a, b = roots
    run = tmp_path/'run'
    train_cls(a, run, **TINY)
    w = (run/'cls'/'model.pth').read_bytes()
    with pytest.raises(ValueError, match=r"data: .*in the checkpoint.*now.*--no-resume"): train_cls(b, run, **TINY)
    assert (run/'cls'/'model.pth').read_bytes() == w        # the first dataset's model is not handed out as the second's
    with pytest.raises(ValueError, match='different run'): train_cls(a, run, **{**TINY, 'lr': 0.5})   # another recipe
    train_cls(b, run, resume=False, **TINY)                   # afresh: a model of the second dataset
    assert (run/'cls'/'model.pth').read_bytes() != w


def test_pseudo_labels_record_their_classifier_and_dataset(roots, tmp_path, capsys):
    a, b = roots
    run = tmp_path/'run'
    train_cls(a, run, **TINY)
    args = ['pseudo', str(run), str(a), '--n_workers', '0', '--device', 'cpu', '--no-save_logits']
    assert main(args) == 0
    cfg = json.loads((run/'pseudo_config.json').read_text())
    assert cfg['source']['classifier_sha256'] == file_hash(run/'cls'/'model.pth') and cfg['source']['classes'] == C
    pngs = sorted((run/'pseudo').glob('*.png')); t = [p.stat().st_mtime_ns for p in pngs]
    assert main(args) == 0 and [p.stat().st_mtime_ns for p in pngs] == t       # the same classifier: nothing redone
    train_cls(a, run, resume=False, **{**TINY, 'seed': 1})                    # retrain the classifier
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert 'classifier_sha256' in err and '--no-resume' in err and sum(l.startswith('smvwe ') for l in err.splitlines()) == 1, err
    assert main(args + ['--no-resume']) == 0                                  # afresh: every label redone, the new classifier recorded
    assert all(p.stat().st_mtime_ns != s for p, s in zip(pngs, t))
    assert json.loads((run/'pseudo_config.json').read_text())['source']['classifier_sha256'] == file_hash(run/'cls'/'model.pth')
    capsys.readouterr()                                                       # another dataset into the same folder
    assert main(['pseudo', str(run), str(b), '--n_workers', '0', '--device', 'cpu', '--no-save_logits']) == 1
    assert 'data:' in capsys.readouterr().err
