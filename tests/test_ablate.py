"`smvwe ablate`: a study end to end through the command line (quick preset), resume without recomputing, bad input."
import csv, json

import pytest

import smvwe.ablate
from smvwe.cli import main


@pytest.fixture(scope='module')
def sign_study(tmp_path_factory):
    "The cheapest study (two runs), once, through `smvwe ablate`"
    out = tmp_path_factory.mktemp('ablate')
    rc = main(['ablate', 'sign', '--preset', 'quick', '--seeds', '0', '--out', str(out), '--quiet'])
    return out, rc


def read_rows(out): 
    with open(out / 'sign' / 'results.csv') as f: return list(csv.DictReader(f))


def test_sign_study_end_to_end(sign_study):
    out, rc = sign_study
    assert rc == 0
    rows = read_rows(out)
    assert [r['label'] for r in rows] == ['-D (ours)', '+D (Eq. 2 as printed)']
    assert [r['sign'] for r in rows] == ['-1', '1']
    for r in rows:
        assert 0 <= float(r['miou']) <= 1 and 'boundary_f1' in r and any(k.startswith('conf_') for k in r)
    assert (out / 'sign' / 'figure.png').read_bytes()[:4] == b'\x89PNG'
    res = json.loads((out / 'sign' / 'results.json').read_text())
    assert res['preset'] == 'quick' and res['seeds'] == [0] and res['command'].startswith('smvwe ablate sign')
    assert '| -D (ours) | 1 |' in (out / 'sign' / 'table.md').read_text()
    for r in rows:  # one run folder per run, with the demo's metrics and the trained classifier
        assert (out / 'runs' / r['key'] / 'metrics.json').exists() and (out / 'runs' / r['key'] / 'cls' / 'model.pth').exists()
    assert (out / 'data' / 'ImageSets' / 'Segmentation' / 'val.txt').exists()  # the built-in benchmark, written once


def test_resume_does_not_recompute(sign_study, monkeypatch):
    out, _ = sign_study
    before = read_rows(out)
    def boom(*a, **k): raise AssertionError('a finished run was recomputed')
    monkeypatch.setattr(smvwe.ablate, 'run_variant', boom)
    assert main(['ablate', 'sign', '--preset', 'quick', '--seeds', '0', '--out', str(out), '--quiet']) == 0
    after = read_rows(out)
    assert [r['reused'] for r in after] == ['True', 'True']
    assert [r['miou'] for r in after] == [r['miou'] for r in before]


def test_new_runs_only_for_missing_settings(sign_study, monkeypatch):
    "cls-term shares its w_cls=1 run with sign's -D run: only w_cls=0 is trained"
    out, _ = sign_study
    done = []
    def fake(root, run_out, variant, preset='default', seed=0, progress=True):
        done.append({k: preset.value(k) for k in preset.stated if k not in smvwe.ablate.get_preset('quick').stated})
        return {'miou': .5, 'iou': {}, 'boundary': {'f1': .5}, 'confusion': {}}
    monkeypatch.setattr(smvwe.ablate, 'run_variant', fake)
    assert main(['ablate', 'cls-term', '--preset', 'quick', '--seeds', '0', '--out', str(out), '--quiet']) == 0
    assert done == [{'cls.w_cls': 0.0}]


def test_unknown_study_fails_with_one_line(tmp_path, capsys):
    rc = main(['ablate', 'colour', '--out', str(tmp_path / 'x')])
    err = capsys.readouterr().err
    assert rc != 0 and err.count('\n') == 1
    for s in ('variants', 'words', 'saliency', 'sign', 'cls-term'): assert s in err
    assert not (tmp_path / 'x').exists()


def test_bad_arguments(tmp_path, capsys):
    assert main(['ablate', 'sign', '--preset', 'huge', '--out', str(tmp_path)]) == 1
    assert 'Unknown preset' in capsys.readouterr().err
    assert main(['ablate', 'sign', '--seeds', '0,x', '--out', str(tmp_path)]) == 1
    assert 'comma-separated' in capsys.readouterr().err
    assert main(['ablate', 'sign', '--root', str(tmp_path / 'none'), '--out', str(tmp_path)]) == 1
    assert 'not found' in capsys.readouterr().err
