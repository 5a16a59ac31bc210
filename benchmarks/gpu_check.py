#!/usr/bin/env python
"""Everything a GPU user relies on, checked in one run that prints one table.

1. Correctness: every path that runs on the device against the CPU result on the same inputs and weights
   (max abs difference, relative to the largest CPU value where stated): the word distance (float32, and bfloat16
   autocast), the SMVWE loss and its gradient, one forward/backward of each variant (cam, vwe, sal, smvwe: loss and
   every parameter's gradient), one DeepLab-V1 and -V2 step (loss, gradients, weights after one SGD step), and
   localization maps with multi-scale + flip. Models are in eval mode (no dropout draws) and TF32 is off here,
   so float32 is compared with float32.
2. Throughput at the paper's sizes on CUDA (classification: ResNet38, batch 4, 448 crops, 256 words, K = 4096;
   DeepLab-V2 ResNet101 and V1 VGG16 at 321, batch 10), fp32 / bf16 autocast x channels-first / channels-last,
   images/s and peak memory (`torch.cuda.max_memory_allocated`), random weights (nothing is downloaded). One
   training step is `benchmarks/throughput.py`'s: forward, loss, backward, SGD step.
3. The word distance's share of one classification step, from `torch.profiler` (the `smvwe.word_distance` range
   and its `L1*Backward` node, over the step's wall time).
4. DDP: `torchrun` with one process per GPU (NCCL; world size 1 on one GPU still runs the path; gloo with two
   processes on the CPU): the DDP gradient must equal the average of the ranks' own gradients.

With `--device cpu` every check runs at tiny sizes (small backbones, 32-64 px) in seconds, which CI does so that this
script never rots. `--budget` (seconds) bounds the throughput section: rows that would start after it are skipped.

    python benchmarks/gpu_check.py                   # on a CUDA machine: paper sizes, at most ~8 minutes
    python benchmarks/gpu_check.py --device cpu      # tiny sizes, seconds
    python benchmarks/gpu_check.py --json gpu_check.json
"""
import argparse, copy, json, os, platform, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))           # benchmarks/throughput.py: the training step that is timed
N_CLS = 20

SIZES = {  # correctness checks at sizes the CPU can run too; throughput at the paper's sizes on CUDA
    'cuda': dict(wd=(2, 512, 28, 28, 256), cls_backbone='resnet38', cls_img=96, n_words=256, bs=2,
                 seg=[('v1', 'vgg16'), ('v2', 'resnet101')], seg_img=97, maps_img=(96, 80),
                 thr=[dict(stage='cls', backbone='resnet38', size=448, bs=4, n_words=256),
                      dict(stage='seg', arch='v2', backbone='resnet101', size=321, bs=10),
                      dict(stage='seg', arch='v1', backbone='vgg16', size=321, bs=10)],
                 iters=10, warmup=3, ddp=dict(backbone='resnet38', img=128, bs=2, n_words=256, steps=5)),
    'cpu': dict(wd=(2, 64, 7, 9, 33), cls_backbone='small', cls_img=32, n_words=8, bs=2,
                seg=[('v1', 'small'), ('v2', 'small')], seg_img=33, maps_img=(40, 36),
                thr=[dict(stage='cls', backbone='small', size=64, bs=2, n_words=16),
                     dict(stage='seg', arch='v2', backbone='small', size=64, bs=2),
                     dict(stage='seg', arch='v1', backbone='small', size=64, bs=2)],
                iters=1, warmup=1, ddp=dict(backbone='small', img=32, bs=2, n_words=8, steps=2)),
}
TOL = dict(wd=1e-5, wd_bf16=1e-5, loss=1e-5, model=2e-3, step=1e-5, maps=1e-3, ddp=1e-5)  # relative unless stated


def rel_diff(a, b) -> float:
    "max |a - b| / max |b| (b: the CPU result), 0 when both are zero."
    a, b = torch.as_tensor(a).detach().double().cpu(), torch.as_tensor(b).detach().double().cpu()
    den = float(b.abs().max()) if b.numel() else 0.
    return float((a - b).abs().max()) / den if den > 0 else float((a - b).abs().max())


