#!/usr/bin/env python
"""CPU time and wall time of one training step of every variant (cam, vwe, sal, smvwe), interleaved rounds in one run.

Two sizes, each measured in the same process:
- demo: the demo's recipe, read from `smvwe.experiment.PRESETS['default']` (its backbone, crop, batch, words,
  precision and memory format);
- paper: the paper's network (ResNet38, K = 4096 channels, 256 words) with the same precision and memory format,
  its training steps at batch 1 and 112 px (`--paper-crop`; a ResNet38 step at 448 px takes minutes on a 2-core CPU)
  and its word encoder at the paper's crop and batch (448 px, 56 x 56 maps, batch 4) on features of the backbone's
  dtype and layout (standard normal: the encoder's time does not depend on the values).
A step is what training does per batch, on tensors already in memory: forward under autocast, the variant's loss on
float32 predictions, backward, an SGD step (momentum 0.9, weight decay 5e-4). The variants are timed in rounds, the
order rotated every round, and each prints its median CPU time (process time) and wall time per step and its ratio
to CAM's (CPU time).

Then the word encoder of the SMVWE model, on its own backbone's features, split into its parts, each forward +
backward (gradients by `torch.autograd.grad`, as the whole): standardisation, Eq. 1 distance forward and backward,
softmax (Eq. 2), word labels (Eq. 3, forward only), histogram (Eq. 4) and the two heads (s_word, p_w2i); the whole
encoder timed as one (its input's gradient in the features' layout, as the model runs it) beside the sum of its parts;
the standardisation and the whole again with the standardisation in torch's rounding (`standardize(impl='torch')`,
what wide features ran before the fused path); and the arithmetic floor of the exact L1 distance, 3 V terms
(V = batch x pixels x words x channels) at the rate of a streaming |x - c| accumulate loop measured in this run on
the same threads (`abs_diff_ceiling` of the fused kernel's extension), measured at the run's start and again before each
pass over the parts (the median of those: the rate drifts with the machine's state by up to a fifth). Last, Eq. 1's forward + backward as the fused
kernels ran before they read the features in place (a `.to(float32).contiguous()` copy first, the float32 gradient
converted after) against `word_distance` now, interleaved in the same run.

    python benchmarks/variant_step.py                        # both sizes, one thread, a few minutes on an idle 2-core CPU
    python benchmarks/variant_step.py --quick                # well under a minute: the demo recipe only, fewer steps
    python benchmarks/variant_step.py --out nbs/results/variant_step.json --label after
    python benchmarks/variant_step.py --sizes paper --encoder-only --passes 6   # the paper-size encoder alone, six passes

`--passes` sets the passes over the encoder's parts (default 2); with more than one, each pass's whole encoder is also
divided by the floor at that pass's own rate, and the median and range of those ratios are printed: on a shared
machine the rate moves between passes, and a ratio taken within a pass follows it.
"""
import argparse, gc, json, os, platform, sys, time
from contextlib import nullcontext
from pathlib import Path

import torch

VARIANT_NAMES = ('cam', 'vwe', 'sal', 'smvwe')
N_CLS = 20  # PASCAL VOC foreground classes
PAPER = {'cls.backbone': 'resnet38', 'cls.crop': 448, 'cls.n_words': 256}  # §4.1; K = 4096 is ResNet38's channel count
PARTS = ('standardise', 'distance fwd', 'distance bwd', 'softmax', 'word labels', 'histogram', 'heads')


def configs(paper_bs:int, paper_crop:int|None, amp:str='preset') -> dict:
    "{size name: (ClsConfig, batch, crop)} for the demo recipe and the paper's size; `amp` 'none' or 'bf16' overrides the preset's precision"
    from smvwe.experiment import get_preset
    prec = {} if amp == 'preset' else {'cls.amp': None if amp == 'none' else amp}
    demo = get_preset('default', prec).cls
    crop = paper_crop or 112
    paper = get_preset('default', {**PAPER, 'cls.crop': crop, 'cls.bs': paper_bs, **prec}).cls
    return {'demo': (demo, demo.bs, demo.crop), 'paper': (paper, paper_bs, crop)}


