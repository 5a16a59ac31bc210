#!/usr/bin/env python
"""Training throughput (images/s) of both stages: fp32 vs mixed precision, channels-last off/on, side by side.

One training step is what `smvwe train-cls` / `smvwe train-seg` do per batch, on synthetic tensors already
on the device (no data loading): forward, loss, backward, SGD step (momentum 0.9, weight decay 5e-4).
  cls: `SMVWENet` (20 classes, visual words on) + `SMVWELoss` (all four terms), inputs (B,3,S,S) images,
       (B,1,S,S) saliency, (B,20) labels.
  seg: `DeepLab` V1 (LargeFOV) or V2 (ASPP), 21 classes, + `SegLoss` (cross-entropy, 255 ignored).
Mixed precision is what the `AMP` callback does: autocast around forward + loss (predictions cast back
to float32 for the loss), a gradient scaler for fp16. channels-last converts the model and the images.
Every variant of a configuration builds the same model (same seed); the table gives the median and best
milliseconds per step, images per second (batch / median step), and the speed relative to the fp32 /
channels-first row of that configuration.

    python benchmarks/throughput.py --preset cpu                       # small backbones at 96 px (CPU)
    python benchmarks/throughput.py --preset paper --device cuda       # ResNet38 cls 448 (bs 4), ResNet101 V2 + VGG16 V1 seg 321
    python benchmarks/throughput.py --stage seg --backbone vgg16 --arch v1 --size 321 --bs 20 --device cuda --amp bf16
"""
import argparse, os, platform, sys, time
from contextlib import nullcontext

import torch

PRESETS = {
    'cpu': dict(configs=[dict(stage='cls', backbone='small', size=96, bs=2),
                         dict(stage='seg', arch='v1', backbone='small', size=96, bs=2),
                         dict(stage='seg', arch='v2', backbone='small', size=96, bs=2)],
                iters=5, warmup=2),
    'paper': dict(configs=[dict(stage='cls', backbone='resnet38', size=448, bs=4),    # §4.1: ResNet38, 448 crops, batch 4
                           dict(stage='seg', arch='v2', backbone='resnet101', size=321, bs=10),  # DeepLab-V2: 321 crops, batch 10
                           dict(stage='seg', arch='v1', backbone='vgg16', size=321, bs=20)],     # DeepLab-V1 LargeFOV: batch 20
                  iters=20, warmup=5),
}
N_CLS = 20  # PASCAL VOC foreground classes


def device_name(dev:torch.device) -> str:
    if dev.type == 'cuda': return f'{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})'
    cpu = platform.processor() or 'CPU'
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    return f'{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'


def amp_dtypes(dev:torch.device, amp:str) -> list:
    "The precisions to compare: [None (fp32), autocast dtype...]"
    if amp == 'none': return [None]
    if amp == 'auto':
        if dev.type == 'cuda': amp = 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
        else: amp = 'bf16'
    return [None, {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]]


def build(cfg:dict, dev:torch.device):
    "Model, loss function, and a function that makes a batch (inputs, targets) for configuration `cfg`"
    torch.manual_seed(0)
    B, S = cfg['bs'], cfg['size']
    if cfg['stage'] == 'cls':
        from smvwe.model import SMVWENet
        from smvwe.losses import SMVWELoss
        model = SMVWENet(N_CLS, backbone=cfg['backbone'], n_words=cfg.get('n_words', 256), **cfg.get('model_kw', {}))
        loss = SMVWELoss()
        def batch():
            g = torch.Generator().manual_seed(1)
            label = (torch.rand(B, N_CLS, generator=g) < 0.15).float(); label[:, 0] = 1
            return (torch.randn(B, 3, S, S, generator=g),), (torch.rand(B, 1, S, S, generator=g), label)
    else:
        from smvwe.deeplab import DeepLab, SegLoss
        model = DeepLab(N_CLS + 1, cfg['arch'], cfg['backbone'])
        loss = SegLoss()
        def batch():
            g = torch.Generator().manual_seed(1)
            m = torch.randint(0, N_CLS + 1, (B, S, S), generator=g); m[:, :4] = 255
            return (torch.randn(B, 3, S, S, generator=g),), (m,)
    return model.to(dev), loss, batch


def bench(cfg:dict, dev:torch.device, dtype, channels_last:bool, iters:int, warmup:int) -> dict:
    "Time `iters` training steps after `warmup` untimed ones"
    from smvwe.fit import _to_float
    model, loss_fn, batch = build(cfg, dev)
    xs, ys = batch()
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=mf).train()
    xs = tuple(x.to(dev).contiguous(memory_format=mf) for x in xs); ys = tuple(y.to(dev) for y in ys)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    ctx = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype is not None else nullcontext
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == 'cuda' else (lambda: None)
    def step():
        opt.zero_grad(set_to_none=True)
        with ctx(): l = loss_fn(_to_float(model(*xs)), *ys)
        scaler.scale(l).backward(); scaler.step(opt); scaler.update()
        return l
    for _ in range(warmup): l = step()
    sync()
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter(); l = step(); sync(); times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]  # the median step: robust to other processes on a busy machine
    return dict(ms=1e3 * med, ms_min=1e3 * min(times), img_s=cfg['bs'] / med, loss=l.item(),
                peak_gb=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == 'cuda' else None)


