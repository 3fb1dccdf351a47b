"""Zero-shot cross-lingual transfer through a linear probe.

XNLI asks whether a classifier trained on English works on other languages; asked of frozen
sentence vectors, that is: fit a softmax regression on English vectors and score it on other
languages' vectors of held-out sentences. Without a cross-lingual encoder the other languages
fall to the majority class or below, so the gap to English measures alignment.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    weights: np.ndarray  # [dim, classes], on standardised features
    bias: np.ndarray  # [classes]
    mean: np.ndarray  # [dim], of the training features
    scale: np.ndarray  # [dim]

    def logits(self, features: np.ndarray) -> np.ndarray:
        standardised = (np.asarray(features, np.float32) - self.mean) / self.scale
        return standardised @ self.weights + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(features), axis=-1)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int,
                     l2: float = 1e-3, steps: int = 300, learning_rate: float = 0.05
                     ) -> LinearProbe:
    """Softmax regression with class-balanced cross-entropy and an L2 penalty, fitted full-batch
    with Adam: a convex problem, so the result depends on the data and not on a seed.
    Balancing keeps the probe from answering the majority class everywhere."""
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    if features.ndim != 2 or len(features) != len(labels) or not len(labels):
        raise ValueError(f"need [n, dim] features and n labels, got {features.shape} and "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}.."
                         f"{labels.max()}")
    mean = features.mean(0)
    std = features.std(0)
    scale = std + 1e-6
    # A column constant over the training rows has zero gradient, and the L2 term keeps its
    # weights at their zero start: leaving it out of the fit gives the same probe, and a bag of
    # subwords (most of the vocabulary unused) fits several times faster.
    varying = np.flatnonzero(std > 0)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    class_weight = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    weights, bias = _fit_softmax_regression(
        jnp.asarray((features[:, varying] - mean[varying]) / scale[varying]),
        jnp.asarray(labels), jnp.asarray(class_weight, jnp.float32), l2, learning_rate,
        steps=steps)
    full = np.zeros((features.shape[1], num_classes), np.float32)
    full[varying] = np.asarray(weights)
    return LinearProbe(full, np.asarray(bias), mean, scale)


@functools.partial(jax.jit, static_argnames="steps")
def _fit_softmax_regression(x: jax.Array, y: jax.Array, class_weight: jax.Array, l2: float,
                            learning_rate: float, *, steps: int) -> Tuple[jax.Array, jax.Array]:
    """Full-batch Adam on class-weighted cross-entropy + L2, from zero weights; compiled
    once per shape, not once per probe."""
    optimizer = optax.adam(learning_rate)

    def loss_fn(params):
        logits = x @ params["w"] + params["b"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.mean(nll * class_weight[y]) + l2 * jnp.sum(params["w"] ** 2)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    num_classes = class_weight.shape[0]
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params["w"], params["b"]


def transfer_accuracy(probe: LinearProbe, features: np.ndarray, labels: np.ndarray
                      ) -> Dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and the majority
    class's share: what answering one class everywhere would score."""
    labels = np.asarray(labels)
    predicted = probe.predict(features)
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)]
    return {"accuracy": float(np.mean(predicted == labels)),
            "balanced_accuracy": float(np.mean(recalls)),
            "majority": float(np.bincount(labels).max() / len(labels)),
            "examples": int(len(labels))}


def center(features: np.ndarray) -> np.ndarray:
    """Subtract a language's own mean vector: the same language offset that centred
    retrieval removes."""
    features = np.asarray(features, np.float32)
    return features - features.mean(0)


def zero_shot(train_features: np.ndarray, train_labels: np.ndarray,
              test_sets: Dict[str, Sequence[np.ndarray]], num_classes: int,
              centered: bool = False) -> Dict[str, Dict[str, float]]:
    """Fit on `train_features` (the source language) and score each of `test_sets`
    ({language: (features, labels)}); `centered` removes each language's own mean first."""
    if centered:
        train_features = center(train_features)
    probe = fit_linear_probe(train_features, train_labels, num_classes)
    return {lang: transfer_accuracy(probe, center(f) if centered else f, labels)
            for lang, (f, labels) in test_sets.items()}