def build(variant:str, cfg, bs:int, crop:int):
    "The variant's model and loss as `cls_learner` builds them, a batch, and a training step"
    from smvwe.model import SMVWENet
    from smvwe.losses import SMVWELoss
    from smvwe.train import variant_kwargs
    from smvwe.fit import _to_float
    mkw, lkw = variant_kwargs(variant)
    torch.manual_seed(0)
    model = SMVWENet(N_CLS, **{**mkw, **cfg.model_kw()}).train()
    loss_fn = SMVWELoss(**{**lkw, **cfg.loss_kw()})
    g = torch.Generator().manual_seed(1)
    label = (torch.rand(bs, N_CLS, generator=g) < 0.15).float(); label[:, 0] = 1
    x, sal = torch.randn(bs, 3, crop, crop, generator=g), torch.rand(bs, 1, crop, crop, generator=g)
    if cfg.channels_last: model = model.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if cfg.amp == 'bf16' else nullcontext
    def step():
        opt.zero_grad(set_to_none=True)
        with ctx(): l = loss_fn(_to_float(model(x)), sal, label)
        l.backward(); opt.step()
        return float(l.detach())
    return model, x, ctx, step


def clock(): return time.process_time(), time.perf_counter()


def median(v): v = sorted(v); return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def time_variants(cfg, bs, crop, rounds:int, steps:int) -> dict:
    "Per variant: median CPU and wall ms per step over `rounds` x `steps` timed steps (after one untimed step), first loss"
    runs = {v: build(v, cfg, bs, crop) for v in VARIANT_NAMES}
    out = {v: dict(cpu=[], wall=[], loss0=runs[v][3]()) for v in VARIANT_NAMES}   # the first step: untimed, its loss kept
    for r in range(rounds):
        order = VARIANT_NAMES[r % 4:] + VARIANT_NAMES[:r % 4]
        for v in order:
            step = runs[v][3]
            for _ in range(steps):
                c0, w0 = clock(); step(); c1, w1 = clock()
                out[v]['cpu'].append(1e3 * (c1 - c0)); out[v]['wall'].append(1e3 * (w1 - w0))
    res = {v: dict(cpu_ms=median(o['cpu']), wall_ms=median(o['wall']), n=len(o['cpu']), loss0=o['loss0']) for v, o in out.items()}
    for v in res: res[v]['ratio'] = res[v]['cpu_ms'] / res['cam']['cpu_ms']
    return res, runs['smvwe']


def timeit(fn, reps:int, setup=None) -> tuple[float, float]:
    "Median CPU and wall ms of `fn(setup())` over `reps` calls (setup untimed)"
    cpu, wall = [], []
    for _ in range(reps):
        a = setup() if setup else None
        gc.collect()                                        # untimed: Python's collector, not the encoder
        c0, w0 = clock(); fn(a); c1, w1 = clock()
        cpu.append(1e3 * (c1 - c0)); wall.append(1e3 * (w1 - w0))
    return median(cpu), median(wall)