def name(cfg:dict) -> str:
    return f"cls {cfg['backbone']}" if cfg['stage'] == 'cls' else f"seg {cfg['arch']} {cfg['backbone']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n'.join(__doc__.split('\n')[1:]))
    ap.add_argument('--preset', choices=list(PRESETS), help='cpu: small backbones at 96 px; paper: the paper\'s networks and crops')
    ap.add_argument('--stage', choices=['cls', 'seg'], help='without --preset: the stage (default: seg for vgg16, else cls)')
    ap.add_argument('--backbone', choices=['resnet38', 'resnet101', 'vgg16', 'small'], default='small', help='without --preset: the backbone')
    ap.add_argument('--arch', choices=['v1', 'v2'], default='v1', help='seg: DeepLab V1 (LargeFOV) or V2 (ASPP)')
    ap.add_argument('--size', type=int, help='crop size (default: 448 cls, 321 seg; the preset\'s)')
    ap.add_argument('--bs', type=int, help='batch size (default: 4 cls, 10 seg; the preset\'s)')
    ap.add_argument('--n-words', type=int, default=256, help='cls: number of visual words')
    ap.add_argument('--iters', type=int, help='timed steps per variant (default: the preset\'s, else 10)')
    ap.add_argument('--warmup', type=int, help='untimed steps first (default: the preset\'s, else 3)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='cpu, cuda, cuda:1 ...')
    ap.add_argument('--amp', choices=['auto', 'bf16', 'fp16', 'none'], default='auto',
                    help='mixed precision compared with fp32 (auto: bf16 where supported, else fp16; none: fp32 only)')
    ap.add_argument('--channels-last', choices=['both', 'on', 'off'], default='both', help='memory formats compared')
    ap.add_argument('--threads', type=int, help='torch intra-op threads on CPU (default: torch\'s)')
    ap.add_argument('--cudnn-benchmark', action='store_true', help='torch.backends.cudnn.benchmark = True (fastai leaves it off)')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    dev = torch.device(a.device)
    if dev.type == 'cuda' and not torch.cuda.is_available(): ap.error('--device cuda but no GPU is visible')
    if a.preset:
        p = PRESETS[a.preset]; configs = [dict(c) for c in p['configs']]
        iters, warmup = a.iters or p['iters'], a.warmup if a.warmup is not None else p['warmup']
    else:
        stage = a.stage or ('seg' if a.backbone == 'vgg16' else 'cls')
        if stage == 'cls' and a.backbone == 'vgg16': ap.error('the classification stage has no vgg16 backbone (resnet38, resnet101, small)')
        if stage == 'seg' and a.backbone == 'resnet38': ap.error('DeepLab has no resnet38 backbone (vgg16, resnet101, small)')
        configs = [dict(stage=stage, backbone=a.backbone, arch=a.arch, size=448 if stage == 'cls' else 321, bs=4 if stage == 'cls' else 10)]
        iters, warmup = a.iters or 10, a.warmup if a.warmup is not None else 3
    for c in configs:
        if a.size: c['size'] = a.size
        if a.bs: c['bs'] = a.bs
        c['n_words'] = a.n_words
    dtypes = amp_dtypes(dev, a.amp)
    cls_ = {'both': [False, True], 'on': [True], 'off': [False]}[a.channels_last]
    print(f'device: {device_name(dev)}; torch {torch.__version__}; {iters} timed steps after {warmup} warm-up per row', flush=True)
    if hasattr(os, 'getloadavg') and dev.type == 'cpu' and os.getloadavg()[0] > 0.5:
        print(f'  note: load average {os.getloadavg()[0]:.1f} before the run: other processes share the CPU, times are inflated', flush=True)
    hdr = f"{'model':20s} {'size':>4s} {'bs':>3s} {'precision':>9s} {'ch-last':>7s} {'med ms':>9s} {'best ms':>9s} {'img/s':>8s} {'vs fp32':>7s}"
    if dev.type == 'cuda': hdr += f" {'peak GB':>7s}"
    rows = []
    for c in configs:
        base = None
        for dt in dtypes:
            for cl in cls_:
                prec = {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}[dt]
                try: r = bench(c, dev, dt, cl, iters, warmup)
                except Exception as e:  # e.g. a dtype the device cannot run, or out of memory
                    r = dict(error=f'{type(e).__name__}: {str(e).splitlines()[0][:90]}')
                if base is None and 'img_s' in r: base = r['img_s']
                rows.append((c, prec, cl, r))
                print(f"  done {name(c)} {prec} channels_last={cl}: " + (f"{r['img_s']:.2f} img/s" if 'img_s' in r else r['error']), flush=True)
                if dev.type == 'cuda': torch.cuda.empty_cache()
        for cc, prec, cl, r in rows:
            if cc is c and 'img_s' in r: r['ratio'] = r['img_s'] / base
    print('\nimg/s = batch / median step time; "vs fp32" = img/s relative to the first row of the model (fp32, channels-first)')
    print(hdr)
    for c, prec, cl, r in rows:
        head = f"{name(c):20s} {c['size']:4d} {c['bs']:3d} {prec:>9s} {'on' if cl else 'off':>7s}"
        if 'error' in r: print(f'{head} ERROR {r["error"]}'); continue
        line = f"{head} {r['ms']:9.1f} {r['ms_min']:9.1f} {r['img_s']:8.2f} {r['ratio']:6.2f}x"
        if r['peak_gb'] is not None: line += f" {r['peak_gb']:7.2f}"
        print(line)
    return rows


if __name__ == '__main__': main()
