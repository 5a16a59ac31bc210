"""The installed `smvwe` command under the faults a careful user meets, one test per kind: Ctrl-C (exit 130, one line,
resume gives the same weights and the same history.csv), a full disk (one line naming the file and the free space),
a second writer of a run folder (refused, naming the holder), divergence (names the loss term and the epoch),
out-of-range arguments (one line with the allowed range), and doctor agreeing with the loaders: 16-bit saliency maps,
an id listed twice, a relative ROOT, an image too large for the memory limit; saliency maps only where a variant uses
them (--sal_dir none); a predicted label outside the classes."""
import csv, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

from smvwe.voc import make_tiny_voc

SMVWE = str(Path(sys.executable).parent / 'smvwe')   # the console script of this environment
TINY = ['--crop', '32', '--n_words', '8', '--bs', '2', '--num_workers', '0', '--device', 'cpu', '--no-progress']
PSEUDO = ['--n_workers', '0', '--device', 'cpu', '--no-save_logits', '--scales', '1']
ENV = dict(os.environ, PYTHONWARNINGS='ignore')


def smvwe(*args, env=None, timeout=1200):
    return subprocess.run([SMVWE, *map(str, args)], capture_output=True, text=True, env=env or ENV, timeout=timeout)


def one_line(err:str) -> str:
    "stderr must be exactly one line, without a traceback"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp('rel') / 'voc', n=8, n_val=2, classes=['background', 'disc', 'box'], size=(40, 48), seed=0)


@pytest.fixture(scope='module')
def trained(voc, tmp_path_factory):
    "An uninterrupted 6-epoch run: the reference of the resume test, and the classifier of the pseudo tests"
    run = tmp_path_factory.mktemp('ref') / 'run'
    r = smvwe('train-cls', voc, run, '--epochs', '6', *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def start(*args):
    "Start `smvwe ARGS` in its own process group, as a shell starts a foreground job"
    return subprocess.Popen([SMVWE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True, preexec_fn=_sigint_default)


def _sigint_default():
    "A shell starts background jobs with SIGINT ignored, and children inherit that: give the command the terminal's default"
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(p, cond, what, timeout=1200):
    t0 = time.time()
    while not cond():
        assert p.poll() is None, f'{what}: the command ended first: {p.communicate()[1][-3000:]}'
        assert time.time() - t0 < timeout, f'{what}: timed out'
        time.sleep(0.02)


def ctrl_c(p):
    "SIGINT to the whole process group, as Ctrl-C on a terminal does (workers included)"
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=300)
    return p.returncode, err


def test_ctrl_c_train_cls_then_resume_equals_an_uninterrupted_run(voc, trained, tmp_path):
    run = tmp_path / 'run'
    p = start('train-cls', voc, run, '--epochs', '6', *TINY)
    wait_for(p, lambda: (run / 'cls' / 'checkpoint.pth').exists(), 'first epoch')
    rc, err = ctrl_c(p)
    assert rc == 130 and one_line(err) == 'smvwe train-cls: interrupted; rerun the same command to resume'
    assert not (run / '.smvwe-lock').exists() and not list(run.rglob('*.tmp'))
    r = smvwe('train-cls', voc, run, '--epochs', '6', *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(d / 'cls' / 'model.pth', weights_only=True)['model'] for d in (trained, run))
    assert all(torch.equal(a[k], b[k]) for k in a)                               # the same weights, bit for bit
    assert (run / 'cls' / 'history.csv').read_text() == (trained / 'cls' / 'history.csv').read_text()   # and the same log
    assert len(list(csv.reader((run / 'cls' / 'history.csv').open()))) == 1 + 6


def test_ctrl_c_pseudo_with_workers(voc, trained, tmp_path):
    out = tmp_path / 'pl'
    p = start('pseudo', trained, voc, '--out', out, '--crf', '--n_workers', '2', '--device', 'cpu', '--scales', '1,0.5,1.5,2')
    wait_for(p, lambda: (out / 'pseudo').is_dir() and any((out / 'pseudo').glob('*.png')), 'first pseudo label')
    rc, err = ctrl_c(p)
    assert rc == 130 and one_line(err) == 'smvwe pseudo: interrupted; rerun the same command to resume'
    r = smvwe('pseudo', trained, voc, '--out', out, '--crf', '--n_workers', '2', '--device', 'cpu', '--scales', '1,0.5,1.5,2')
    assert r.returncode == 0 and len(list((out / 'pseudo').glob('*.png'))) == 8, r.stderr[-3000:]


def test_second_writer_of_a_run_folder_is_refused(voc, tmp_path):
    run = tmp_path / 'run'
    # the first writer must still hold the folder when the second arrives: far more epochs than it can run (it is killed)
    p = start('train-cls', voc, run, '--epochs', '100000', *TINY)
    try:
        wait_for(p, lambda: (run / 'config.json').exists(), 'the first writer')
        r = smvwe('train-cls', voc, run, '--epochs', '3', '--lr', '0.02', *TINY)
        line = one_line(r.stderr)
        assert p.poll() is None, 'the first writer ended before the second arrived: the test checked nothing'
        assert r.returncode == 1 and f'{run} is being written by another command (pid {p.pid}' in line and 'train-cls' in line, line
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.communicate()
    # the holder was killed (-9: no clean-up): its lock is stale and the next command takes it over
    r = smvwe('train-cls', voc, run, '--epochs', '1', '--no-resume', *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run / '.smvwe-lock').exists()


FULL = textwrap.dedent('''
    # a full disk under FULL_DIR, for machines where a small tmpfs cannot be mounted: writes fail as on a full disk
    import builtins, errno, os
    _open, _full = builtins.open, os.environ['FULL_DIR']
    def _check(p):
        if str(p).startswith(_full) and os.path.basename(str(p)).startswith('.'):
            raise OSError(errno.ENOSPC, 'No space left on device', str(p))
    def open(file, mode='r', *a, **k):
        if any(c in mode for c in 'wax'): _check(file)
        return _open(file, mode, *a, **k)
    builtins.open = open
''')


@pytest.fixture
def full_disk(tmp_path):
    "A folder on a full file system: a real 64 KiB tmpfs when mounting is allowed (root), else a simulated one"
    d = tmp_path / 'full'; d.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(d)], capture_output=True).returncode == 0:
        yield d, ENV
        subprocess.run(['umount', '-l', str(d)])
    else:
        (tmp_path / 'site').mkdir(); (tmp_path / 'site' / 'sitecustomize.py').write_text(FULL)
        yield d, dict(ENV, FULL_DIR=str(d), PYTHONPATH=os.pathsep.join([str(tmp_path / 'site'), os.environ.get('PYTHONPATH', '')]))


