"smvwe.data: bad input (each case names the file and the fix), custom class lists, label files, loaders."
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smvwe.data import TINY, cls_dls, denormalize, seg_dls
from smvwe.voc import (VOC_CLASSES, image_labels, load_mask, load_saliency, make_tiny_voc, read_classes, read_split,
                       resolve_mask_dir, validate_voc)

CUSTOM = ['background', 'boat', 'water', 'train']


@pytest.fixture
def voc(tmp_path):
    return make_tiny_voc(tmp_path/'voc', n=4, n_val=2, seed=0)


@pytest.fixture
def custom(tmp_path):
    return make_tiny_voc(tmp_path/'custom', n=4, n_val=2, classes=CUSTOM, seed=3)


def first_train(root): return read_split(root, 'train')[0]


# ---------------------------------------------------------------- class lists and labels
def test_voc_default_classes_and_labels(voc):
    assert not (voc/'classes.txt').exists()
    assert read_classes(voc) == VOC_CLASSES
    dls = cls_dls(voc, seed=0, **TINY)
    assert dls.classes == VOC_CLASSES and dls.c == 20
    img, sal, lab = dls.one_batch()
    assert img.shape == (4, 3, 32, 32) and sal.shape == (4, 1, 32, 32) and lab.shape == (4, 20)
    assert img.dtype == sal.dtype == lab.dtype == torch.float32
    assert ((lab == 0) | (lab == 1)).all() and (lab.sum(1) >= 1).all()
    fig = dls.show_batch(max_n=3, show=False)
    assert len([a for a in fig.axes if a.images]) == 3 and all(len(a.images) == 2 for a in fig.axes if a.images)


def test_device_and_pinned_memory(voc):
    "CUDA device -> pinned memory on both loaders (configuration only: no GPU needed to build them)."
    d = cls_dls(voc, device='cuda', **TINY)
    assert d.device.type == 'cuda' and d.train.pin_memory and d.valid.pin_memory
    d = cls_dls(voc, device='cpu', **TINY)
    assert d.device.type == 'cpu' and not d.train.pin_memory and d.one_batch()[0].device.type == 'cpu'


def test_custom_classes(custom):
    assert read_classes(custom) == CUSTOM
    ids = read_split(custom, 'train')
    labs = image_labels(custom, ids)
    assert labs.shape == (4, 3)
    for i, l in zip(ids, labs):   # label = classes present in the mask
        present = set(np.unique(load_mask(custom, i)).tolist()) - {0, 255}
        assert set((np.nonzero(l)[0] + 1).tolist()) == present and present <= {1, 2, 3}
    dls = cls_dls(custom, seed=0, **TINY)
    assert dls.classes == CUSTOM and dls.c == 3 and dls.one_batch()[2].shape == (4, 3)
    sdls = seg_dls(custom, crop=32, scale=(0.5, 1.0), bs=2, seed=0)
    x, m = sdls.one_batch()
    assert sdls.c == 4 and m.dtype == torch.int64 and set(m.unique().tolist()) <= {0, 1, 2, 3, 255}
    fig = sdls.show_batch(max_n=2, show=False)
    assert len([a for a in fig.axes if a.images]) == 2


def test_label_file_used_and_irn_int_keys(tmp_path):
    root = make_tiny_voc(tmp_path/'v', n=3, n_val=2, seed=1, cls_labels=True)
    d = np.load(root/'cls_labels.npy', allow_pickle=True).item()
    want = np.zeros(20, np.float32); want[[4, 14]] = 1          # differs from the masks on purpose
    d = {int(k.replace('_', '')): v for k, v in d.items()}       # IRN's integer keys
    d[2007000000] = want
    np.save(root/'cls_labels.npy', d, allow_pickle=True)
    assert np.array_equal(image_labels(root, ['2007_000000'])[0], want)
    dls = cls_dls(root, seed=0, **TINY)
    k = dls.train.dataset.ids.index('2007_000000')
    assert np.array_equal(dls.train.dataset[k][2].numpy(), want)


def test_segmentationclassaug_preferred(tmp_path):
    root = make_tiny_voc(tmp_path/'v', n=3, n_val=2, seed=1, aug_masks=True)
    assert resolve_mask_dir(root, 'auto') == root/'SegmentationClassAug'
    i = first_train(root)
    Image.fromarray(np.full((48, 64), 7, np.uint8), 'L').save(root/'SegmentationClassAug'/f'{i}.png')
    lab = image_labels(root, [i])[0]                 # labels derived from the Aug masks
    assert lab.sum() == 1 and lab[6] == 1


