"Read-outs of the raw logits (EPS's, argmax, CAM threshold, saliency as background) and the CRF presets, against hand-computed cases."
import numpy as np, pytest
from smvwe.maps import (readout_labels, readout_scores, parse_readout, crf_params, parse_crf, crf_refine, CRF_PRESETS,
                        CRF_DEFAULT, normalise_maps, label_scores)

# logits log(w) with weights summing to 10 per pixel: softmax = w / 10 (channels: class 1, class 2, background)
W = np.array([[(8,1,1), (5,1,4), (1,1,8)],
              [(4,3,3), (1,6,3), (1,2,7)],
              [(2,1,7), (1,8,1), (3,1,6)]], np.float64).transpose(2, 0, 1)
Z = np.log(W)

def test_eps_readout_2class_3x3():
    s, c = readout_scores(Z, [1, 1], 'eps')
    assert c.tolist() == [0, 1, 2]
    np.testing.assert_allclose(s[0], 0.2)
    np.testing.assert_allclose(s[1], W[0] / 10 / 0.8, atol=1e-4)   # P_1 / max P_1
    np.testing.assert_allclose(s[2], W[1] / 10 / 0.8, atol=1e-4)
    assert readout_labels(Z, [1, 1], 'eps').tolist() == [[1, 1, 0], [1, 2, 2], [1, 2, 1]]
    assert readout_labels(Z, [1, 1], 'eps', bg_thr=0.3).tolist() == [[1, 1, 0], [1, 2, 0], [0, 2, 1]]

def test_eps_softmax_keeps_absent_logits():
    # class 2 absent: P_1 = w_1 / 10 still (its logit stays in the softmax), only class 1 competes
    assert readout_labels(Z, [1, 0], 'eps').tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 1]]
    z = Z.copy(); z[1] += 5   # a larger absent-class logit lowers P_1 where it matters, changing the normalised scores
    assert not np.allclose(readout_scores(z, [1, 0], 'eps')[0][1], readout_scores(Z, [1, 0], 'eps')[0][1])

def test_argmax_is_learned_background():
    assert readout_labels(Z, [1, 1], 'argmax').tolist() == [[1, 1, 0], [1, 2, 0], [0, 2, 0]]
    assert (readout_labels(Z, [1, 1], 'argmax') == readout_labels(Z, [1, 1], 'argmax', bg_thr=0.9)).all()  # no threshold

def test_threshold_readout():
    s, _ = readout_scores(Z, [1, 1], 'threshold')
    np.testing.assert_allclose(s[1], np.maximum(Z[0], 0) / np.log(8), atol=1e-4)   # ReLU / max, max = log 8
    assert readout_labels(Z, [1, 1], 'threshold', bg_thr=0.5).tolist() == [[1, 1, 0], [1, 2, 0], [0, 2, 1]]
    assert readout_labels(Z, [0, 0], 'threshold').tolist() == [[0] * 3] * 3

def test_saliency_as_background():
    S = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], np.float32)
    for r in ('eps+sal', 'argmax+sal', 'threshold+sal'):
        assert readout_labels(Z, [1, 1], r, sal=S).tolist() == [[1, 1, 0], [1, 2, 0], [0, 2, 1]], r
    s, _ = readout_scores(Z, [1, 1], 'eps+sal', sal=np.full((3, 3), 0.25, np.float32))
    np.testing.assert_allclose(s[0], 0.75)   # background score 1 - S
    with pytest.raises(ValueError, match='needs a saliency map'): readout_labels(Z, [1, 1], 'eps+sal')
    with pytest.raises(ValueError, match='unknown read-out'): parse_readout('cam')

def test_readouts_equal_normalised_maps_route():
    # the named read-out on logits = the mode on maps normalised as make_pseudo's cams/ store them
    for mode, norm in (('eps', 'eps'), ('argmax', 'softmax'), ('threshold', 'cam')):
        s1, _ = readout_scores(Z, [1, 1], mode, 0.25)
        s2, _ = label_scores(normalise_maps(Z, norm), [1, 1], mode, 0.25)
        np.testing.assert_allclose(s1, s2)

def test_crf_presets_pinned():
    assert CRF_PRESETS['deeplab'] == dict(n_iter=10, sxy_gauss=1, compat_gauss=3, sxy_bilateral=67, srgb=3, compat_bilateral=4)
    assert CRF_PRESETS['psa'] == dict(n_iter=10, sxy_gauss=3, compat_gauss=3, sxy_bilateral=80, srgb=13, compat_bilateral=10)
    assert CRF_DEFAULT in CRF_PRESETS
    assert crf_params('deeplab', bi_w=4, bi_xy_std=67, bi_rgb_std=3, pos_w=3, pos_xy_std=1) == crf_params('deeplab')
    assert parse_crf('psa,ref_size=none')['ref_size'] is None
    with pytest.raises(ValueError, match='unknown CRF preset'): parse_crf('dense')

def test_crf_preset_changes_result_and_overrides_apply():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    p = rng.random((3, 20, 24)).astype(np.float32); p /= p.sum(0)
    a = crf_refine(img, p, 'deeplab', return_probs=True)
    b = crf_refine(img, p, 'psa', return_probs=True)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(crf_refine(img, p, 'psa', **CRF_PRESETS['deeplab'], return_probs=True), a)  # every value overridden


def test_one_pass_scores_every_readout_and_curve_cli(tmp_path, capsys):
    "make_pseudo once; `smvwe readout` scores every read-out from its logits; argmax without CRF = scoring its pseudo/ PNGs."
    import json
    from test_pseudo import tiny_voc, ColourModel
    from smvwe.pseudo import make_pseudo
    from smvwe.metrics import evaluate_folder
    from smvwe.readout import score_readouts
    from smvwe.cli import main
    voc = tiny_voc(tmp_path/'voc')
    run = make_pseudo(ColourModel(), voc, 'train', tmp_path/'run', crf=False, n_workers=0, progress=False)
    ev = evaluate_folder(run/'pseudo', voc, 'train')
    df = score_readouts(run, voc, 'train', ['argmax', 'eps', 'threshold'], n_workers=0)
    assert abs(df.miou[0] - ev['miou']) < 1e-3   # float16 logits vs float32 maps
    assert ((df.miou > 0.8) & (df.fg_recall > 0.7)).all()
    assert main(['readout', str(run), str(voc), '--crf', 'none/deeplab', '--curve', '--out', str(tmp_path/'o'),
                 '--n-workers', '0', '--no-progress']) == 0
    rows = json.loads((tmp_path/'o'/'readouts.json').read_text())['rows']
    assert [(r['readout'], r['crf']) for r in rows] == [(r, c) for c in ('none', 'deeplab') for r in ('eps', 'argmax', 'threshold')]
    assert (tmp_path/'o'/'curve.png').exists() and 'against the background threshold' in capsys.readouterr().out
    assert main(['readout', str(tmp_path/'nothing'), str(voc), '--no-progress']) == 1
    assert 'smvwe pseudo' in capsys.readouterr().err
