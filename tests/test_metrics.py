"smvwe.metrics: `smvwe eval` end to end on PNGs written here, bad input, and pseudo labels scored."
import json
from pathlib import Path

import numpy as np
import pytest
from fastcore.script import anno_parser
from PIL import Image

from smvwe.metrics import eval_cli, evaluate_folder, word_label_miou
from smvwe.maps import save_label_png, voc_palette


def run_cli(f, argv):
    a = vars(anno_parser(f).parse_args(argv)); a.pop('pdb', None); a.pop('xtra', None)
    return f(**a)


@pytest.fixture
def ds(tmp_path):
    "Two 4x6 val images: background/boat/car, water (context 1) co-occurs with boat."
    root = tmp_path/'ds'
    for d in ('SegmentationClass', 'Context', 'ImageSets/Segmentation', 'pred'): (root/d).mkdir(parents=True)
    (root/'classes.txt').write_text('background\nboat\ncar\n')
    (root/'contexts.json').write_text(json.dumps({'water': {'id': 1, 'class': 'boat'}}))
    (root/'ImageSets/Segmentation/val.txt').write_text('a\nb\n')
    ga = np.zeros((4, 6), np.uint8); ga[:2, :3] = 1; ca = np.zeros((4, 6), np.uint8); ca[2:] = 1
    gb = np.zeros((4, 6), np.uint8); gb[:, 4:] = 2; gb[0, 0] = 255
    pa = ga.copy(); pa[2, :2] = 1                  # 2 water pixels predicted boat
    pb = gb.copy(); pb[0, 0] = 0; pb[:, 5] = 255   # 4 car pixels uncertain (misses)
    for n, g, p in (('a', ga, pa), ('b', gb, pb)):
        save_label_png(root/'SegmentationClass'/f'{n}.png', g); save_label_png(root/'pred'/f'{n}.png', p)
    save_label_png(root/'Context'/'a.png', ca)
    return root


def test_eval_cli_end_to_end(ds, capsys):
    out = ds/'res'/'metrics.json'
    run_cli(eval_cli, [str(ds/'pred'), str(ds), '--split', 'val', '--out', str(out)])
    m = json.loads(out.read_text())
    assert m['n_images'] == 2 and m['classes'] == ['background', 'boat', 'car']
    # background TP 31 / (gt 33 + pred 31 - 31); boat 6/(6+8-6); car 4/(8+4-4) (the 4 uncertain pixels are misses)
    assert np.allclose([m['iou'][c] for c in m['classes']], [31/33, 6/8, 4/8])
    assert np.isclose(m['miou'], (31/33 + 6/8 + 4/8) / 3)
    w = m['confusion']['water']
    assert (w['class'], w['context_as_class'], w['tp_class']) == ('boat', 2, 6) and np.isclose(w['ratio'], 1/3)
    assert np.isclose(w['iou_class'], 6/8)
    b = m['boundary']
    assert b['tol'] == 2 and 0 < b['precision'] <= 1 and 0 < b['recall'] <= 1 and 0 < b['f1'] <= 1
    assert np.array(m['confusion_matrix']).sum() == 24 + 23
    assert m['command'].startswith('smvwe eval') and 'mIoU' in capsys.readouterr().out
    assert not list(out.parent.glob('.*.tmp'))


def test_eval_cli_prints_the_summary(tmp_path, monkeypatch, capsys):
    "The printed summary of hand-made metrics: % with one decimal, 'n/a' for a value not measured (None: NaN or an infinite ratio)"
    import smvwe.metrics as M
    r = {'n_images': 3, 'miou': .72981, 'boundary': {'precision': .5, 'recall': None, 'f1': .0625},
         'confusion': {'water': {'class': 'boat', 'ratio': 1/3, 'iou_class': .75},
                       'rails': {'class': 'train', 'ratio': None, 'iou_class': 0.},
                       'road': {'class': 'car', 'ratio': .5, 'iou_class': None}}}
    monkeypatch.setattr(M, 'evaluate_folder', lambda *a, **kw: dict(r))
    run_cli(eval_cli, [str(tmp_path), str(tmp_path)])
    assert capsys.readouterr().out == ('3 images  mIoU 73.0  boundary P/R/F1 50.0/n/a/6.2\n'
                                       '  boat / water: confusion ratio 0.333  IoU 75.0\n'
                                       '  train / rails: confusion ratio n/a  IoU 0.0\n'
                                       '  car / road: confusion ratio 0.500  IoU n/a\n')


