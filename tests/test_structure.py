"The package's shape: no import cycle between its modules (imports inside functions included), and module sizes."
import ast
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'smvwe'
MODULES = sorted(p.stem for p in PKG.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def imports_of(path: Path) -> set:
    "The package modules that `path` imports anywhere in its code (top level or inside a function)"
    deps = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level == 1: deps |= {n.module.split('.')[0]} if n.module else {a.name for a in n.names}
            elif n.module and n.module.startswith('smvwe.'): deps.add(n.module.split('.')[1])
            elif n.module == 'smvwe': deps |= {a.name for a in n.names}
        elif isinstance(n, ast.Import):
            deps |= {a.name.split('.')[1] for a in n.names if a.name.startswith('smvwe.')}
    return deps & set(MODULES) - {path.stem}


def find_cycle(graph: dict) -> list:
    "One import cycle of `graph` (module -> modules it imports) as [a, b, ..., a], or [] when there is none"
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 'open': return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)): return c
        state[m] = 'done'; stack.pop(); return []
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return []


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'files': {'voc'}, 'voc': {'files'}}) == ['files', 'voc', 'files']


def test_imports_of_sees_imports_inside_functions(tmp_path):
    p = tmp_path / 'files.py'
    p.write_text('from .voc import a\ndef f():\n    from smvwe.train import b\n    import smvwe.maps\n')
    assert imports_of(p) == {'voc', 'train', 'maps'}


def test_no_import_cycle():
    graph = {m: imports_of(PKG / f'{m}.py') for m in MODULES}
    assert not (c := find_cycle(graph)), f"import cycle: {' -> '.join(c)}"


# modules over the ~300-line limit of the house style (issue 19): this list may only shrink
OVER_300 = set()  # every module is within ~300 lines (issue 19); keep it so: a module that grows past it is split


def test_module_sizes():
    sizes = {m: len((PKG / f'{m}.py').read_text().splitlines()) for m in MODULES}
    over = {m for m, n in sizes.items() if n > 300}
    assert over <= OVER_300, f'over 300 lines: {sorted((m, sizes[m]) for m in over - OVER_300)}: split the notebook'
    assert not (OVER_300 - over), f'{sorted(OVER_300 - over)} are 300 lines or fewer now: remove them from OVER_300'


# Every exported function (and method of an exported class) whose signature still has a `**` parameter, with what it
# passes on. Only pass-throughs that carry no hyper-parameter belong here; a stage's options are typed fields of its
# config (`smvwe.config.python_signature` lists them in the signature; `StageConfig.make` refuses unknown keys).
KW_PASS_THROUGH = {
    'smvwe.config.cli_from': 'the help text of each positional argument of the decorated command',
    'smvwe.data.VOCDataLoader.__init__': "fastai `TfmdDL`'s own arguments (batching, device, transforms), handed on unchanged",
    'smvwe.data.VOCDataLoader.new': "fastai `DataLoader.new`'s arguments, as fastai calls it",
    'smvwe.files.progress_iter': "fastprogress `progress_bar`'s display arguments (on a terminal)",
    'smvwe.parallel.Lanes.submit': "the submitted function's own arguments, as `Executor.submit`",
    'smvwe.config.StageConfig.make': 'the fields of the config itself, checked: an unknown key is refused with the valid ones',
}

def exported_callables(mod) -> dict:
    "qualified name -> function, for every function in `mod.__all__` and every method of a class defined in `mod`"
    import inspect
    out = {}
    for name in getattr(mod, '__all__', []):
        obj = getattr(mod, name, None)
        if inspect.isfunction(obj): out[f'{mod.__name__}.{name}'] = obj
        elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
            for k, f in vars(obj).items():
                f = f.__func__ if isinstance(f, (classmethod, staticmethod)) else f
                if inspect.isfunction(f) and (k == '__init__' or not k.startswith('_')): out[f'{mod.__name__}.{name}.{k}'] = f
    return out


