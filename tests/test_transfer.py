import numpy as np
import pytest

from ernie_m_jax.evaluation import transfer


def _clusters(rng, n, dim=16, classes=3, spread=0.5):
    centers = np.random.default_rng(0).normal(size=(classes, dim)) * 2
    labels = rng.integers(0, classes, n)
    return centers[labels] + spread * rng.normal(size=(n, dim)), labels


def test_probe_separates_clusters_and_scores_what_it_predicts():
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 300)
    probe = transfer.fit_linear_probe(x, y, 3)
    test_x, test_y = _clusters(rng, 200)
    scores = transfer.transfer_accuracy(probe, test_x, test_y)
    assert scores["accuracy"] > 0.95 and scores["balanced_accuracy"] > 0.95
    assert scores["examples"] == 200
    assert scores["majority"] == pytest.approx(np.bincount(test_y).max() / 200)
    # The reported accuracy is the predictions' agreement, computed independently here.
    predicted = np.argmax((test_x - probe.mean) / probe.scale @ probe.weights + probe.bias, -1)
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == test_y))


def test_balanced_loss_keeps_a_minority_class():
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 400, spread=1.6)
    keep = (y != 2) | (rng.random(len(y)) < 0.08)  # class 2 is rare in training
    probe = transfer.fit_linear_probe(x[keep], y[keep], 3)
    test_x, test_y = _clusters(rng, 300, spread=1.6)
    recall_rare = np.mean(probe.predict(test_x[test_y == 2]) == 2)
    assert recall_rare > 0.6


def test_language_offset_is_removed_by_centering_and_a_rotation_is_not():
    rng = np.random.default_rng(3)
    english, labels = _clusters(rng, 300)
    other, other_labels = _clusters(rng, 200)
    shifted = other + 6.0  # a language offset: the same space, moved
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    rotated = other @ rotation  # an unaligned space
    tests = {"shifted": (shifted, other_labels), "rotated": (rotated, other_labels)}
    raw = transfer.zero_shot(english, labels, tests, 3)
    centered = transfer.zero_shot(english, labels, tests, 3, centered=True)
    assert centered["shifted"]["balanced_accuracy"] > 0.9
    assert raw["shifted"]["balanced_accuracy"] < centered["shifted"]["balanced_accuracy"]
    assert centered["rotated"]["balanced_accuracy"] < 0.75


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels must lie in"):
        transfer.fit_linear_probe(np.zeros((3, 2)), np.array([0, 1, 3]), 3)
    with pytest.raises(ValueError, match="need \\[n, dim\\] features"):
        transfer.fit_linear_probe(np.zeros((3, 2)), np.array([0, 1]), 3)


def test_columns_constant_in_training_leave_the_probe_as_it_was():
    """The fit skips training-constant columns (a bag of subwords is mostly unused ids); the
    probe must be the one a fit over every column gives: their weights stay zero, so even a
    test row that uses such a column is scored as before."""
    rng = np.random.default_rng(4)
    x, y = _clusters(rng, 200, dim=8)
    padded = np.concatenate([x[:, :3], np.zeros((200, 5)), x[:, 3:], np.full((200, 2), 7.0)],
                            axis=1)
    plain = transfer.fit_linear_probe(x, y, 3)
    probe = transfer.fit_linear_probe(padded, y, 3)
    constant = [3, 4, 5, 6, 7, 13, 14]
    assert np.all(probe.weights[constant] == 0)
    np.testing.assert_allclose(np.delete(probe.weights, constant, axis=0), plain.weights,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probe.bias, plain.bias, rtol=1e-5, atol=1e-6)
    test_x, _ = _clusters(rng, 50, dim=8)
    test_padded = np.concatenate([test_x[:, :3], rng.normal(size=(50, 5)), test_x[:, 3:],
                                  np.full((50, 2), -1.0)], axis=1)
    np.testing.assert_allclose(probe.logits(test_padded), plain.logits(test_x), rtol=1e-4,
                               atol=1e-4)
    # A column that varies is fitted (positive control): it gets weight.
    assert np.abs(probe.weights[np.delete(np.arange(15), constant)]).max() > 0.1
