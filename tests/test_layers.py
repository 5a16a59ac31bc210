"""The package's layers (issue 19, a data layer without circles): notebooks import only from lower-numbered ones, the method
modules know nothing of the benchmark generators, no function is copied into a second module, both generators write
and parse their arguments through one writer, and every saliency map is read with one size rule."""
import ast, json, re, textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_structure import ROOT, PKG, MODULES, imports_of


def notebook_of() -> dict:
    "module -> the notebook (stem) that exports it, from each notebook's `#| default_exp` cell"
    out = {}
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            s = ''.join(c['source'])
            if c['cell_type'] == 'code' and s.startswith('#| default_exp'): out[s.split()[2]] = nb.stem
    return out


def upward_imports(graph:dict, nb:dict) -> set:
    "(module, imported module) pairs where a module imports from a notebook that does not come before its own"
    return {(m, d) for m, ds in graph.items() for d in ds if nb[d] >= nb[m]}


def test_upward_imports_on_a_hand_made_graph():
    nb = {'files': '00_files', 'synth': '00b_synth', 'config': '05e_config'}
    assert upward_imports({'synth': {'files'}, 'config': {'files'}}, nb) == set()
    assert upward_imports({'synth': {'config', 'files'}, 'files': set()}, nb) == {('synth', 'config')}


def test_notebooks_import_only_from_earlier_ones():
    "Anywhere in a module, inside functions too (synth once imported 05e_config, realbench 01a_voc inside a function)"
    nb = notebook_of()
    assert not (missing := set(MODULES) - set(nb)), f'modules without a notebook: {sorted(missing)}'
    up = upward_imports({m: imports_of(PKG / f'{m}.py') for m in MODULES}, nb)
    assert not up, 'imports from a notebook that does not come earlier: ' + ', '.join(f'{nb[m]} ({m}) imports {nb[d]} ({d})' for m, d in sorted(up))


# the method notebooks (02a-05c, 06b: equation, code, hand case, test) and the benchmark generators with their drawers
METHOD = ('distance', 'words', 'saliency', 'losses', 'weights', 'backbones', 'model', 'train')
GENERATORS = ('scene', 'emoji', 'synth', 'realbench', 'voc_writer', 'sal_detectors')


@pytest.mark.parametrize('m', METHOD)
def test_method_modules_do_not_import_the_generators(m):
    "The method depends on the data it is given, not on how the benchmarks are drawn (saliency.py once took its classical detector from scene.py)"
    assert not (bad := imports_of(PKG / f'{m}.py') & set(GENERATORS)), f'{m} imports the benchmark generator(s) {sorted(bad)}'


def test_files_is_the_bottom_layer():
    "smvwe.files imports no other module of the package (its `dataset_signature` once imported voc: the one cycle)"
    assert imports_of(PKG / 'files.py') == set()


def function_bodies(tree) -> list:
    "(name, body key, length) of every function of `tree` (methods and nested ones too): the body's AST less its docstring"
    out = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            b = n.body[1:] if n.body and isinstance(n.body[0], ast.Expr) and isinstance(getattr(n.body[0], 'value', None), ast.Constant) \
                and isinstance(n.body[0].value.value, str) else n.body
            code = ast.unparse(ast.Module(body=b, type_ignores=[]))
            out.append((n.name, ast.dump(ast.Module(body=b, type_ignores=[])), len(code)))
    return out


def copies(sources:dict, min_chars:int=150) -> list:
    "Groups [(module, function), ...] of functions with the same body (at least `min_chars` of code) in `sources` (module -> code)"
    seen = {}
    for m, code in sources.items():
        for name, key, n in function_bodies(ast.parse(code)):
            if n >= min_chars: seen.setdefault(key, []).append((m, name))
    return sorted(sorted(v) for v in seen.values() if len(v) > 1)


def test_copies_on_hand_made_modules():
    noise = textwrap.dedent('''
        def smooth_noise(rng, h, w, cell=8.):
            "band-limited noise"
            gh, gw = int(h / cell) + 2, int(w / cell) + 2
            g = rng.normal(0, 1, (gh, gw)).astype(np.float32)
            return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        ''')
    renamed = noise.replace('"band-limited noise"', '"the same, with another docstring"')
    other = noise.replace('INTER_CUBIC', 'INTER_LINEAR')
    assert copies({'scene': noise, 'emoji': renamed}) == [[('emoji', 'smooth_noise'), ('scene', 'smooth_noise')]]
    assert copies({'scene': noise, 'emoji': other}) == []
    assert copies({'scene': noise, 'emoji': renamed}, min_chars=10**4) == []   # short bodies are not counted


def test_no_function_is_copied():
    "A helper lives in one module and is imported (smooth_noise was in scene and emoji; resolve_shard, _init_worker in pseudo and segment)"
    found = copies({m: (PKG / f'{m}.py').read_text() for m in MODULES})
    assert not found, f'the same function body in two places: {found}: keep one and import it'


@pytest.mark.parametrize('mod, make, cli', [('smvwe.synth', 'make_benchmark', 'synth_cli'),
                                            ('smvwe.benchstats', 'make_real_benchmark', 'synth_real_cli')])
