"""Several processes: `torchrun ... -m smvwe.cli` with two CPU ranks (gloo) against one process.

Training (DDP): two ranks of batch B each step on the gradient averaged over both ranks' batches. The
single-process run that takes exactly that step is one with batch 2B whose batches are rank 0's and rank
1's batches side by side, forwarded in two halves (BatchNorm uses per-rank batch statistics in DDP:
SyncBatchNorm does not run on CPUs). `PerRank` + `AsDDP` below build that run from the ordinary
`train_cls`, and the DDP weights must equal it. A plain batch-2B run is *not* equal (other batches, and
BatchNorm statistics over 2B images), which shows the comparison can fail.

Pseudo labels and predictions: each rank handles ids[rank::world_size]; the files must be byte-identical
to the single-process run's."""
import csv, dataclasses, os, socket, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from fastai.callback.core import Callback

from smvwe.voc import make_tiny_voc, read_split
from smvwe.deeplab import DeepLab
from smvwe.segment import predict_folder
from smvwe.train import train_cls

ARGS = dict(bs=2, crop=32, resize_long='32,48', n_words=8, epochs=2)  # per-rank batch B = 2, two ranks
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def run(args, timeout=180):
    "Run `args` with one CPU thread per process and no launcher variables inherited; fail with its output."
    env = {k: v for k, v in os.environ.items()
           if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f'{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}'
    return p


def torchrun(*cli):
    return run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(WORLD),
                '--master_addr', '127.0.0.1', '--master_port', str(free_port()), '-m', 'smvwe.cli', *map(str, cli)])


def cli_args(d:dict): return [f"--{k.replace('_', '-')}={v}" for k, v in d.items()]


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp('voc'), n=8, n_val=4, classes=['background', 'disc', 'box'], size=(40, 48), seed=0)


@pytest.fixture(scope='module')
def ddp_run(root, tmp_path_factory):
    "`torchrun --nproc_per_node 2 -m smvwe.cli train-cls ROOT RUN` on two CPU processes"
    out = tmp_path_factory.mktemp('ddp')
    p = torchrun('train-cls', root, out, *cli_args(ARGS), '--no-progress', '--device', 'cpu')
    return out, p


def test_python_m_cli():
    p = run([sys.executable, '-m', 'smvwe.cli', '--help'])
    assert 'usage: smvwe COMMAND' in p.stdout


def _cat(xs):
    "Concatenate the batch dimension of a list of model outputs (tensors, dicts, dataclasses, None)"
    x = xs[0]
    if isinstance(x, torch.Tensor): return torch.cat(xs)
    if isinstance(x, dict): return {k: _cat([o[k] for o in xs]) for k in x}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _cat([getattr(o, f.name) for o in xs]) for f in dataclasses.fields(x) if f.init})
    return x


class PerRank(nn.Module):
    "Forward the batch in `w` equal parts, as `w` DDP ranks do (BatchNorm statistics per part)"
    def __init__(self, module, w): super().__init__(); self.module, self.w = module, w
    def forward(self, x): return _cat([self.module(c) for c in x.chunk(self.w)])


class AsDDP(Callback):
    """Single-process batches of w*b images made of the w ranks' batches: fastai's `DistributedDL` gives rank r
    the r-th contiguous part of the epoch's order, in batches of b; this puts rank r's k-th batch in part r of batch k."""
    order = 0
    def __init__(self, w, b): self.w, self.b = w, b
    def before_fit(self):
        self.learn.model = PerRank(self.learn.model, self.w)
        dl = self.dls.train; orig = type(dl).get_idxs
        def get_idxs():
            idxs = list(orig(dl)); n = len(idxs) // self.w
            assert n * self.w == len(idxs) and n % self.b == 0  # no padding, no dropped batch in this test
            part = [idxs[r*n:(r+1)*n] for r in range(self.w)]
            return [i for k in range(0, n, self.b) for p in part for i in p[k:k+self.b]]
        dl.get_idxs = get_idxs
    def after_fit(self):
        self.learn.model = self.learn.model.module
        del self.dls.train.get_idxs


