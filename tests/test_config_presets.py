"""The study presets are compositions of the stage configs: each one's recipe is the flat dict it replaced (the keys of run
folders, score caches and committed result files), overrides name their stage, unknown keys are refused at the top, and
the command line's overrides are read by the configs' own types."""
import json
from dataclasses import fields

import pytest

from smvwe.cli import main, _stage_options
from smvwe.experiment import (PRESETS, PRETRAINED, REGIMES, STAGES, Preset, get_preset, parse_overrides, override_args,
                              flat_name)
from smvwe.train import ClsConfig
from smvwe.pseudo import PseudoConfig
from smvwe.segment import SegConfig

# The flat preset dicts as `smvwe.experiment.PRESETS` held them before the presets became compositions (main, 6eb5ace),
# frozen here as literals: the recipes must stay these, key for key and in this order (demo_metrics.json lists them so).
_D = {'bench': 'synth', 'n_train': 300, 'n_val': 100, 'size': 96, 'epochs': 25, 'bs': 16, 'crop': 96, 'resize_long': (96, 96),
      'jitter': None, 'lr': 0.05, 'lr_mult': None, 'n_words': 64, 'backbone': 'small', 'scales': (1.0,), 'crf': True,
      'n_workers': 2, 'amp': 'bf16', 'channels_last': True, 'seg_arch': 'v1', 'seg_backbone': 'small', 'seg_epochs': 40,
      'seg_bs': 16, 'seg_lr': 0.1}
_R = {'bench': 'emoji', 'n_train': 500, 'n_val': 150, 'size': 96, 'epochs': 15, 'bs': 16, 'crop': 96, 'resize_long': (96, 96),
      'jitter': None, 'lr': 0.05, 'lr_mult': None, 'n_words': 64, 'backbone': 'small', 'scales': (1.0,), 'crf': True,
      'n_workers': 2, 'amp': 'bf16', 'channels_last': True, 'seg_arch': 'v1', 'seg_backbone': 'small', 'seg_epochs': 40,
      'seg_bs': 16, 'seg_lr': 0.1}
_Q = {'bench': 'synth', 'n_train': 24, 'n_val': 12, 'size': 64, 'epochs': 1, 'bs': 8, 'crop': 64, 'resize_long': (64, 64),
      'jitter': None, 'lr': 0.05, 'lr_mult': None, 'n_words': 16, 'backbone': 'small', 'scales': (1.0,), 'crf': True,
      'n_workers': 2, 'amp': 'bf16', 'channels_last': True, 'seg_arch': 'v1', 'seg_backbone': 'small', 'seg_epochs': 1,
      'seg_bs': 8, 'seg_lr': 0.1}
_P = {'weights': 'openmoji-small', 'lr': 0.01, 'lr_mult': 10.0, 'freeze_bn': False, 'seg_weights': 'openmoji-small', 'seg_lr': 0.01}
OLD = {'default': _D, 'real': _R, 'quick': _Q, 'pretrained': {**_D, **_P}, 'real-pretrained': {**_R, **_P}}


@pytest.mark.parametrize('name', list(OLD))
def test_each_preset_is_the_flat_dict_it_replaced(name):
    p = PRESETS[name]
    assert isinstance(p, Preset) and p.name == name
    assert p.recipe() == OLD[name] and list(p.recipe()) == list(OLD[name])
    assert json.dumps(p.recipe()) == json.dumps(OLD[name])   # the bytes that go into metrics.json and score-cache hashes


def test_the_committed_demo_recipes_are_the_presets():
    "metrics.json of the committed demos holds the recipe they ran: the presets give the same dict, key order included"
    from pathlib import Path
    res = Path(__file__).resolve().parents[1]/'nbs'/'results'
    for f, name in (('demo_metrics.json', 'default'), ('demo_pretrained_metrics.json', 'pretrained')):
        m = json.loads((res/f).read_text())
        r = PRESETS[name].recipe(); r = {**r, 'resize_long': PRESETS[name].cls.resize_long}  # as `demo` writes it
        assert json.loads(json.dumps(r)) == m['recipe'] and list(r) == list(m['recipe'])
    # the run on an AVX2 CPU: `--amp auto` trained the default preset in float32 (the field keeps its place in the recipe)
    m = json.loads((res/'demo_float32_avx2_metrics.json').read_text())
    r = get_preset('default', {'cls.amp': None}); r = {**r.recipe(), 'resize_long': r.cls.resize_long}
    assert json.loads(json.dumps(r)) == m['recipe'] and list(r) == list(m['recipe']) and m['recipe']['amp'] is None
    assert json.loads((res/'demo_float32_avx2_timings.json').read_text())['cpu'] == {'capability': 'AVX2', 'bf16_native': False}


