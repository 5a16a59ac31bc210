"Classification-stage training: resume after interruption, the command line end to end, bad arguments."
import inspect, json, typing
from dataclasses import asdict, fields

import pytest
import torch
from fastai.callback.core import Callback

from smvwe.cli import main
from smvwe.voc import make_tiny_voc
from fastcore.script import anno_parser
from smvwe.config import field_docs, from_cli
from smvwe.train import VARIANTS, ClsConfig, PolyLR, load_cls_model, train_cls, train_cls_cli

TINY = dict(crop=32, n_words=8, num_workers=0, device='cpu', progress=False)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp('voc'), n=8, n_val=2, classes=['background', 'disc', 'box'], size=40, seed=0)


class Interrupt(Callback):
    "Raise `exc` at training iteration `it` of the run's epoch `epoch`"
    def __init__(self, epoch, it, exc=KeyboardInterrupt): self.at, self.exc = (epoch, it), exc
    def before_batch(self):
        if self.training and (self.learn.run_epoch, self.iter) == self.at: raise self.exc('simulated failure')


def weights(path): return torch.load(path, weights_only=True)['model']


@pytest.fixture(scope='module')
def full_run(root, tmp_path_factory):
    "An uninterrupted 3-epoch run"
    out = tmp_path_factory.mktemp('full')
    return out, len(train_cls(root, out, epochs=3, **TINY).dls.train)


@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError])
def test_resume_after_interruption_gives_identical_weights(root, tmp_path, full_run, exc):
    full, n_iter = full_run
    with pytest.raises(exc): train_cls(root, tmp_path/'cut', epochs=3, cbs=Interrupt(2, 1, exc), **TINY)
    ck = torch.load(tmp_path/'cut'/'cls'/'checkpoint.pth', weights_only=True)
    assert (ck['epoch'], ck['n_epoch'], ck['poly_t']) == (1, 3, 2 * n_iter)  # the last completed epoch survived
    assert not (tmp_path/'cut'/'cls'/'model.pth').exists()                  # no final model from a cut run
    assert not list((tmp_path/'cut'/'cls').glob('*.tmp'))                    # no half-written file left
    resumed = train_cls(root, tmp_path/'cut', epochs=3, **TINY)
    assert len(resumed.recorder.values) == 3                                  # the log covers all three epochs
    a, b = weights(full/'cls'/'model.pth'), weights(tmp_path/'cut'/'cls'/'model.pth')
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_recipe(root, tmp_path):
    train_cls(root, tmp_path/'r', epochs=1, variant='cam', **TINY)
    with pytest.raises(ValueError, match='different run'): train_cls(root, tmp_path/'r', epochs=1, variant='smvwe', **TINY)
    train_cls(root, tmp_path/'r', epochs=1, variant='smvwe', resume=False, **TINY)  # starting again is allowed
    assert load_cls_model(tmp_path/'r'/'cls'/'model.pth', 'cpu').variant == 'smvwe'


def test_poly_lr_matches_formula_on_the_real_learner(root, tmp_path):
    learn = train_cls(root, tmp_path/'p', epochs=2, lr=0.02, lr_mult=5., power=0.9, **TINY)
    poly = next(c for c in learn.cbs if isinstance(c, PolyLR))
    T = 2 * len(learn.dls.train)
    assert poly.hist == [[0.02 * (1 - t/T)**0.9, 0.1 * (1 - t/T)**0.9] for t in range(T)]


