"Project hygiene: the README's commands, CI, and notebooks in sync with the exported package."
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    "The fenced bash commands of README.md's set-up section, in order."
    text = (ROOT / 'README.md').read_text()
    setup = text.split('## Set up', 1)[1].split('\n## ', 1)[0]
    return [c.strip() for c in re.findall(r'```bash\n(.*?)```', setup, re.S)]


def test_readme_has_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    main, tests = cmds
    assert 'pip install -e .' in main and main.endswith('smvwe demo')
    assert "pip install -e '.[dev]'" in tests and 'nbdev_test' in tests and 'pytest' in tests
    # the notebooks in parallel (the default) and once all in one process: an order dependence fails CI
    steps = [c.strip() for c in tests.split('&&')]
    assert 'nbdev_test' in steps and 'nbdev_test --n_workers 0' in steps, steps


def test_ci_runs_readme_test_command_verbatim():
    test_cmd = readme_commands()[1]
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    assert test_cmd in ci, 'The CI script must run the README test command verbatim'


def test_index_shows_readme_setup_commands():
    "The landing notebook (the site's first page) shows README's two set-up commands verbatim, so neither drifts"
    index = '\n'.join(''.join(c['source']) for c in json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())['cells'])
    for cmd in readme_commands(): assert cmd in index, f'nbs/index.ipynb lacks README\'s command: {cmd}'


def test_exported_modules_match_notebooks(tmp_path):
    "Re-export the notebooks into a copy of the repo: the generated modules must equal the committed ones."
    nbdev_export = shutil.which('nbdev_export') or str(Path(sys.executable).parent / 'nbdev_export')
    if not Path(nbdev_export).exists(): pytest.skip('nbdev not installed (pip install -e .[dev])')
    for p in ('nbs', 'smvwe'): shutil.copytree(ROOT / p, tmp_path / p, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    shutil.copy(ROOT / 'settings.ini', tmp_path / 'settings.ini')
    subprocess.run([nbdev_export], cwd=tmp_path, check=True, capture_output=True)
    stale = [p.name for p in sorted((ROOT / 'smvwe').glob('*.py'))
             if p.read_text() != (tmp_path / 'smvwe' / p.name).read_text()]
    assert not stale, f'smvwe/ is out of date with nbs/ for {stale}: run nbdev_export and commit both'


def test_notebooks_are_clean():
    "nbdev_clean leaves no execution counts or kernel metadata behind."
    import json
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        d = json.loads(nb.read_text())
        counts = [c.get('execution_count') for c in d['cells'] if c['cell_type'] == 'code']
        assert all(c is None for c in counts), f'{nb.name}: run nbdev_clean'
        assert nb.stat().st_size < 200_000, f'{nb.name} is over 200 kB: save figures under nbs/images/ and link them'


def _is_binary(p: Path) -> bool:
    "A file is binary when its first 8 kB hold a NUL byte or are not UTF-8 text (wheels, archives, images, weights)."
    head = p.read_bytes()[:8192]
    if b'\0' in head: return True
    try: head.decode('utf-8')
    except UnicodeDecodeError as e: return e.start < len(head) - 4  # a multi-byte character cut at 8 kB is still text
    return False


def test_no_binary_files_at_repo_root():
    "Tracked files at the repository root are text (a committed wheel or archive belongs nowhere in the repo)."
    out = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0: pytest.skip('not a git checkout')
    root_files = [ROOT / f for f in out.stdout.splitlines() if '/' not in f]
    assert root_files, 'git ls-files found no files at the root'
    binary = [p.name for p in root_files if p.exists() and _is_binary(p)]
    assert not binary, f'binary files at the repository root: {binary}; remove them with git rm'


def test_binary_check_tells_text_from_binary(tmp_path):
    (tmp_path / 'a.txt').write_text('plain text, ünïcode\n')
    (tmp_path / 'b.whl').write_bytes(b'PK\x03\x04\x14\x00\x00\x00\x08\x00')  # a zip (wheel) header
    (tmp_path / 'c.bin').write_bytes(bytes([0x89]) + b'PNG\r\n\x1a\n')
    assert not _is_binary(tmp_path / 'a.txt')
    assert _is_binary(tmp_path / 'b.whl') and _is_binary(tmp_path / 'c.bin')


def test_import_is_quiet_about_torch_jit_script():
    "Importing a module that pulls in fastai shows no `torch.jit.script` FutureWarning; other FutureWarnings still show."
    code = 'import smvwe.data, warnings; warnings.warn("other future warning", FutureWarning)'
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([sys.executable, '-W', 'always::FutureWarning', '-c', code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert 'jit.script' not in r.stderr, r.stderr
    assert 'other future warning' in r.stderr, r.stderr
