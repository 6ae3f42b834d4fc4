"""jaxdiff.fid's statistics and Frechet distance: closed forms, and pytorch-fid's
``calculate_frechet_distance`` as the oracle (skipped without torch/torchvision/pytorch_fid;
the features' twin is in test_inception.py)."""

import numpy as np
import pytest
import scipy.linalg

from jaxdiff import fid


def pytorch_fid_score():
    from experiments.bench import pytorch_fid_twin

    try:
        return pytorch_fid_twin.import_pytorch_fid()[1]
    except ImportError as e:
        pytest.skip(str(e))


def random_stats(rng, dim, num, *, scale=1.0):
    """(mu, sigma) of ``num`` random features: singular (rank num - 1) when num <= dim."""
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    features = rng.normal(size=(num, dim)) @ mix * scale + rng.normal(size=dim)
    return fid.gaussian_fit(features)


def test_diagonal_closed_form():
    # Commuting covariances: tr((S1 S2)^1/2) = sum sqrt(a_i b_i), so
    # d^2 = |mu1 - mu2|^2 + sum (sqrt a_i - sqrt b_i)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected,
                                                                                   rel=1e-12)


def test_self_and_shifted_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    assert abs(fid.fid_from_features(x, x)) < 1e-8 * np.trace(np.cov(x, rowvar=False))
    shift = rng.normal(size=16)
    # Same covariance: only the means differ.
    assert fid.fid_from_features(x, x + shift) == pytest.approx(shift @ shift, rel=1e-6)


@pytest.mark.parametrize("dim,num", [(32, 200), (64, 40), (64, 8)])
def test_equals_pytorch_fid(dim, num):
    score = pytorch_fid_score()
    rng = np.random.default_rng(dim + num)
    stats1, stats2 = random_stats(rng, dim, num), random_stats(rng, dim, num, scale=1.3)
    for a, b in ((stats1, stats2), (stats1, stats1)):
        expected = score.calculate_frechet_distance(a[0], a[1], b[0], b[1])
        got = fid.frechet_distance(*a, *b)
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9 * np.trace(a[1]))


def test_shifted_sets_equal_pytorch_fid():
    score = pytorch_fid_score()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 24))
    for y in (x + 0.5, 1.5 * x, rng.normal(size=(80, 24))):
        expected = score.calculate_frechet_distance(*fid.gaussian_fit(x), *fid.gaussian_fit(y))
        assert fid.fid_from_features(x, y) == pytest.approx(expected, rel=1e-6)


def test_singular_product_offset_equals_pytorch_fid(monkeypatch, capsys):
    # sqrtm of the exact product made non-finite (as a singular product can come out): both
    # add eps * I to the covariances and retry.
    score = pytorch_fid_score()
    rng = np.random.default_rng(4)
    (mu1, s1), (mu2, s2) = random_stats(rng, 16, 6), random_stats(rng, 16, 6)
    real_sqrtm = scipy.linalg.sqrtm

    def sqrtm(a, *args, **kwargs):
        out = real_sqrtm(a)
        if np.allclose(a, s1 @ s2, rtol=0, atol=0):
            out = np.full_like(out, np.nan)
        return (out, 0.0) if kwargs.get("disp") is False else out

    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm)
    expected = score.calculate_frechet_distance(mu1, s1, mu2, s2)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert "adding 1e-06 to diagonal" in capsys.readouterr().out
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-6)


def test_imaginary_component_raises_like_pytorch_fid():
    # Not covariances (one negative variance): the root is imaginary on the diagonal.
    mu, s1, s2 = np.zeros(2), np.diag([1.0, 1.0]), np.diag([-1.0, 1.0])
    with pytest.raises(ValueError, match="Imaginary component"):
        fid.frechet_distance(mu, s1, mu, s2)


def test_stats_round_trip_in_pytorch_fid_format(tmp_path):
    rng = np.random.default_rng(5)
    mu, sigma = random_stats(rng, 8, 20)
    path = fid.save_stats(tmp_path / "ref.npz", mu, sigma)
    with np.load(path) as stored:  # pytorch-fid reads f['mu'][:], f['sigma'][:]
        assert sorted(stored.files) == ["mu", "sigma"]
        np.testing.assert_array_equal(stored["mu"], mu)
    loaded_mu, loaded_sigma = fid.load_stats(path)
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    # A file pytorch-fid writes (np.savez, uncompressed) reads back too.
    np.savez(tmp_path / "theirs.npz", mu=mu, sigma=sigma)
    np.testing.assert_array_equal(fid.load_stats(tmp_path / "theirs.npz")[1], sigma)


def test_stats_read_by_pytorch_fid(tmp_path):
    score = pytorch_fid_score()
    rng = np.random.default_rng(6)
    mu, sigma = random_stats(rng, 8, 20)
    path = fid.save_stats(tmp_path / "ref.npz", mu, sigma)
    their_mu, their_sigma = score.compute_statistics_of_path(str(path), None, 50, 2048, "cpu")
    np.testing.assert_array_equal(their_mu, mu)
    np.testing.assert_array_equal(their_sigma, sigma)


def test_bad_stats_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reference statistics"):
        fid.load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="not pytorch-fid's 'mu' and 'sigma'"):
        fid.load_stats(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"\.npz"):
        fid.save_stats(tmp_path / "stats.npy", np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="one D"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
