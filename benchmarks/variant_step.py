#!/usr/bin/env python
"""CPU time per training step of every variant (CAM, VWE, saliency-only, SMVWE), interleaved, and where the word encoder's time goes.

One training step is what `smvwe train-cls` does per batch: forward under bf16 autocast, `SMVWELoss` with the variant's
terms (`smvwe.train.VARIANTS`), backward, SGD (momentum 0.9, weight decay 5e-4); channels-last model and inputs;
synthetic tensors already in memory (no data loading). Two sizes:

- `demo`: the demo recipe (`smvwe.experiment.PRESETS['default']`): the small CNN from scratch, 96 px crops, batch 16,
  64 words, 5 foreground classes; the whole network.
- `paper`: the paper's encoder size, features only: ResNet38-like features (B,C,h,w) = (4, 4096, 56, 56) (a 448 crop
  at output stride 8) given as a bf16 channels-last tensor that requires a gradient, in place of the backbone
  (`model.backbone = Identity`), 256 words, 20 classes, saliency at 448 px. It measures the part of the step after
  the backbone: for CAM the 1x1 classifier and its loss, for SMVWE also the whole encoder, its two heads and the
  word losses. The backbone (ResNet38: minutes per step on a CPU) is left out.

Every variant is built once; then `--rounds` rounds each run `--steps` steps of every variant in turn (interleaved, so
a load that comes and goes hits all variants alike). Per variant we report the median over rounds of the per-step
thread CPU time (`time.thread_time`: this thread only), process CPU time (`time.process_time`: all threads) and wall
time, and the ratio of each to CAM's. Run with one thread (`--threads 1`, the default) and pinned to one core
(`taskset -c 1`) on a shared machine: then the CPU times do not depend on what else runs.

`--previous` adds a row per word variant with the encoder as it was before the speed work (standardisation in the
features' dtype by mean/var, a float32 copy transposed to (B,K,HW) for the (B,K,HW) kernel, softmax / argmax over
dim 1 of a channels-first D, and s_word's GAP by `mean`, whose expanded gradient made the features' summed gradient
channels-first), so before and after are measured in the same run.

`--parts` times the encoder's parts one by one (forward, backward; thread CPU time, median of `--part-reps`) at both
sizes, current and previous, beside the arithmetic floor of Eq. 1: V = B*HW*N*K terms |m - c| forward and 2V
backward, at the rate of a register-only |x - c| accumulate loop (`abs_diff_peak`, same build, measured in the run).

    taskset -c 1 python benchmarks/variant_step.py --previous --parts --json nbs/results/variant_step.json
    python benchmarks/variant_step.py --quick                      # CI: tiny sizes, 2 rounds
"""
import argparse, json, os, platform, statistics, sys, time
from contextlib import contextmanager

import torch
from torch import nn

VARIANTS = ('cam', 'vwe', 'sal', 'smvwe')
SIZES = {
    'demo': dict(features=False, backbone='small', size=96, bs=16, n_words=64, n_classes=5),
    'paper': dict(features=True, C=4096, h=56, size=448, bs=4, n_words=256, n_classes=20),
}
QUICK = {
    'demo': dict(features=False, backbone='small', size=32, bs=2, n_words=8, n_classes=5),
    'paper': dict(features=True, C=64, h=8, size=64, bs=2, n_words=16, n_classes=20),
}


# ---------------------------------------------------------------- the encoder before the speed work (for --previous)
def _prev_standardize(feats, eps=1e-5):
    mu = feats.mean(1, keepdim=True)
    var = feats.var(1, keepdim=True, unbiased=False)
    return (feats - mu) * torch.rsqrt(var + eps)

def _prev_word_distance(feats, codebook, impl='auto', chunk=None):
    from smvwe.distance import L1Fused, load_ext
    load_ext()
    B, K, H, W = feats.shape
    dt = torch.promote_types(feats.dtype, codebook.dtype)
    M, C = feats.reshape(B, K, H * W).to(dt), codebook.to(dt)
    return L1Fused.apply(M, C).view(B, C.shape[0], H, W)

def _prev_word_probs(D, tau=1., sign=-1): return (D * (sign / tau)).softmax(1)

def _prev_word_labels(P):
    P = P.detach(); Z = P.argmax(1)
    return Z, torch.zeros(P.shape[:2], dtype=P.dtype, device=P.device).scatter_(1, Z.flatten(1), 1.)

def _prev_word_histogram(P): return P.mean((2, 3))

PREVIOUS = dict(standardize=_prev_standardize, word_distance=_prev_word_distance, word_probs=_prev_word_probs,
                word_labels=_prev_word_labels, word_histogram=_prev_word_histogram)