def encoder_parts(model, f, ctx, reps:int, passes:int=2) -> dict:
    "The SMVWE model's word encoder on features `f`: each part's CPU/wall ms (fwd + bwd), the whole, V"
    import smvwe.words as words
    from smvwe.words import word_probs, word_labels, word_histogram, grad_in_layout, standardize
    from smvwe.distance import word_distance
    enc = model.words
    f = f.detach().requires_grad_()
    cb, wc, w2 = enc.codebook, model.word_cls.weight, model.w2i.weight
    g = torch.Generator().manual_seed(2)
    rnd = lambda t: torch.empty_like(t).copy_(torch.randn(t.shape, generator=g))   # t's dtype and strides
    heads = model.word_heads                                # s_word and p_w2i as the model computes them
    with ctx():                                             # inputs of every part, as the whole computes them
        X = enc.features(f); D = word_distance(X, cb, impl=enc.impl); P = word_probs(D, enc.tau, enc.sign); e = word_histogram(P)
        s_word, p_w2i = heads(f, e)
    gX, gD, gP, ge, gs, gp = (rnd(t.detach()) for t in (X, D, P, e, s_word, p_w2i))
    leaf = lambda t: t.detach().requires_grad_()
    Xl, Dl, Pl, el = leaf(X), leaf(D), leaf(P), leaf(e)
    def grad(outs, grads, ins): torch.autograd.grad(outs, ins, grads)
    def whole(_):
        with ctx():
            M = grad_in_layout(f); w = enc(M); s, p = heads(M, w.e_word)   # as the model: its gradient in f's layout
        grad((s, p), (gs, gp), (f, cb, wc, w2))
    def whole_torch(_):                                     # the same with the standardisation in torch's rounding
        words.standardize = lambda x, eps=1e-5: standardize(x, eps, impl='torch')
        try: whole(_)
        finally: words.standardize = standardize
    def part_std(_):
        with ctx(): y = enc.features(f)
        grad(y, gX, f)
    def part_std_torch(_):
        with ctx(): y = standardize(f, impl='torch')
        grad(y, gX.to(y.dtype), f)
    def dist_fwd(_):
        with ctx(): word_distance(Xl, cb, impl=enc.impl)
    def dist_setup():
        with ctx(): return word_distance(Xl, cb, impl=enc.impl)
    def dist_bwd(d): grad(d, gD, (Xl, cb))
    def part_softmax(_):
        with ctx(): y = word_probs(Dl, enc.tau, enc.sign)
        grad(y, gP, Dl)
    def part_labels(_): word_labels(Pl)
    def part_hist(_):
        with ctx(): y = word_histogram(Pl)
        grad(y, ge, Pl)
    def part_heads(_):
        with ctx(): s, p = heads(f, el)
        grad((s, p), (gs, gp), (f, el, wc, w2))
    fns = {'standardise': (part_std, None), 'distance fwd': (dist_fwd, None), 'distance bwd': (dist_bwd, dist_setup),
           'softmax': (part_softmax, None), 'word labels': (part_labels, None), 'histogram': (part_hist, None),
           'heads': (part_heads, None), 'whole': (whole, None),
           'standardise, torch rounding': (part_std_torch, None), 'whole, torch rounding': (whole_torch, None)}
    for fn, st in fns.values(): fn(st() if st else None)   # warm up
    res, rates = {}, []
    for _ in range(passes):                                 # interleaved passes, the medians over all
        if (r := floor_rate(0.3)) is not None: rates.append(r)  # the floor's rate beside the parts: it drifts with the machine
        for k, (fn, st) in fns.items():
            c, w = timeit(fn, reps, st)
            res.setdefault(k, ([], [])); res[k][0].append(c); res[k][1].append(w)
    per_pass = res['whole'][0]                              # the whole's median CPU ms in each pass, beside that pass's rate
    res = {k: dict(cpu_ms=median(c), wall_ms=median(w)) for k, (c, w) in res.items()}
    B, K, H, W = f.shape
    return dict(parts=res, V=B * H * W * enc.n_words * K, shape=dict(B=B, K=K, H=H, W=W, N=enc.n_words), floor_rates=rates,
                whole_per_pass=per_pass, wide_k=words.WIDE_K)