def test_stages_hold_the_old_routing():
    "What `_split_kw` routed by name: the benchmark keys, the pseudo-label keys, DeepLab's seg_* keys, the rest to the classifier"
    p = PRESETS['pretrained']
    assert (p.bench.kind, p.bench.n_train, p.bench.n_val, p.bench.size) == ('synth', 300, 100, 96)
    assert (p.pseudo.scales, p.pseudo.crf, p.pseudo.n_workers) == ((1.0,), True, 2)
    assert (p.cls.epochs, p.cls.lr, p.cls.lr_mult, p.cls.weights, p.cls.freeze_bn, p.cls.jitter) == (25, 0.01, 10., 'openmoji-small', False, None)
    assert (p.seg.arch, p.seg.backbone, p.seg.epochs, p.seg.bs, p.seg.lr, p.seg.weights) == ('v1', 'small', 40, 16, 0.01, 'openmoji-small')
    assert (p.seg.crop, p.seg.amp, p.seg.channels_last) == (96, 'bf16', True)   # as run_seg took them from the classifier's keys
    assert p.seg.lr_mult == SegConfig().lr_mult and p.cls.wd == ClsConfig().wd      # unset fields keep their config's default
    assert isinstance(p.cls, ClsConfig) and isinstance(p.pseudo, PseudoConfig) and isinstance(p.seg, SegConfig)


def test_overrides_route_to_their_stage():
    p = get_preset('quick', {'cls.mu': 0.3, 'seg.lr': 0.5, 'pseudo.bg_thr': 0.3, 'bench.n_train': 10, 'cls.crop': 48})
    assert (p.cls.mu, p.seg.lr, p.pseudo.bg_thr, p.bench.n_train) == (0.3, 0.5, 0.3, 10)
    assert p.cls.lr == 0.05 and p.seg.crop == 48                                   # the classifier's rate is not DeepLab's; the crop is shared
    assert get_preset('quick', {'seg.crop': 32}).cls.crop == 64                   # unless DeepLab's own is set
    r = p.recipe()
    assert list(r)[:len(_Q)] == list(_Q) and list(r)[len(_Q):] == ['mu', 'bg_thr']  # a field the preset sets keeps its place
    assert (r['mu'], r['seg_lr'], r['n_train'], r['crop']) == (0.3, 0.5, 10, 48)
    assert PRESETS['quick'].recipe() == _Q                                          # the preset itself is unchanged
    assert get_preset('quick', {}) is PRESETS['quick'] and get_preset(p) is p


def test_the_old_flat_overrides_give_the_old_recipes():
    "Each flat override the studies used maps to one stage: the recipe is the old `{**preset, **overrides}`"
    ov = {'mu': 0.5, 'word_kwargs': {'sign': 1}, 'sal_dir': 'saliency', 'n_words': 16, 'w_cls': 0., 'delta': .2,
          'output_stride': 8, 'backbone_kwargs': {'layout': 'dilated'}, 'device': 'cpu', 'epochs': 3}
    for name in OLD:
        assert get_preset(name, {f'cls.{k}': v for k, v in ov.items()}).recipe() == {**OLD[name], **ov}
    for regime, extra in (('scratch', {}), ('pretrained', _P)):                   # protocol_study's recipe of each regime
        assert get_preset('real', REGIMES[regime]).recipe() == {**_R, **extra}
    assert {flat_name(k): v for k, v in PRETRAINED.items()} == _P


