"The CUDA word-distance kernel (Triton), run on the CPU by Triton's interpreter: values and gradients against Eq. 1."
import os, subprocess, sys, textwrap

import pytest
import torch

pytest.importorskip('triton')

CHECK = textwrap.dedent('''
    import torch
    from smvwe.distance import word_distance, word_distance_reference, triton_status
    assert triton_status('cpu') == 'ok', triton_status('cpu')

    def grads(f, x, c, g):
        x, c = x.clone().requires_grad_(), c.clone().requires_grad_()
        d = f(x, c); d.backward(g)
        return d.detach(), x.grad, c.grad

    torch.manual_seed(0)
    # tails everywhere: pixels not a multiple of 64, words over one 64-word tile, channels not a multiple of 8
    for B, K, H, W, N in [(2, 5, 3, 3, 7), (1, 13, 9, 8, 70), (3, 1, 1, 1, 1)]:
        x, c, g = torch.randn(B, K, H, W), torch.randn(N, K), torch.randn(B, N, H, W)
        c[0, :] = x[0, :, 0, 0]                                   # exact ties: sign(0) = 0
        got = grads(lambda a, b: word_distance(a, b, impl='triton'), x, c, g)
        ref = grads(word_distance_reference, x, c, g)
        for name, a, b in zip(('D', 'dfeats', 'dcodebook'), got, ref):
            assert a.shape == b.shape and a.dtype == torch.float32, (name, a.shape, a.dtype)
            assert (a - b).abs().max() <= 1e-4 * max(1., float(b.abs().max())), (name, (B, K, H, W, N), float((a - b).abs().max()))
    # float64 gradients by finite differences
    x = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: word_distance(a, b, impl='triton'), (x, c), eps=1e-6, atol=1e-5)
    # bfloat16 features: computed in float32, gradient returned in the input's dtype
    xb = torch.randn(1, 4, 3, 3).bfloat16().requires_grad_(); cb = torch.randn(5, 4).bfloat16()
    d = word_distance(xb, cb, impl='triton'); d.sum().backward()
    assert d.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    assert (d - word_distance_reference(xb.float(), cb.float())).abs().max() <= 1e-4
    print('triton ok')
''')


def test_triton_kernel_matches_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONWARNINGS='ignore')
    r = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and 'triton ok' in r.stdout, r.stderr[-3000:]


def test_triton_impl_without_cuda_or_interpreter_says_why():
    if torch.cuda.is_available(): pytest.skip('a GPU is present')
    code = ('from smvwe.distance import word_distance; import torch\n'
            'try: word_distance(torch.randn(1, 2, 2, 2), torch.randn(3, 2), impl="triton")\n'
            'except ValueError as e: print(e)')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, check=True).stdout
    assert 'needs a CUDA device' in out and 'impl="torch"' in out


def test_interpreter_check_does_not_depend_on_what_ran_before():
    "triton imported before TRITON_INTERPRET is set (fastai does that): the interpreter still runs the kernels."
    code = textwrap.dedent('''
        import os, triton, torch
        from smvwe.distance import triton_status, word_distance, word_distance_reference
        assert triton_status('cpu').startswith('needs a CUDA device'), triton_status('cpu')
        os.environ['TRITON_INTERPRET'] = '1'
        assert triton_status('cpu') == 'ok', triton_status('cpu')
        x, c = torch.randn(1, 3, 2, 2), torch.randn(4, 3)
        assert torch.allclose(word_distance(x, c, impl='triton'), word_distance_reference(x, c), atol=1e-5)
        del os.environ['TRITON_INTERPRET']
        assert triton_status('cpu').startswith('needs a CUDA device'), triton_status('cpu')
        print('order ok')
    ''')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and 'order ok' in r.stdout, r.stderr[-3000:]