def _prev_gap(x): return x.mean((2, 3), keepdim=True)   # s_word's GAP: an expanded gradient (channels-first sum below)

@contextmanager
def encoder(which:str):
    "'current': the package as it is; 'previous': smvwe.words' functions and the model's GAP swapped for the ones above"
    import smvwe.words as W, smvwe.model as Mo
    saved = {k: getattr(W, k) for k in PREVIOUS}; saved_gap = Mo._gap
    if which == 'previous':
        for k, f in PREVIOUS.items(): setattr(W, k, f)
        Mo._gap = _prev_gap
    try: yield
    finally:
        for k, f in saved.items(): setattr(W, k, f)
        Mo._gap = saved_gap


# ---------------------------------------------------------------- one training step per variant
def build(variant:str, cfg:dict):
    "(step function) for `variant` at size `cfg`: model, loss, optimizer and a fixed batch, all built here"
    from smvwe.model import SMVWENet
    from smvwe.losses import SMVWELoss
    from smvwe.train import variant_kwargs
    from smvwe.fit import _to_float
    mk, lk = variant_kwargs(variant)
    torch.manual_seed(0)
    L, B, S = cfg['n_classes'], cfg['bs'], cfg['size']
    g = torch.Generator().manual_seed(1)
    if cfg['features']:
        width = cfg['C'] // 4                                     # the small CNN's out_channels = 4 * width
        model = SMVWENet(L, backbone='small', n_words=cfg['n_words'], backbone_kwargs=dict(width=width), **mk)
        model.backbone = nn.Identity()                            # the input *is* the backbone's output
        x = torch.randn(B, cfg['C'], cfg['h'], cfg['h'], generator=g).relu().to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()   # as a bf16 channels-last backbone returns it
    else:
        model = SMVWENet(L, backbone=cfg['backbone'], n_words=cfg['n_words'], **mk)
        x = torch.randn(B, 3, S, S, generator=g).contiguous(memory_format=torch.channels_last)
    label = (torch.rand(B, L, generator=g) < 0.3).float(); label[:, 0] = 1
    sal = torch.rand(B, 1, S, S, generator=g)
    model = model.to(memory_format=torch.channels_last).train()
    loss_fn = SMVWELoss(**lk)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        if x.grad is not None: x.grad = None
        with torch.autocast('cpu', dtype=torch.bfloat16): l = loss_fn(_to_float(model(x)), sal, label)
        l.backward(); opt.step()
        return l
    return step


def time_steps(step, n:int) -> dict:
    "ms per step: thread CPU, process CPU, wall"
    t, p, w = time.thread_time(), time.process_time(), time.perf_counter()
    for _ in range(n): step()
    return dict(thread=1e3 * (time.thread_time() - t) / n, process=1e3 * (time.process_time() - p) / n,
                wall=1e3 * (time.perf_counter() - w) / n)


def run_steps(cfg:dict, rounds:int, steps:int, warmup:int, previous:bool) -> dict:
    rows = [(v, 'current') for v in VARIANTS] + ([(v, 'previous') for v in ('vwe', 'smvwe')] if previous else [])
    fns = {}
    for v, which in rows:
        with encoder(which):
            fns[(v, which)] = build(v, cfg)
            for _ in range(warmup): fns[(v, which)]()
    per = {r: [] for r in rows}
    for _ in range(rounds):
        for r in rows:
            with encoder(r[1]): per[r].append(time_steps(fns[r], steps))
    out = {}
    for (v, which), ts in per.items():
        name = v if which == 'current' else f'{v} (previous encoder)'
        out[name] = {k: statistics.median(t[k] for t in ts) for k in ('thread', 'process', 'wall')} | {'rounds': [t['thread'] for t in ts]}
    for r in out.values():
        for k in ('thread', 'process', 'wall'): r[f'{k}_vs_cam'] = r[k] / out['cam'][k]
    return out


# ---------------------------------------------------------------- the encoder's parts
def _T(fn, reps:int) -> float:
    "median thread-CPU ms of fn() over reps calls, after one untimed call"
    fn(); ts = []
    for _ in range(reps):
        t = time.thread_time(); fn(); ts.append(time.thread_time() - t)
    return 1e3 * statistics.median(ts)

def _fb(fn, inputs, reps):
    "(forward ms, backward ms, output) of fn(*inputs); backward = time of forward + grad minus forward"
    inputs = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*inputs)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    go = go.contiguous(memory_format=torch.channels_last) if out.ndim == 4 and out.permute(0, 2, 3, 1).is_contiguous() else go
    diff = [x for x in inputs if x.requires_grad]
    fw = _T(lambda: fn(*inputs), reps)
    both = _T(lambda: torch.autograd.grad(fn(*inputs), diff, go), reps)
    return fw, max(both - fw, 0.), out.detach()

