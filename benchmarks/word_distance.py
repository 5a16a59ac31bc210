#!/usr/bin/env python
"""Benchmark of the visual word encoder's L1 distance (Eq. 1), forward + backward, side by side.

Implementations: `fused` (smvwe's C++ kernel, CPU), `triton` (smvwe's Triton kernel, CUDA), `torch` (smvwe's
chunked PyTorch fallback), `cdist` (`torch.cdist(p=1)` on the (B,HW,K) view) and `broadcast` (the direct formula,
only at a size it fits in).

The ceiling (CPU): the same process that times `fused` also runs a streaming abs-diff-accumulate microkernel,
compiled into the same extension (same flags), on the same threads, with its data in L1, just before and just after
the timed runs (three times each); the fastest is the ceiling in terms/s. Forward + backward is 3 terms per
(pixel, word, channel) (forward |m - c|; backward sign(m - c) into both gradients), so the ceiling time is
3 V / rate, and "fused/ceiling" is the fused kernel's wall time over that. Both sides see the same load, so the
ratio holds on a busy or a slower machine where absolute times do not.
Every (size, implementation) runs in a fresh subprocess, so peak memory is that configuration's own:
peak RSS (ru_maxrss) after the timed runs minus RSS with the inputs and the output gradient allocated.
"Extra" therefore includes the gradients themselves (dL/dfeats is 1x the features).

    python benchmarks/word_distance.py --size paper            # batch 4, K 4096, 56x56, N 256 (+ the broadcast size)
    python benchmarks/word_distance.py --size small --repeat 3 # quick
    python benchmarks/word_distance.py --threads 1
    python benchmarks/word_distance.py --device cuda          # Triton kernel vs chunked path vs torch.cdist
"""
import argparse, json, os, resource, subprocess, sys, time

SIZES = {'paper': dict(B=4, K=4096, H=56, W=56, N=256), 'small': dict(B=1, K=512, H=28, W=28, N=64)}


def rss_peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(cfg):
    import torch
    torch.set_num_threads(cfg['threads'])
    from smvwe.distance import word_distance, word_distance_reference, load_ext, ext_status
    dev = torch.device(cfg['device'])
    B, K, H, W, N = (cfg[k] for k in 'BKHWN')
    torch.manual_seed(0)
    x = torch.randn(B, K, H, W, device=dev, requires_grad=True)
    c = torch.randn(N, K, device=dev, requires_grad=True)
    g = torch.randn(B, N, H, W, device=dev)
    impl = cfg['impl']
    ceil = []
    if impl == 'fused':
        if load_ext() is None: return dict(error=f'fused kernel unavailable: {ext_status()}')
        f = lambda: word_distance(x, c, impl='fused')
        ext = load_ext()
        def ceiling(reps=40000):
            "(terms per wall second, terms per CPU second) of the in-cache microkernel"
            t0, c0 = time.perf_counter(), time.process_time(); n = ext.abs_diff_ceiling(reps)
            return n / (time.perf_counter() - t0), n / (time.process_time() - c0)
    elif impl == 'triton': f = lambda: word_distance(x, c, impl='triton')
    elif impl == 'torch': f = lambda: word_distance(x, c, impl='torch')
    elif impl == 'cdist': f = lambda: torch.cdist(x.flatten(2).transpose(1, 2), c[None], p=1).transpose(1, 2).reshape(B, N, H, W)
    elif impl == 'broadcast': f = lambda: word_distance_reference(x, c)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    xs, cs = x[:1, :, :2, :2].detach().clone().requires_grad_(), c[:2].detach().clone().requires_grad_()
    (word_distance(xs, cs, impl=impl) if impl in ('fused', 'triton', 'torch') else torch.cdist(xs.flatten(2).mT, cs[None], p=1)).sum().backward()
    del xs, cs  # warm-up on a tiny input: thread pools and the kernel are loaded before the memory baseline
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    base_rss = rss_peak_mb()
    fwd, bwd = [], []
    if impl == 'fused': ceil += [ceiling() for _ in range(3)]
    cpu0 = time.process_time()
    for _ in range(cfg['repeat']):
        x.grad = c.grad = None
        sync(); t0 = time.perf_counter(); d = f(); sync(); t1 = time.perf_counter()
        d.backward(g); sync(); t2 = time.perf_counter()
        fwd.append(t1 - t0); bwd.append(t2 - t1); del d
    cpu = (time.process_time() - cpu0) / cfg['repeat']
    if impl == 'fused': ceil += [ceiling() for _ in range(3)]
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == 'cuda' else rss_peak_mb() - base_rss
    return dict(fwd=min(fwd), bwd=min(bwd), total=min(a + b for a, b in zip(fwd, bwd)), extra_mb=extra,
                cpu=cpu, ceiling=max(c[0] for c in ceil) if ceil else None, ceiling_cpu=max(c[1] for c in ceil) if ceil else None, fwds=fwd, bwds=bwd,
                feat_mb=x.numel() * 4 / 2**20, terms=B * H * W * N * K, threads=torch.get_num_threads())


def run(cfg):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    p = subprocess.run([sys.executable, __file__, '--worker', json.dumps(cfg)], capture_output=True, text=True, env=env)
    try: return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception: return dict(error=(p.stderr.strip().splitlines() or ['no output'])[-1][:200] + f' (exit {p.returncode})')


