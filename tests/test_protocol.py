"The fair protocol's tables and claims on a hand-made result table (the results page and README's headline: tests/test_stale.py), and its studies' wall times."
import math
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from smvwe.summary import READOUT_SET, TABLE_THR, load_results
from smvwe.tables import readout_table, detail_table, quality_table
from smvwe.claims import protocol_claims
from smvwe.precision import cpu_precision

ROOT = Path(__file__).resolve().parents[1]
RUNS = 'runs' if cpu_precision('auto', 'bf16') == 'bf16' else 'runs-float32'  # where `--amp auto` trains in float32, its runs live apart


def rows(label, variant, readout, mious, split='train', crf='none', thr=TABLE_THR, **kw):
    return [dict(bench='synth', study='variants', label=label, variant=variant, seed=s, split=split, readout=readout, crf=crf,
                 bg_thr=thr if readout in ('eps', 'threshold') else np.nan, curve=False, saliency='saliency', miou=m,
                 boundary_f1=0.5, fg_precision=0.8, fg_recall=0.6, confusion_water=0.3 if variant == 'cam' else 0.1,
                 valid_map=0.8, skill=0.7, **kw) for s, m in enumerate(mious)]


@pytest.fixture
def df():
    r = []
    for ro in READOUT_SET:
        r += rows('CAM', 'cam', ro, [0.30, 0.32, 0.34] if ro != 'threshold+sal' else [0.50, 0.52, 0.54])
        r += rows('SMVWE', 'smvwe', ro, [0.60, 0.62, 0.58] if ro in ('eps', 'argmax') else [0.40, 0.41, 0.42])
        r += rows('saliency-only', 'sal', ro, [0.55, 0.65, 0.50])
        r += rows('yardstick CAM', 'yardstick', ro, [0.20, 0.20, 0.20])
    r += rows('CAM', 'cam', 'eps', [0.9, 0.9, 0.9], thr=0.4)  # a curve point off the table threshold: must be ignored
    return pd.DataFrame(r)


def test_readout_table_mean_and_std(df):
    t = readout_table(df)
    cam = next(l for l in t.splitlines() if l.startswith('| CAM |'))
    cells = [c.strip() for c in cam.strip('|').split('|')]
    assert cells[1] == '3' and cells[2] == f"32.0 ± {100 * np.std([.30, .32, .34], ddof=1):.1f}"  # eps: the 0.4 curve row is not in it
    assert cells[2 + READOUT_SET.index('threshold+sal')].startswith('52.0')
    assert [l.split('|')[1].strip() for l in t.splitlines()[2:]] == ['CAM', 'saliency-only', 'SMVWE', 'yardstick CAM']


def test_claims_need_every_seed(df):
    c = {x['claim']: x for x in protocol_claims(df)}
    assert c['SMVWE > CAM, mIoU (eps)']['holds'] is True
    base = next(v for k, v in c.items() if 'CAM + saliency as background' in k)
    assert base['holds'] is True and '60.0 vs 52.0' in base['detail']
    # saliency-only is better on seed 1 (0.65 > 0.62): the mean favours SMVWE (0.600 vs 0.567) but not every seed
    assert c['SMVWE > saliency-only, mIoU (eps)']['holds'] is False
    assert c['SMVWE < CAM, confusion water (eps)']['holds'] is True
    assert c['CAM > yardstick CAM, mIoU (threshold)']['holds'] is True


def test_quality_table_and_detail(df):
    q = df.assign(level='exact')
    t = quality_table(q)
    assert '| exact | 3 | 52.0' in t
    d = detail_table(df)
    assert '| SMVWE | 60.0' in d and 'confusion water' in d


def test_a_study_records_its_wall_times(tmp_path):
    "Every run's seconds (training + scoring) are in its rows and in RESULTS/BENCH_STUDY_time.json; a cached run keeps its recorded seconds"
    import json
    from smvwe.study import protocol_study
    kw = dict(seeds=(0,), results=tmp_path/'res', progress=False, overrides={'bench.n_train': 12, 'bench.n_val': 6, 'bench.size': 64,
              'cls.epochs': 1, 'cls.crop': 64, 'cls.resize_long': (48, 64), 'cls.n_words': 8})
    df = protocol_study('yardstick', 'synth', tmp_path/'runs', **kw)
    rec = json.loads((tmp_path/'res'/'synth_yardstick_time.json').read_text())
    assert df.run_s.nunique() == 1 and df.run_s.iloc[0] > 0                     # one run: one number on each of its rows
    assert (rec['runs'], rec['cached'], rec['runs_without_seconds']) == (1, 0, 0)
    assert rec['run_s'] == df.run_s.iloc[0] and rec['per_run'] == [dict(run='yardstick-seed0', run_s=df.run_s.iloc[0], cached=False)]
    assert rec['run_s'] <= rec['wall_s'] + 0.1                                   # the run is part of the invocation (both rounded to 0.1 s)
    again = protocol_study('yardstick', 'synth', tmp_path/'runs', **kw)          # everything cached
    rec2 = json.loads((tmp_path/'res'/'synth_yardstick_time.json').read_text())
    assert (rec2['runs'], rec2['cached'], rec2['run_s']) == (1, 1, rec['run_s'])  # the recorded seconds, not the cache read's
    assert (again.run_s == df.run_s.iloc[0]).all()
    csv = pd.read_csv(tmp_path/'res'/'synth_yardstick.csv'); assert (csv.run_s == df.run_s.iloc[0]).all()
    one = protocol_study('yardstick', 'synth', tmp_path/'runs', **dict(kw, seeds=(1,)))  # another seed adds to the file
    after = pd.read_csv(tmp_path/'res'/'synth_yardstick.csv')
    assert sorted(after.seed.unique()) == [0, 1] and len(after) == len(df) + len(one)
    pd.testing.assert_frame_equal(after[after.seed == 0].reset_index(drop=True), csv, check_dtype=False)  # seed 0's rows kept as they were (values; a column's dtype is read from all its rows)


