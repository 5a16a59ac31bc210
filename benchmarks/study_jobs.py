#!/usr/bin/env python
"""A study's runs side by side: the same study with `--jobs 1` (one run at a time with every core) and `--jobs 2` (two at a time, half the cores each).

Both invocations run the same study (`smvwe.study.protocol_study`) on the same benchmark, written once before the
clock starts, into fresh run and result folders, one after the other: `jobs=1` first, then `jobs=2`. Per invocation:
its wall time, the CPU time of this process and its lanes (children), and the sum of its runs' recorded seconds
(`run_s`: training and scoring of each run, from `RESULTS/BENCH_STUDY_time.json`). The figure to read is the ratio
of the wall times (jobs 1 / jobs 2: above 1, two at a time is faster). The mIoU of every row of the two is compared
too: they agree bit for bit only where a run's thread count does not change its arithmetic (bf16 training on a CPU
does change; `tests/test_protocol.py` checks bit-equality with the lanes' thread count on both sides).

    python benchmarks/study_jobs.py --json nbs/results/study_jobs.json   # synth variants, seed 0, 5 epochs: about 9 min on 2 cores
    python benchmarks/study_jobs.py --quick                               # CI: 12 + 6 images of 64 px, 1 epoch
"""
import argparse, json, os, platform, resource, shutil, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smvwe.experiment import study_preset
from smvwe.files import atomic_save
from smvwe.precision import cpu_kind
from smvwe.study import bench_root, protocol_study

QUICK = {'bench.n_train': 12, 'bench.n_val': 6, 'bench.size': 64, 'cls.epochs': 1, 'cls.crop': 64, 'cls.resize_long': (48, 64), 'cls.n_words': 8}


def cpu_s() -> float:
    "CPU seconds of this process and of its waited-for children (the lanes)"
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--study', default='variants', help='a study of `smvwe protocol` (variants: 4 runs per seed)')
    ap.add_argument('--bench', default='synth', help='synth or emoji')
    ap.add_argument('--seeds', default='0', help='training seeds, comma-separated')
    ap.add_argument('--epochs', type=int, default=5, help="epochs per run (the benchmark's preset otherwise)")
    ap.add_argument('--out', default=None, help='work folder (default: a temporary one, removed)')
    ap.add_argument('--json', default=None, help='write the numbers here')
    ap.add_argument('--quick', action='store_true', help='tiny benchmark, 1 epoch (CI)')
    a = ap.parse_args(argv)
    ov = dict(QUICK) if a.quick else {'cls.epochs': a.epochs}
    work = Path(a.out or tempfile.mkdtemp(prefix='study_jobs'))
    seeds = [int(s) for s in a.seeds.split(',')]
    header = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, cpu {cpu_kind()}; "
              f"load average {os.getloadavg()[0]:.2f}; {a.bench} {a.study}, seeds {a.seeds}, changes {ov}")
    print(header, flush=True)
    root = bench_root(study_preset(a.bench, 'scratch', ov), work/'data')
    res, frames = {}, {}
    for j in (1, 2):
        t, c = time.time(), cpu_s()
        df = protocol_study(a.study, a.bench, work/f'out{j}', seeds, work/f'res{j}', root, progress=False, overrides=ov, jobs=j)
        wall, cpu = time.time() - t, cpu_s() - c
        rec = json.loads((work/f'res{j}'/f'{a.bench}_{a.study}_time.json').read_text())
        res[j] = dict(wall_s=round(wall, 1), cpu_s=round(cpu, 1), run_s=rec['run_s'], runs=rec['runs'])
        frames[j] = df.drop(columns='run_s', errors='ignore').reset_index(drop=True)
        print(f"jobs {j}: {res[j]['runs']} runs, wall {wall:.1f} s, CPU {cpu:.1f} s, runs' own seconds {rec['run_s']:.1f}", flush=True)
    same = frames[1].shape == frames[2].shape and list(frames[1].columns) == list(frames[2].columns)
    d = (frames[1]['miou'] - frames[2]['miou']).abs() if same else None  # the score of every row: read-out x CRF x threshold x split
    diff = dict(max=round(float(d.max()), 4), mean=round(float(d.mean()), 4), rows=len(d)) if same else None
    ratio = res[1]['wall_s'] / res[2]['wall_s']
    lines = [header, '', '| jobs | runs | wall s | CPU s (with lanes) | sum of runs\' seconds | wall ratio to jobs 1 |', '|---|---|---|---|---|---|']
    lines += [f"| {j} | {r['runs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['run_s']:.1f} | {res[1]['wall_s'] / r['wall_s']:.2f}x |" for j, r in res.items()]
    lines += ['', f"rows: {'the same layout' if same else 'DIFFERENT layouts'}" + (f"; |mIoU difference| over its {diff['rows']} rows: largest {diff['max']:.4f}, "
                  f"mean {diff['mean']:.4f} (threads per run: all cores vs half)" if same else '')]
    print('\n'.join(lines))
    if a.json:
        atomic_save(json.dumps(dict(script='benchmarks/study_jobs.py', argv=sys.argv[1:] if argv is None else argv, header=header,
                                                jobs=res, wall_ratio=round(ratio, 3), same_layout=same, miou_diff=diff, table=lines), indent=1) + '\n', a.json)
    if not a.out: shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
