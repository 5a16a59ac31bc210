"The benchmark scripts run end to end at a tiny size and check what they claim to check"
import subprocess, sys
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pseudo_scaling_outputs_are_identical_across_worker_counts():
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'pseudo_scaling.py'), '--n', '4', '--size', '48', '--workers', '0,1,2',
                        '--repeat', '1', '--scales', '1', '--crf-n', '2', '--crf-size', '48,64'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    cut = next(i for i, l in enumerate(lines) if l.startswith('dense CRF alone'))
    rows = lambda ls: [l.split() for l in ls if l.strip() and l.split()[0] in ('0', '1', '2')]
    pipe, crf = rows(lines[:cut]), rows(lines[cut:])
    assert [r[0] for r in pipe] == ['0', '1', '2'] and all(r[-1] == 'identical' for r in pipe)
    assert pipe[1][3] == '1.00x'  # the 1-worker row is the reference
    assert [r[0] for r in crf] == ['1', '2'] and all(r[-1] == 'identical' for r in crf) and crf[0][3] == '1.00x'


def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    "`gpu_check.py --device cpu`: the same checks as on a GPU at tiny sizes; every correctness check passes."
    import json
    out = tmp_path / 'gpu_check.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'gpu_check.py'), '--device', 'cpu', '--json', str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rows = json.loads(out.read_text())['rows']
    by = lambda sec: [x for x in rows if x['section'] == sec]
    checks = ' | '.join(x['check'] for x in by('correct'))
    for want in ('word distance fp32', 'word distance bf16 autocast', 'SMVWE loss value', 'variant cam:', 'variant vwe:',
                 'variant sal:', 'variant smvwe:', 'DeepLab-V1', 'DeepLab-V2', 'localization maps'):
        assert want in checks, want
    assert all(x['ok'] is True for x in by('correct') + by('ddp') if x['tol'] is not None), [x for x in rows if x['ok'] is False]
    assert len([x for x in by('ddp') if x['ok']]) == 2
    share = by('profile')[0]['value']
    assert 0 < share < 100
    thr = by('throughput')
    assert len(thr) == 12 and all(x['value'] and x['value'] > 0 for x in thr), thr   # 3 models x fp32/bf16 x channels-last
    assert 'word distance' in r.stdout and 'throughput' in r.stdout   # the printed table


def test_gpu_check_without_a_gpu_says_so():
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'gpu_check.py'), '--device', 'cuda', '--skip', 'throughput'],
                       capture_output=True, text=True, timeout=300, env={**__import__('os').environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert r.returncode != 0 and 'no CUDA device is visible' in r.stderr and 'Traceback' not in r.stderr


def test_word_distance_benchmark_measures_its_ceiling_in_the_run():
    "The word-distance benchmark prints the in-run ceiling and the fused kernel's ratio to it."
    import re
    from smvwe.distance import load_ext
    if load_ext() is None: import pytest; pytest.skip('fused kernel not built')
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'word_distance.py'), '--size', 'small', '--impls', 'fused',
                        '--broadcast-gb', '0', '--threads', '2'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    num = r'([\d.]+)'
    rate, t_ceil = map(float, re.search(rf'ceiling \(streaming .*?\) {num} G terms/s -> 3V = [\d.]+ G terms take {num} s', r.stdout).groups())
    ratio, total, t_ceil2 = map(float, re.search(rf'fused/ceiling = {num} \(fwd\+bwd {num} s over {num} s', r.stdout).groups())
    cpu_ratio = float(re.search(rf'fused/ceiling in CPU time = {num}', r.stdout).group(1))
    V = 1 * 512 * 28 * 28 * 64                                       # the small size: B K H W N, one term per (pixel, word, channel)
    assert t_ceil == t_ceil2
    # the ceiling time is 3V terms at the ceiling's rate (rate printed to 0.1 G terms/s)
    assert 3 * V / ((rate + 0.05) * 1e9) - 5e-4 <= t_ceil <= 3 * V / ((rate - 0.05) * 1e9) + 5e-4, (rate, t_ceil)
    # the ratio (printed to 2 places) of the two times (printed to 3): inside the interval their rounding allows
    lo, hi = (total - 5e-4) / (t_ceil + 5e-4), (total + 5e-4) / (t_ceil - 5e-4) if t_ceil > 5e-4 else float('inf')
    assert lo - 0.005 <= ratio <= hi + 0.005, (ratio, total, t_ceil)
    # a kernel doing the ceiling's work plus more cannot take half its time (measured 1.2-1.3 in CPU time)
    assert cpu_ratio >= 0.5, r.stdout[-2000:]