def test_cli_end_to_end(root, tmp_path, capsys):
    out = tmp_path/'run'
    rc = main(['train-cls', str(root), str(out), '--epochs', '1', '--crop', '32', '--n_words', '8', '--variant', 'vwe',
               '--backbone', 'small', '--lr', '0.005', '--num_workers', '0', '--device', 'cpu', '--seed', '3', '--no-progress'])
    assert rc == 0
    for f in ('config.json', 'cls/model.pth', 'cls/checkpoint.pth', 'cls/history.csv'): assert (out/f).exists(), f
    cfg = json.loads((out/'config.json').read_text())
    args = cfg['train_cls']
    assert (args['variant'], args['epochs'], args['lr'], args['seed'], args['crop']) == ('vwe', 1, 0.005, 3, 32)
    assert 'version' in cfg
    m = load_cls_model(out/'cls'/'model.pth', device='cpu')
    assert not m.training and m.variant == 'vwe' and m.classes == ['background', 'disc', 'box']
    with torch.no_grad(): o = m(torch.randn(2, 3, 32, 32))
    assert o['maps'].shape[:2] == (2, 3) and o['logits'].shape == (2, 2) and o['s_word'].shape == (2, 8)
    history = (out/'cls'/'history.csv').read_text().splitlines()
    assert len(history) == 2 and 'train_word_loss' in history[0] and 'valid_w2i_loss' in history[0]


def test_cli_help_lists_every_argument(capsys):
    assert main(['train-cls', '--help']) == 0
    text = capsys.readouterr().out
    for flag in ('--variant', '--epochs', '--bs', '--crop', '--lr', '--lr_mult', '--wd', '--mom', '--power', '--backbone',
                 '--n_words', '--weights', '--amp', '--channels_last', '--no-resume', '--device', '--seed', '--sal_dir'):
        assert flag in text, flag


def test_cli_and_python_signature_come_from_one_definition():
    "The options of `smvwe train-cls` are the fields of `ClsConfig`, as are the keyword arguments of `train_cls`"
    p = anno_parser(train_cls_cli)
    opts = [a for a in p._actions if a.dest not in ('help', 'pdb', 'xtra', 'root', 'out')]
    params = list(inspect.signature(train_cls).parameters.values())
    assert [q.name for q in params[:4]] == ['root', 'out', 'cfg', 'cbs']
    assert [a.dest for a in opts] == [q.name for q in params[4:]] == [f.name for f in fields(ClsConfig)]
    hints, docs = typing.get_type_hints(ClsConfig), field_docs(ClsConfig)
    assert {a.dest: from_cli(a.dest, a.default, hints[a.dest]) for a in opts} == {q.name: q.default for q in params[4:]} == asdict(ClsConfig())
    for a in opts: assert a.help.startswith(docs[a.dest]) and docs[a.dest], a.dest  # one help text, from the field's comment
    assert 'inverted background map' in docs['mu']


