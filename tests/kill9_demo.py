"""`kill -9` at random moments of `smvwe demo --quick`, then the same command to the end: metrics.json must be
byte-identical to an uninterrupted run's (pseudo labels and figures may be regenerated, numbers may not change).

    python tests/kill9_demo.py --work /tmp/kill9 --kills 3 --seed 0

Not collected by pytest (it takes a few uninterrupted demo runs of wall time); exit status 0 when the bytes match.
"""
import argparse, os, random, signal, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(cwd:Path) -> subprocess.Popen:
    "`smvwe demo --quick --out demo --quiet` in `cwd`, in a process group of its own (its worker processes die with it)"
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, '-m', 'smvwe.cli', 'demo', '--quick', '--out', 'demo', '--quiet'], cwd=cwd, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(p:subprocess.Popen, what:str):
    err = p.communicate()[1]
    if p.returncode: sys.exit(f'{what} failed (exit {p.returncode}):\n{err}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', default='/tmp/smvwe-kill9', help='folder for the two runs (ref/demo and cut/demo)')
    ap.add_argument('--kills', type=int, default=3, help='how many times the second run is killed')
    ap.add_argument('--seed', type=int, default=0, help='seed of the kill times')
    a = ap.parse_args()
    work, rng = Path(a.work), random.Random(a.seed)
    t0 = time.time(); finish(start(work/'ref'), 'the uninterrupted run'); T = time.time() - t0
    print(f'uninterrupted run: {T:.0f} s')
    for k in range(a.kills):
        p = start(work/'cut'); at = rng.uniform(0.05, 0.9) * T
        time.sleep(at)
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait(); print(f'kill -9 #{k + 1} after {at:.0f} s')
        else: print(f'run #{k + 1} finished before its kill at {at:.0f} s')
    finish(start(work/'cut'), 'the resumed run')
    a_, b_ = (work/'ref'/'demo'/'metrics.json').read_bytes(), (work/'cut'/'demo'/'metrics.json').read_bytes()
    print('metrics.json byte-identical' if a_ == b_ else 'metrics.json DIFFERS')
    sys.exit(0 if a_ == b_ else 1)


if __name__ == '__main__': main()