def test_demo_profile_quick(tmp_path):
    "`demo_profile.py --quick`: both recipes' demos run; every stage's seconds of both runs and their ratio are printed"
    import json
    out = tmp_path / 'dp.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'demo_profile.py'), '--quick', '--no-seg', '--work', str(tmp_path/'w'),
                        '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    res = json.loads(out.read_text())
    assert set(res) == {'previous', 'current'}
    stages = res['current']['timings']['stages']
    for v in ('cam', 'vwe', 'sal', 'smvwe'): assert f'{v}_train' in stages and f'{v}_train' in res['previous']['timings']['stages']
    rows = {l.split('|')[1].strip(): l for l in r.stdout.splitlines() if l.startswith('| ') and l.count('|') == 5}
    prev, cur = res['previous']['timings']['stages']['cam_train'], stages['cam_train']
    assert f'{prev / cur:.2f}' in rows['cam_train']   # the ratio printed is previous / current
    # the previous run really ran as before the speed work: float32, one training at a time; the current one side by side,
    # in the precision `smvwe demo` picks on this CPU (bf16 where it is native, else float32)
    from smvwe.demo import default_jobs
    from smvwe.precision import cpu_precision
    assert (res['previous']['jobs'], res['current']['jobs']) == (1, default_jobs())
    amp = lambda run: json.loads((tmp_path/'w'/run/'cam'/'config.json').read_text())['train_cls']['amp']
    assert (amp('previous'), amp('current')) == (None, cpu_precision('auto', 'bf16'))
    assert set(res['current']['claims']) == set(res['previous']['claims'])


@pytest.mark.parametrize('amp', ['auto', 'none', 'bf16'])
def test_pretrain_data_quick(tmp_path, amp):
    "`pretrain_data.py --quick`: the step from memory, with `compose`, with `compose_reference`; the shares are the printed times' ratios"
    import json
    out = tmp_path / 'pd.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'pretrain_data.py'), '--quick', '--threads', '1', '--json', str(out), '--amp', amp],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    res = json.loads(out.read_text()); w = res['ways']
    assert set(w) == {'memory', 'compose', 'reference'} and res['meta']['rounds'] == 2 and res['meta']['recipe']['classes'] == 8
    from smvwe.precision import cpu_precision
    assert res['meta']['recipe']['amp'] == cpu_precision(amp, 'bf16')   # the step's precision, as `smvwe pretrain` resolves it, recorded
    assert w['memory']['data_s'] == w['memory']['data_cpu'] == 0
    for way in ('compose', 'reference'):
        o = w[way]
        assert len(o['rounds']['wall']) == 2 and 0 < o['data_s'] < o['wall'] * 1.01 and o['data_cpu'] > 0
        assert abs(o['share_wall'] - (o['wall'] - w['memory']['wall']) / o['wall']) < 1e-12
        line = next(l for l in r.stdout.splitlines() if l.startswith(way + ' '))
        assert f"{1000 * o['data_cpu']:.1f}" in line and f"{100 * o['timed_share_cpu']:.1f}%" in line
    assert 'reference / compose' in r.stdout


