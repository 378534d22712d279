"""Chunked top-k evaluation against a brute-force implementation."""
import argparse

import numpy as np
import torch
from torch import nn

import test_retrieval as tr


def brute_force_recall(query, gallery, exclude, gallery_labels, target_labels, ks):
    sims = query.numpy() @ gallery.numpy().T
    sims[np.arange(len(sims)), exclude.numpy()] = -np.inf
    order = np.argsort(-sims, axis=1)
    return {k: float(np.mean([(gallery_labels.numpy()[o[:k]] == t).any()
                              for o, t in zip(order, target_labels.numpy())])) for k in ks}


def test_rank_and_recall_match_brute_force():
    g = torch.Generator().manual_seed(0)
    query = nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    gallery = nn.functional.normalize(torch.randn(250, 16, generator=g), dim=1)
    exclude = torch.randint(0, 250, (300,), generator=g)
    gallery_labels = torch.randint(0, 60, (250,), generator=g)  # many label duplicates
    target_labels = torch.randint(0, 60, (300,), generator=g)
    topk = tr.rank_gallery(query, gallery, exclude, 100, chunk=64)
    sims = query @ gallery.t()
    sims[torch.arange(300), exclude] = -float('inf')
    assert torch.equal(topk, sims.topk(100, dim=1).indices)
    ours = tr.recall_at_k(topk, gallery_labels, target_labels)
    assert ours == brute_force_recall(query, gallery, exclude, gallery_labels, target_labels,
                                      tr.RECALL_KS)


def test_own_image_excluded_and_duplicates_count():
    gallery = torch.eye(4)
    query = torch.eye(4)[[0]]  # identical to gallery image 0
    topk = tr.rank_gallery(query, gallery, torch.tensor([0]), 3)
    assert 0 not in topk[0].tolist()
    labels = torch.tensor([7, 5, 5, 9])  # images 1 and 2 show the same scene
    assert tr.recall_at_k(tr.rank_gallery(torch.eye(4)[[2]], gallery, torch.tensor([0]), 3),
                          labels, torch.tensor([5]), ks=(1,)) == {1: 1.0}


def test_caption_codes():
    gallery, targets = tr.caption_codes(['a', 'b', 'a'], ['b', 'z'])
    assert gallery.tolist() == [0, 1, 0] and targets.tolist() == [1, -1]


class FakeTestset:
    """Images are 1-pixel 'features'; query i's source is image i, its target image i+1."""

    def __init__(self, n=12):
        self.imgs = [{'captions': [str(i // 2)]} for i in range(n)]  # pairs share captions
        self.queries = [{'source_img_id': i, 'target_caption': self.imgs[(i + 2) % n]['captions'][0],
                         'mod': {'str': 'next'}} for i in range(n)]

    def get_test_queries(self):
        return self.queries

    def get_source(self, i, text):
        return {'img': self.get_img(i)}

    def get_img(self, i):
        img = torch.zeros(3, 1, 1)
        img[0, 0, 0] = float(i)
        return img


class ShiftModel(nn.Module):
    """Maps image i to a point on a circle; composing moves it two steps forward."""

    def __init__(self, n):
        super().__init__()
        self.n, self.dummy = n, nn.Parameter(torch.zeros(1))

    def extract_img_feature(self, imgs):
        angle = imgs[:, 0, 0, 0] * 2 * np.pi / self.n
        return torch.stack([angle.cos(), angle.sin()], 1)

    def compose_img_text(self, imgs, texts, masks=None):
        return self.extract_img_feature(imgs + 2)


def test_test_function_end_to_end():
    testset = FakeTestset()
    opt = argparse.Namespace(eval_batch_size=5, loader_num_workers=0)
    results = dict(tr.test(opt, ShiftModel(12), testset))
    assert results['recall_top1_correct_composition'] == 1.0
    assert list(results) == [f'recall_top{k}_correct_composition' for k in tr.RECALL_KS]
    # images 2k and 2k+1 share a caption: each target caption has 2 images, never the source
    assert abs(tr.chance_recall_at_1(testset) - 2 / 11) < 1e-6
