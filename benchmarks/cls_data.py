#!/usr/bin/env python
"""The data share of a classifier training step: the studies' training with its real data loading against the same
training on batches already in memory, interleaved epochs in one process.

A study's run trains its classifier with `smvwe.train.cls_learner` on `smvwe.data.cls_dls` batches, loaded in the
training process (`num_workers=0`, as `train_cls` builds them): every batch is read from the decoded-file cache,
augmented (random resize, crop, flip) and collated between two steps, so whatever it costs adds to the step. Here the
same `Learner` (the preset's model, loss, metrics, precision and memory format, SMVWE by default) fits one epoch at a
time, alternately on its real train loader and on a list of batches drawn from that loader once (in memory), for
`--rounds` rounds; a callback clocks each step (fastai's `before_batch` to `after_batch`: forward, loss, backward,
optimiser, metrics) and the time between two steps (fetching the next batch). Printed: the median per step of both,
wall and CPU (process) time, and the data share, fetch / (fetch + step) with the real loader; and the in-memory step
beside it (the step without loading).

    python benchmarks/cls_data.py                                   # the drawn benchmark's preset (`default`), one thread
    python benchmarks/cls_data.py --preset real --root runs/protocol/emoji/data
    python benchmarks/cls_data.py --quick                           # a few steps, well under a minute (tests)
    python benchmarks/cls_data.py --json nbs/results/cls_data.json --label avx2_float32

Without `--root` a drawn benchmark of one epoch's images (the preset's size) is written to a temporary folder first.
`--amp auto` (the default) picks the precision as the studies do (`smvwe.precision.cpu_precision`): the data share
depends on it, since a float32 step on a CPU that emulates bfloat16 is several times shorter than a bf16 one.
"""
import argparse, json, os, platform, sys, tempfile, time
from statistics import median
from dataclasses import replace
from pathlib import Path

import torch


def clocked(learn):
    "Add callbacks to `learn` that record, per training step, the wall / CPU seconds of the step and of fetching its batch"
    from fastai.callback.core import Callback, CancelValidException
    now = lambda: (time.perf_counter(), time.process_time())
    class Start(Callback):
        order = -1000  # before every other callback's before_batch: the batch has just been fetched
        def __init__(self): self.rec = []
        def before_train(self): self.last = now()      # the iterator is made after this: its first batch counts as a fetch
        def before_batch(self):
            if self.training: self.t0 = now()
        def before_validate(self): raise CancelValidException()  # the training step only
    class End(Callback):
        order = 1000  # after every other callback's after_batch (the recorder's metrics included): the step is over
        def after_batch(self):
            if not self.training: return
            t0, t1 = start.t0, now()
            start.rec.append(dict(fetch_wall=t0[0] - start.last[0], fetch_cpu=t0[1] - start.last[1], step_wall=t1[0] - t0[0], step_cpu=t1[1] - t0[1]))
            start.last = t1
    start = Start(); learn.add_cbs([start, End()])
    return start


class InMemory:
    "A list of batches standing in for a fastai train `DataLoader` (what `Learner.fit` asks of one)"
    def __init__(self, dl, batches): self.batches, self.bs, self.device, self.n, self.n_inp = batches, dl.bs, dl.device, dl.n, dl.n_inp
    def __len__(self): return len(self.batches)
    def __iter__(self): return iter(self.batches)


