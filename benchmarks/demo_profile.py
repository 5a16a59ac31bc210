#!/usr/bin/env python
"""`smvwe demo`, stage by stage, as it ran before the speed work and as it runs now, in the same run, and where a step's time goes.

The demo is run twice into WORK/previous and WORK/current (the benchmark is written once and shared), and the
script prints each stage's seconds (from the demo's own `timings.json`) side by side with the ratio previous /
current, the wall time of both, and each variant's pseudo-label mIoU and the paper's checks under both.

- previous (`--previous fp32`, the default): today's recipe as the demo ran it before: float32, channels-first,
  one training at a time with every core;
- current: `smvwe.experiment.PRESETS['default']` as the demo runs it now: channels-last, its bf16 autocast where
  `smvwe demo --amp auto` keeps it (a GPU, a CPU with native bfloat16; float32 where bfloat16 is emulated), two
  trainings side by side (`smvwe demo --jobs`, one process each with half the cores).
- `--previous first-recipe`: the first demo recipe instead (also float32, one at a time): the small backbone's
  dilated layout at output stride 8, lr 0.1 with the new layers at 10x, random long side 72-96 px. It learns
  something else, so its mIoU differ for that reason too; the protocol (`smvwe protocol`) is where claims are measured.

`--profile` adds a `torch.profiler` table of one classification training step (SMVWE, all four loss terms) and one
DeepLab step under each setting: the operators with the most self CPU time.

    python benchmarks/demo_profile.py                       # the default preset, about 15 minutes on an idle 2-core CPU
    python benchmarks/demo_profile.py --quick --profile     # the smoke-test preset, about a minute
    python benchmarks/demo_profile.py --profile --no-demo   # only where a training step's time goes, both settings
"""
import argparse, json, os, shutil, sys, time
from pathlib import Path

import torch

FP32 = {'cls.amp': None, 'cls.channels_last': False}  # DeepLab follows the classifier's precision


def recipes(preset:str, previous:str='fp32') -> dict:
    "{'previous': (Preset, jobs), 'current': (Preset, jobs)}"
    from smvwe.experiment import get_preset
    from smvwe.study import FIRST_RECIPE  # the recipe study's first row
    from smvwe.precision import cpu_precision
    cur = get_preset(preset); prev = get_preset(preset, FP32)
    if (a := cpu_precision('auto', cur.cls.amp)) != cur.cls.amp: cur = get_preset(cur, {'cls.amp': a})  # as `smvwe demo` runs it here
    if previous == 'first-recipe':
        prev = get_preset(prev, {**{f'cls.{k}': v for k, v in FIRST_RECIPE.items()},
                                 'cls.resize_long': (round(cur.cls.crop * 0.75), cur.cls.crop)})  # its random long side, 0.75-1x the crop
    return {'previous': (prev, 1), 'current': (cur, None)}


def run_demos(work:Path, preset:str, seg:bool, previous:str='fp32') -> dict:
    from smvwe.demo import demo
    out = {}
    for name, (p, jobs) in recipes(preset, previous).items():
        run = work/name
        if name != 'previous' and (work/'previous'/'data').is_dir() and not (run/'data').exists():
            run.mkdir(parents=True, exist_ok=True)
            shutil.copytree(work/'previous'/'data', run/'data')  # the same benchmark, not timed twice
        for f in ('timings.json', 'metrics.json'): (run/f).unlink(missing_ok=True)
        print(f'--- {name} recipe -> {run}', flush=True)
        m = demo(run, p, seed=0, seg=seg, progress=False, jobs=jobs)
        out[name] = dict(timings=json.loads((run/'timings.json').read_text()), metrics=m)
    return out


def stage_table(res:dict) -> str:
    prev, cur = res['previous']['timings'], res['current']['timings']
    keys = [k for k in cur['stages'] if k != 'benchmark'] 
    rows = ['| stage | previous s | current s | previous / current |', '|---|---|---|---|']
    for k in keys:
        a, b = prev['stages'].get(k), cur['stages'][k]
        rows.append(f'| {k} | {a:.1f} | {b:.1f} | {a / max(b, 1e-9):.2f} |' if a is not None else f'| {k} | n/a | {b:.1f} | n/a |')
    a = sum(prev['stages'][k] for k in keys if k in prev['stages']); b = sum(cur['stages'][k] for k in keys)
    rows.append(f'| **all but the benchmark** | {a:.1f} | {b:.1f} | {a / max(b, 1e-9):.2f} |')
    return '\n'.join(rows)


