#!/usr/bin/env python
"""The pretraining's data share: one training step with its batch composed on the fly vs with batches already in memory.

One step is what `smvwe pretrain` does per batch (`smvwe.pretrain`): `PretrainNet` (the small backbone at output
stride 4 + a linear classifier over the corpus classes), channels-last, forward under the run's autocast (`--amp`, as `PretrainConfig.amp`), cross-entropy
with label smoothing 0.1, backward, SGD (momentum 0.9, weight decay 5e-5), denormals flushed; at the shipped recipe's
sizes (`PretrainConfig()`: batches of 128 at 64 px from the 48 px glyph bank of the whole corpus). Three ways to get
the batches, interleaved round by round (a load that comes and goes hits all alike):

- `memory`: `--steps` batches composed before the clock starts; the step only;
- `compose`: `GlyphStream` composing each batch as training does (`smvwe.glyphs.compose`);
- `reference`: the same stream with the compositor the shipped run used (`compose_reference`, then a channels-last copy).

Per way: the median over rounds of the per-step wall time and process CPU time (all threads), and of composing's own
wall time (`GlyphStream.data_s`) and thread CPU time. The data share of a step is composing's part of the step with
composing, measured two ways: directly (composing's time / the step's, wall and CPU) and as the difference to the
step from memory ((with - without) / with; noisier on a loaded machine: two medians).

    python benchmarks/pretrain_data.py --cache runs/pretrain --json nbs/results/pretrain_data.json
    python benchmarks/pretrain_data.py --quick                  # CI: 8 classes, 24 px, batches of 8
    python benchmarks/pretrain_data.py --amp bf16               # the shipped recipe's bf16 step wherever (default auto: float32 where bfloat16 is emulated)
"""
import argparse, contextlib, json, os, platform, statistics, sys, time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import smvwe.glyphs as G
import smvwe.pretrain as P
from smvwe.precision import cpu_kind

QUICK = dict(max_classes=8, size=24, glyph=16, n_bg=8, bs=8)
WAYS = ('memory', 'compose', 'reference')