def peak_rate(reps:int=200000) -> float:
    "terms per thread-CPU second of the register-only |x - c| loop (best of 3)"
    from smvwe.distance import load_ext
    e = load_ext(); best = 0.
    for _ in range(3):
        t = time.thread_time(); n = e.abs_diff_peak(reps); best = max(best, n / (time.thread_time() - t))
    return best

def run_parts(cfg:dict, which:str, reps:int) -> dict:
    "ms (forward, backward) of each part of the encoder, its heads and the word losses, on the inputs they get in a step"
    import smvwe.words as W
    from smvwe.losses import soft_margin_loss
    B, N, L = cfg['bs'], cfg['n_words'], cfg['n_classes']
    K = cfg['C'] if cfg['features'] else 128
    h = cfg['h'] if cfg['features'] else cfg['size'] // 4       # the small CNN: output stride 4, 128 channels
    g = torch.Generator().manual_seed(0)
    f = torch.randn(B, K, h, h, generator=g).relu().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    C = torch.randn(N, K, generator=g)
    tau = K ** 0.5
    res = {}
    with encoder(which):
        res['standardisation'] = _fb(W.standardize, [f], reps)
        fs = res['standardisation'][2]
        res['Eq. 1 distance'] = _fb(W.word_distance, [fs, C], reps)
        D = res['Eq. 1 distance'][2]
        res['Eq. 2 softmax'] = _fb(lambda d: W.word_probs(d, tau), [D], reps)
        P = res['Eq. 2 softmax'][2]
        res['Eq. 3 word labels'] = (_T(lambda: W.word_labels(P), reps), 0., None)
        res['Eq. 4 histogram'] = _fb(W.word_histogram, [P], reps)
    e = res['Eq. 4 histogram'][2]
    word_cls, w2i = nn.Conv2d(K, N, 1, bias=False), nn.Conv2d(N, L, 1, bias=False)
    def heads(f, e):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return torch.cat([word_cls(f.mean((2, 3), keepdim=True)).flatten(1).float(), w2i((N * e)[..., None, None]).flatten(1).float()], 1)
    res['heads s_word, p_w2i'] = _fb(heads, [f, e], reps)
    s = res['heads s_word, p_w2i'][2]
    z = torch.cat([(torch.rand(B, N, generator=g) < .2).float(), (torch.rand(B, L, generator=g) < .3).float()], 1)
    res['losses word, w2i'] = _fb(lambda s: soft_margin_loss(s[:, :N], z[:, :N]) + soft_margin_loss(s[:, N:], z[:, N:]), [s], reps)
    out = {k: dict(fwd=v[0], bwd=v[1]) for k, v in res.items()}
    out['total'] = dict(fwd=sum(v['fwd'] for v in out.values()), bwd=sum(v['bwd'] for v in out.values()))
    return dict(parts=out, V=B * h * h * N * K, shape=dict(B=B, K=K, h=h, N=N))


# ---------------------------------------------------------------- printing
def step_table(name:str, cfg:dict, res:dict) -> str:
    what = 'features only (backbone left out)' if cfg['features'] else 'whole network'
    lines = [f"\n{name}: {what}; batch {cfg['bs']}, {cfg['n_words']} words, {cfg['n_classes']} classes"
             + (f", features ({cfg['bs']},{cfg['C']},{cfg['h']},{cfg['h']})" if cfg['features'] else f", {cfg['size']} px"),
             f"{'variant':28s} {'thread ms':>10s} {'process ms':>10s} {'wall ms':>9s} {'thread/CAM':>10s} {'process/CAM':>11s} {'wall/CAM':>9s}"]
    for v, r in res.items():
        lines.append(f"{v:28s} {r['thread']:10.2f} {r['process']:10.2f} {r['wall']:9.2f} {r['thread_vs_cam']:9.2f}x {r['process_vs_cam']:10.2f}x {r['wall_vs_cam']:8.2f}x")
    return '\n'.join(lines)