class L1Copying(torch.autograd.Function):
    "The fused kernels as `word_distance` used them before they read the features in place: `.to(float32).contiguous()` first, the float32 gradient converted after"
    @staticmethod
    def forward(ctx, M, C):
        from smvwe.distance import load_ext
        ctx.in_dtype = M.dtype; M = M.to(C.dtype).contiguous()
        ctx.save_for_backward(M, C)
        return load_ext().l1_forward(M, C)

    @staticmethod
    def backward(ctx, G):
        from smvwe.distance import load_ext
        M, C = ctx.saved_tensors
        dM, dC = load_ext().l1_backward(M, C, G.contiguous())
        return dM.to(ctx.in_dtype), dC


def distance_ab(model, f, ctx, reps:int) -> dict|None:
    "Eq. 1 forward + backward on the standardised features, before (L1Copying) and now (`word_distance`), interleaved: CPU/wall ms"
    from smvwe.distance import word_distance, load_ext
    if load_ext() is None: return None
    enc = model.words
    from smvwe.words import standardize
    with torch.no_grad(), ctx(): X = standardize(f, impl='torch')   # the features' dtype and layout, as before the fused standardisation
    X, cb = X.detach().requires_grad_(), enc.codebook
    B, K, H, W = X.shape
    g = torch.Generator().manual_seed(4); G = torch.randn(B, enc.n_words, H, W, generator=g)
    def before(_):
        D = L1Copying.apply(X.reshape(B, K, H * W), cb).view(B, -1, H, W); torch.autograd.grad(D, (X, cb), G)
    def now(_):
        D = word_distance(X, cb, impl='fused'); torch.autograd.grad(D, (X, cb), G)
    before(None); now(None)
    res = {'before': ([], []), 'now': ([], [])}
    for _ in range(3):
        for k, fn in (('before', before), ('now', now)):
            c, w = timeit(fn, reps); res[k][0].append(c); res[k][1].append(w)
    return {k: dict(cpu_ms=median(c), wall_ms=median(w)) for k, (c, w) in res.items()}


def floor_rate(min_s:float=0.3) -> float|None:
    "Terms/s of the extension's streaming |x - c| accumulate loop on this process's threads (CPU time), None without it"
    from smvwe.distance import load_ext
    ext = load_ext()
    if ext is None: return None
    ext.abs_diff_ceiling(1000)
    reps = 1000
    while True:
        c0 = time.process_time(); n = ext.abs_diff_ceiling(reps); c = time.process_time() - c0
        if c >= min_s: return n / c
        reps *= 2


def fmt_variants(name, res, cfg, bs, crop) -> list:
    lines = [f'## {name}: {cfg.backbone}, {crop} px, batch {bs}, {cfg.n_words} words, amp {cfg.amp}, channels-last {cfg.channels_last}',
             '', '| variant | CPU ms/step | wall ms/step | steps | CPU / CAM | first loss |', '|---|---|---|---|---|---|']
    for v, r in res.items():
        lines.append(f"| {v} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | {r['n']} | {r['ratio']:.3f} | {r['loss0']:.6f} |")
    return lines + ['']


