"`smvwe demo` end to end: the quick preset writes metrics.json, figures and report.md; a second run resumes."
import json, os
from pathlib import Path

from smvwe.cli import main
from smvwe.train import VARIANTS


def _scores(m):
    "The metrics that must not change when a finished run is resumed."
    v = {k: (r['miou'], r['boundary']['f1'], {p: c['ratio'] for p, c in r['confusion'].items()}, r.get('word_miou'))
         for k, r in m['variants'].items()}
    return v, {k: r['miou'] for k, r in m['seg'].items()}


def test_demo_quick_end_to_end_and_resume(tmp_path):
    out = tmp_path / 'demo'
    assert main(['demo', '--quick', '--out', str(out), '--quiet']) == 0
    m = json.loads((out / 'metrics.json').read_text())
    assert sorted(m['variants']) == sorted(VARIANTS)                     # all four variants scored on val
    assert sorted(m['seg']) == ['cam', 'smvwe']                          # DeepLab on CAM and SMVWE pseudo labels
    assert m['preset'] == 'quick' and '--quick' in m['command']
    from smvwe.precision import cpu_precision                             # --amp auto: bf16 where this CPU has it natively
    assert m['recipe']['amp'] == cpu_precision('auto', 'bf16') and '--amp' not in m['command']
    for v, r in m['variants'].items():
        assert 0 <= r['miou'] <= 1 and r['n_images'] == 12, v
        assert set(r['confusion']) == {'water', 'rails'}, v
        assert r['pseudo_mode'] == ('argmax' if v in ('sal', 'smvwe') else 'threshold'), v
        assert len(list((out / v / 'pseudo_val' / 'pseudo').glob('*.png'))) == 12, v
        assert ('word_miou' in r) == (v in ('vwe', 'smvwe')), v
    for v in ('cam', 'smvwe'):                                           # train-split pseudo labels feed DeepLab
        assert len(list((out / v / 'pseudo_train' / 'pseudo').glob('*.png'))) == 24
        assert (out / v / 'seg' / 'model.pth').is_file() and 0 <= m['seg'][v]['miou'] <= 1
    assert {p.name for p in (out / 'figures').glob('*.png')} == {'bars.png', 'qualitative.png', 'words.png'}
    report = (out / 'report.md').read_text()
    assert 'SMVWE' in report and 'figures/bars.png' in report and 'DeepLab' in report
    assert set(m['claims']) >= {'smvwe_beats_cam_miou', 'smvwe_raises_boundary_f1', 'seg_smvwe_beats_cam'}
    assert not list(out.rglob('*.tmp'))
    # a second run finds every stage done: same metrics, no epoch trained (checkpoints untouched), no map or label made again
    for p in out.rglob('*'):
        if p.is_file(): os.utime(p, ns=(10**18, 10**18))                    # a stamp no write can produce
    assert main(['demo', '--quick', '--out', str(out), '--quiet']) == 0
    m2 = json.loads((out / 'metrics.json').read_text())
    assert _scores(m2) == _scores(m)
    stages = [p for p in out.rglob('*') if p.is_file() and (p.suffix in ('.npy', '.png') or p.name == 'checkpoint.pth')
              and 'figures' not in p.parts]
    assert len([p for p in stages if p.name == 'checkpoint.pth']) == 4 + 2          # every variant's classifier, both DeepLabs
    assert len(stages) > 4 * 12 * 3
    rewritten = sorted(str(p.relative_to(out)) for p in stages if p.stat().st_mtime_ns != 10**18)
    assert rewritten == [], rewritten[:10]


def test_demo_with_another_seed_in_a_used_folder(tmp_path, capsys):
    "The benchmark's advice (--overwrite) is not a demo option: the demo says to choose another --out"
    from smvwe.demo import get_preset
    from smvwe.synth import make_benchmark
    p = get_preset('quick')
    make_benchmark(tmp_path/'d'/'data', n_train=p.bench.n_train, n_val=p.bench.n_val, size=p.bench.size, seed=0, progress=False)
    assert main(['demo', '--quick', '--out', str(tmp_path/'d'), '--seed', '1', '--quiet']) == 1
    err = capsys.readouterr().err
    assert 'choose a new --out folder' in err and '--overwrite' not in err and len(err.strip().splitlines()) == 1, err


def test_demo_bad_arguments(tmp_path, capsys):
    assert main(['demo', '--out', str(tmp_path / 'x'), '--epochs', '3']) == 2      # unknown option: argparse error
    bad = tmp_path / 'taken'; (bad / 'data').mkdir(parents=True); (bad / 'data' / 'notes.txt').write_text('mine')
    assert main(['demo', '--quick', '--out', str(bad), '--quiet']) == 1           # refuses to write over a foreign folder
    assert 'not a benchmark folder' in capsys.readouterr().err