def parts_table(name:str, cur:dict, prev:dict|None, rate:float) -> str:
    V = cur['V']; s = cur['shape']
    lines = [f"\n{name}: encoder parts, thread CPU ms (median), B={s['B']} K={s['K']} {s['h']}x{s['h']} N={s['N']}, V = {V / 1e6:.1f} M terms",
             f"{'part':22s} {'fwd':>9s} {'bwd':>9s}" + (f" {'prev fwd':>9s} {'prev bwd':>9s} {'prev/now':>8s}" if prev else '')]
    for k, r in cur['parts'].items():
        line = f"{k:22s} {r['fwd']:9.2f} {r['bwd']:9.2f}"
        if prev:
            p = prev['parts'][k]; line += f" {p['fwd']:9.2f} {p['bwd']:9.2f} {(p['fwd'] + p['bwd']) / max(r['fwd'] + r['bwd'], 1e-9):7.2f}x"
        lines.append(line)
    fl_f, fl_b = 1e3 * V / rate, 2e3 * V / rate
    d = cur['parts']['Eq. 1 distance']; t = cur['parts']['total']
    lines.append(f"{'floor of Eq. 1':22s} {fl_f:9.2f} {fl_b:9.2f}   (V and 2V terms at the peak {rate / 1e9:.1f} G terms/s of a register-only |x - c| loop)")
    lines.append(f"Eq. 1 distance / floor: forward {d['fwd'] / fl_f:.2f}x, backward {d['bwd'] / fl_b:.2f}x, both {(d['fwd'] + d['bwd']) / (fl_f + fl_b):.2f}x; "
                 f"whole encoder part (all rows) / floor of Eq. 1: {(t['fwd'] + t['bwd']) / (fl_f + fl_b):.2f}x")
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n'.join(__doc__.split('\n')[1:]))
    ap.add_argument('--sizes', default='demo,paper', help='comma-separated: demo, paper')
    ap.add_argument('--rounds', type=int, help='interleaved rounds (default 7; quick 2)')
    ap.add_argument('--steps', type=int, help='steps per variant per round (default: 5 demo, 1 paper; quick 1)')
    ap.add_argument('--warmup', type=int, default=2, help='untimed steps per variant first')
    ap.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    ap.add_argument('--previous', action='store_true', help='also time VWE and SMVWE with the encoder as it was before the speed work')
    ap.add_argument('--parts', action='store_true', help='time the encoder\'s parts one by one, beside the floor of Eq. 1')
    ap.add_argument('--part-reps', type=int, help='timed calls per part (default: 15 demo, 3 paper; quick 3)')
    ap.add_argument('--quick', action='store_true', help='tiny sizes, 2 rounds (CI)')
    ap.add_argument('--json', help='write the results to this file (atomically)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sizes = [s.strip() for s in a.sizes.split(',') if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad: ap.error(f'--sizes: unknown {bad}; choose from {", ".join(SIZES)}')
    table = QUICK if a.quick else SIZES
    from smvwe.distance import load_ext, ext_status
    if load_ext() is None: sys.exit(f'variant_step.py: the fused C++ kernel is not available ({ext_status()}); this benchmark times it')
    cpu = platform.processor() or 'CPU'
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    aff = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None
    meta = dict(cpu=cpu, cores=os.cpu_count(), affinity=aff, threads=torch.get_num_threads(), torch=torch.__version__,
                load_before=os.getloadavg()[0] if hasattr(os, 'getloadavg') else None, argv=sys.argv[1:] if argv is None else argv,
                nice=os.nice(0) if hasattr(os, 'nice') else None)
    print(f"{cpu}, {os.cpu_count()} cores, pinned to {aff}, {meta['threads']} torch thread(s), nice {meta['nice']}, torch {torch.__version__}; "
          f"load average {meta['load_before']:.1f} before the run", flush=True)
    out = dict(meta=meta, steps={}, parts={})
    rate = peak_rate(20000 if a.quick else 200000)
    out['meta']['peak_terms_per_s'] = rate
    for s in sizes:
        cfg = table[s]
        rounds = a.rounds or (2 if a.quick else 7)
        steps = a.steps or (1 if a.quick or cfg['features'] else 5)
        res = run_steps(cfg, rounds, steps, a.warmup, a.previous)
        out['steps'][s] = dict(config=cfg, rounds=rounds, steps=steps, variants=res)
        print(step_table(s, cfg, res), flush=True)
    if a.parts:
        for s in sizes:
            cfg = table[s]
            reps = a.part_reps or (3 if a.quick or cfg['features'] else 15)
            cur = run_parts(cfg, 'current', reps)
            prev = run_parts(cfg, 'previous', reps) if a.previous else None
            out['parts'][s] = dict(current=cur, previous=prev)
            print(parts_table(s, cur, prev, rate), flush=True)
    if a.json:
        from smvwe.files import atomic_save
        atomic_save(json.dumps(out, indent=1) + '\n', a.json)
    return out


if __name__ == '__main__': main()
