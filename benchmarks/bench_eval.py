"""Evaluation at Fashion200k's size: our chunked top-k ranking against a full-matrix argsort.

    python benchmarks/bench_eval.py [--queries 33480] [--gallery 29789]

Random 512-d L2-normalised features (33,480 queries x 29,789 gallery images, as in
Fashion200k's test split), gallery labels with duplicates (about 3 images per caption), each
query's own image excluded. "ours" is test_retrieval.rank_gallery + recall_at_k (query
chunks, torch.topk); the reference is what a straightforward implementation does: the full
similarity matrix in numpy and np.argsort of every row. Each runs in a fresh process; its
time and peak resident memory above the process's state before ranking are measured.
Last line: ratio_time=<ref/ours> ratio_memory=<ref/ours> recalls_identical=<True|False>
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KS = (1, 5, 10, 50, 100)
DIM = 512


def make_data(n_queries, n_gallery, seed=0):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((n_queries, DIM), dtype=np.float32)
    gallery = rng.standard_normal((n_gallery, DIM), dtype=np.float32)
    gallery[1:] += 0.8 * gallery[:-1]  # neighbours correlate, so the ranking is not trivial
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    gallery_labels = rng.integers(0, n_gallery // 3, n_gallery)
    exclude = rng.integers(0, n_gallery, n_queries)
    target_labels = gallery_labels[rng.integers(0, n_gallery, n_queries)]
    return query, gallery, exclude, gallery_labels, target_labels


def ours(query, gallery, exclude, gallery_labels, target_labels):
    import torch
    import test_retrieval
    topk = test_retrieval.rank_gallery(torch.from_numpy(query), torch.from_numpy(gallery),
                                       torch.from_numpy(exclude), max(KS))
    return test_retrieval.recall_at_k(topk, torch.from_numpy(gallery_labels),
                                      torch.from_numpy(target_labels), KS)


def reference(query, gallery, exclude, gallery_labels, target_labels):
    sims = query @ gallery.T
    sims[np.arange(len(sims)), exclude] = -np.inf
    sims *= -1  # ascending argsort of the negated similarities = best first
    order = np.argsort(sims, axis=1)[:, :max(KS)]
    hits = gallery_labels[order] == target_labels[:, None]
    return {k: int(hits[:, :k].any(1).sum()) / len(hits) for k in KS}


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def child(method, n_queries, n_gallery):
    """Run one method in this process and print a JSON line with its measurements."""
    import torch  # imported by both, so that neither pays for it inside the measurement
    data = make_data(n_queries, n_gallery)
    before = peak_rss_bytes()
    start = time.perf_counter()
    recalls = {'ours': ours, 'reference': reference}[method](*data)
    seconds = time.perf_counter() - start
    print(json.dumps({'seconds': seconds, 'peak': peak_rss_bytes(), 'extra':
                      peak_rss_bytes() - before, 'recalls': recalls,
                      'threads': torch.get_num_threads()}))


def measure(method, args):
    out = subprocess.run([sys.executable, __file__, '--child', method, '--queries',
                          str(args.queries), '--gallery', str(args.gallery)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--queries', type=int, default=33480)
    p.add_argument('--gallery', type=int, default=29789)
    p.add_argument('--child', choices=['ours', 'reference'], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.queries, args.gallery)
    results = {m: measure(m, args) for m in ('ours', 'reference')}
    for name, r in results.items():
        print(f'{name:9s}: {r["seconds"]:7.2f} s, peak memory {r["peak"] / 2**20:7.0f} MiB '
              f'({r["extra"] / 2**20:.0f} MiB for the ranking), recall@1 '
              f'{r["recalls"]["1"]:.4f}, recall@100 {r["recalls"]["100"]:.4f}')
    ours_r, ref_r = results['ours'], results['reference']
    print(f'ratio_time={ref_r["seconds"] / ours_r["seconds"]:.2f} '
          f'ratio_memory={ref_r["extra"] / max(ours_r["extra"], 1):.2f} '
          f'recalls_identical={ours_r["recalls"] == ref_r["recalls"]}')


if __name__ == '__main__':
    main()
