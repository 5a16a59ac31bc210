"Project hygiene: the README's commands, CI, and notebooks in sync with the exported package."
import re, shutil, subprocess, sys
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


def test_ci_runs_readme_test_command_verbatim():
    test_cmd = readme_commands()[1]
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    assert test_cmd in ci, 'The CI script must run the README test command verbatim'


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
        assert nb.stat().st_size < 1_000_000, f'{nb.name} is over 1 MB: lower figure dpi'