def test_unknown_keys_are_refused_with_the_valid_ones(root, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown key 'n_word'; valid keys: variant, epochs, .*n_words"):
        train_cls(root, tmp_path/'x', n_word=8, **TINY)
    assert main(['train-cls', str(root), str(tmp_path/'x'), '--word_kwargs', '{"sign": 1']) == 1
    assert 'JSON object' in capsys.readouterr().err
    assert not (tmp_path/'x').exists()


def test_model_keys_reach_the_model(root, tmp_path):
    learn = train_cls(root, tmp_path/'m', epochs=1, tau=2.0, word_kwargs={'sign': 1}, word_dim=16, **TINY)
    assert (learn.model.config['tau'], learn.model.config['word_kwargs'], learn.model.config['word_dim']) == (2.0, {'sign': 1}, 16)
    assert learn.model.words.tau == 2.0 and learn.model.words.sign == 1
    cfg = json.loads((tmp_path/'m'/'config.json').read_text())['train_cls']
    assert (cfg['tau'], cfg['word_kwargs'], cfg['word_dim']) == (2.0, {'sign': 1}, 16)
    assert ClsConfig.make({k: v for k, v in cfg.items() if k not in ('root', 'out')}).tau == 2.0  # config.json reads back


def test_unknown_variant_lists_the_variants(root, tmp_path, capsys):
    with pytest.raises(ValueError, match='choose one of cam, vwe, sal, smvwe'): train_cls(root, tmp_path/'x', variant='eps', **TINY)
    assert main(['train-cls', str(root), str(tmp_path/'x'), '--variant', 'eps']) == 1
    err = capsys.readouterr().err
    assert 'eps' in err and all(v in err for v in VARIANTS)
    assert not (tmp_path/'x').exists()  # nothing written before the arguments were checked


def test_bad_arguments(root, tmp_path):
    with pytest.raises(ValueError, match="'bf16' or 'fp16'"): train_cls(root, tmp_path/'x', amp='fp8', **TINY)
    with pytest.raises(FileNotFoundError, match='does not exist'): train_cls(tmp_path/'nowhere', tmp_path/'x', **TINY)
    with pytest.raises(FileNotFoundError, match='train-cls'): load_cls_model(tmp_path/'none.pth')
    assert main(['train-cls', str(root), str(tmp_path/'y'), '--resize_long', '32']) == 1
    assert main(['train-cls', str(root), str(tmp_path/'y'), '--epochs', '0']) == 1
    assert not (tmp_path/'y').exists()


def test_bf16_and_channels_last_run_on_cpu(root, tmp_path):
    learn = train_cls(root, tmp_path/'amp', epochs=1, amp='bf16', channels_last=True, **TINY)
    assert all(v is None or torch.isfinite(torch.tensor(float(v))) for v in learn.recorder.values[-1])
    assert learn.model.classifier.weight.is_contiguous(memory_format=torch.channels_last)


def test_colour_jitter_is_an_argument(root, tmp_path):
    learn = train_cls(root, tmp_path/'off', epochs=1, jitter=None, **TINY)
    assert learn.dls.train.dataset.tfm.jitter is None
    assert json.loads((tmp_path/'off'/'config.json').read_text())['train_cls']['jitter'] is None
    learn = train_cls(root, tmp_path/'on', epochs=1, jitter=(0.1, 0.2, 0.3, 0.05), **TINY)
    assert learn.dls.train.dataset.tfm.jitter == (0.1, 0.2, 0.3, 0.05)
    assert json.loads((tmp_path/'on'/'config.json').read_text())['train_cls']['jitter'] == [0.1, 0.2, 0.3, 0.05]
    with pytest.raises(ValueError, match='jitter must be 4 numbers'): train_cls(root, tmp_path/'x', jitter=(0.1,), **TINY)
    assert main(['train-cls', str(root), str(tmp_path/'y'), '--jitter', '0.1,0.2']) == 1
    assert not (tmp_path/'x').exists() and not (tmp_path/'y').exists()
    assert main(['train-cls', str(root), str(tmp_path/'z'), '--jitter', 'none', '--epochs', '1', '--crop', '32', '--n_words', '8',
                 '--num_workers', '0', '--device', 'cpu', '--no-progress']) == 0
    assert json.loads((tmp_path/'z'/'config.json').read_text())['train_cls']['jitter'] is None


def test_fp16_resume_restores_the_loss_scale(root, tmp_path, monkeypatch):
    import smvwe.train as T
    # a loss scale that changes at every step (doubles, halves on overflow), so a resume that forgot it would diverge
    class FastScaleAMP(T.AMP):
        def __init__(self, amp): super().__init__(amp, init_scale=2.**4, growth_interval=1)
    monkeypatch.setattr(T, 'AMP', FastScaleAMP)
    kw = dict(TINY, amp='fp16')
    full = train_cls(root, tmp_path/'full', epochs=3, **kw)
    ck_full = torch.load(tmp_path/'full'/'cls'/'checkpoint.pth', weights_only=True)
    assert ck_full['scaler']['scale'] != 2.**4  # the scale moved during training
    with pytest.raises(KeyboardInterrupt): train_cls(root, tmp_path/'cut', epochs=3, cbs=Interrupt(2, 1), **kw)
    ck = torch.load(tmp_path/'cut'/'cls'/'checkpoint.pth', weights_only=True)
    assert ck['epoch'] == 1 and ck['scaler']['scale'] != 2.**4
    train_cls(root, tmp_path/'cut', epochs=3, **kw)
    a, b = weights(tmp_path/'full'/'cls'/'model.pth'), weights(tmp_path/'cut'/'cls'/'model.pth')
    for k in a: assert torch.equal(a[k], b[k]), k
    assert torch.load(tmp_path/'cut'/'cls'/'checkpoint.pth', weights_only=True)['scaler'] == ck_full['scaler']