def test_variant_step_quick(tmp_path):
    "`variant_step.py --quick`: every variant's step, its ratio to CAM, the encoder's parts beside the whole and the floor"
    import json, math, re
    out = tmp_path / 'vs.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'variant_step.py'), '--quick', '--out', str(out), '--label', 'ci'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    run = json.loads(out.read_text())['runs']['ci']
    assert all(l in r.stdout for l in run['table'])            # the file keeps what was printed
    demo = run['sizes']['demo']
    from smvwe.experiment import PRESETS
    c = PRESETS['default'].cls
    assert demo['recipe'] == dict(backbone=c.backbone, crop=c.crop, bs=c.bs, n_words=c.n_words, amp=c.amp, channels_last=c.channels_last)
    v = demo['variants']
    assert list(v) == ['cam', 'vwe', 'sal', 'smvwe'] and v['cam']['ratio'] == 1.0
    for name, x in v.items():
        assert x['cpu_ms'] > 0 and x['wall_ms'] > 0 and x['n'] == 4 and math.isfinite(x['loss0'])
        assert math.isclose(x['ratio'], x['cpu_ms'] / v['cam']['cpu_ms'])
        row = re.search(rf'^\| {name} \| ([\d.]+) \| ([\d.]+) \| 4 \| ([\d.]+) \|', r.stdout, re.M)   # the printed row agrees
        cpu, ratio = float(row.group(1)), float(row.group(3))
        assert abs(cpu - x['cpu_ms']) <= 0.05 and abs(ratio - x['ratio']) <= 5e-4
        assert abs(ratio - cpu / float(re.search(r'^\| cam \| ([\d.]+) \|', r.stdout, re.M).group(1))) < 0.01
    assert v['cam']['loss0'] != v['smvwe']['loss0']          # the word terms are in SMVWE's loss, not in CAM's
    enc = demo['encoder']; p = enc['parts']
    s = enc['shape']; assert enc['V'] == s['B'] * s['H'] * s['W'] * s['N'] * s['K'] and s['N'] == c.n_words
    parts = ('standardise', 'distance fwd', 'distance bwd', 'softmax', 'word labels', 'histogram', 'heads')
    assert all(p[k]['cpu_ms'] > 0 for k in parts + ('whole',))
    total = sum(p[k]['cpu_ms'] for k in parts)
    assert 0.5 < total / p['whole']['cpu_ms'] < 2, (total, p['whole'])   # the parts account for the whole, give or take
    assert f"parts / whole = {total / p['whole']['cpu_ms']:.3f}" in r.stdout
    from smvwe.distance import load_ext
    if load_ext() is not None:                                 # the floor: 3V terms at the in-run ceiling's rate (median of the start and each pass)
        import statistics
        rates = [run['floor_terms_per_s']] + enc['floor_rates']; assert len(rates) == 3 and min(rates) > 1e9
        assert math.isclose(demo['floor_ms'], 1e3 * 3 * enc['V'] / statistics.median(rates))
        ratio = float(re.search(r'distance fwd\+bwd / floor = ([\d.]+)', r.stdout).group(1))
        assert abs(ratio - (p['distance fwd']['cpu_ms'] + p['distance bwd']['cpu_ms']) / demo['floor_ms']) < 1e-3
        assert ratio > 0.5                                     # no kernel beats the arithmetic by 2x
        ab = enc['distance_ab']                                # the distance as before its in-place reading, in the same run
        r_ab = float(re.search(r'before / now = ([\d.]+)', r.stdout).group(1))
        assert ab['before']['cpu_ms'] > 0 and abs(r_ab - ab['before']['cpu_ms'] / ab['now']['cpu_ms']) < 1e-3
    assert 'paper' not in run['sizes']                         # --quick: the demo size only


