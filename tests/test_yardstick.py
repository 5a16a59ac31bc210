"The yardstick CAM: trains in plain PyTorch, and its output runs through the project's pseudo-label code unchanged."
import math
import torch, torch.nn.functional as F
from smvwe.voc import make_tiny_voc
from smvwe.yardstick import train_yardstick, load_split_tensors
from smvwe.pseudo import make_pseudo
from smvwe.metrics import evaluate_folder


def test_yardstick_learns_and_makes_pseudo_labels(tmp_path):
    root = make_tiny_voc(tmp_path/'voc', n=12, n_val=4, classes=['background', 'disc', 'box', 'ring'], size=48, seed=0)
    x, y = load_split_tensors(root, 'train', 48)
    m = train_yardstick(root, epochs=20, bs=4, lr=0.05, size=48, seed=1)
    with torch.no_grad(): loss = F.multilabel_soft_margin_loss(m(x)['logits'], y).item()
    assert loss < 0.5 * math.log(2)
    make_pseudo(m, root, 'train', tmp_path/'ys', scales=(1.0,), mode='threshold', crf=False, n_workers=0, progress=False)
    r = evaluate_folder(tmp_path/'ys'/'pseudo', root, 'train')
    assert r['n_images'] == 12 and 0 < r['miou'] <= 1