def measure(root, preset:str='default', amp:str='auto', variant:str='smvwe', rounds:int=3, steps:int|None=None) -> dict:
    "Per way (loader, memory): per-step median wall / CPU ms of the step and of the fetch, over `rounds` interleaved epochs"
    from fastai.callback.progress import ProgressCallback
    from smvwe.data import cls_dls
    from smvwe.experiment import get_preset, with_precision
    from smvwe.train import cls_learner
    p = with_precision(get_preset(preset), amp)
    cfg = replace(p.cls, variant=variant, seed=0)
    dls = cls_dls(root, crop=cfg.crop, resize_long=cfg.resize_long or (cfg.crop, round(cfg.crop * 768 / 448)), jitter=cfg.jitter, bs=cfg.bs,
                  seed=0, device='cpu', sal_dir=cfg.sal_dir)  # as train_cls builds them (its default resize range included)
    learn = cls_learner(dls, cfg); learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    real = dls.train
    mem = InMemory(real, [tuple(t.clone() for t in b) for _, b in zip(range(steps or len(real)), real)])
    cb = clocked(learn)
    out = {w: [] for w in ('loader', 'memory')}
    learn.fit(1)  # warm-up: the first epoch fills the decoded-file cache and oneDNN's kernels (untimed)
    for r in range(rounds):
        for way in (('loader', 'memory') if r % 2 == 0 else ('memory', 'loader')):
            learn.dls.loaders[0] = real if way == 'loader' else mem  # `dls.train` is read-only: its list
            cb.rec = []; learn.fit(1)
            out[way] += cb.rec[:steps] if steps else cb.rec
    learn.dls.loaders[0] = real
    res = {}
    for way, recs in out.items():
        res[way] = {k: 1e3 * median([x[k] for x in recs]) for k in ('fetch_wall', 'fetch_cpu', 'step_wall', 'step_cpu')}
        res[way]['n'] = len(recs)
        tot = [x['fetch_wall'] + x['step_wall'] for x in recs]
        res[way]['total_wall'] = 1e3 * median(tot)
        res[way]['share_wall'] = sum(x['fetch_wall'] for x in recs) / sum(tot)
        res[way]['share_cpu'] = sum(x['fetch_cpu'] for x in recs) / sum(x['fetch_cpu'] + x['step_cpu'] for x in recs)
    res['recipe'] = dict(preset=preset, variant=variant, amp=cfg.amp, bs=cfg.bs, crop=cfg.crop, channels_last=cfg.channels_last,
                         batches=len(mem), images=len(dls.train_ds))
    return res


def table(res:dict, head:str) -> str:
    L = [head, '', '| batches | fetch wall ms | fetch CPU ms | step wall ms | step CPU ms | fetch + step wall ms | data share (wall) | data share (CPU) |',
         '|---|---|---|---|---|---|---|---|']
    for way in ('loader', 'memory'):
        r = res[way]
        L.append(f"| {'real loader' if way == 'loader' else 'in memory'} ({r['n']} steps) | {r['fetch_wall']:.1f} | {r['fetch_cpu']:.1f} | "
                 f"{r['step_wall']:.1f} | {r['step_cpu']:.1f} | {r['total_wall']:.1f} | {100 * r['share_wall']:.1f} % | {100 * r['share_cpu']:.1f} % |")
    L += ['', f"real loader / in memory, fetch + step (wall): {res['loader']['total_wall'] / res['memory']['total_wall']:.3f}x"]
    return '\n'.join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--root', help='a benchmark folder of the preset\'s kind (default: write a drawn one of one epoch to a temporary folder)')
    ap.add_argument('--preset', default='default', help="a `smvwe.experiment.PRESETS` name: default (the drawn benchmark's) or real (OpenMoji's)")
    ap.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'none'), help='precision, as `smvwe protocol --amp`')
    ap.add_argument('--variant', default='smvwe', choices=('cam', 'vwe', 'sal', 'smvwe'))
    ap.add_argument('--rounds', type=int, default=4, help='epochs per way, interleaved')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (a study runs one per run with --jobs 2)')
    ap.add_argument('--quick', action='store_true', help='2 rounds of 4 steps')
    ap.add_argument('--json', help='write the results to this JSON file (atomically; one entry per --label)')
    ap.add_argument('--label', default='run')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from smvwe.experiment import get_preset
    from smvwe.precision import cpu_kind
    steps, rounds = (4, 2) if a.quick else (None, a.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.root
        if root is None:
            from smvwe.synth import make_benchmark
            p = get_preset(a.preset); b = p.bench
            if b.kind != 'synth': sys.exit(f'--preset {a.preset}: its benchmark is {b.kind}; pass --root (a benchmark folder of that kind, e.g. runs/protocol/emoji/data)')
            n = p.cls.bs * (steps or 12)
            root = make_benchmark(Path(tmp)/'bench', n_train=n, n_val=8, size=b.size)
        elif not Path(root).is_dir(): sys.exit(f'--root {root}: no such folder; pass a benchmark folder or omit --root')
        res = measure(root, a.preset, a.amp, a.variant, rounds, steps)
    head = (f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, {a.threads} torch thread(s), cpu {cpu_kind()}; "
            f"load average {os.getloadavg()[0]:.2f}; {res['recipe']}")
    print(table(res, head), flush=True)
    if a.json:
        from smvwe.files import atomic_save
        path = Path(a.json); old = json.loads(path.read_text()) if path.exists() else {}
        old[a.label] = dict(command=' '.join(['benchmarks/cls_data.py'] + (argv if argv is not None else sys.argv[1:])), head=head, cpu=cpu_kind(), **res)
        atomic_save(json.dumps(old, indent=1) + '\n', path)
    return res


if __name__ == '__main__': main()