def test_full_disk_names_the_file_and_the_free_space(voc, trained, full_disk):
    d, env = full_disk
    for args in (['train-cls', voc, d / 'run', '--epochs', '2', *TINY], ['pseudo', trained, voc, '--out', d / 'pl', *PSEUDO]):
        r = smvwe(*args, env=env)
        line = one_line(r.stderr)
        assert r.returncode == 1 and 'no space left on the device writing ' + str(d) in line and 'MiB free)' in line, line
        assert 'rerun the same command' in line


def test_divergence_names_the_loss_term_and_the_epoch(voc, tmp_path):
    r = smvwe('train-cls', voc, tmp_path / 'run', '--epochs', '2', '--lr', '1e8', *TINY)
    line = one_line(r.stderr)
    assert r.returncode == 1 and 'non-finite' in line and 'at epoch ' in line and 'Exception occured' not in line, line
    assert not (tmp_path / 'run' / 'cls' / 'model.pth').exists()


@pytest.mark.parametrize('args,want', [
    (['train-cls', '{voc}', '{tmp}/r', '--bs', '0'], '--bs must be in [1,inf), got 0'),
    (['train-cls', '{voc}', '{tmp}/r', '--mom', '1.5'], '--mom must be in [0,1), got 1.5'),
    (['train-cls', '{voc}', '{tmp}/r', '--lr', '0'], '--lr must be in (0,inf), got 0.0'),
    (['pseudo', '{run}', '{voc}', '--scales', '0'], '--scales must be in (0,16], got 0.0'),
    (['pseudo', '{run}', '{voc}', '--bg_thr', '2'], '--bg_thr must be in [0,1], got 2.0'),
    (['pseudo', '{run}', '{voc}', '--conf_thr', '5'], '--conf_thr must be in [0,1), got 5.0'),
    (['train-seg', '{voc}', '{tmp}/pl', '{tmp}/s', '--bs', '0'], '--bs must be in [1,inf), got 0'),
], ids=['bs', 'mom', 'lr', 'scales', 'bg_thr', 'conf_thr', 'seg-bs'])
def test_out_of_range_arguments_are_one_line(args, want, voc, tmp_path):
    run = tmp_path / 'run'; (run / 'cls').mkdir(parents=True); (run / 'cls' / 'model.pth').write_bytes(b'')  # never read
    r = smvwe(*[a.format(voc=voc, tmp=tmp_path, run=run) for a in args])
    assert r.returncode == 1 and one_line(r.stderr).endswith(want), r.stderr[-2000:]