def _single(root, out, cbs=None):
    "The single-process run with the CLI's arguments and batch WORLD*B, on one thread like each rank"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        learn = train_cls(root, out, variant='smvwe', epochs=ARGS['epochs'], bs=WORLD * ARGS['bs'], crop=ARGS['crop'],
                          resize_long=(32, 48), n_words=ARGS['n_words'], device='cpu', progress=False, cbs=cbs)
    finally: torch.set_num_threads(n)
    return dict(learn.model.named_parameters())


def test_ddp_training_matches_single_process(root, ddp_run, tmp_path):
    out, _ = ddp_run
    cls = out/'cls'
    assert sorted(p.name for p in cls.iterdir()) == ['checkpoint.pth', 'diagnostics.json', 'history.csv', 'model.pth']  # rank 0 only, no temporaries
    ddp = torch.load(cls/'model.pth', weights_only=True)['model']
    rows = list(csv.DictReader(open(cls/'history.csv')))
    assert len(rows) == ARGS['epochs'] and float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])  # it learns
    for r in rows:  # every term column is over both ranks' samples, like valid_loss (weights 1: their sum)
        terms = sum(float(r[f'valid_{t}_loss']) for t in ('cls', 'word', 'w2i', 'sal'))
        assert abs(terms - float(r['valid_loss'])) < 1e-4 * max(1., float(r['valid_loss'])), r
    ref = _single(root, tmp_path/'ref', cbs=[AsDDP(WORLD, ARGS['bs'])])
    trainable = [k for k, p in ref.items() if p.requires_grad]
    assert len(trainable) > 10
    for k in ref: torch.testing.assert_close(ddp[k], ref[k].detach(), rtol=1e-5, atol=1e-6, msg=lambda m: f'{k}: {m}')
    plain = _single(root, tmp_path/'plain')  # batch 2B in the usual order, BatchNorm over 2B: a different step
    assert max((ddp[k] - plain[k].detach()).abs().max().item() for k in plain) > 1e-3


def test_ddp_pseudo_labels_identical(root, ddp_run, tmp_path):
    "`torchrun ... pseudo` (each rank its shard, CRF workers per rank) writes the single process's bytes"
    run_dir, _ = ddp_run
    one, two = tmp_path/'one', tmp_path/'two'
    run([sys.executable, '-m', 'smvwe.cli', 'pseudo', str(run_dir), str(root), '--split', 'val', '--out', str(one)])
    torchrun('pseudo', run_dir, root, '--split', 'val', '--out', two)
    files = sorted(p.relative_to(one) for p in one.rglob('*') if p.is_file())
    ids = read_split(root, 'val')
    assert len(ids) == 4 and {f'pseudo/{i}.png' for i in ids} | {f'cams/{i}.npy' for i in ids} <= {str(f) for f in files}
    assert files == sorted(p.relative_to(two) for p in two.rglob('*') if p.is_file())
    for f in files: assert (one/f).read_bytes() == (two/f).read_bytes(), f


def test_predict_folder_shards(root, tmp_path):
    "`predict_folder` with rank/world_size (torchrun's RANK/WORLD_SIZE when not given): the shards make the whole split"
    torch.manual_seed(0)
    model = DeepLab(3, 'v2', 'small').eval()
    kw = dict(scales=(1.0,), progress=False, n_workers=0)
    predict_folder(model, root, 'val', tmp_path/'all', **kw)
    ids = read_split(root, 'val')
    for r in range(WORLD):
        predict_folder(model, root, 'val', tmp_path/'parts', rank=r, world_size=WORLD, **kw)
        assert sorted(p.stem for p in (tmp_path/'parts').glob('*.png')) == sorted(i for j, i in enumerate(ids) if j % WORLD <= r)
    a, b = sorted((tmp_path/'all').glob('*.png')), sorted((tmp_path/'parts').glob('*.png'))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 4
    for p, q in zip(a, b): assert p.read_bytes() == q.read_bytes()
    with pytest.raises(ValueError, match='rank must lie'): predict_folder(model, root, 'val', tmp_path/'x', rank=2, world_size=2, **kw)