def grads_rel_diff(ma, mb) -> float:
    "Largest gradient difference over all parameters, relative to the largest CPU gradient."
    pa, pb = dict(ma.named_parameters()), dict(mb.named_parameters())
    den = max((float(p.grad.abs().max()) for p in pb.values() if p.grad is not None), default=0.) or 1.
    diffs = [float((pa[k].grad.detach().cpu() - p.grad).abs().max()) for k, p in pb.items() if p.grad is not None]
    missing = [k for k, p in pb.items() if (p.grad is None) != (pa[k].grad is None)]
    if missing: raise RuntimeError(f'gradients present on one device only: {missing[:3]}')
    return max(diffs, default=0.) / den


class Table:
    def __init__(self): self.rows = []
    def add(self, section, check, value, unit='', tol=None, note=''):
        ok = None if tol is None or value is None else bool(value <= tol)
        self.rows.append(dict(section=section, check=check, value=value, unit=unit, tol=tol, ok=ok, note=note))
        v = '-' if value is None else f'{value:.3g}'
        print(f'  {section}: {check} = {v} {unit}' + ('' if ok is None else (' ok' if ok else f' FAIL (tolerance {tol:g})')) + (f' {note}' if note else ''), flush=True)
    def print(self):
        print(f"\n{'section':12s} {'check':58s} {'value':>10s} {'unit':12s} {'tolerance':>9s} {'status':6s}")
        for r in self.rows:
            v = '-' if r['value'] is None else f"{r['value']:.3g}"
            t = '' if r['tol'] is None else f"{r['tol']:g}"
            st = '' if r['ok'] is None else ('ok' if r['ok'] else 'FAIL')
            print(f"{r['section']:12s} {r['check'][:58]:58s} {v:>10s} {r['unit'][:12]:12s} {t:>9s} {st:6s} {r['note']}")


def check_word_distance(T, dev, S):
    from smvwe.distance import word_distance, word_distance_reference, triton_status
    B, K, H, W, N = S['wd']
    g = torch.Generator().manual_seed(0)
    x, c, G = torch.randn(B, K, H, W, generator=g), torch.randn(N, K, generator=g), torch.randn(B, N, H, W, generator=g)
    c[0] = x[0, :, 0, 0]                                                     # an exact tie: sign(0) = 0
    def run(x, c, device, ctx=None, impl='auto'):
        xd, cd = x.detach().to(device).clone().requires_grad_(), c.detach().to(device).clone().requires_grad_()
        with (ctx or torch.autocast(device.type, enabled=False)):
            d = word_distance(xd, cd, impl=impl)
        d.backward(G.to(device, d.dtype))
        return d.float().cpu(), xd.grad.float().cpu(), cd.grad.float().cpu()
    ref = run(x.double(), c.double(), torch.device('cpu'), impl='torch')    # float64 chunked path on the CPU
    impl = ('triton' if triton_status(dev) == 'ok' else 'torch') if dev.type == 'cuda' else 'auto'
    got = run(x, c, dev)
    for name, a, b in zip(('D', 'dL/dfeats', 'dL/dcodebook'), got, ref):
        T.add('correct', f'word distance fp32 [{impl}] {name} vs CPU fp64', rel_diff(a, b), 'rel', TOL['wd'])
    # bf16 autocast: the features arrive in bfloat16 (as from a conv under autocast); the distance is computed in float32
    xb = x.bfloat16()
    got = run(xb, c, dev, torch.autocast(dev.type, dtype=torch.bfloat16))
    refb = run(xb.double(), c.double(), torch.device('cpu'), impl='torch')
    for name, a, b in zip(('D', 'dL/dfeats', 'dL/dcodebook'), got, refb):
        tol = TOL['wd_bf16'] if name != 'dL/dfeats' else 2 ** -7            # dL/dfeats is returned in bfloat16
        T.add('correct', f'word distance bf16 autocast {name} vs CPU (same bf16 inputs)', rel_diff(a, b), 'rel', tol)


def cls_model(S, variant, dev=None):
    from smvwe.model import SMVWENet
    from smvwe.train import VARIANTS
    mk, lk = VARIANTS[variant]
    torch.manual_seed(0)
    return SMVWENet(N_CLS, S['cls_backbone'], n_words=S['n_words'], **mk).eval(), lk