@pytest.mark.parametrize('key, says', [('cls.muu', "unknown key 'cls.muu': the cls stage (ClsConfig) has variant, epochs"),
                                       ('mu', 'with STAGE one of bench, cls, pseudo, seg'),
                                       ('seg_lr', "unknown stage in 'seg_lr'"),
                                       ('pseudo.crf_kw', "unknown key 'pseudo.crf_kw'"),
                                       ('bench.bench', "the bench stage (BenchConfig) has kind, n_train, n_val, size")])
def test_unknown_keys_are_refused_in_one_line(key, says):
    with pytest.raises(ValueError) as e: get_preset('quick', {key: 1})
    assert says in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(ValueError): parse_overrides([f'{key}=1'])


def test_bad_values_are_refused_by_the_config():
    with pytest.raises(ValueError, match='epochs must be at least 1'): get_preset('quick', {'cls.epochs': 0})
    with pytest.raises(ValueError, match="bench.kind must be 'synth' or 'emoji'"): get_preset('quick', {'bench.kind': 'voc'})
    with pytest.raises(ValueError, match='Unknown preset'): get_preset('paper')


def test_command_line_overrides_take_the_fields_types():
    "Every field of every stage reads back its own default from the text the command line writes for it"
    from smvwe.config import _cli_default, _field_default
    for stage, cfg in STAGES.items():
        for f in fields(cfg):
            d = _field_default(f)
            text = 'none' if d is None else str(d).lower() if isinstance(d, bool) else json.dumps(d) if isinstance(d, dict) else _cli_default(d)
            assert parse_overrides([f'{stage}.{f.name}={text}']) == {f'{stage}.{f.name}': d}, (stage, f.name, text)
    assert parse_overrides(['cls.lr=0.2', 'cls.resize_long=48,64', 'pseudo.flip=false']) == {'cls.lr': 0.2, 'cls.resize_long': (48, 64), 'pseudo.flip': False}
    with pytest.raises(ValueError, match='cls.epochs must be int'): parse_overrides(['cls.epochs=many'])
    with pytest.raises(ValueError, match='write STAGE.KEY=VALUE'): parse_overrides(['cls.epochs'])


def test_override_args_are_read_back():
    import shlex
    ov = {'cls.mu': 0.3, 'cls.resize_long': (48, 64), 'cls.word_kwargs': {'sign': 1}, 'pseudo.crf': False, 'cls.lr_mult': None}
    a = shlex.split(override_args(ov))
    assert _stage_options(a, {'--set': 1}) == ['--set', 'cls.mu=0.3', '--set', 'cls.resize_long=48,64', '--set', 'cls.word_kwargs={"sign": 1}',
                                               '--set', 'pseudo.crf=false', '--set', 'cls.lr_mult=none']
    assert parse_overrides(_stage_options(a, {'--set': 1})[1::2]) == ov


@pytest.mark.parametrize('cmd,study', [('ablate', 'sign'), ('protocol', 'variants')])
def test_the_preset_commands_refuse_an_unknown_key_before_any_work(cmd, study, tmp_path, capsys):
    for bad, says in ((['--cls.muu', '1'], "unknown key 'cls.muu'"), (['--set', 'train.mu=1'], "unknown stage in 'train.mu'"),
                      (['--cls.epochs', 'x'], 'cls.epochs must be int')):
        assert main([cmd, study, '--out', str(tmp_path/'o'), '--results', str(tmp_path/'r'), *bad]) == 1
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert not [f for f in tmp_path.rglob('*') if f.is_file()]  # no benchmark, no run


def test_the_old_passthrough_options_are_stage_options_now(capsys):
    "`smvwe ablate --epochs` and `smvwe protocol --epochs` are gone: `--cls.epochs` (a field of ClsConfig) replaces them"
    assert main(['ablate', 'sign', '--epochs', '3']) == 2 and 'unrecognized arguments: --epochs 3' in capsys.readouterr().err
    assert main(['protocol', 'variants', '--epochs', '3']) == 2
    capsys.readouterr()
    for cmd in ('ablate', 'protocol'):
        assert main([cmd, '--help']) == 0
        assert 'STAGE is bench, cls, pseudo or seg' in ' '.join(capsys.readouterr().out.split())