def test_variant_step_encoder_only(tmp_path):
    "`--encoder-only --passes 2`: no training steps; each pass's whole over the floor at that pass's rate, their median printed"
    import json, re, statistics
    out = tmp_path / 'vs.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'variant_step.py'), '--quick', '--encoder-only', '--passes', '2', '--amp', 'none',
                        '--out', str(out), '--label', 'ci'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    demo = json.loads(out.read_text())['runs']['ci']['sizes']['demo']
    assert demo['variants'] is None and '| variant |' not in r.stdout and demo['recipe']['amp'] is None
    enc = demo['encoder']; pp = enc['whole_per_pass']
    assert len(pp) == 2 and enc['parts']['whole']['cpu_ms'] == statistics.median(pp)   # the whole: the median of its passes
    from smvwe.distance import load_ext
    if load_ext() is not None:
        q = [c * rt / (3e3 * enc['V']) for c, rt in zip(pp, enc['floor_rates'])]
        m = re.search(r'pass by pass \(each pass\'s rate\): median ([\d.]+), range ([\d.]+)-([\d.]+) over 2 passes', r.stdout)
        assert m and abs(float(m.group(1)) - statistics.median(q)) < 1e-3
        assert abs(float(m.group(2)) - min(q)) < 1e-3 and abs(float(m.group(3)) - max(q)) < 1e-3
    bad = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'variant_step.py'), '--passes', '0'], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and '--passes 0: give at least 1' in bad.stderr.strip().splitlines()[-1]   # one line naming the argument


def test_variant_step_precision_override():
    "`variant_step.py --amp none|bf16` changes only the precision of both sizes' recipes; 'preset' keeps the demo preset's"
    import importlib.util
    spec = importlib.util.spec_from_file_location('variant_step', ROOT/'benchmarks'/'variant_step.py')
    vs = importlib.util.module_from_spec(spec); spec.loader.exec_module(vs)
    from dataclasses import replace
    from smvwe.experiment import PRESETS
    base, fp32 = vs.configs(1, None), vs.configs(1, None, 'none')
    assert base['demo'][0] == PRESETS['default'].cls and base['demo'][0].amp == 'bf16'
    for k in ('demo', 'paper'):
        assert fp32[k][0].amp is None and fp32[k][1:] == base[k][1:] and replace(fp32[k][0], amp=base[k][0].amp) == base[k][0]


def test_study_jobs_quick(tmp_path):
    "`study_jobs.py --quick`: the same 4-run study one run at a time and two at a time, each recording its runs, with the ratio printed"
    import json
    out = tmp_path/'sj.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'study_jobs.py'), '--quick', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    rec = json.loads(out.read_text())
    assert [rec['jobs'][j]['runs'] for j in ('1', '2')] == [4, 4] and rec['same_layout']
    assert abs(rec['wall_ratio'] - rec['jobs']['1']['wall_s'] / rec['jobs']['2']['wall_s']) < 1e-3
    assert '| 2 | 4 |' in r.stdout and 'wall ratio to jobs 1' in r.stdout


def test_cls_data_times_the_step_with_and_without_its_loading(tmp_path):
    "`cls_data.py --quick`: the same steps timed with the real loader and from memory; a list hands out a batch faster than the loader makes one"
    import json
    out = tmp_path / 'cls_data.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'cls_data.py'), '--quick', '--json', str(out), '--label', 'q'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())['q']
    assert res['loader']['n'] == res['memory']['n'] == 8                      # 2 rounds x 4 steps, each way
    assert res['memory']['fetch_wall'] < res['loader']['fetch_wall']
    assert 0 < res['memory']['share_wall'] < res['loader']['share_wall'] < 1
    assert res['recipe']['preset'] == 'default' and res['recipe']['variant'] == 'smvwe' and res['recipe']['bs'] == 16
    assert '| real loader (8 steps) |' in r.stdout and 'real loader / in memory' in r.stdout
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'cls_data.py'), '--quick', '--preset', 'real'], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and '--preset real: its benchmark is emoji; pass --root' in r.stderr and 'Traceback' not in r.stderr
