"""The from-scratch, vectorised corr2d and pool2d held equal to torch's own ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit.errors import ShapeError
from cnnkit.ops import corr2d, pool2d

PROPERTY = settings(max_examples=200, deadline=None)
TORCH_REFUSES = (RuntimeError, ValueError)


# Tiny tensors: a torch thread pool only adds contention (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------ corr2d


def test_corr2d_seed_stripes_edge_example():
    # Seed 000: a 6×8 picture, white except a black band in columns 2–5; K = [1, −1] finds its edges.
    x = torch.ones(6, 8)
    x[:, 2:6] = 0
    k = torch.tensor([[1.0, -1.0]])
    y = corr2d(x, k)
    expected = torch.zeros(6, 7)
    expected[:, 1] = 1
    expected[:, 5] = -1
    assert y.shape == (6, 7)
    assert torch.equal(y, expected)
    # Transposed, the vertical kernel sees the edges; the horizontal one sees none.
    assert torch.equal(corr2d(x.t(), k), torch.zeros(8, 5))
    assert torch.equal(corr2d(x.t(), k.t()), expected.t())


def test_corr2d_seed_small_example():
    x = torch.arange(9.0).reshape(3, 3)
    k = torch.arange(4.0).reshape(2, 2)
    assert torch.equal(corr2d(x, k), torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


dims = st.integers(1, 9)


@PROPERTY
@given(
    seed=st.integers(0, 2**16), batch=st.integers(1, 2), c_in=st.integers(1, 3), c_out=st.integers(1, 3),
    h=dims, w=dims, k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), bias=st.booleans(),
)
def test_corr2d_equals_conv2d(seed, batch, c_in, c_out, h, w, k, stride, padding, dilation, bias):
    x = _randn(seed, batch, c_in, h, w)
    weight = _randn(seed + 1, c_out, c_in, *k)
    b = _randn(seed + 2, c_out) if bias else None
    try:
        expected = F.conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
    except TORCH_REFUSES:
        with pytest.raises(ShapeError):
            corr2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
        return
    got = corr2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)


@PROPERTY
@given(seed=st.integers(0, 2**16), h=dims, w=dims, kh=st.integers(1, 4), kw=st.integers(1, 4))
def test_corr2d_single_image_form_equals_conv2d(seed, h, w, kh, kw):
    x, k = _randn(seed, h, w), _randn(seed + 1, kh, kw)
    try:
        expected = F.conv2d(x[None, None], k[None, None])[0, 0]
    except TORCH_REFUSES:
        with pytest.raises(ShapeError):
            corr2d(x, k)
        return
    torch.testing.assert_close(corr2d(x, k), expected)


def test_corr2d_scalar_and_pair_arguments_agree():
    x, weight = _randn(0, 2, 3, 9, 8), _randn(1, 4, 3, 3, 2)
    torch.testing.assert_close(corr2d(x, weight, stride=2, padding=1, dilation=2),
                               corr2d(x, weight, stride=(2, 2), padding=(1, 1), dilation=(2, 2)))
    torch.testing.assert_close(corr2d(x, weight, stride=(1, 2), padding=(2, 0)),
                               F.conv2d(x, weight, stride=(1, 2), padding=(2, 0)))


def test_corr2d_gradients_match_conv2d():
    x = _randn(0, 2, 3, 7, 6).requires_grad_()
    weight = _randn(1, 4, 3, 3, 2).requires_grad_()
    bias = _randn(2, 4).requires_grad_()
    upstream = _randn(3, 2, 4, 7, 4)  # (7 + 2 − 3)/1 + 1 = 7, (6 + 2 − 2)/2 + 1 = 4
    (corr2d(x, weight, bias, stride=(1, 2), padding=1) * upstream).sum().backward()
    ours = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    (F.conv2d(x, weight, bias, stride=(1, 2), padding=1) * upstream).sum().backward()
    for got, expected in zip(ours, (x.grad, weight.grad, bias.grad), strict=True):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, expected)


def test_corr2d_kernel_too_large_is_shape_error():
    with pytest.raises(ShapeError, match="conv W"):
        corr2d(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 2, 3))


# ------------------------------------------------------------------------------------------ pool2d


def test_pool2d_seed_examples():
    x = torch.arange(9.0).reshape(3, 3)
    assert torch.equal(pool2d(x, 2), torch.tensor([[4.0]]))
    assert torch.equal(pool2d(x, 2, stride=1), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(pool2d(x, 2, stride=1, mode="avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(pool2d(x, 3), torch.tensor([[[[10.0]]]]))
    assert torch.equal(pool2d(x, 3, padding=1, stride=2), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))
    assert torch.equal(pool2d(x, (2, 3), padding=(1, 1), stride=(2, 3)),
                       torch.tensor([[[[1.0, 3.0], [9.0, 11.0], [13.0, 15.0]]]]))


def _torch_pool(x, mode, kernel, stride, padding, ceil_mode):
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    return fn(x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)


@PROPERTY
@given(
    seed=st.integers(0, 2**16), mode=st.sampled_from(["max", "avg"]), batch=st.integers(1, 2),
    channels=st.integers(1, 3), h=dims, w=dims, k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), ceil_mode=st.booleans(),
)
def test_pool2d_equals_torch_pooling(seed, mode, batch, channels, h, w, k, stride, padding, ceil_mode):
    x = _randn(seed, batch, channels, h, w)  # negative values too: max padding must never win
    try:
        expected = _torch_pool(x, mode, k, stride, padding, ceil_mode)
    except TORCH_REFUSES:
        with pytest.raises(ShapeError):
            pool2d(x, k, stride, padding, mode, ceil_mode)
        return
    got = pool2d(x, k, stride, padding, mode, ceil_mode)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding", "ceil_mode"),
    [
        ((2, 3, 7, 7), 3, 2, 1, True),
        ((1, 2, 6, 9), (2, 3), (2, 2), (1, 1), True),
        ((1, 1, 5, 5), 2, 2, 0, True),
        ((1, 1, 1, 1), 2, None, 0, True),
        ((3, 4, 10, 3), (3, 1), (3, 1), (1, 0), False),
    ],
)
def test_pool2d_equals_torch_pooling_examples(mode, shape, kernel, stride, padding, ceil_mode):
    x = _randn(7, *shape)
    torch.testing.assert_close(pool2d(x, kernel, stride, padding, mode, ceil_mode),
                               _torch_pool(x, mode, kernel, stride, padding, ceil_mode))


def test_pool2d_keeps_channels_apart():
    x = torch.zeros(1, 2, 2, 2)
    x[0, 1] = 5.0
    assert pool2d(x, 2).flatten().tolist() == [0.0, 5.0]
    assert pool2d(x, 2, mode="avg").flatten().tolist() == [0.0, 5.0]


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool2d_gradients_match_torch(mode):
    x = _randn(0, 2, 2, 5, 6).requires_grad_()
    upstream = _randn(1, 2, 2, 3, 4)  # H: ⌈5/2⌉ + 1 − 1 = 3 (ceil correction); W: ⌈5/2⌉ + 1 = 4
    (pool2d(x, (2, 3), (2, 2), (1, 1), mode, True) * upstream).sum().backward()
    ours, x.grad = x.grad.clone(), None
    (_torch_pool(x, mode, (2, 3), (2, 2), (1, 1), True) * upstream).sum().backward()
    torch.testing.assert_close(ours, x.grad)


def test_pool2d_rejects_unknown_mode_and_bad_padding():
    with pytest.raises(ValueError, match="mode"):
        pool2d(torch.zeros(1, 1, 4, 4), 2, mode="min")
    with pytest.raises(ShapeError, match="half the kernel"):
        pool2d(torch.zeros(1, 1, 4, 4), 2, padding=2)
