"Every file, notebook and module that the README, a notebook's text or a docstring names exists in the repository."
import ast, importlib, io, json, re, subprocess, sys, tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = set(subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
WRITTEN = '\n'.join(p.read_text() for p in (ROOT/'smvwe').glob('*.py'))  # files the package writes

BACKTICK = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'\]\(([^)\s]+)\)')
DOC_NAME = re.compile(r'(?<![\w/.-])(?:\.\./|/)?[\w./-]*[\w-]\.(?:md|ipynb)\b')  # any *.md / *.ipynb, backticked or not
PATH = re.compile(r'[\w.-]+(?:/[\w.{},-]+)+\.(?:py|ipynb|md|cpp|ini|toml|yml|yaml|cfg|sh|png|csv|json)')
NB_STEM = re.compile(r'\d\d[a-z]?_[a-z]\w*')
MODULE = re.compile(r'\bsmvwe(?:\.\w+)+')


def _texts():
    "(where, folder the text lives in, text) for the README, every notebook's markdown and every docstring and comment"
    yield 'README.md', '.', (ROOT/'README.md').read_text()
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        for i, c in enumerate(json.loads(p.read_text())['cells']):
            src, where = ''.join(c['source']), f'nbs/{p.name} cell {i}'
            if c['cell_type'] == 'markdown': yield where, 'nbs', src; continue
            code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
            try:
                tree = ast.parse(code)
                comments = [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type == tokenize.COMMENT]
            except (SyntaxError, tokenize.TokenError): continue
            yield where, 'nbs', '\n'.join(comments)
            for n in ast.walk(tree):
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and (d := ast.get_docstring(n)):
                    yield where, 'nbs', d


def _exists(name:str, folder:str) -> bool:
    "`name` is a file (or folder) of the repository, relative to the root or to `folder`"
    name = name.split('#')[0].rstrip('/')
    for base in ('', folder + '/'):
        p = (base + name).replace('/./', '/')
        if p.startswith('./'): p = p[2:]
        if p in TREE or any(f.startswith(p + '/') for f in TREE): return True
    return False


def _bad_references() -> list:
    bad = []
    for where, folder, text in _texts():
        for m in DOC_NAME.finditer(text):  # NOTES.md, ../shared/notes.md, 06_train.ipynb ...
            n = m.group(0)
            if n.startswith(('/', '../')) or not (_exists(n, folder) or _exists('nbs/' + n, folder)
                                                 or (('/' not in n or n.split('/')[0].isupper()) and f"'{n.split('/')[-1]}'" in WRITTEN)):
                bad.append(f'{where}: {n}')
        for m in re.finditer(r'\bnotebooks? (\d\d[a-z]?)\b(?![-–]\d)', text):  # 'notebook 06' once 06a, 06b and 06c exist
            if len(list((ROOT/'nbs').glob(f'{m.group(1)}_*.ipynb'))) != 1: bad.append(f'{where}: notebook {m.group(1)} (name it: `NN_name`)')
        for m in LINK.finditer(text):  # [figure](images/x.png), [notebook](nbs/02b_words.ipynb)
            n = m.group(1)
            if not n.startswith(('http://', 'https://', 'mailto:', '#')) and not _exists(n, folder): bad.append(f'{where}: link {n}')
        for m in BACKTICK.finditer(text):
            t = m.group(1).strip()
            if NB_STEM.fullmatch(t) and not (ROOT/'nbs'/f'{t}.ipynb').exists(): bad.append(f'{where}: notebook `{t}`')
            for p in PATH.findall(t):  # tests/test_train.py, smvwe/csrc/word_distance.cpp, benchmarks/x.py
                top = p.split('/')[0]
                if (top in {'nbs', 'smvwe', 'tests', 'benchmarks', 'images'} or (ROOT/top).is_dir()) and not _exists(p, folder):
                    bad.append(f'{where}: {p}')
            for ref in MODULE.findall(t):  # smvwe.maps.crf_refine
                parts = ref.split('.')
                try: obj = importlib.import_module('.'.join(parts[:2]))
                except ModuleNotFoundError: bad.append(f'{where}: module {ref}'); continue
                for a in parts[2:3]:
                    if not hasattr(obj, a): bad.append(f'{where}: {ref}')
    return bad


def test_named_files_exist():
    "A notebook, docstring or the README that names a file, notebook or module the repository does not have fails here"
    bad = _bad_references()
    assert not bad, 'names that are not in the repository (state the reason on the spot instead of citing a file):\n' + '\n'.join(bad)


def test_the_check_catches_missing_files(monkeypatch):
    "The check itself: a cited design note, a stale notebook, a moved function and a broken link are all caught"
    fake = [('README.md', '.', 'see NOTES.md §6 and ../shared/PLAN.md'),
            ('nbs/x.ipynb cell 0', 'nbs', 'as in notebook 14, `06_train` and `smvwe.pseudo.crf_refine`; ![f](images/none.png); `tests/test_none.py`'),
            ('nbs/y.ipynb cell 0', 'nbs', 'fine: `04_losses`, `smvwe.maps.crf_refine`, README.md, ![f](images/protocol_synth.png), OUT/config.json')]
    monkeypatch.setattr(sys.modules[__name__], '_texts', lambda: iter(fake))
    bad = _bad_references()
    for n in ('NOTES.md', '../shared/PLAN.md', 'notebook 14 ', '`06_train`', 'smvwe.pseudo.crf_refine', 'images/none.png', 'tests/test_none.py'):
        assert any(n in b for b in bad), n
    assert not any(b.startswith('nbs/y.ipynb') for b in bad), bad


def test_no_committed_output_shows_a_local_path():
    "A kept output (a warning, a traceback) must not show the machine it ran on: clear it or silence its cause"
    bad = []
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        for i, c in enumerate(json.loads(p.read_text())['cells']):
            for o in c.get('outputs', []):
                text = ''.join(o.get('text', '')) + ''.join(''.join(v) for v in o.get('data', {}).values() if isinstance(v, (str, list)))
                if re.search(r'site-packages|/work/|/home/\w|/root/', text): bad.append(f'nbs/{p.name} cell {i}')
    assert not bad, 'outputs with local paths: ' + ', '.join(bad)
