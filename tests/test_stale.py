"No stale output: every committed output that shows results is what `smvwe report` gives from today's result files."
import json, re, shutil
from pathlib import Path
from smvwe.summary import bench_key
from smvwe.results import stale_outputs, write_outputs, load_frames, CHECKED_CELLS

ROOT = Path(__file__).resolve().parents[1]
NBS, RES, README = ROOT/'nbs', ROOT/'nbs'/'results', ROOT/'README.md'


def test_committed_outputs_are_what_the_result_files_give():
    "The results page, nbs/results/README.md, README's two blocks and the checked notebook cells (11b's table, index's how-to-use)"
    bad = stale_outputs(RES, NBS, README)
    assert bad == [], 'stale outputs (run `smvwe report`):\n' + '\n'.join(bad)


def test_every_number_of_the_reading_is_measured():
    "Every {{field}} of the reading names a measured value: a field the result files cannot fill prints n/a (a typo, a level or label that moved)"
    from smvwe.results import READING, fill
    filled = fill(READING, load_frames(RES))
    bad = [l for l in filled.splitlines() if 'n/a' in l]
    assert bad == [], 'reading fields with no value:\n' + '\n'.join(bad)


def _copy(tmp_path):
    "A copy of everything the check reads: the result files, the notebooks it owns, README"
    res, nbs = tmp_path/'nbs'/'results', tmp_path/'nbs'
    shutil.copytree(RES, res)
    for name in ['13_results.ipynb', *CHECKED_CELLS]: shutil.copy(NBS/name, nbs/name)
    shutil.copy(README, tmp_path/'README.md')
    return res, nbs, tmp_path/'README.md'


def test_a_planted_stale_number_fails(tmp_path):
    res, nbs, readme = _copy(tmp_path)
    assert stale_outputs(res, nbs, readme) == []
    # 1. a number typed into README's headline: SMVWE's drawn eps mean changed by hand
    text = readme.read_text(); m = re.search(r'\| from scratch \| drawn \| \d+ \| (\d+\.\d) ', text)
    readme.write_text(text.replace(m.group(0), m.group(0).replace(m.group(1), '99.9'), 1))
    # 2. the results page keeps an old number (the first recipe's CAM eps on the drawn benchmark)
    page = nbs/'13_results.ipynb'; page.write_text(page.read_text().replace('29.9 ± 0.1', '25.0 ± 0.1', 1))
    # 3. a notebook output from an older run: index's how-to-use loss
    idx = nbs/'index.ipynb'; nb = json.loads(idx.read_text())
    cell = next(c for c in nb['cells'] if c.get('id') == CHECKED_CELLS['index.ipynb'][0])
    cell['outputs'][0]['text'][-1] = re.sub(r"'total': [\d.]+", "'total': 2.08", cell['outputs'][0]['text'][-1])
    idx.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    # 4. the demo's table in 11b from an older run: SMVWE 0.643
    demo = nbs/'11b_demo.ipynb'; demo.write_text(demo.read_text().replace('| SMVWE | argmax | 0.749 |', '| SMVWE | argmax | 0.643 |', 1))
    bad = stale_outputs(res, nbs, readme)
    assert sorted(Path(b.split(': ')[0]).name for b in bad) == ['11b_demo.ipynb', '13_results.ipynb', 'README.md', 'index.ipynb'], bad
    assert "99.9" in next(b for b in bad if 'README.md:' in b) and "25.0 ± 0.1" in next(b for b in bad if '13_results' in b)
    assert "2.08" in next(b for b in bad if 'index.ipynb' in b) and "0.643" in next(b for b in bad if '11b_demo' in b)
    # the command that owns them puts every one back
    write_outputs(res, nbs, readme, figures=False)
    assert stale_outputs(res, nbs, readme) == []
    assert readme.read_text() == README.read_text()


def test_a_changed_result_file_makes_the_outputs_stale(tmp_path):
    "A result file that changes without `smvwe report` fails the check (here the demo's SMVWE mIoU)"
    res, nbs, readme = _copy(tmp_path)
    p = res/'demo_metrics.json'; m = json.loads(p.read_text()); m['variants']['smvwe']['miou'] = 0.5
    p.write_text(json.dumps(m))
    bad = {Path(b.split(': ')[0]).name for b in stale_outputs(res, nbs, readme)}
    assert {'README.md', '13_results.ipynb', '11b_demo.ipynb'} <= bad


def test_no_other_notebook_keeps_a_results_table_in_its_outputs():
    "Result tables live in the generated page and the checked cells only (12b's old report cell, hand-kept copies)"
    checked = {(n, i) for n, ids in CHECKED_CELLS.items() for i in ids}
    found = []
    for p in sorted(NBS.glob('*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            out = json.dumps(c.get('outputs', []))
            if any(h in out for h in ('| method | seeds |', '| variant | read-out |', 'mIoU % (')) and (p.name, c.get('id')) not in checked:
                found.append(f'{p.name} cell {c.get("id")}')
    assert found == [], found


def test_index_shows_todays_figures():
    "index's Results figures are the ones `smvwe report` draws from today's result files"
    nb = json.loads((NBS/'index.ipynb').read_text())
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    sec = md[md.index('## Results'):]; sec = sec[:sec.index('\n## ', 1)]
    figs = set(re.findall(r'\]\(images/([\w.]+\.png)\)', sec))
    owned = {f'protocol_{bench_key(b, r)}.png' for b, r in load_frames(RES)}
    assert figs and figs <= owned, (figs, owned)
