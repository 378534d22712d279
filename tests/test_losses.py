"""Normalisation and losses against hand-computed values."""
import math

import torch

import torch_functions as tf


def softplus(x):
    return math.log1p(math.exp(x))


def test_normalization_layer():
    layer = tf.NormalizationLayer(4.0)
    out = layer(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert torch.allclose(out, torch.tensor([[2.4, 3.2], [0.0, 4.0]]))
    assert layer.norm_s.requires_grad
    assert not tf.NormalizationLayer(4.0, learn_scale=False).norm_s.requires_grad


def test_batch_based_classification_hand_computed():
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # logits [[2, 2], [0, 1]]: row 0 -> log 2, row 1 -> log(1 + e^-1)
    expected = (math.log(2) + math.log1p(math.exp(-1))) / 2
    assert abs(tf.batch_based_classification_loss(q, t).item() - expected) < 1e-6


def test_soft_triplet_hand_computed():
    # 1-D features q0=0, q1=1, t0=0.5, t1=3; labels (0, 1, 0, 1); B=2 so each anchor
    # has its one positive and both negatives (fewer than 3 exist).
    q, t = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.5], [3.0]])
    terms = [softplus(0.25 - 1), softplus(0.25 - 9),    # anchor q0: pos t0, negs q1, t1
             softplus(4 - 1), softplus(4 - 0.25),       # anchor q1: pos t1, negs q0, t0
             softplus(0.25 - 0.25), softplus(0.25 - 6.25),  # anchor t0: pos q0
             softplus(4 - 9), softplus(4 - 6.25)]       # anchor t1: pos q1
    assert abs(tf.soft_triplet_loss(q, t).item() - sum(terms) / 8) < 1e-5


def test_soft_triplet_never_draws_a_positive_as_negative():
    # pairs coincide (d(a, p) = 0), all other pairs at squared distance 2
    torch.manual_seed(0)
    q = torch.eye(8)
    for _ in range(5):
        assert abs(tf.soft_triplet_loss(q, q.clone()).item() - softplus(-2)) < 1e-6


def test_soft_triplet_gradients_finite():
    q = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    tf.soft_triplet_loss(q, t).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(t.grad).all()
    tf.soft_triplet_loss(q, q).backward()  # zero distances must not give NaN gradients
    assert torch.isfinite(q.grad).all()
