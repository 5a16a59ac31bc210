"""The docs site (`smvwe docs`, nbs/10b_docs.ipynb) in a real browser: every page opens in headless Chromium without a
script error, a resource that fails to load, a broken image or math that does not typeset; every local link and anchor
resolves; screenshots of the landing page, 02b_words, the results page and the CLI reference are taken (and refreshed in nbs/images/ when missing or
when SMVWE_UPDATE_SCREENSHOTS=1, so a test run does not dirty the checkout).

Needs Debian's `chromium` (.ci/run installs it); skipped with a message when it is missing, except under CI
(CI=true), where a missing browser fails. No network: pages are
opened as file:// URLs and Chromium runs with its background networking off."""
import html.parser, json, os, re, shutil, subprocess, sys
from pathlib import Path
from html import unescape
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions', '--mute-audio',
         '--hide-scrollbars', '--virtual-time-budget=30000', '--window-size=1280,900']
SHOTS = {'index': 'docs_index.png', '02b_words': 'docs_02b_words.png',  # the landing page; equations typeset
         '13_results': 'docs_13_results.png', 'cli_reference': 'docs_cli_reference.png'}  # the generated results page; the CLI reference


needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get('CI'),
                                    reason='Chromium is not installed (apt-get install -y chromium; .ci/run does it)')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The whole site, built once from the repository's notebooks with the command README gives."
    out = tmp_path_factory.mktemp('docs') / 'site'
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    r = subprocess.run([sys.executable, '-m', 'smvwe.cli', 'docs', str(out)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return out


def chromium(args, profile, timeout=180):
    "Run headless Chromium with a fresh profile; returns (stdout, stderr)."
    assert CHROMIUM, 'chromium is not installed: .ci/run installs it with apt-get (CI must run the browser test)'
    r = subprocess.run([CHROMIUM, *FLAGS, f'--user-data-dir={profile}', '--enable-logging=stderr', '--v=0', *args],
                       capture_output=True, text=True, timeout=timeout)
    return r.stdout, r.stderr


class _Refs(html.parser.HTMLParser):
    "The ids, hrefs and img srcs of one page."
    def __init__(self):
        super().__init__(); self.ids, self.hrefs, self.srcs = set(), [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        if tag == 'a' and a.get('href'): self.hrefs.append(a['href'])
        if tag in ('img', 'script') and a.get('src'): self.srcs.append(a['src'])
        if tag == 'link' and a.get('href'): self.srcs.append(a['href'])


def _refs(page):
    p = _Refs(); p.feed(page.read_text()); return p


EXTRA = ['README', 'cli_reference']  # the pages that are not notebooks, after the landing page


def test_site_has_every_notebook(site):
    nbs = sorted(p.stem for p in (ROOT / 'nbs').glob('*.ipynb'))
    pages = sorted(p.stem for p in site.glob('*.html'))
    assert pages == sorted(nbs + EXTRA), set(nbs + EXTRA) ^ set(pages)
    nav = re.search(r'<nav class="sidebar">(.*?)</nav>', (site / 'index.html').read_text(), re.S).group(1)
    order = re.findall(r'href="([\w-]+)\.html"', nav)
    assert order == ['index'] + EXTRA + [s for s in nbs if s != 'index'], order  # sidebar in pipeline (file-name) order


def test_readme_results_and_cli_reference_pages(site):
    "README (its links made site links), the generated results page and every command's --help are on the site"
    from smvwe.cli import COMMANDS
    readme = (site / 'README.html').read_text()
    assert 'What this reproduction finds' in readme and 'href="13_results.html"' in readme and 'nbs/results/README.md"' not in readme
    assert 'src="images/' in readme or '](nbs/images/' not in (ROOT / 'README.md').read_text()  # an image README shows is rewritten for the site
    results = (site / '13_results.html').read_text()
    assert 'The headline' in results and 'src="images/protocol_synth.png"' in results and '<table' in results
    cli = (site / 'cli_reference.html').read_text()
    missing = [k for k in COMMANDS if f'usage: smvwe {k}' not in cli or f'id="smvwe-{k}"' not in cli]
    assert not missing, f'commands without their --help on the CLI reference page: {missing}'
    assert 'usage: smvwe COMMAND' in cli


def test_local_links_and_anchors_resolve(site):
    "Every relative link and resource of every page exists in the site, and every #anchor exists on its page."
    refs = {p.name: _refs(p) for p in site.glob('*.html')}
    broken = []
    for name, r in refs.items():
        for url in r.hrefs + r.srcs:
            u = urlparse(url)
            if u.scheme in ('http', 'https', 'mailto', 'data') or url.startswith('javascript:'): continue
            assert not u.scheme, f'{name}: unexpected link {url}'
            target = name if not u.path else unquote(u.path)
            if not (site / target).exists(): broken.append(f'{name} -> {url} (no file {target})')
            elif u.fragment and target in refs and not {u.fragment, unquote(u.fragment)} & refs[target].ids:  # raw, then decoded (HTML spec)
                broken.append(f'{name} -> {url} (no anchor #{u.fragment})')
    assert not broken, '\n'.join(broken)
    no_net = [f'{n}: {s}' for n, r in refs.items() for s in r.srcs if urlparse(s).scheme in ('http', 'https')]
    assert not no_net, f'pages load resources from the network: {no_net}'


def test_docstrings_render(site):
    "A docstring after an import renders as Python's default 'Call self as a function.': the two that did now render their own"
    pages = {p.name: p.read_text() for p in site.glob('*.html')}
    assert not [n for n, t in pages.items() if 'Call self as a function' in t]
    assert 'per method under one read-out (+ the baseline row)' in pages['12d_tables.html']   # tables.detail_table
    assert 'The device of <code>model</code>' in pages['07a_maps.html'] or "The device of `model`" in pages['07a_maps.html']  # maps.model_device


def test_equation_index_reaches_the_code(site):
    "Every function link of index.ipynb's equation table lands on its page at the function (anchor kept): one click to the code."
    table = re.findall(r'\]\((\w+)\.ipynb#([\w.]+)\)', (ROOT / 'nbs' / 'index.ipynb').read_text())
    assert len(table) >= 14, table
    index = (site / 'index.html').read_text()
    missing = [f'{nb}#{a}' for nb, a in table if f'href="{nb}.html#{a}"' not in index or f']({nb}.ipynb#{a})' in index]
    assert not missing, f'links not rendered, or whose anchor is not on the page (fix the anchor in index.ipynb): {missing}'


@needs_chromium
def test_pages_in_chromium(site, tmp_path):
    "Open every page: no script error or failed load, images decoded, math typeset without error (02b_words has math), no code block cut off."
    bad, math, code = [], {}, {}
    for page in sorted(site.glob('*.html')):
        dom, log = chromium(['--dump-dom', page.as_uri()], tmp_path / 'profile')
        m = re.search(r'<body[^>]*data-check="([^"]*)"', dom)
        if not m: bad.append(f'{page.name}: the page never reported its state (site.js or MathJax did not run)'); continue
        check = json.loads(unescape(m.group(1)))
        console = [l for l in log.splitlines() if 'CONSOLE' in l and re.search(r'Uncaught|ERR_|Failed to load', l)]
        problems = check['errors'] + check['broken_images'] + console
        if check['math_errors']: problems.append(f"{check['math_errors']} math errors")
        if check['code']['cut']: problems.append(f"{check['code']['cut']} code blocks cut off (neither inside the page nor scrollable)")
        if problems: bad.append(f'{page.name}: {problems}')
        math[page.stem], code[page.stem] = check['math'], check['code']
    assert not bad, '\n'.join(bad)
    assert math['02b_words'] > 20 and math['03_saliency'] > 20, math
    # long code lines exist (exported cells of 12b_protocol and 12e_results) and scroll sideways
    for stem in ('12b_protocol', '12e_results'):
        assert code[stem]['wide'] > 0 and code[stem]['scrollable'] == code[stem]['wide'], (stem, code[stem])


@needs_chromium
def test_screenshots(site, tmp_path):
    "Screenshots of the landing page, 02b_words, the results page and the CLI reference: the sidebar and the page's text show (index.ipynb links them)."
    from PIL import Image
    import numpy as np
    update = os.environ.get('SMVWE_UPDATE_SCREENSHOTS') == '1'
    for stem, fname in SHOTS.items():
        shot = tmp_path / fname
        chromium([f'--screenshot={shot}', (site / f'{stem}.html').as_uri()], tmp_path / 'profile')
        im = Image.open(shot).convert('RGB')
        assert im.size == (1280, 900), im.size
        a = np.asarray(im)
        assert (a[:, :200] != a[0, 0]).any(axis=2).mean() > 0.05  # the sidebar's text
        assert (a[:, 300:] < 100).all(axis=2).mean() > 0.01       # dark text in the page
        dest = ROOT / 'nbs' / 'images' / fname
        if update or not dest.exists():
            im.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
    index = (ROOT / 'nbs' / 'index.ipynb').read_text()
    assert all(f'images/{f}' in index for f in SHOTS.values()), 'index.ipynb must link the screenshots'


def test_docstrings_come_before_the_code():
    "The two functions whose import sat before the docstring (so Python saw no docstring) now have theirs"
    from smvwe.tables import detail_table
    from smvwe.maps import model_device
    assert detail_table.__doc__.startswith('Markdown: per method under one read-out')
    assert model_device.__doc__.startswith("The device of `model`'s first parameter")