def test_committed_results_without_run_seconds_still_load():
    "Result files written before run_s existed load as before (the column is simply absent)"
    df = load_results(ROOT/'nbs'/'results', 'synth', ('variants',))
    assert df is not None and len(df) and (df.variant == 'smvwe').any()


def test_study_time_sums_the_recorded_seconds(tmp_path, capsys):
    "Hand-made runs: 12.3 s + 40.0 s recorded (one cached), one without seconds; the file and the printed line say so"
    import json
    from smvwe.study import study_time
    times = [dict(run='cam-seed0', run_s=12.3, cached=False), dict(run='vwe-seed0', run_s=40.0, cached=True), dict(run='sal-seed0', run_s=None, cached=True)]
    rec = study_time(times, 14.0, tmp_path/'t.json', True, '[synth variants]')
    assert json.loads((tmp_path/'t.json').read_text()) == rec
    assert (rec['run_s'], rec['runs'], rec['cached'], rec['runs_without_seconds'], rec['wall_s']) == (52.3, 3, 2, 1, 14.0)
    out = capsys.readouterr().out
    assert out.strip() == '[synth variants] 3 runs (2 cached): 52 s of training and scoring (1 runs without recorded seconds); this invocation 14 s wall time'


def test_runs_side_by_side_write_the_same_rows(tmp_path):
    "jobs=2 (each run in its own process with its share of the cores) writes the rows of the runs one after another with that many threads, in the same order"
    import torch
    from smvwe.parallel import rank_cores
    from smvwe.study import protocol_study
    kw = dict(seeds=(0,), progress=False, overrides={'bench.n_train': 12, 'bench.n_val': 6, 'bench.size': 64, 'cls.epochs': 1, 'cls.crop': 64,
                                                     'cls.resize_long': (48, 64), 'cls.n_words': 8})
    n = torch.get_num_threads(); torch.set_num_threads(max(1, rank_cores() // 2))  # a lane's threads
    try: one = protocol_study('variants', 'synth', tmp_path/'a', results=tmp_path/'ra', **kw)
    finally: torch.set_num_threads(n)
    two = protocol_study('variants', 'synth', tmp_path/'b', results=tmp_path/'rb', jobs=2, **kw)
    assert list(two.variant.unique()) == ['cam', 'vwe', 'sal', 'smvwe']
    pd.testing.assert_frame_equal(one.drop(columns='run_s'), two.drop(columns='run_s'))
    csv = [pd.read_csv(tmp_path/r/'synth_variants.csv').drop(columns='run_s') for r in ('ra', 'rb')]
    pd.testing.assert_frame_equal(*csv)
    assert all((tmp_path/'b'/'synth'/RUNS/f'{v}-seed0'/'log.txt').exists() for v in ('cam', 'smvwe'))  # each lane's output, in its run folder


def test_deeplab_study_side_by_side_keeps_the_runs_order(tmp_path):
    "The DeepLab study through `variant_runs` with two lanes: one row per seed and variant, in seed-then-variant order, in the frame and the file"
    from smvwe.study import protocol_study
    ov = {'bench.n_train': 12, 'bench.n_val': 6, 'bench.size': 64, 'cls.epochs': 1, 'cls.crop': 64, 'cls.resize_long': (48, 64), 'cls.n_words': 8,
          'seg.epochs': 1, 'seg.bs': 4}
    df = protocol_study('deeplab', 'synth', tmp_path/'runs', seeds=(0, 1), results=tmp_path/'res', progress=False, overrides=ov, jobs=2)
    order = [['cam', 0], ['smvwe', 0], ['cam', 1], ['smvwe', 1]]
    assert df[['variant', 'seed']].values.tolist() == order
    assert pd.read_csv(tmp_path/'res'/'synth_deeplab.csv')[['variant', 'seed']].values.tolist() == order
    assert df.pseudo_miou.between(0, 1).all() and df.miou.between(0, 1).all()
    assert (tmp_path/'runs'/'synth'/RUNS/'smvwe-seed1'/'seg_log.txt').exists()   # DeepLab ran in a lane, its output in its run folder
