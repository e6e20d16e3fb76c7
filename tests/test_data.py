"""Data sets: the digits split and the nested rings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits
from sklearn.model_selection import train_test_split

from ode_momentum.data import DatasetSplit, load_digits, make_rings

N_DIGITS, N_PIXELS, N_CLASSES = 1797, 64, 10
# float32 standardisation of values in [0, 16]: a few ulps of the float64 result
STANDARDISE_ATOL = 1e-5


@pytest.fixture(scope="module")
def digits() -> DatasetSplit:
    return load_digits()


# --- digits ------------------------------------------------------------------------------------------------


def test_digits_shapes_and_dtypes(digits):
    n_test = 360  # ceil(0.2 * 1797), sklearn's rounding
    assert digits.X_train.shape == (N_DIGITS - n_test, N_PIXELS)
    assert digits.X_test.shape == (n_test, N_PIXELS)
    assert digits.y_train.shape == (N_DIGITS - n_test,)
    assert digits.y_test.shape == (n_test,)
    assert digits.X_train.dtype == digits.X_test.dtype == torch.float32
    assert digits.y_train.dtype == digits.y_test.dtype == torch.int64
    assert (digits.n_features, digits.n_classes) == (N_PIXELS, N_CLASSES)
    assert set(digits.y_train.tolist()) == set(digits.y_test.tolist()) == set(range(N_CLASSES))


def test_digits_split_is_frozen(digits):
    with pytest.raises(AttributeError):
        digits.n_classes = 3


@pytest.mark.parametrize("test_size", [0.2, 0.5])
def test_digits_split_is_stratified(test_size):
    data = load_digits(test_size=test_size, seed=3)
    all_counts = np.bincount(sklearn_load_digits().target, minlength=N_CLASSES)
    test_counts = np.bincount(data.y_test.numpy(), minlength=N_CLASSES)
    # stratification keeps every class within one sample of its share
    np.testing.assert_allclose(test_counts, test_size * all_counts, atol=1.0)
    assert len(data.y_train) + len(data.y_test) == N_DIGITS


def test_digits_standardised_with_train_statistics_only(digits):
    raw_X, raw_y = sklearn_load_digits(return_X_y=True)
    X_train, X_test, _, _ = train_test_split(raw_X, raw_y, test_size=0.2, random_state=0, stratify=raw_y)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(digits.X_train.numpy(), (X_train - mean) / std, atol=STANDARDISE_ATOL)
    np.testing.assert_allclose(digits.X_test.numpy(), (X_test - mean) / std, atol=STANDARDISE_ATOL)
    # train columns are centred and (where not constant) of unit variance; the test split's are not exactly
    varying = X_train.std(axis=0) > 0
    np.testing.assert_allclose(digits.X_train.mean(0).numpy(), 0.0, atol=STANDARDISE_ATOL)
    np.testing.assert_allclose(digits.X_train.std(0, unbiased=False).numpy()[varying], 1.0, atol=1e-4)
    assert float(digits.X_test.mean(0).abs().max()) > 1e-3


def test_digits_constant_pixels_are_centred_not_divided(digits):
    constant = digits.X_train.std(0) == 0
    assert constant.any()  # the corner pixels of the digits are always blank
    assert torch.isfinite(digits.X_test).all()


def test_digits_same_seed_same_split_other_seed_other_split(digits):
    again = load_digits(seed=0)
    assert torch.equal(again.X_train, digits.X_train) and torch.equal(again.y_test, digits.y_test)
    other = load_digits(seed=1)
    assert not torch.equal(other.X_test, digits.X_test)


def test_digits_leaves_global_random_state_alone():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    load_digits(seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize("test_size", [0.0, 1.0, -0.1, 1.5])
def test_digits_rejects_test_size_outside_unit_interval(test_size):
    with pytest.raises(ValueError, match=r"`test_size` must lie in \(0, 1\)"):
        load_digits(test_size=test_size)


def test_digits_rejects_test_size_too_small_to_stratify():
    with pytest.raises(ValueError, match="`test_size` = 0.001 cannot be stratified over 10 classes"):
        load_digits(test_size=0.001)


def test_digits_rejects_non_numeric_test_size():
    with pytest.raises(TypeError, match="`test_size` must be a real number; got '0.2' \\(str\\)"):
        load_digits(test_size="0.2")


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [(-1, ValueError, "`seed` must be >= 0; got -1"), (1.5, TypeError, "`seed` must be an int"),
     (True, TypeError, "`seed` must be an int")],
)
def test_digits_rejects_bad_seed(seed, error, match):
    with pytest.raises(error, match=match):
        load_digits(seed=seed)


# --- rings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_rings", [2, 3, 4])
def test_rings_shapes_dtypes_and_balance(n_rings):
    X, y = make_rings(101, n_rings=n_rings, seed=0)
    assert X.shape == (101, 2) and X.dtype == torch.float32
    assert y.shape == (101,) and y.dtype == torch.int64
    ring = torch.linalg.vector_norm(X, dim=1).round().long() - 1
    counts = torch.bincount(ring, minlength=n_rings)
    assert counts.max() - counts.min() <= 1  # split as evenly as possible


@pytest.mark.parametrize("n_rings", [2, 3, 4])
def test_rings_labels_alternate_with_radius(n_rings):
    X, y = make_rings(400, n_rings=n_rings, noise=0.0, seed=1)
    radius = torch.linalg.vector_norm(X, dim=1)
    # without noise every point lies on a circle of radius 1, 2, ... (float32 rounding only)
    torch.testing.assert_close(radius, radius.round(), rtol=0, atol=1e-5)
    k = radius.round().long() - 1
    assert set(k.tolist()) == set(range(n_rings))
    assert torch.equal(y, k % 2)


def test_rings_noise_is_radial_and_scaled():
    X, y = make_rings(4000, n_rings=2, noise=0.1, seed=2)
    radius = torch.linalg.vector_norm(X, dim=1).double()
    deviation = radius - (y + 1).double()  # ring k = y here, radius k + 1
    assert abs(float(deviation.mean())) < 0.01  # standard error 0.1 / sqrt(4000) = 0.0016
    assert float(deviation.std()) == pytest.approx(0.1, rel=0.05)


def test_rings_determinism_by_seed():
    X0, y0 = make_rings(50, seed=7)
    X1, y1 = make_rings(50, seed=7)
    X2, _ = make_rings(50, seed=8)
    assert torch.equal(X0, X1) and torch.equal(y0, y1)
    assert not torch.equal(X0, X2)


def test_rings_leave_global_random_state_alone():
    state = torch.get_rng_state()
    make_rings(100, n_rings=3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "`n_samples` must be >= 1; got 0"),
        ({"n_samples": 10.0}, TypeError, "`n_samples` must be a positive int"),
        ({"n_rings": 1}, ValueError, "`n_rings` must be >= 2; got 1"),
        ({"n_rings": 0}, ValueError, "`n_rings` must be >= 2; got 0"),
        ({"n_rings": 2.0}, TypeError, "`n_rings` must be an int >= 2; got 2.0 \\(float\\)"),
        ({"noise": -0.1}, ValueError, "`noise` must be >= 0"),
        ({"noise": float("nan")}, ValueError, "`noise` must be finite"),
        ({"seed": -3}, ValueError, "`seed` must be >= 0; got -3"),
    ],
)
def test_rings_reject_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_rings(**kwargs)