@contextlib.contextmanager
def compositor(way, cpu:list):
    "GlyphStream composes with `compose` (training's) or `compose_reference` (the shipped run's) in the block; cpu[0] += its thread CPU time"
    fast = P.compose  # the name `GlyphStream` (smvwe.pretrain) calls, imported there from smvwe.glyphs
    def ref(bank, labels, bgs, n, gen, aug=G.Augment(), channels_last=False):
        x, y = G.compose_reference(bank, labels, bgs, n, gen, aug)
        return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y
    def timed(*a, **k):
        t = time.thread_time(); r = (ref if way == 'reference' else fast)(*a, **k); cpu[0] += time.thread_time() - t
        return r
    P.compose = timed
    try: yield
    finally: P.compose = fast


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds (the median is reported)')
    ap.add_argument('--steps', type=int, default=10, help='steps of each way per round')
    ap.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's, as `smvwe pretrain`)")
    ap.add_argument('--cache', default=None, help='a folder holding glyphs-48.npz (e.g. a pretrain run folder); else the bank is rendered')
    ap.add_argument('--json', default=None, help='write the numbers here')
    ap.add_argument('--quick', action='store_true', help='tiny sizes, 2 rounds of 2 steps (CI)')
    ap.add_argument('--amp', choices=('auto', 'none', 'bf16'), default='auto', help="the step's precision: auto (as `smvwe pretrain` picks it here: the shipped recipe's bf16 where bfloat16 is native, float32 where it is emulated), none (float32) or bf16")
    a = ap.parse_args(argv)
    if a.quick: a.rounds, a.steps = 2, 2
    if a.rounds < 1 or a.steps < 1: ap.error('--rounds and --steps must be at least 1')
    if a.cache is not None and not Path(a.cache).is_dir(): ap.error(f'--cache {a.cache}: no such folder (give a pretrain run folder, or leave it out to render the bank)')
    if a.threads: torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    cfg = P.PretrainConfig(**(QUICK if a.quick else {}), amp=a.amp, progress=False)   # 'auto' resolved as `smvwe pretrain` does
    t0 = time.time(); data = P.corpus(cfg, cache=a.cache); t_corpus = time.time() - t0
    torch.manual_seed(0)
    model = P.PretrainNet(len(data['classes']), cfg.width, cfg.output_stride).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=cfg.mom, weight_decay=cfg.wd)
    loss_f = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)

    def step(x, y):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=cfg.amp == 'bf16'):
            loss = loss_f(model(x).float(), y)
        opt.zero_grad(); loss.backward(); opt.step()

    def stream(seed):
        return P.GlyphStream(data['bank'], data['labels'], data['bgs'], a.steps, cfg.bs, seed=seed, channels_last=cfg.channels_last)

    res = {w: dict(wall=[], process=[], data_s=[], data_cpu=[]) for w in WAYS}
    step(*next(iter(stream(99))))                                   # warm-up (oneDNN primitives, allocator)
    for r in range(a.rounds):
        mem = list(stream(r))                                       # the same batches the `compose` way makes this round
        for way in WAYS:
            s, cpu = stream(r), [0.]
            with compositor(way, cpu):
                w0, p0 = time.perf_counter(), time.process_time()
                for x, y in (mem if way == 'memory' else s): step(x, y)
                w1, p1 = time.perf_counter(), time.process_time()
            res[way]['wall'].append((w1 - w0) / a.steps); res[way]['process'].append((p1 - p0) / a.steps)
            res[way]['data_s'].append(0. if way == 'memory' else s.data_s / a.steps); res[way]['data_cpu'].append(cpu[0] / a.steps)
    out = {}
    for way, v in res.items():
        out[way] = dict(wall=statistics.median(v['wall']), process=statistics.median(v['process']),
                        data_s=statistics.median(v['data_s']), data_cpu=statistics.median(v['data_cpu']), rounds=v)
    for way in ('compose', 'reference'):
        o = out[way]
        o['share_wall'] = (o['wall'] - out['memory']['wall']) / o['wall']
        o['share_process'] = (o['process'] - out['memory']['process']) / o['process']
        o['timed_share_wall'] = statistics.median(d / w for d, w in zip(o['rounds']['data_s'], o['rounds']['wall']))
        o['timed_share_cpu'] = statistics.median(d / p for d, p in zip(o['rounds']['data_cpu'], o['rounds']['process']))
    meta = dict(command=' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])), threads=torch.get_num_threads(),
                torch=torch.__version__, cpu=platform.processor() or platform.machine(), cpu_kind=cpu_kind(), cpus=os.cpu_count(),
                load_avg=list(os.getloadavg()), corpus_s=round(t_corpus, 1), rounds=a.rounds, steps=a.steps,
                recipe=dict(bs=cfg.bs, size=cfg.size, glyph=cfg.glyph, classes=len(data['classes']), glyphs=len(data['codes']),
                            amp=cfg.amp, channels_last=cfg.channels_last))

    print(f"pretraining step: batch {cfg.bs} at {cfg.size} px, {len(data['classes'])} classes, {torch.get_num_threads()} threads; "
          f"median of {a.rounds} rounds x {a.steps} steps; load average {meta['load_avg'][0]:.1f}")
    print(f"{'batches':<10} {'step wall ms':>12} {'CPU ms':>8} {'composing wall ms':>18} {'CPU ms':>8}   {'data share: wall':>16} {'CPU':>6}   {'difference: wall':>16} {'CPU':>6}")
    for way in WAYS:
        o = out[way]
        sh = '' if way == 'memory' else (f"   {100 * o['timed_share_wall']:15.1f}% {100 * o['timed_share_cpu']:5.1f}%"
                                         f"   {100 * o['share_wall']:15.1f}% {100 * o['share_process']:5.1f}%")
        print(f"{way:<10} {1000 * o['wall']:12.1f} {1000 * o['process']:8.1f} {1000 * o['data_s']:18.1f} {1000 * o['data_cpu']:8.1f}{sh}")
    print(f"composing, reference / compose: {out['reference']['data_cpu'] / max(out['compose']['data_cpu'], 1e-12):.2f}x in CPU time, "
          f"{out['reference']['data_s'] / max(out['compose']['data_s'], 1e-12):.2f}x in wall time")
    if a.json:
        from smvwe.files import atomic_save
        atomic_save(json.dumps(dict(meta=meta, ways=out), indent=1) + '\n', a.json)
    return out


if __name__ == '__main__':
    main()
