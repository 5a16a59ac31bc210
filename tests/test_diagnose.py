"Image-level diagnostics: mAP / F1 against scikit-learn, the verdict through train-cls, pseudo and eval."
import json
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from smvwe.cli import main
from smvwe.diagnose import average_precision, mean_ap, macro_f1, chance_map, verdict
from smvwe.voc import make_tiny_voc


@pytest.mark.parametrize('seed', range(5))
def test_map_and_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random((40, 6)) < 0.3; y[0] = True
    s = np.round(rng.random((40, 6)), 1)  # ties
    ref = np.mean([average_precision_score(y[:, c], s[:, c]) for c in range(6)])
    assert mean_ap(s, y) == pytest.approx(ref, abs=1e-12)
    assert macro_f1(s, y) == pytest.approx(f1_score(y, s > 0.5, average='macro', zero_division=0), abs=1e-12)


def test_chance_level_is_the_map_of_a_constant_predictor():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    assert chance_map(y) == pytest.approx((2/4 + 1/4) / 2)
    assert mean_ap(np.zeros((4, 2)), y) == pytest.approx(chance_map(y))
    assert average_precision([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0]) == 1.0


def test_verdict_levels():
    assert verdict(0.22, 0.2)['level'] == 'near chance' and verdict(0.22, 0.2)['line'].startswith('WARNING')
    assert verdict(0.95, 0.2)['level'] == 'learned'


def test_verdict_printed_by_train_cls_pseudo_and_eval(tmp_path, capsys):
    root = make_tiny_voc(tmp_path/'voc', n=6, n_val=2, classes=['background', 'disc', 'box'], size=40, seed=0)
    run = tmp_path/'run'
    assert main(['train-cls', str(root), str(run), '--epochs', '1', '--crop', '32', '--n_words', '8', '--variant', 'cam',
                 '--num_workers', '0', '--device', 'cpu', '--no-progress']) == 0
    io = capsys.readouterr(); text = io.out + io.err
    h = (run/'cls'/'history.csv').read_text().splitlines()[0].split(',')
    assert {'train_map', 'valid_map', 'valid_f1'} <= set(h)
    d = json.loads((run/'cls'/'diagnostics.json').read_text())
    assert d['line'] in text and 0 <= d['chance'] <= 1 and d['level'] in ('near chance', 'weak', 'learned')
    assert main(['pseudo', str(run), str(root), '--split', 'val', '--n-workers', '0', '--scales', '1']) == 0
    assert d['line'] in capsys.readouterr().out
    assert main(['eval', str(run/'pseudo'), str(root), '--split', 'val']) == 0
    assert d['line'] in capsys.readouterr().out
