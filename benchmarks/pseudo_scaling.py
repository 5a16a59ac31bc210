#!/usr/bin/env python
"""Pseudo-label generation with 0, 1, 2, ... worker processes, side by side, in two tables.

1. The whole of `smvwe.pseudo.make_pseudo`: the model runs in the main process, the CPU stage (upsampling,
   read-out, dense CRF, PNG writing) in `n_workers` processes. Every row labels the same images with the
   same (randomly initialised, seeded) small SMVWE model into a fresh folder, so the outputs must be
   byte-identical: the script checks that.
2. The dense CRF alone (`smvwe.pseudo.crf_refine`, the default 10 iterations) over a pool of processes, at
   `--crf-size` (default 375 x 500, a PASCAL VOC image), on images of the benchmark with smooth random
   class probabilities; the labels must again be identical.
Each table gives the best wall time of `--repeat` runs, images/s and the speed-up over one worker.

    python benchmarks/pseudo_scaling.py                              # built-in benchmark size (96 px), 64 images
    python benchmarks/pseudo_scaling.py --size 320 --n 16 --workers 0,1,2,4 --crf-n 16
"""
import argparse, hashlib, os, shutil, sys, tempfile, time
from pathlib import Path


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(Path(folder).glob('*.png')): h.update(p.name.encode()); h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _crf_job(job):
    from smvwe.maps import crf_refine
    img, probs = job
    return crf_refine(img, probs, ref_size=500)


def crf_table(root, a, workers):
    "Time `crf_refine` alone over a process pool"
    import multiprocessing as mp
    import cv2, numpy as np
    from smvwe.voc import read_split, load_image
    H, W = (int(v) for v in a.crf_size.split(','))
    rng = np.random.default_rng(0)
    jobs = []
    for i in read_split(root, 'train')[:a.crf_n]:
        img = cv2.resize(load_image(root, i), (W, H), interpolation=cv2.INTER_LINEAR)
        p = cv2.resize(rng.random((H // 16, W // 16, 6)).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) ** 4
        jobs.append((img, np.ascontiguousarray((p / p.sum(-1, keepdims=True)).transpose(2, 0, 1))))
    print(f'\ndense CRF alone: {len(jobs)} images of {H} x {W}, 6 labels, 10 iterations\n')
    print(f"{'processes':>9} {'best s':>8} {'img/s':>7} {'vs 1':>12}  labels")
    rows, ref = {}, None
    for w in workers:
        best = float('inf')
        for _ in range(a.repeat):
            t = time.perf_counter()
            with mp.get_context('fork').Pool(w) as pool: out = pool.map(_crf_job, jobs, chunksize=1)
            best = min(best, time.perf_counter() - t)
            d = hashlib.sha256(b''.join(o.astype(np.int64).tobytes() for o in out)).hexdigest()[:12]; ref = ref or d
            if d != ref: sys.exit(f'{w} processes: CRF labels differ from the first run')
        rows[w] = best
    for w, s in rows.items():
        sp = f'{rows[workers[0]] / s:.2f}x'
        print(f'{w:>9} {s:>8.2f} {len(jobs) / s:>7.2f} {sp:>12}  identical')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=64, help='images to label')
    ap.add_argument('--size', type=int, default=96, help='image side (px) of the generated benchmark')
    ap.add_argument('--workers', default='0,1,2', help='comma-separated n_workers values (0 = in-process)')
    ap.add_argument('--scales', default='1,0.5,1.5,2', help='inference scales')
    ap.add_argument('--no-crf', action='store_true', help='skip the dense CRF')
    ap.add_argument('--repeat', type=int, default=2, help='runs per setting (the best is reported)')
    ap.add_argument('--crf-n', type=int, default=8, help='images for the CRF-only table (0: skip it)')
    ap.add_argument('--crf-size', default='375,500', help='H,W of the CRF-only table')
    a = ap.parse_args(argv)
    import torch
    from smvwe.synth import make_benchmark
    from smvwe.model import SMVWENet
    from smvwe.pseudo import make_pseudo
    torch.set_num_threads(1)  # the model stage in the main process; the workers take the other cores
    workers = [int(w) for w in a.workers.split(',')]
    scales = tuple(float(s) for s in a.scales.split(','))
    tmp = Path(tempfile.mkdtemp(prefix='pseudo_scaling_'))
    try:
        root = make_benchmark(tmp/'data', n_train=a.n, n_val=1, size=a.size, progress=False)
        torch.manual_seed(0)
        model = SMVWENet(n_classes=5, backbone='small', n_words=16).eval()
        print(f'{a.n} images of {a.size} px, scales {scales} + flip, CRF {"off" if a.no_crf else "on"}, '
              f'{os.cpu_count()} CPU cores, torch threads 1 (model in the main process)\n')
        print(f"{'n_workers':>9} {'best s':>8} {'img/s':>7} {'vs 1 worker':>12}  outputs")
        rows, ref = {}, None
        for w in workers:
            best = float('inf')
            for r in range(a.repeat):
                out = tmp/f'w{w}_{r}'
                t = time.perf_counter()
                make_pseudo(model, root, 'train', out, scales=scales, crf=not a.no_crf, n_workers=w, resume=False,
                            save_cams=False, progress=False)
                best = min(best, time.perf_counter() - t)
                d = digest(out/'pseudo'); ref = ref or d
                if d != ref: sys.exit(f'n_workers={w}: outputs differ from the first run ({d} vs {ref})')
                shutil.rmtree(out)
            rows[w] = best
        for w, s in rows.items():
            sp = f'{rows[1] / s:.2f}x' if 1 in rows else 'n/a'
            print(f'{w:>9} {s:>8.2f} {a.n / s:>7.1f} {sp:>12}  identical')
        if a.crf_n: crf_table(root, a, [w for w in workers if w > 0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__': main()