def test_generator_commands_are_their_functions(mod, make, cli):
    "Each generator's options are its function's arguments, default and help stated once (`bench_cli`), `progress` as --quiet"
    import importlib
    from fastcore.docments import docments
    from fastcore.script import anno_parser
    m = importlib.import_module(mod)
    want = {k: (d.default, d.docment) for k, d in docments(getattr(m, make), full=True, returns=False, eval_str=True).items()
            if k not in ('out', 'progress')}
    acts = {a.dest: a for a in anno_parser(getattr(m, cli))._actions if a.dest not in ('help', 'pdb', 'xtra')}
    assert set(acts) == {'out', 'quiet'} | set(want)
    assert {k: (acts[k].default, acts[k].help.split(' (default')[0]) for k in want} == want


def test_both_generators_write_through_the_one_writer(tmp_path, monkeypatch):
    "Every file of both benchmarks is written by `voc_writer.save_sample`, and both metas are checked by `voc_writer.check_folder`"
    import smvwe.voc_writer as vw
    from smvwe.synth import make_benchmark, LAYOUT as SL
    from smvwe.realbench import make_real_benchmark, LAYOUT as RL
    saved, checked, save, check = [], [], vw.save_sample, vw.check_folder
    monkeypatch.setattr(vw, 'save_sample', lambda root, id, s, layout: (saved.append((Path(root).name, id, layout)), save(root, id, s, layout)))
    monkeypatch.setattr(vw, 'check_folder', lambda out, meta, *a: (checked.append(meta['generator']), check(out, meta, *a)))
    make_benchmark(tmp_path / 's', n_train=2, n_val=1, size=32, progress=False)
    make_real_benchmark(tmp_path / 'r', n_train=2, n_val=1, size=32, det_images=8, det_epochs=1, det_size=16, progress=False)
    assert checked == ['smvwe.synth', 'smvwe.realbench']
    assert saved == [(b, id, lay) for b, lay in (('s', SL), ('r', RL)) for id in ('train_00000', 'train_00001', 'val_00000')]
    for b, lay in (('s', SL), ('r', RL)):   # and nothing else wrote a per-image file
        assert {p.parent.name for p in (tmp_path / b).rglob('*_0000*.*')} == set(lay)


def test_pseudo_and_readout_refuse_a_mis_sized_saliency_map_alike(tmp_path):
    "One loader, one size rule (`voc.load_saliency`): a map of another size than its image is refused by both stages, naming it"
    from test_pseudo import tiny_voc, ColourModel
    from smvwe.pseudo import make_pseudo
    from smvwe.readout import score_readouts
    voc = tiny_voc(tmp_path / 'voc', n=3)   # 32x24 images
    (voc / 'sal').mkdir()
    for i in range(3): Image.fromarray(np.full((24, 32), 200, np.uint8)).save(voc / 'sal' / f'img{i}.png')
    run = make_pseudo(ColourModel(), voc, 'train', tmp_path / 'run', sal_dir='sal', crf=False, n_workers=0, progress=False)
    assert len(score_readouts(run, voc, 'train', ['argmax+sal'], sal_dir='sal', n_workers=0)) == 1   # the right size: read
    Image.fromarray(np.full((12, 16), 200, np.uint8)).save(voc / 'sal' / 'img1.png')   # half the size: never resized
    msg = re.escape(f"saliency map {voc / 'sal' / 'img1.png'} is 16x12 (WxH) but ") + '.* is 32x24: regenerate the map at the image size'
    with pytest.raises(ValueError, match=msg):
        score_readouts(run, voc, 'train', ['argmax+sal'], sal_dir='sal', n_workers=0)
    with pytest.raises(ValueError, match=msg):
        make_pseudo(ColourModel(), voc, 'train', tmp_path / 'run2', sal_dir='sal', crf=False, n_workers=0, progress=False)


def names_used(path:Path) -> tuple[set, set]:
    "(string constants, names called or imported) of a module's code"
    consts, names = set(), set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Constant) and isinstance(n.value, str): consts.add(n.value)
        elif isinstance(n, ast.Call): names.add(n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, 'attr', None))
        elif isinstance(n, ast.ImportFrom): names |= {a.name for a in n.names}
    return consts, names


def test_the_parallel_helpers_live_in_parallel():
    "This rank's cores, its shard and the worker set-up are read once (`smvwe.parallel`); pseudo and segment import them"
    for m in MODULES:
        consts, _ = names_used(PKG / f'{m}.py')
        if m != 'parallel': assert not consts & {'LOCAL_WORLD_SIZE', 'OMP_NUM_THREADS'}, f'{m} reads the launcher/thread environment itself: use smvwe.parallel'
    for m in ('pseudo', 'segment'):
        tree = ast.parse((PKG / f'{m}.py').read_text())
        got = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or '').endswith('parallel') for a in n.names}
        assert {'resolve_shard', 'rank_cores', 'single_thread_worker'} <= got, f'{m} imports only {sorted(got)} from smvwe.parallel'


def test_fingerprints_are_compared_in_one_place():
    "A recorded fingerprint is compared by `files.check_fingerprint` only (pseudo once re-implemented it inline)"
    for m in MODULES:
        if m != 'files': assert 'fingerprint_diff' not in names_used(PKG / f'{m}.py')[1], f'{m} compares fingerprints itself: call files.check_fingerprint'
    for m in ('pseudo', 'segment'): assert 'check_fingerprint' in names_used(PKG / f'{m}.py')[1]