def cls_batch(S, n=None, size=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, s = n or S['bs'], size or S['cls_img']
    label = (torch.rand(n, N_CLS, generator=g) < 0.2).float(); label[:, 0] = 1
    return torch.randn(n, 3, s, s, generator=g), torch.rand(n, 1, s, s, generator=g), label


def check_loss_and_variants(T, dev, S):
    from smvwe.losses import SMVWELoss
    from smvwe.train import VARIANTS
    img, sal, label = cls_batch(S)
    # the loss alone, on the CPU model's output moved to the device
    model, lk = cls_model(S, 'smvwe')
    with torch.no_grad(): pred = model(img)
    def loss_on(device):
        p = {k: v for k, v in pred.items() if k != 'words'}
        p = {k: (v.to(device).requires_grad_() if torch.is_tensor(v) else v) for k, v in p.items()}
        p['words'] = copy.copy(pred['words']); p['words'].z_word = pred['words'].z_word.to(device)
        l = SMVWELoss(**lk)(p, sal.to(device), label.to(device)); l.backward()
        return l.detach().cpu(), p['maps'].grad.cpu(), p['s_word'].grad.cpu()
    a, b = loss_on(dev), loss_on(torch.device('cpu'))
    T.add('correct', 'SMVWE loss value', rel_diff(a[0], b[0]), 'rel', TOL['loss'])
    T.add('correct', 'SMVWE loss gradient (maps, s_word)', max(rel_diff(a[1], b[1]), rel_diff(a[2], b[2])), 'rel', TOL['loss'])
    for v in VARIANTS:
        mc, lk = cls_model(S, v)
        md = copy.deepcopy(mc).to(dev)
        out = []
        for m, d in ((md, dev), (mc, torch.device('cpu'))):
            l = SMVWELoss(**lk)(m(img.to(d)), sal.to(d), label.to(d)); l.backward(); out.append(l.detach().cpu())
        T.add('correct', f'variant {v}: loss, fwd ({S["cls_backbone"]}, {S["cls_img"]} px)', rel_diff(out[0], out[1]), 'rel', TOL['model'])
        T.add('correct', f'variant {v}: every parameter gradient', grads_rel_diff(md, mc), 'rel', TOL['model'])


def check_deeplab(T, dev, S):
    from smvwe.deeplab import DeepLab, SegLoss
    s = S['seg_img']
    g = torch.Generator().manual_seed(2)
    img = torch.randn(S['bs'], 3, s, s, generator=g)
    mask = torch.randint(0, N_CLS + 1, (S['bs'], s, s), generator=g); mask[:, :3] = 255
    for arch, bb in S['seg']:
        torch.manual_seed(0)
        mc = DeepLab(N_CLS + 1, arch, bb).eval(); md = copy.deepcopy(mc).to(dev)
        res = []
        for m, d in ((md, dev), (mc, torch.device('cpu'))):
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
            l = SegLoss()(m(img.to(d)), mask.to(d)); l.backward(); opt.step(); res.append(l.detach().cpu())
        T.add('correct', f'DeepLab-{arch.upper()} {bb} step: loss', rel_diff(res[0], res[1]), 'rel', TOL['model'])
        T.add('correct', f'DeepLab-{arch.upper()} {bb} step: every parameter gradient', grads_rel_diff(md, mc), 'rel', TOL['model'])
        w = max(float((p.detach().cpu() - q.detach()).abs().max()) for p, q in zip(md.parameters(), mc.parameters()))
        T.add('correct', f'DeepLab-{arch.upper()} {bb} step: weights after one SGD step', w, 'abs', TOL['step'])


def check_maps(T, dev, S):
    from smvwe.maps import localization_maps
    mc, _ = cls_model(S, 'smvwe'); md = copy.deepcopy(mc).to(dev)
    H, W = S['maps_img']
    img = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = np.zeros(N_CLS, np.float32); label[[0, 5]] = 1
    kw = dict(scales=(1.0, 0.5, 1.5, 2.0), flip=True)
    a, b = localization_maps(md, img, label, **kw), localization_maps(mc, img, label, **kw)
    T.add('correct', 'localization maps, 4 scales + flip (normalised, in [0,1])', float(np.abs(a - b).max()), 'abs', TOL['maps'])


def throughput(T, dev, S, budget, t_start):
    import throughput as tp
    for cfg in S['thr']:
        base = None
        for dt, cl in ((None, False), (torch.bfloat16, False), (None, True), (torch.bfloat16, True)):
            prec = 'bf16' if dt is not None else 'fp32'
            tag = f"{tp.name(cfg)} {cfg['size']} bs{cfg['bs']} {prec}{' ch-last' if cl else ''}"
            if time.time() - t_start > budget:
                T.add('throughput', tag, None, 'img/s', note='skipped: over --budget'); continue
            try: r = tp.bench(dict(cfg), dev, dt, cl, S['iters'], S['warmup'])
            except Exception as e:
                T.add('throughput', tag, None, 'img/s', note=f'error: {type(e).__name__}: {str(e).splitlines()[0][:60]}'); continue
            base = base or r['img_s']
            mem = f"peak {r['peak_gb']:.2f} GB, " if r['peak_gb'] is not None else ''
            T.add('throughput', tag, r['img_s'], 'img/s', note=f"{mem}{r['img_s'] / base:.2f}x fp32")
            if dev.type == 'cuda': torch.cuda.empty_cache()


def word_distance_share(T, dev, S):
    "Profile one classification step (smvwe variant, the throughput section's classification size)."
    from torch.profiler import profile, ProfilerActivity
    from smvwe.model import SMVWENet
    from smvwe.losses import SMVWELoss
    cfg = S['thr'][0]
    torch.manual_seed(0)
    model = SMVWENet(N_CLS, cfg['backbone'], n_words=cfg['n_words']).to(dev).train()
    img, sal, label = (t.to(dev) for t in cls_batch(S, cfg['bs'], cfg['size']))
    loss = SMVWELoss()
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == 'cuda' else (lambda: None)
    def step():
        model.zero_grad(set_to_none=True); loss(model(img), sal, label).backward()
    step(); step(); sync()                                                   # warm-up: kernels built, caches warm
    t0 = time.perf_counter(); step(); sync(); wall = time.perf_counter() - t0
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    with profile(activities=acts) as prof: step(); sync()
    wd = [e for e in prof.events() if e.name == 'smvwe.word_distance' or
          (e.name.startswith('autograd::engine::evaluate_function: L1') and e.name.endswith('Backward'))]
    wd = [e for e in wd if e.device_type == torch.autograd.DeviceType.CPU]
    t = sum((e.device_time_total if dev.type == 'cuda' else e.cpu_time_total) for e in wd) / 1e6
    # the same word distance timed alone (forward + backward at the step's shapes), as a cross-check of the profile
    from smvwe.distance import word_distance
    shapes = []
    h = model.words.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    with torch.no_grad(): model(img)
    h.remove()
    x = torch.randn(shapes[0], device=dev, requires_grad=True); cb = model.words.codebook.detach().clone().requires_grad_()
    best = 1e9
    for _ in range(3):
        sync(); t0 = time.perf_counter(); word_distance(x, cb).sum().backward(); sync(); best = min(best, time.perf_counter() - t0)
    name = f"word distance share of a cls step ({cfg['backbone']} {cfg['size']} bs{cfg['bs']}, N {cfg['n_words']}, K {cb.shape[1]})"
    T.add('profile', name, 100 * t / wall, '%', note=f'profiled {t * 1e3:.1f} ms of a {wall * 1e3:.1f} ms step; '
          f'timed alone {best * 1e3:.1f} ms = {100 * best / wall:.1f}%')


def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def ddp(T, dev, S):
    world = torch.cuda.device_count() if dev.type == 'cuda' else 2
    backend = 'nccl' if dev.type == 'cuda' else 'gloo'
    if dev.type == 'cuda' and not torch.distributed.is_nccl_available():
        T.add('ddp', 'DDP with NCCL', None, note='NCCL not available in this torch build'); return
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1' if dev.type == 'cpu' else env.get('OMP_NUM_THREADS', '4')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(world), '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), __file__, '--ddp-worker', '--device', dev.type]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = [l for l in p.stdout.splitlines() if l.startswith('DDP ')]
    if p.returncode != 0 or not lines:
        T.add('ddp', f'DDP {backend} world {world}', None, note=f'failed (exit {p.returncode}): ' + (p.stderr.strip().splitlines() or ['no output'])[-1][:100])
        T.rows[-1]['ok'] = False
        return
    r = json.loads(lines[-1][4:])
    T.add('ddp', f"DDP {backend} world {world}: DDP grad vs mean of ranks' grads", r['grad_rel'], 'rel', TOL['ddp'])
    T.add('ddp', f"DDP {backend} world {world}: weights equal on every rank after {r['steps']} steps", r['weights_spread'], 'abs', 0.)
    T.add('ddp', f"DDP {backend} world {world}: {r['backbone']} {r['img']} px, bs {r['bs']}/rank", r['img_s'], 'img/s', note='all ranks')