def var_keyword(fn) -> str|None:
    "The name of `fn`'s `**` parameter as its signature shows it (a patched `__signature__` or `__wrapped__` included), or None"
    import inspect
    return next((p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.VAR_KEYWORD), None)


def test_exported_callables_and_var_keyword_on_a_hand_made_module():
    import inspect, types
    m = types.ModuleType('fake'); exec('def f(a, **kw): pass\ndef g(a, b=1): pass\ndef _h(**kw): pass\n'
                                       'class C:\n    def __init__(self, **opts): pass\n    def run(self, x): pass\n', m.__dict__)
    for k in ('f', 'g', 'C'): getattr(m, k).__module__ = 'fake'
    m.__all__ = ['f', 'g', 'C']
    fs = exported_callables(m)
    assert set(fs) == {'fake.f', 'fake.g', 'fake.C.__init__', 'fake.C.run'}
    assert {k: var_keyword(f) for k, f in fs.items()} == {'fake.f': 'kw', 'fake.g': None, 'fake.C.__init__': 'opts', 'fake.C.run': None}
    def stage(x, **kw): pass
    stage.__signature__ = inspect.Signature([inspect.Parameter('x', inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                             inspect.Parameter('lr', inspect.Parameter.KEYWORD_ONLY, default=0.1)])
    assert var_keyword(stage) is None   # a config's fields listed in the signature: no hidden keyword


def test_no_hyper_parameter_through_kw():
    import importlib
    found = {}
    for m in MODULES:
        for name, fn in exported_callables(importlib.import_module(f'smvwe.{m}')).items():
            if (kw := var_keyword(fn)): found[name] = kw
    hidden = sorted(f'{k}(**{found[k]})' for k in set(found) - set(KW_PASS_THROUGH))
    assert not hidden, f"exported functions taking options through **: {', '.join(hidden)}: make them explicit or take the stage's config"
    assert not (stale := set(KW_PASS_THROUGH) - set(found)), f'{sorted(stale)} take no ** any more: remove them from the lists'


# Each stage's options are the fields of its config; its learner, its function and its command take them from there.
STAGES = [('smvwe.train', 'ClsConfig', ('cls_learner', 'train_cls'), 'train_cls_cli'),
          ('smvwe.segment', 'SegConfig', ('seg_learner', 'train_seg'), 'train_seg_cli'),
          ('smvwe.pseudo', 'PseudoConfig', ('make_pseudo',), 'pseudo_cli')]


def declared_params(fn) -> set:
    "The parameter names that `fn`'s own `def` writes (not a patched `__signature__`)"
    import inspect, textwrap
    a = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))).body[0].args
    return {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs}


def test_declared_params_reads_the_def_not_the_signature():
    import inspect
    def f(root, cfg=None, lr:float=0.1, **kw): pass
    f.__signature__ = inspect.Signature([inspect.Parameter('epochs', inspect.Parameter.KEYWORD_ONLY, default=8)])
    assert declared_params(f) == {'root', 'cfg', 'lr'}


@pytest.mark.parametrize('mod, config, fns, cli', STAGES)
def test_each_default_once(mod, config, fns, cli):
    import importlib, inspect
    from dataclasses import fields
    from fastcore.script import anno_parser
    from smvwe.config import _cli_default, _field_default
    m = importlib.import_module(mod); cfg = getattr(m, config)
    want = {f.name: _field_default(f) for f in fields(cfg)}
    for name in fns:
        fn = getattr(m, name)
        assert not (again := declared_params(fn) & set(want)), f'{name} declares {sorted(again)} again: take them from {config}'
        sig = inspect.signature(fn).parameters
        assert {k: sig[k].default for k in want} == want, f"{name}'s signature does not show {config}'s defaults"
    opts = {a.dest: a.default for a in anno_parser(getattr(m, cli))._actions}
    assert {k: opts[k] for k in want} == {k: _cli_default(v) for k, v in want.items()}, f"{cli}'s options do not have {config}'s defaults"