def miou_table(res:dict) -> str:
    rows = ['| variant | previous mIoU | current mIoU |', '|---|---|---|']
    for v, r in res['current']['metrics']['variants'].items():
        rows.append(f"| {v} | {res['previous']['metrics']['variants'][v]['miou']:.3f} | {r['miou']:.3f} |")
    for v, r in res['current']['metrics'].get('seg', {}).items():
        rows.append(f"| DeepLab on {v} | {res['previous']['metrics']['seg'][v]['miou']:.3f} | {r['miou']:.3f} |")
    return '\n'.join(rows)


def claims_table(res:dict) -> str:
    c0, c1 = res['previous']['metrics']['claims'], res['current']['metrics']['claims']
    rows = ['| check | previous | current |', '|---|---|---|']
    for k in c1: rows.append(f"| {k} | {c0.get(k, {}).get('holds')} | {c1[k]['holds']} |")
    return '\n'.join(rows)


def profile_steps(preset:str, steps:int=5, top:int=8, previous:str='fp32') -> str:
    "torch.profiler tables of training steps under both settings (the step of `throughput.py`): the operators with the most self CPU time"
    from torch.profiler import profile, ProfilerActivity
    from smvwe.fit import _to_float
    sys.path.insert(0, str(Path(__file__).resolve().parent)); import throughput  # its models, batches and training step
    out = []
    for name, (pr, _) in recipes(preset, previous).items():
        p = pr.recipe(); S, B = p['crop'], p['bs']
        for stage in ('cls', 'seg'):  # cls: SMVWE, visual words on, all four loss terms
            cfg = dict(stage=stage, size=S, bs=B, n_words=p['n_words'], backbone=p['backbone'] if stage == 'cls' else p['seg_backbone'],
                       arch=p['seg_arch'], model_kw={k: p[k] for k in ('output_stride', 'backbone_kwargs') if k in p})
            m, lf, batch = throughput.build(cfg, torch.device('cpu'))
            (x,), ys = batch()
            if p.get('channels_last'): m = m.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
            def step():
                with torch.autocast('cpu', dtype=torch.bfloat16, enabled=p.get('amp') == 'bf16'):
                    l = lf(_to_float(m(x)), *ys)
                opt.zero_grad(); l.backward(); opt.step()
            for _ in range(2): step()
            t = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps): step()
            ms = (time.perf_counter() - t) / steps * 1000
            out += [f'### {stage}, {name} recipe: {ms:.1f} ms per step of {B} images at {S} px (profiled)', '',
                    prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=top), '']
    return '\n'.join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--work', default='runs/demo_profile', help='folder for the two demo runs (reruns from scratch)')
    ap.add_argument('--quick', action='store_true', help="the smoke-test preset ('quick') instead of 'default'")
    ap.add_argument('--no-seg', action='store_true', help='skip the DeepLab stage')
    ap.add_argument('--profile', action='store_true', help='also profile training steps of both stages')
    ap.add_argument('--previous', default='fp32', choices=['fp32', 'first-recipe'], help='what the current demo is compared with')
    ap.add_argument('--no-demo', action='store_true', help='only the profile (with --profile): no demo runs')
    ap.add_argument('--json', default=None, help='write the stage timings and mIoU of both runs to this file')
    a = ap.parse_args(argv)
    preset = 'quick' if a.quick else 'default'
    work = Path(a.work)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; preset {preset!r}', flush=True)
    if a.profile: print(profile_steps(preset, steps=2 if a.quick else 5, previous=a.previous), flush=True)
    if a.no_demo: return
    t = time.time(); res = run_demos(work, preset, seg=not a.no_seg, previous=a.previous)
    print(f'\n## Stages (seconds, demo timings.json; both runs in this process, {time.time() - t:.0f} s in all)\n')
    print(stage_table(res))
    w = {k: v['timings']['wall_s'] for k, v in res.items()}
    print(f"\ndemo wall time: previous {w['previous']:.0f} s, current {w['current']:.0f} s "
          f"(previous / current {w['previous'] / max(w['current'], 1e-9):.2f})\n")
    print(miou_table(res)); print(); print(claims_table(res))
    if a.json:
        Path(a.json).write_text(json.dumps({k: dict(timings=v['timings'], miou={n: r['miou'] for n, r in v['metrics']['variants'].items()},
                                                    seg_miou={n: r['miou'] for n, r in v['metrics'].get('seg', {}).items()},
                                                    claims={n: c['holds'] for n, c in v['metrics']['claims'].items()}, jobs=v['metrics'].get('jobs'))
                                            for k, v in res.items()}, indent=1))


if __name__ == '__main__':
    main()
