"""Training throughput: full step, model alone, loader alone, and the published data path.

    python benchmarks/bench_train.py [--iters 8] [--workers 2] [--batch_size 32]

Per model, on the quick-start CSS data: queries/s of the full training step (our loader
with --workers processes feeding the model), of the model step alone on a preloaded batch,
and of the loader alone. Then, with tirg, the same full step against a plain
re-implementation of the published recipe's data path (every sample read with PIL in the
main process, numpy stacking, no workers), on the quick-start data and on 224x224 JPEG
crops of Fashion200k-like images that the benchmark writes. All in one process, so the
ratios compare runs on the same machine state.
Last line (JPEG data): speedup_vs_reference=<float> loader_over_model=<float>
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import img_text_composition_models  # noqa: E402
import main as driver  # noqa: E402
from text_model import SimpleVocab  # noqa: E402

JPEG_CAPTIONS = [f'{color} {material} {garment}' for color in ('red', 'blue', 'black', 'white')
                 for material in ('cotton', 'silk', 'denim') for garment in ('dress', 'top')]


def write_fashion_like(root, images_per_caption=12, seed=0):
    """Fashion200k layout with smooth 300x400 JPEGs (resized and cropped to 224 on load)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'labels'))
    for split in ('train', 'test'):
        lines = []
        for c, caption in enumerate(JPEG_CAPTIONS):
            for k in range(images_per_caption):
                rel = f'women/{split}/{c}/{k}.jpeg'
                os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
                img = Image.new('RGB', (300, 400), tuple(int(v) for v in rng.integers(0, 255, 3)))
                ImageDraw.Draw(img).ellipse([60, 80, 240, 340], fill=tuple(
                    int(v) for v in rng.integers(0, 255, 3)))
                img.save(os.path.join(root, rel), quality=90)
                lines.append(f'{rel}\t0.9\t{caption}\n')
        with open(os.path.join(root, 'labels', f'dress_{split}_detect_all.txt'), 'w') as f:
            f.writelines(lines)
    with open(os.path.join(root, 'test_queries.txt'), 'w') as f:
        f.write('women/test/0/0.jpeg women/test/1/0.jpeg\n')


def setup(argv):
    opt = driver.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the figures
        trainset, _ = driver.load_datasets(opt)
    input_size = tuple(trainset.get_img(0).shape[-2:])
    model = img_text_composition_models.build_model(
        opt, SimpleVocab.from_texts(trainset.get_all_texts()).words, input_size)
    model.train()
    return opt, trainset, model, driver.build_optimizer(opt, model)


def rate(fn, iters, batch_size, warmup=2):
    """Queries per second of calling fn() `iters` times after `warmup` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return iters * batch_size / (time.perf_counter() - start)


def measure(argv, iters):
    """{'full', 'model', 'loader'} queries/s with our data path."""
    opt, trainset, model, optimizer = setup(argv)
    device = torch.device('cpu')
    precision = driver.Precision(opt, device)
    step = lambda batch: driver.apply_update(
        driver.train_step(model, batch, optimizer, precision, device), optimizer, precision)
    loader = driver.batches(trainset, opt, 0, device)
    batch = next(loader)
    out = {'loader': rate(lambda: next(loader), 3 * iters, opt.batch_size),
           'model': rate(lambda: step(batch), iters, opt.batch_size),
           'full': rate(lambda: step(next(loader)), iters, opt.batch_size)}
    del loader  # stop the workers
    return out


def reference_batch(trainset, start, batch_size):
    """The published data path: samples read in the main process, stacked with numpy."""
    items = [trainset[i] for i in range(start, start + batch_size)]
    stack = lambda key: torch.from_numpy(np.stack([d[key].numpy() for d in items])).float()
    return {'source_img_data': stack('source_img_data'),
            'target_img_data': stack('target_img_data'),
            'mod': {'str': [d['mod']['str'] for d in items]}}


def measure_reference(argv, iters):
    opt, trainset, model, optimizer = setup(argv)
    device = torch.device('cpu')
    precision = driver.Precision(opt, device)
    counter = iter(range(10**9))
    step = lambda: driver.apply_update(driver.train_step(
        model, reference_batch(trainset, next(counter) * opt.batch_size, opt.batch_size),
        optimizer, precision, device), optimizer, precision)
    return rate(step, iters, opt.batch_size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--iters', type=int, default=8)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--batch_size', type=int, default=32)
    args = p.parse_args(argv)
    common = ['--batch_size', str(args.batch_size), '--loader_num_workers', str(args.workers)]
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; queries/s')
    print('| model | full step | model alone | loader alone | loader / model |')
    print('|---|---|---|---|---|')
    for name in sorted(img_text_composition_models.MODELS):
        r = measure(common + ['--model', name], args.iters)
        print(f'| {name} | {r["full"]:.1f} | {r["model"]:.1f} | {r["loader"]:.1f} | '
              f'{r["loader"] / r["model"]:.1f}x |', flush=True)
    with tempfile.TemporaryDirectory() as root:
        write_fashion_like(root)
        for data, extra in (('quick-start CSS', []), ('224x224 JPEG', [
                '--dataset', 'fashion200k', '--dataset_path', root, '--backbone_weights', 'none'])):
            argv = common + ['--model', 'tirg'] + extra
            ours, ref = measure(argv, args.iters), measure_reference(argv, args.iters)
            print(f'{data}, tirg: ours {ours["full"]:.1f} q/s, published data path {ref:.1f} q/s, '
                  f'speed-up {ours["full"] / ref:.2f}x; loader {ours["loader"]:.1f} q/s = '
                  f'{ours["loader"] / ours["model"]:.1f}x the model', flush=True)
    print(f'speedup_vs_reference={ours["full"] / ref:.2f} '
          f'loader_over_model={ours["loader"] / ours["model"]:.2f}')


if __name__ == '__main__':
    main()