def test_absolute_saliency_dir(voc, tmp_path):
    (voc/'saliency').rename(tmp_path/'pfan')
    with pytest.raises(FileNotFoundError, match='saliency map'): cls_dls(voc, **TINY)
    dls = cls_dls(voc, sal_dir=tmp_path/'pfan', seed=0, **TINY)
    i = dls.train.dataset.ids[0]
    assert load_saliency(tmp_path/'pfan', i, None).shape == (48, 64)
    assert dls.one_batch()[1].shape == (4, 1, 32, 32)


# ---------------------------------------------------------------- bad input, one case each
def test_missing_image(voc):
    i = first_train(voc); (voc/'JPEGImages'/f'{i}.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=rf'image .*{i}\.jpg is missing.*skip_bad=True'): cls_dls(voc, **TINY)


def test_unreadable_image(voc):
    i = first_train(voc); (voc/'JPEGImages'/f'{i}.jpg').write_bytes(b'not a jpeg')
    with pytest.raises(ValueError, match=rf'image .*{i}\.jpg is unreadable.*re-save'): cls_dls(voc, **TINY)


def test_missing_saliency(voc):
    i = first_train(voc); (voc/'saliency'/f'{i}.png').unlink()
    with pytest.raises(FileNotFoundError, match=rf'saliency map .*saliency/{i}\.png is missing'): cls_dls(voc, **TINY)


def test_unreadable_saliency(voc):
    i = first_train(voc); (voc/'saliency'/f'{i}.png').write_bytes(b'\x89PNG garbage')
    with pytest.raises(ValueError, match=rf'saliency map .*{i}\.png is unreadable'): cls_dls(voc, **TINY)


def test_saliency_size_mismatch(voc):
    i = first_train(voc); Image.new('L', (10, 12)).save(voc/'saliency'/f'{i}.png')
    with pytest.raises(ValueError, match=rf'saliency map .*{i}\.png is 10x12 .* image .*is 64x48.*regenerate'):
        cls_dls(voc, **TINY)


def test_mask_size_mismatch(voc):
    i = first_train(voc); Image.new('P', (64, 40)).save(voc/'SegmentationClass'/f'{i}.png')
    with pytest.raises(ValueError, match=rf'mask .*{i}\.png is 64x40 .*64x48'): cls_dls(voc, **TINY)
    with pytest.raises(ValueError, match=rf'mask .*{i}\.png is 64x40'): seg_dls(voc, crop=32, bs=2)


def test_mask_values_outside_class_list(custom):
    i = first_train(custom)
    m = load_mask(custom, i).copy(); m[0, 0] = 9
    Image.fromarray(m, 'L').save(custom/'SegmentationClass'/f'{i}.png')
    with pytest.raises(ValueError, match=rf'{i}\.png has values \[9\] outside the class list \(0..3 and 255'):
        cls_dls(custom, **TINY)
    with pytest.raises(ValueError, match=r'values \[9\]'): seg_dls(custom, crop=32, bs=2)


def test_rgb_mask_refused(voc):
    i = first_train(voc); Image.new('RGB', (64, 48)).save(voc/'SegmentationClass'/f'{i}.png')
    with pytest.raises(ValueError, match=r'mode RGB.*palette or 8-bit index'): seg_dls(voc, crop=32, bs=2)


def test_split_file_missing_or_empty(voc):
    with pytest.raises(FileNotFoundError, match=r'split file .*train_aug\.txt not found'): cls_dls(voc, train='train_aug', **TINY)
    (voc/'ImageSets/Segmentation/val.txt').write_text('\n  \n')
    with pytest.raises(ValueError, match=r'split file .*val\.txt is empty'): cls_dls(voc, **TINY)


def test_label_width_disagrees_with_classes(tmp_path):
    root = make_tiny_voc(tmp_path/'v', n=3, n_val=2, seed=1, cls_labels=True)   # 20-wide labels
    (root/'classes.txt').write_text('\n'.join(CUSTOM) + '\n')                    # L = 3
    with pytest.raises(ValueError, match=r'cls_labels\.npy has labels of width 20 .*L=3.*fix classes\.txt'):
        cls_dls(root, **TINY)
    with pytest.raises(ValueError, match='width 20'): validate_voc(root, 'train', skip_bad=True)  # never skipped


def test_label_file_missing_id(tmp_path):
    root = make_tiny_voc(tmp_path/'v', n=3, n_val=2, seed=1, cls_labels=True)
    d = np.load(root/'cls_labels.npy', allow_pickle=True).item(); del d['2007_000001']
    np.save(root/'cls_labels.npy', d, allow_pickle=True)
    with pytest.raises(ValueError, match=r"cls_labels\.npy has no label for image '2007_000001'"): cls_dls(root, **TINY)


def test_bad_classes_file(voc):
    (voc/'classes.txt').write_text('cat\ndog\n')
    with pytest.raises(ValueError, match=r"classes\.txt: .*first 'background'"): cls_dls(voc, **TINY)


def test_first_error_counts_the_rest(voc):
    for i in read_split(voc, 'train')[:3]: (voc/'saliency'/f'{i}.png').unlink()
    with pytest.raises(FileNotFoundError, match=r'2 more bad ids'): validate_voc(voc, 'train')


def test_skip_bad_reports_each(voc):
    ids = read_split(voc, 'train')
    (voc/'JPEGImages'/f'{ids[0]}.jpg').unlink()
    Image.new('L', (5, 5)).save(voc/'saliency'/f'{ids[1]}.png')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        dls = cls_dls(voc, skip_bad=True, seed=0, **{**TINY, 'bs': 2})
    msgs = [str(x.message) for x in w if 'skipping' in str(x.message)]
    assert len(msgs) == 2 and any(ids[0] in m and 'missing' in m for m in msgs) and any(ids[1] in m and '5x5' in m for m in msgs)
    assert [(s, i) for s, i, _ in dls.bad] == [('train', ids[0]), ('train', ids[1])]
    assert dls.train.dataset.ids == ids[2:]
    assert dls.one_batch()[0].shape == (2, 3, 32, 32)


def test_skip_bad_nothing_left(voc):
    for p in (voc/'saliency').glob('2008_*.png'): p.unlink()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable images left in split 'val'"):
        cls_dls(voc, skip_bad=True, **TINY)


# ---------------------------------------------------------------- augmentation and loaders
def test_saliency_moves_with_image(tmp_path):
    "Images whose content IS the saliency pattern: after rescale/crop/flip they still coincide."
    root = make_tiny_voc(tmp_path/'v', n=4, n_val=2, seed=5)
    rng = np.random.default_rng(0)
    for i in read_split(root, 'train') + read_split(root, 'val'):
        pat = (rng.random((48, 64))*255).astype(np.uint8)
        (root/'JPEGImages'/f'{i}.jpg').unlink()
        Image.fromarray(np.stack([pat]*3, -1)).save(root/'JPEGImages'/f'{i}.png')   # lossless
        Image.fromarray(pat, 'L').save(root/'saliency'/f'{i}.png')
    dls = cls_dls(root, seed=0, crop=40, resize_long=(24, 96), jitter=None, bs=4)
    for _ in range(3):
        for img, sal, _ in (dls.train.one_batch(), dls.valid.one_batch()):
            back = denormalize(img).astype(int)                   # (B,S,S,3)
            s = np.round(sal[:, 0].numpy()*255).astype(int)
            pad = (img == 0).all(1).numpy() & (s == 0)
            inside = ~pad
            assert pad.any() or inside.all()
            assert (np.abs(back - s[..., None]).max(-1)[inside] <= 1).all()


def test_seed_reproducible_across_workers(voc):
    a = cls_dls(voc, seed=3, **TINY)
    b = cls_dls(voc, seed=3, **{**TINY, 'num_workers': 2})
    for _ in range(2):
        xa, xb = a.train.one_batch(), b.train.one_batch()
        assert all(torch.equal(u, v) for u, v in zip(xa, xb))


def test_valid_deterministic_and_full_size(voc):
    dls = cls_dls(voc, seed=0, crop=32, bs=2, valid_resize=False)
    x1, s1, _ = dls.valid.one_batch()
    x2, _, _ = dls.valid.one_batch()
    assert x1.shape == (1, 3, 48, 64) and s1.shape == (1, 1, 48, 64) and torch.equal(x1, x2)


def test_drop_last(voc):
    dls = cls_dls(voc, seed=0, **{**TINY, 'bs': 3})
    assert len(dls.train) == 1 and len(dls.valid) == 1       # 4 train ids -> one batch of 3, val keeps all
    assert len(list(dls.train)) == 1