def fmt_parts(name, enc, rate) -> list:
    p, s = enc['parts'], enc['shape']
    tot_c, tot_w = sum(p[k]['cpu_ms'] for k in PARTS), sum(p[k]['wall_ms'] for k in PARTS)
    lines = [f"### {name}: the word encoder (B={s['B']}, K={s['K']}, {s['H']}x{s['W']}, N={s['N']}; V = {enc['V'] / 1e9:.4g} G terms)", '',
             '| part | CPU ms | wall ms | share of the parts (CPU) |', '|---|---|---|---|']
    for k in PARTS: lines.append(f"| {k} | {p[k]['cpu_ms']:.2f} | {p[k]['wall_ms']:.2f} | {100 * p[k]['cpu_ms'] / tot_c:.1f} % |")
    lines.append(f"| sum of the parts | {tot_c:.2f} | {tot_w:.2f} | 100 % |")
    lines.append(f"| whole encoder | {p['whole']['cpu_ms']:.2f} | {p['whole']['wall_ms']:.2f} | parts / whole = {tot_c / p['whole']['cpu_ms']:.3f} |")
    if rate:
        fl = 1e3 * 3 * enc['V'] / rate
        dist = p['distance fwd']['cpu_ms'] + p['distance bwd']['cpu_ms']
        rs = ', '.join(f'{x / 1e9:.2f}' for x in enc.get('floor_rates', []))
        lines += ['', f"floor of the exact L1 distance: 3V = {3 * enc['V'] / 1e9:.4g} G terms at {rate / 1e9:.2f} G terms/s (in-run ceiling, CPU time; "
                      f"the median of the run's start and each pass of the parts: {rs}) = {fl:.2f} ms",
                  f"distance fwd+bwd / floor = {dist / fl:.3f}; whole encoder / floor = {p['whole']['cpu_ms'] / fl:.3f}"]
        pp, pr = enc.get('whole_per_pass', []), enc.get('floor_rates', [])
        if len(pp) == len(pr) > 1:                          # each pass's whole over the floor at that pass's own rate
            q = sorted(c * r / (3e3 * enc['V']) for c, r in zip(pp, pr))
            lines.append(f"whole encoder / floor, pass by pass (each pass's rate): median {median(q):.3f}, range {q[0]:.3f}-{q[-1]:.3f} over {len(q)} passes")
    else: lines += ['', 'floor: n/a (the fused kernel\'s extension is not built)']
    if 'whole, torch rounding' in p:
        st, wt = p['standardise, torch rounding']['cpu_ms'], p['whole, torch rounding']['cpu_ms']
        lines.append(f"standardisation in torch's rounding (words.standardize impl='torch') {st:.2f} ms, as this size runs it (K = {s['K']}: "
                     f"{'fused' if s['K'] >= enc.get('wide_k', 1 << 62) else 'torch'}) {p['standardise']['cpu_ms']:.2f} ms; whole encoder with torch's rounding {wt:.2f} ms"
                     + (f" (/ floor {wt / fl:.3f})" if rate else ''))
    ab = enc.get('distance_ab')
    if ab:
        lines.append(f"distance fwd+bwd in one run, interleaved: features widened and transposed by .to(float32).contiguous(), the "
                     f"float32 gradient converted after (before) {ab['before']['cpu_ms']:.2f} ms; read in place, the gradient written in the "
                     f"features' dtype (now) {ab['now']['cpu_ms']:.2f} ms; before / now = {ab['before']['cpu_ms'] / ab['now']['cpu_ms']:.3f}")
    return lines + ['']