def ddp_worker(device):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from smvwe.losses import SMVWELoss
    from smvwe.model import SMVWENet
    cuda = device == 'cuda'
    dev = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if cuda else torch.device('cpu')
    if cuda: torch.cuda.set_device(dev); torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dist.init_process_group('nccl' if cuda else 'gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    S = SIZES[device]['ddp']
    torch.manual_seed(0)
    model = SMVWENet(N_CLS, S['backbone'], n_words=S['n_words']).to(dev).eval()   # eval: no dropout draws to differ
    local = copy.deepcopy(model)
    img, sal, label = (t.to(dev) for t in cls_batch(dict(bs=S['bs'], cls_img=S['img']), seed=10 + rank))   # each rank its own batch
    loss = SMVWELoss()
    loss(local(img), sal, label).backward()                                   # this rank's own gradient
    own = torch.cat([p.grad.flatten() for p in local.parameters() if p.grad is not None])
    allg = [torch.empty_like(own) for _ in range(world)]; dist.all_gather(allg, own)
    net = DDP(model, device_ids=[dev.index] if cuda else None)
    loss(net(img), sal, label).backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    mean = torch.stack(allg).mean(0)
    grad_rel = float((got - mean).abs().max() / mean.abs().max().clamp_min(1e-30))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    opt.step(); sync(); t0 = time.perf_counter()
    for _ in range(S['steps']):
        opt.zero_grad(set_to_none=True); loss(net(img), sal, label).backward(); opt.step()
    sync(); dt = time.perf_counter() - t0
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    allw = [torch.empty_like(w) for _ in range(world)]; dist.all_gather(allw, w)
    spread = float(max((a - allw[0]).abs().max() for a in allw))
    if rank == 0:
        print('DDP ' + json.dumps(dict(grad_rel=grad_rel, weights_spread=spread, steps=S['steps'] + 1, backbone=S['backbone'],
                                       img=S['img'], bs=S['bs'], img_s=world * S['bs'] * S['steps'] / dt)), flush=True)
    dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n'.join(__doc__.split('\n')[1:]))
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='cuda (paper sizes) or cpu (tiny sizes)')
    ap.add_argument('--budget', type=float, default=None, help='seconds after which throughput rows are skipped (default: 420 on cuda)')
    ap.add_argument('--skip', default='', help='comma-separated sections to skip: correct, throughput, profile, ddp')
    ap.add_argument('--json', help='also write the table to this JSON file')
    ap.add_argument('--ddp-worker', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if a.ddp_worker: return ddp_worker(dev.type)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('gpu_check.py: --device cuda but no CUDA device is visible; run with --device cpu for the tiny CPU check')
    if dev.type not in ('cuda', 'cpu'): sys.exit(f'gpu_check.py: --device must be cuda or cpu, got {a.device!r}')
    S = SIZES[dev.type]
    budget = a.budget if a.budget is not None else (420. if dev.type == 'cuda' else 1e9)
    skip = set(filter(None, a.skip.split(',')))
    t_start = time.time()
    if dev.type == 'cuda':
        name = f'{torch.cuda.get_device_name(dev)}, {torch.cuda.device_count()} GPU(s), CUDA {torch.version.cuda}'
    else:
        name = f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores (tiny sizes)'
    load = f', load average {os.getloadavg()[0]:.1f}' if hasattr(os, 'getloadavg') else ''
    print(f'gpu_check: {name}; torch {torch.__version__}{load}', flush=True)
    T = Table()
    if 'correct' not in skip:
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # float32 against float32
        try:
            check_word_distance(T, dev, S); check_loss_and_variants(T, dev, S); check_deeplab(T, dev, S); check_maps(T, dev, S)
        finally: torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if 'profile' not in skip: word_distance_share(T, dev, S)
    if 'ddp' not in skip: ddp(T, dev, S)
    if 'throughput' not in skip: throughput(T, dev, S, budget, t_start)
    T.print()
    bad = [r for r in T.rows if r['ok'] is False]
    print(f"\n{len(T.rows)} rows, {sum(r['ok'] is True for r in T.rows)} checks ok, {len(bad)} failed; "
          f"{time.time() - t_start:.0f} s on {name}")
    if a.json:
        tmp = Path(a.json).with_suffix('.tmp')
        tmp.write_text(json.dumps(dict(device=name, torch=torch.__version__, rows=T.rows), indent=1)); os.replace(tmp, a.json)
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main())
