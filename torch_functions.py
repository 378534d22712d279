"""Feature normalisation and the two metric-learning losses of TIRG, in plain torch ops."""
import torch
import torch.nn.functional as F
from torch import nn

NEGATIVES_PER_ANCHOR = 3  # TIRG's soft triplet loss samples up to 3 negatives per anchor


class NormalizationLayer(nn.Module):
    """x -> s * x / ||x|| with a learnable scale s (initially 4.0)."""

    def __init__(self, normalize_scale=4.0, learn_scale=True):
        super().__init__()
        self.norm_s = nn.Parameter(torch.tensor(float(normalize_scale)),
                                   requires_grad=learn_scale)

    def forward(self, x):
        """x: (B, D) -> (B, D)."""
        return self.norm_s * F.normalize(x, dim=1)


def batch_based_classification_loss(query, target):
    """Cross-entropy over the batch: row i of query @ target^T should pick target i.
    query, target: (B, D) normalised features -> scalar."""
    logits = query @ target.t()
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def soft_triplet_loss(query, target):
    """TIRG's soft triplet loss. Features cat(query, target) carry labels (0..B-1, 0..B-1);
    every anchor has one positive (its pair) and up to 3 random negatives; the loss is the
    mean of log(1 + exp(d(a, p) - d(a, n))) over squared Euclidean distances.
    query, target: (B, D) -> scalar."""
    features = torch.cat([query, target])
    n = len(features)
    labels = torch.arange(n, device=features.device) % len(query)
    dist = (features[:, None] - features[None]).pow(2).sum(-1)  # (2B, 2B), smooth at 0
    positive = labels[:, None] == labels[None, :]
    positive.fill_diagonal_(False)
    d_pos = dist[positive].view(n, 1)  # exactly one positive per anchor
    k = min(NEGATIVES_PER_ANCHOR, n - 2)
    scores = torch.rand(n, n, device=features.device).masked_fill(
        labels[:, None] == labels[None, :], -1.0)  # same label never drawn as a negative
    negatives = scores.topk(k, dim=1).indices  # k distinct random negatives per anchor
    d_neg = dist.gather(1, negatives)
    return F.softplus(d_pos - d_neg).mean()


LOSSES = {
    'batch_based_classification': batch_based_classification_loss,
    'soft_triplet': soft_triplet_loss,
}