def write_atomic(path:Path, text:str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f'.tmp{os.getpid()}')
    tmp.write_text(text); os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n'.join(__doc__.split('\n')[1:]))
    ap.add_argument('--quick', action='store_true', help='for CI: the demo size only, 2 rounds of 2 steps')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (the demo trains with one per process)')
    ap.add_argument('--rounds', type=int, help='interleaved rounds (default 5, quick 2; the paper size: at most 2)')
    ap.add_argument('--steps', type=int, help='timed steps per variant per round at the demo size (default 4, quick 2)')
    ap.add_argument('--paper-steps', type=int, help='timed steps per variant per round at the paper size (default 1)')
    ap.add_argument('--paper-bs', type=int, default=1, help="batch at the paper's size (the paper's: 4)")
    ap.add_argument('--paper-crop', type=int, help="crop of the training steps at the paper's size (default 112: ResNet38 steps at 448 take minutes each here)")
    ap.add_argument('--paper-enc-crop', type=int, default=448, help="the encoder's part at the paper size: crop of its features (0: the steps' crop)")
    ap.add_argument('--paper-enc-bs', type=int, default=4, help="the encoder's part at the paper size: batch (the paper's 4)")
    ap.add_argument('--amp', choices=('preset', 'none', 'bf16'), default='preset', help="precision: the preset's (bf16) or none (float32): where a CPU emulates bfloat16 (no AVX512-BF16/AMX) every bf16 step is slow and the encoder's share looks small")
    ap.add_argument('--sizes', help='comma-separated: demo, paper (default both; quick: demo)')
    ap.add_argument('--reps', type=int, help='calls per encoder part per pass (default 10 demo / 2 paper, quick 3)')
    ap.add_argument('--passes', type=int, default=2, help="passes over the encoder's parts, each after a measure of the floor's rate (more: a steadier median on a busy machine)")
    ap.add_argument('--encoder-only', action='store_true', help="time the word encoder only, not the variants' training steps (the paper size's ResNet38 steps take minutes where bfloat16 is emulated)")
    ap.add_argument('--out', help='write the results (JSON) to this file, atomically; runs of other labels in it are kept')
    ap.add_argument('--label', default='current', help='the name of this run in --out (e.g. before, after)')
    a = ap.parse_args(argv)
    if a.passes < 1: ap.error(f'--passes {a.passes}: give at least 1 (each pass times every part of the encoder once more)')
    torch.set_num_threads(a.threads)
    rounds = a.rounds or (2 if a.quick else 5)
    cpu = platform.processor() or 'CPU'
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    head = f'torch {torch.__version__}, {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; load average {os.getloadavg()[0]:.2f}'
    print(head, flush=True)
    rate = floor_rate(0.1 if a.quick else 0.5)
    cfgs = configs(a.paper_bs, a.paper_crop, a.amp)
    result = dict(header=head, args=vars(a), floor_terms_per_s=rate, sizes={})
    lines = [head, '']
    for name in (a.sizes or ('demo' if a.quick else 'demo,paper')).split(','):
        cfg, bs, crop = cfgs[name]
        steps = (a.steps or (2 if a.quick else 4)) if name == 'demo' else (a.paper_steps or 1)
        nr = rounds if name == 'demo' else min(rounds, 2)
        reps = a.reps or ((3 if a.quick else 10) if name == 'demo' else (1 if a.quick else 2))
        t0 = time.perf_counter()
        if a.encoder_only: res, (model, x, ctx, _) = None, build('smvwe', cfg, bs, crop)
        else: res, (model, x, ctx, _) = time_variants(cfg, bs, crop, nr, steps)
        with torch.no_grad(), ctx(): f = model.proj(model.backbone(x))      # the backbone's features (dtype, layout)
        if name == 'paper' and a.paper_enc_crop:   # the encoder at the paper's crop and batch on features of that shape
            s = a.paper_enc_crop // model.config['output_stride']
            g = torch.Generator().manual_seed(3)
            f = torch.randn(a.paper_enc_bs, f.shape[1], s, s, generator=g).to(f.dtype).contiguous(
                memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        enc = encoder_parts(model, f, ctx, reps, a.passes)
        enc['distance_ab'] = distance_ab(model, f, ctx, reps)
        r_enc = median([rate] + enc['floor_rates']) if rate else None  # the run's start and each pass of the parts
        out = (fmt_variants(name, res, cfg, bs, crop) if res else []) + fmt_parts(name, enc, r_enc)
        out.append(f'({name}: {time.perf_counter() - t0:.0f} s)\n')
        print('\n'.join(out), flush=True); lines += out
        result['sizes'][name] = dict(recipe=dict(backbone=cfg.backbone, crop=crop, bs=bs, n_words=cfg.n_words, amp=cfg.amp,
                                                 channels_last=cfg.channels_last), variants=res, encoder=enc,
                                     floor_ms=1e3 * 3 * enc['V'] / r_enc if r_enc else None)
    result['table'] = lines
    if a.out:
        path = Path(a.out)
        old = json.loads(path.read_text()) if path.exists() else {}
        runs = old.get('runs', {}); runs[a.label] = result
        write_atomic(path, json.dumps(dict(script='benchmarks/variant_step.py', runs=runs), indent=1) + '\n')


if __name__ == '__main__':
    main()