def test_train_seg_refuses_labels_that_are_all_ignore(voc, tmp_path):
    import numpy as np
    from smvwe.files import save_label_png
    from smvwe.voc import read_split
    for i in read_split(voc, 'train') + read_split(voc, 'val'): save_label_png(tmp_path / 'pl' / f'{i}.png', np.full((40, 48), 255))
    r = smvwe('train-seg', voc, tmp_path / 'pl', tmp_path / 'seg', '--epochs', '1', '--device', 'cpu', '--num_workers', '0')
    line = one_line(r.stderr)
    assert r.returncode == 1 and 'label no pixel of the 8 training images (all 255 = ignore)' in line, line
    assert not (tmp_path / 'seg' / 'seg' / 'model.pth').exists()


# --- doctor and the loaders agree (bit depth, duplicate ids, relative paths, memory), saliency only where it is used ---

def copy_voc(voc, tmp_path, name='voc'):
    import shutil
    return Path(shutil.copytree(voc, tmp_path / name))


def test_16bit_saliency_maps_are_read_on_their_scale(voc, trained, tmp_path):
    "A 16-bit copy (v * 257) of the 8-bit maps is the same saliency: doctor names the depth, pseudo and train-cls give what the 8-bit maps give"
    import numpy as np
    from PIL import Image
    r16 = copy_voc(voc, tmp_path, 'voc16')
    for p in (r16 / 'saliency').glob('*.png'):
        Image.fromarray(np.asarray(Image.open(p)).astype(np.uint16) * 257).save(p)
    assert Image.open(next((r16 / 'saliency').glob('*.png'))).mode == 'I;16'
    r = smvwe('doctor', r16)
    assert r.returncode == 0 and 'saliency maps: 10 16-bit (read as value / 65535)' in r.stdout, r.stdout + r.stderr[-2000:]
    for root, out in ((voc, 'p8'), (r16, 'p16')):   # saliency as background: clipped maps would make every object pixel fully salient
        r = smvwe('pseudo', trained, root, '--out', tmp_path / out, '--sal_dir', 'saliency', '--mode', 'eps', *PSEUDO)
        assert r.returncode == 0, r.stderr[-3000:]
    for p in (tmp_path / 'p8' / 'pseudo').glob('*.png'):
        assert (np.asarray(Image.open(p)) == np.asarray(Image.open(tmp_path / 'p16' / 'pseudo' / p.name))).all(), p.name
    for root, run in ((voc, 'r8'), (r16, 'r16')):
        r = smvwe('train-cls', root, tmp_path / run, '--epochs', '1', *TINY)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path / d / 'cls' / 'model.pth', weights_only=True)['model'] for d in ('r8', 'r16'))
    assert all(torch.equal(a[k], b[k]) for k in a)   # the saliency loss saw the same maps


def test_an_id_listed_twice_is_refused_by_eval_and_doctor(voc, tmp_path):
    import shutil
    root = copy_voc(voc, tmp_path)
    split = root / 'ImageSets' / 'Segmentation' / 'val.txt'
    split.write_text(split.read_text() + '2008_000000\n')   # line 3 repeats line 1
    pred = tmp_path / 'pred'; pred.mkdir()
    for p in (root / 'SegmentationClass').glob('2008_*.png'): shutil.copy(p, pred / p.name)
    want = f"split file {split} line 3: image id '2008_000000' is listed again (first on line 1): remove the duplicate line."
    r = smvwe('eval', pred, root)
    assert r.returncode == 1 and one_line(r.stderr) == f'smvwe eval: error: {want}', r.stderr[-2000:]
    r = smvwe('doctor', root)
    assert r.returncode == 1 and f'val/*: {want}' in r.stdout and '1 problem(s)' in one_line(r.stderr), r.stdout + r.stderr


