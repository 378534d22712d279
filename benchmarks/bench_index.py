"""Fashion200k index build at the real dataset's size: time and peak memory.

    python benchmarks/bench_index.py [--train 172049] [--test 29789] [--queries 33480]

Writes label files with the real numbers of lines and a realistic caption vocabulary
(a colour, one to three Zipf-distributed attribute words, a garment noun; several images
per product) plus a test_queries.txt, then times datasets.Fashion200k for both splits and
reports the peak Python memory of each build (tracemalloc). No image is needed.
"""
import argparse
import os
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402

COLORS = ('black white blue red green pink grey beige navy brown purple yellow orange ivory '
          'cream khaki burgundy coral teal olive gold silver multicolor nude camel').split()
GARMENTS = {'dress': 'dress maxi-dress gown shift-dress', 'top': 'top blouse shirt tee tank',
            'jacket': 'jacket blazer coat parka bomber', 'pants': 'pants jeans trousers leggings',
            'skirt': 'skirt mini-skirt midi-skirt'}
N_ATTRIBUTES = 3000  # distinct attribute words (materials, cuts, patterns, brands)


def fake_captions(n_images, rng):
    """(category, caption) per image: products of 1-5 images share a caption."""
    attributes = np.array([f'attr{i}' for i in range(N_ATTRIBUTES)])
    zipf = 1.0 / np.arange(1, N_ATTRIBUTES + 1)
    zipf /= zipf.sum()
    out = []
    while len(out) < n_images:
        category = list(GARMENTS)[rng.integers(len(GARMENTS))]
        nouns = GARMENTS[category].split()
        words = [COLORS[rng.integers(len(COLORS))]]
        words += list(rng.choice(attributes, size=rng.integers(1, 4), replace=False, p=zipf))
        words.append(nouns[rng.integers(len(nouns))])
        out += [(category, ' '.join(words))] * int(rng.integers(1, 6))
    return out[:n_images]


def write_split(root, split, n_images, rng):
    os.makedirs(os.path.join(root, 'labels'), exist_ok=True)
    by_category = {}
    for i, (category, caption) in enumerate(fake_captions(n_images, rng)):
        path = f'women/{category}/{i // 4}/{i}.jpeg'
        by_category.setdefault(category, []).append(f'{path}\t0.9\t{caption}\n')
    paths = []
    for category, lines in by_category.items():
        with open(os.path.join(root, 'labels', f'{category}_{split}_detect_all.txt'), 'w') as f:
            f.writelines(lines)
        paths += [line.split('\t')[0] for line in lines]
    return paths


def measure(build):
    tracemalloc.start()
    start = time.perf_counter()
    result = build()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--train', type=int, default=172049)
    p.add_argument('--test', type=int, default=29789)
    p.add_argument('--queries', type=int, default=33480)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        write_split(root, 'train', args.train, rng)
        test_paths = write_split(root, 'test', args.test, rng)
        pairs = rng.integers(len(test_paths), size=(args.queries, 2))
        with open(os.path.join(root, 'test_queries.txt'), 'w') as f:
            f.writelines(f'{test_paths[a]} {test_paths[b]}\n' for a, b in pairs)
        for split in ('train', 'test'):
            ds, seconds, peak = measure(lambda: datasets.Fashion200k(root, split))
            print(f'{split}: {len(ds.imgs)} images, {len(ds.caption2imgids)} captions, '
                  f'{len(ds.parent2children_captions)} parents, {len(ds.modifiable_ids)} '
                  f'modifiable, {len(ds.get_test_queries())} test queries: built in '
                  f'{seconds:.2f} s, peak memory {peak / 2**20:.0f} MiB '
                  f'({peak / len(ds.imgs):.0f} B per image)')


if __name__ == '__main__':
    main()
