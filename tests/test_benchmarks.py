"The benchmark scripts run end to end at a tiny size and check what they claim to check"
import subprocess, sys
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
