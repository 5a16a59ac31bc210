"Progress follows the terminal: bars on a TTY; sent to a pipe or a file, one readable line per epoch (training) and per 10% of a loop."
import os, subprocess, sys
from pathlib import Path

import pytest

from smvwe.voc import make_tiny_voc

ROOT = Path(__file__).resolve().parents[1]


def smvwe(*args, cwd):
    "Run `python -m smvwe.cli ARGS` with stdout and stderr sent to pipes (not a terminal)"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'smvwe.cli', *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp('voc'), n=12, n_val=2, classes=['background', 'disc', 'box'], size=40, seed=0)


def test_logs_sent_to_a_pipe_have_no_bar_frames(root, tmp_path):
    r = smvwe('train-cls', root, tmp_path/'run', '--epochs', 2, '--crop', 32, '--n_words', 8, '--bs', 4, '--num_workers', 0, '--device', 'cpu', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = r.stdout + r.stderr
    assert '\r' not in log and '█' not in log                    # no bar frames
    epochs = [l for l in r.stdout.splitlines() if l.startswith('epoch ')]
    assert [l.split()[1] for l in epochs] == ['0', '1'], r.stdout   # one line per epoch, readable
    assert 'train_loss' in epochs[0] and 'valid_loss' in epochs[0]
    r = smvwe('pseudo', tmp_path/'run', root, '--split', 'train', '--n_workers', 0, '--device', 'cpu', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '\r' not in r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith('pseudo labels (train):')]
    # 12 images at one line per 10%: every ceil(1.2) = 2 images, 6 lines, the last at 100%
    assert [l.split()[3] for l in lines] == ['2/12', '4/12', '6/12', '8/12', '10/12', '12/12'], r.stdout
    assert '(100%)' in lines[-1]
