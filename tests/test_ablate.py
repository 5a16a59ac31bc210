"`smvwe ablate`: a study end to end through the command line on a tiny built-in benchmark (one epoch): the protocol's rows, resume without retraining, a setting shared with another study read back."
import json
from pathlib import Path

import pandas as pd
import pytest

import smvwe.study
from smvwe.cli import main
from smvwe.precision import cpu_precision

TINY = [f'--set={kv}' for kv in ('bench.n_train=12', 'bench.n_val=6', 'bench.size=64', 'cls.epochs=1', 'cls.crop=64', 'cls.resize_long=48,64',
                                 'cls.n_words=8')]


def ablate(study, d):
    return main(['ablate', study, '--seeds', '0', '--out', str(d / 'runs'), '--results', str(d / 'res'), '--quiet', *TINY])


@pytest.fixture(scope='module')
def sign_study(tmp_path_factory):
    "The cheapest study (two runs), once, through `smvwe ablate`"
    d = tmp_path_factory.mktemp('ablate')
    return d, ablate('sign', d)


def test_sign_study_writes_the_protocols_rows(sign_study):
    d, rc = sign_study
    assert rc == 0
    df = pd.read_csv(d / 'res' / 'synth_sign.csv')
    assert list(dict.fromkeys(df.label)) == ['-D (ours)', '+D (Eq. 2 as printed)']
    assert sorted(set(df.sign)) == [-1, 1] and set(df.study) == {'sign'} and set(df.variant) == {'smvwe'}
    assert set(df.split) == {'train', 'val'} and set(df.crf.fillna('none')) == {'none', 'psa'} and df.curve.any()  # every read-out, CRF, curve
    assert df.miou.between(0, 1).all() and df.word_miou.notna().all()
    runs = d / 'runs' / 'synth' / ('runs' if cpu_precision('auto', 'bf16') == 'bf16' else 'runs-float32')  # `--amp auto`: float32 runs live apart
    assert (runs / 'smvwe-seed0' / 'cls' / 'model.pth').exists() and (runs / 'smvwe-sign=1-seed0' / 'cls' / 'model.pth').exists()
    t = json.loads((d / 'res' / 'synth_sign_time.json').read_text())
    assert t['runs'] == 2 and t['cached'] == 0 and t['run_s'] > 0


def test_resume_trains_nothing(sign_study, monkeypatch):
    d, _ = sign_study
    before = pd.read_csv(d / 'res' / 'synth_sign.csv')
    def boom(*a, **k): raise AssertionError('a finished run was trained again')
    monkeypatch.setattr(smvwe.study, 'train_and_maps', boom)
    assert ablate('sign', d) == 0
    pd.testing.assert_frame_equal(pd.read_csv(d / 'res' / 'synth_sign.csv'), before)
    assert json.loads((d / 'res' / 'synth_sign_time.json').read_text())['cached'] == 2


def test_a_shared_setting_is_read_back(sign_study, monkeypatch):
    "cls-term's w_cls=1 setting is sign's -D run (the preset's own SMVWE run): only w_cls=0 is trained"
    d, _ = sign_study
    trained, real = [], smvwe.study.train_and_maps
    def spy(root, run_dir, *a, **k): trained.append(Path(run_dir).name); return real(root, run_dir, *a, **k)
    monkeypatch.setattr(smvwe.study, 'train_and_maps', spy)
    assert ablate('cls-term', d) == 0
    assert trained == ['smvwe-w_cls=0-seed0']
    df, sign = pd.read_csv(d / 'res' / 'synth_cls-term.csv'), pd.read_csv(d / 'res' / 'synth_sign.csv')
    a, b = df[df.label == 'w_cls=1'], sign[sign.label == '-D (ours)']
    assert list(a.miou) == list(b.miou)  # the same run, the same scores