def test_perfect_prediction_scores_one(ds):
    for n in ('a', 'b'): (ds/'pred'/f'{n}.png').write_bytes((ds/'SegmentationClass'/f'{n}.png').read_bytes())
    m = evaluate_folder(ds/'pred', ds)
    assert m['miou'] == 1.0 and m['boundary']['f1'] == 1.0 and m['confusion']['water']['ratio'] == 0.0


def test_rgb_predictions_read_through_the_palette(ds):
    for n in ('a', 'b'):
        lab = np.array(Image.open(ds/'pred'/f'{n}.png'))
        Image.fromarray(voc_palette()[lab]).save(ds/'pred'/f'{n}.png')
    assert np.isclose(evaluate_folder(ds/'pred', ds)['miou'], (31/33 + 6/8 + 4/8) / 3)


def test_smvwe_eval_command(ds, capsys):
    "Through the `smvwe` dispatcher: exit 0 and the JSON; a missing prediction: exit 1, one line naming it."
    from smvwe.cli import main
    assert main(['eval', str(ds/'pred'), str(ds), '--split', 'val', '--out', str(ds/'m.json')]) == 0
    assert np.isclose(json.loads((ds/'m.json').read_text())['iou']['boat'], 6/8)
    (ds/'pred'/'a.png').unlink()
    assert main(['eval', str(ds/'pred'), str(ds)]) == 1
    err = capsys.readouterr().err
    assert 'smvwe eval: error:' in err and 'a.png' in err


def test_missing_prediction_names_the_file(ds):
    (ds/'pred'/'b.png').unlink()
    with pytest.raises(FileNotFoundError, match=r'1 of 2 predictions missing.*b\.png'):
        run_cli(eval_cli, [str(ds/'pred'), str(ds)])
    with pytest.raises(FileNotFoundError, match='prediction folder'):
        evaluate_folder(ds/'nope', ds)


def test_bad_predictions(ds):
    save_label_png(ds/'pred'/'a.png', np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match=r'a\.png has shape \(5, 6\)'): evaluate_folder(ds/'pred', ds)
    save_label_png(ds/'pred'/'a.png', np.full((4, 6), 7, np.uint8))
    with pytest.raises(ValueError, match=r'prediction .*a\.png has labels \[7\] outside 0\.\.2'): evaluate_folder(ds/'pred', ds)
    (ds/'contexts.json').write_text(json.dumps({'rails': {'id': 2, 'class': 'train'}}))
    with pytest.raises(ValueError, match="class 'train'"): evaluate_folder(ds/'pred', ds)


def test_pseudo_labels_scored(tmp_path):
    "The pseudo-label stage's output folder goes straight into the evaluation."
    from test_pseudo import tiny_voc, ColourModel
    from smvwe.pseudo import make_pseudo
    root = tiny_voc(tmp_path/'voc')
    out = make_pseudo(ColourModel(), root, 'train', tmp_path/'run', crf=True, n_workers=0, progress=False)
    m = evaluate_folder(out/'pseudo', root, 'train')
    assert m['miou'] > 0.9 and m['boundary']['f1'] > 0.8 and m['confusion'] == {}


def test_word_label_miou_perfect_words():
    "Words that refine the classes (two words per class) score mIoU 1 after the majority mapping."
    gt = np.array([[0, 0, 1, 1], [2, 2, 0, 255]])
    Z = np.array([[0, 1, 2, 3], [4, 5, 1, 3]])
    r = word_label_miou([Z], [gt], n_words=8, n_classes=3)
    assert r['miou'] == 1.0 and list(r['mapping'][:6]) == [0, 0, 1, 1, 2, 2] and list(r['mapping'][6:]) == [0, 0]
    with pytest.raises(ValueError, match='word labels'): word_label_miou([Z + 8], [gt], 8, 3)