def broadcast_size(base, budget_gb):
    "The largest square map (same B, K, N as `base`, batch 1) whose broadcast forward + backward fits in `budget_gb`."
    s = 1
    while 3 * (s + 1) ** 2 * base['N'] * base['K'] * 4 <= budget_gb * 2**30: s += 1
    return dict(B=1, K=base['K'], H=s, W=s, N=base['N'])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', choices=list(SIZES), default='paper', help='paper: B4 K4096 56x56 N256; small: B1 K512 28x28 N64')
    ap.add_argument('--repeat', type=int, default=1, help='timed runs per configuration (min is reported)')
    ap.add_argument('--threads', type=int, default=os.cpu_count(), help='torch intra-op threads')
    ap.add_argument('--impls', default=None, help='implementations at the main size (default: fused,cdist on cpu; triton,torch,cdist on cuda)')
    ap.add_argument('--broadcast-gb', type=float, default=1.5, help='memory budget that picks the broadcast comparison size (0: skip)')
    ap.add_argument('--device', default='cpu', help='cpu or cuda')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: print(json.dumps(worker(json.loads(a.worker)))); return
    base = SIZES[a.size]
    a.impls = a.impls or ('triton,torch,cdist' if a.device.startswith('cuda') else 'fused,cdist')
    if a.device.startswith('cuda'): a.broadcast_gb = min(a.broadcast_gb, 0)
    plan = [(base, i) for i in a.impls.split(',')]
    if a.broadcast_gb > 0:
        bs = broadcast_size(base, a.broadcast_gb)
        plan += [(bs, i) for i in ('fused', 'cdist', 'broadcast')]
    load = os.getloadavg()[0]
    print(f'threads {a.threads}, repeat {a.repeat}, device {a.device}; one fresh process per row; load average {load:.1f}', flush=True)
    if load > 0.5: print('  note: other processes are using the CPU; wall times are inflated, "G/cpu-s" (terms per CPU second) is not', flush=True)
    res = {}
    for size, impl in plan:
        key = (size['B'], size['K'], size['H'], size['W'], size['N'])
        res[key, impl] = run(dict(size, impl=impl, repeat=a.repeat, threads=a.threads, device=a.device))
        print(f'  done {key} {impl}', flush=True)
    print(f"\n{'size (B,K,HxW,N)':20s} {'impl':9s} {'fwd ms':>9s} {'bwd ms':>9s} {'total ms':>9s} {'cpu s':>7s} "
          f"{'G terms/s':>9s} {'G/cpu-s':>8s} {'extra MB':>9s} {'x feats':>7s} {'cdist/X':>7s}")
    for (key, impl), r in res.items():
        name = '{},{},{}x{},{}'.format(*key)
        if 'error' in r: print(f'{name:20s} {impl:9s} ERROR {r["error"]}'); continue
        cd = res.get((key, 'cdist'), {})
        ratio = f"{cd['total'] / r['total']:.2f}" if 'total' in cd else ''
        print(f"{name:20s} {impl:9s} {r['fwd']*1e3:9.1f} {r['bwd']*1e3:9.1f} {r['total']*1e3:9.1f} {r['cpu']:7.2f} "
              f"{3 * r['terms'] / r['total'] / 1e9:9.2f} {3 * r['terms'] / r['cpu'] / 1e9:8.2f} {r['extra_mb']:9.0f} {r['extra_mb'] / r['feat_mb']:7.2f} {ratio:>7s}")
    print('\nratios (time of X / time of fused, same size, same run):')
    for (key, impl), r in res.items():
        f = res.get((key, 'fused'), {})
        if impl != 'fused' and 'total' in r and 'total' in f:
            print(f'  {key}: {impl} / fused = {r["total"] / f["total"]:.1f}x wall, {r["cpu"] / f["cpu"]:.1f}x CPU time')
    for (key, impl), r in res.items():
        if impl == 'fused' and 'total' in r and r.get('ceiling'):
            rate, V = r['ceiling'], r['terms']
            t_ceil = 3 * V / rate
            print(f'  {key}: ceiling (streaming |x - c| accumulate in L1, {r["threads"]} threads, same build, same run) '
                  f'{rate / 1e9:.1f} G terms/s -> 3V = {3 * V / 1e9:.1f} G terms take {t_ceil:.3f} s at the ceiling')
            print(f'  {key}: fused fwd {r["fwd"]:.3f} s = {r["fwd"] / (V / rate):.2f}x its ceiling time, '
                  f'bwd {r["bwd"]:.3f} s = {r["bwd"] / (2 * V / rate):.2f}x; extra memory {r["extra_mb"] / r["feat_mb"]:.2f}x the features')
            print(f'  {key}: fused/ceiling = {r["total"] / t_ceil:.2f} (fwd+bwd {r["total"]:.3f} s over {t_ceil:.3f} s, wall time)')
            c_ceil = 3 * V / r['ceiling_cpu']
            print(f'  {key}: fused/ceiling in CPU time = {r["cpu"] / c_ceil:.2f} ({r["cpu"]:.2f} CPU s over {c_ceil:.2f}; '
                  f'the ceiling does {r["ceiling_cpu"] / 1e9:.1f} G terms per CPU second; robust to other processes)')

if __name__ == '__main__': main()