def test_doctor_with_a_relative_root_and_sal_dir(voc, tmp_path):
    copy_voc(voc, tmp_path)
    r = subprocess.run([SMVWE, 'doctor', 'voc', '--sal_dir', 'saliency'], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert 'split train: 8 of 8 images usable' in r.stdout and 'split val: 2 of 2 images usable' in r.stdout, r.stdout


def test_a_large_image_is_refused_before_any_work(voc, trained, tmp_path):
    "A 4000 x 3000 photo at scales 1 and 2: refused from its header (nothing that size is allocated); doctor gives the same estimate"
    import numpy as np
    from smvwe.files import save_jpg, save_gray_png, save_label_png
    from smvwe.doctor import inference_gb, SMALL_PX_BYTES
    root = copy_voc(voc, tmp_path)
    save_jpg(root / 'JPEGImages' / 'big.jpg', np.zeros((3000, 4000, 3), np.uint8))
    save_gray_png(root / 'saliency' / 'big.png', np.zeros((3000, 4000), np.uint8))
    save_label_png(root / 'SegmentationClass' / 'big.png', np.zeros((3000, 4000), np.uint8))
    (root / 'ImageSets' / 'Segmentation' / 'big.txt').write_text('2007_000000\nbig\n')
    gb = inference_gb((3000, 4000), (1, 2), n_maps=3)
    assert 15 < gb < 25   # 2 x 8000 x 6000 pixels of 202 bytes at scale 2, and the maps: far over the default 8 GB
    r = smvwe('pseudo', trained, root, '--split', 'big', '--out', tmp_path / 'pl', '--scales', '1,2', '--n_workers', '0', '--device', 'cpu')
    line = one_line(r.stderr)
    assert r.returncode == 1 and f"image {root / 'JPEGImages' / 'big.jpg'} (4000x3000) at scales 1,2 needs about" in line, line
    assert 'over the 8 GB limit' in line and 'SMVWE_MAX_GB=' in line, line
    assert not list((tmp_path / 'pl').rglob('*.png'))   # refused before the first image
    r = smvwe('doctor', root, '--splits', 'big', '--scales', '1,2')
    assert r.returncode == 1 and 'largest image big (4000x3000): pseudo labels at scales 1,2 need about' in r.stdout, r.stdout
    r = smvwe('doctor', root, '--splits', 'big', '--scales', '1,2', env=dict(ENV, SMVWE_MAX_GB='100'))   # the limit raised: ok
    assert r.returncode == 0 and '(limit 100 GB' in r.stdout, r.stdout + r.stderr
    r = smvwe('pseudo', trained, root, '--out', tmp_path / 'pl2', *PSEUDO, env=dict(ENV, SMVWE_MAX_GB='0.0001'))   # a small limit, small images
    line = one_line(r.stderr)
    assert r.returncode == 1 and '(48x40) at scales 1 needs about' in line and 'over the 0.0001 GB limit' in line, line


def test_cam_and_vwe_need_no_saliency_maps(voc, tmp_path):
    import shutil
    root = copy_voc(voc, tmp_path); shutil.rmtree(root / 'saliency')
    for v in ('cam', 'vwe'):
        r = smvwe('train-cls', root, tmp_path / v, '--variant', v, '--epochs', '1', *TINY)
        assert r.returncode == 0, r.stderr[-3000:]
    r = smvwe('pseudo', tmp_path / 'cam', root, '--sal_dir', 'none', *PSEUDO)   # 'none' is no folder, not a folder named none
    assert r.returncode == 0 and len(list((tmp_path / 'cam' / 'pseudo').glob('*.png'))) == 8, r.stderr[-3000:]
    r = smvwe('train-cls', root, tmp_path / 's', '--variant', 'smvwe', '--epochs', '1', *TINY)
    assert r.returncode == 1 and one_line(r.stderr) == (f"smvwe train-cls: error: saliency folder {root / 'saliency'} not found: variant 'smvwe' trains on "
        "saliency maps (grey PNGs named by image id): pass their folder (--sal_dir FOLDER), or train --variant cam or vwe, which need none."), r.stderr
    r = smvwe('train-cls', root, tmp_path / 's', '--variant', 'sal', '--sal_dir', 'none', '--epochs', '1', *TINY)
    assert r.returncode == 1 and "variant 'sal' trains on saliency maps but --sal_dir is none" in one_line(r.stderr), r.stderr
    r = smvwe('pseudo', tmp_path / 'cam', root, '--out', tmp_path / 'p2', '--sal_dir', 'maps', *PSEUDO)
    assert r.returncode == 1 and f"saliency folder {root.absolute() / 'maps'} not found" in one_line(r.stderr), r.stderr


def test_eval_refuses_a_predicted_label_outside_the_classes(voc, tmp_path):
    import numpy as np, shutil
    from smvwe.files import save_label_png
    pred = tmp_path / 'pred'; pred.mkdir()
    for p in (voc / 'SegmentationClass').glob('2008_*.png'): shutil.copy(p, pred / p.name)
    save_label_png(pred / '2008_000001.png', np.full((40, 48), 3, np.uint8))   # 3 classes: 3 is one past the last
    r = smvwe('eval', pred, voc)
    assert r.returncode == 1 and one_line(r.stderr).startswith(f"smvwe eval: error: prediction {pred / '2008_000001.png'} has labels [3] outside 0..2 (and 255 = uncertain)"), r.stderr
