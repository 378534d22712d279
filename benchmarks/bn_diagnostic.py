"""Are a checkpoint's BatchNorm running statistics what holds it back?

    python benchmarks/bn_diagnostic.py CHECKPOINT [--eval_split val] [--batches 30] [flags]

Evaluates the checkpoint twice on the same split with the same weights: first with the
BatchNorm running statistics it was trained with, then after re-estimating them (a plain
average over --batches batches of 128 training images, in a seeded random order) from images
alone - the inputs that queries and gallery pass through at test time. As published, LGLI also
sends its localisation masks through the shared backbone in training mode, so its running
statistics average images and black-and-white masks. A large gain here says the learned
weights are better than the published model's evaluation shows. This is a diagnostic, not an
evaluation protocol: report models by main.py's evaluation. Other flags (--dataset_path,
--loader_num_workers, ...) override the checkpoint's, as with --test_only.
Last line: recall_top1_as_trained=<float> recall_top1_bn_from_images=<float>
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoints  # noqa: E402
import main as driver  # noqa: E402
import test_retrieval  # noqa: E402


@torch.no_grad()
def reestimate_bn_statistics(model, images, batches, batch_size=128, seed=0):
    """Reset every BatchNorm running mean / variance of `model` and set them to the average
    over `batches` batches of `images` (a dataset of (3, H, W) tensors) passed through
    model.extract_img_feature in training mode. The model is left in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches seen
    order = torch.utils.data.RandomSampler(images, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, sampler=order)
    device = next(model.parameters()).device
    model.train()
    for k, batch in enumerate(loader):
        if k == batches:
            break
        model.extract_img_feature(batch.to(device))
    model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoint')
    p.add_argument('--batches', type=int, default=30)
    args, flags = p.parse_known_args(argv)
    flags = ['--eval_split', 'val'] + flags
    checkpoint = checkpoints.load(args.checkpoint)
    opt = driver.flags_with_checkpoint(driver.parse_args(flags), flags, checkpoint,
                                       args.checkpoint)
    _, _, device = driver.init_device(opt)
    trainset, testset = driver.load_datasets(opt)
    input_size = tuple(testset.get_img(0).shape[-2:])
    model = driver.build_model(opt, trainset, input_size, checkpoint, args.checkpoint).to(device)
    recalls = {}
    for label in ('as_trained', 'bn_from_images'):
        if label == 'bn_from_images':
            reestimate_bn_statistics(model, test_retrieval.GalleryImages(trainset), args.batches)
        recalls[label] = dict(test_retrieval.test(opt, model, testset))[
            'recall_top1_correct_composition']
        print(f'{opt.eval_split} recall_top1 with BatchNorm statistics {label}: '
              f'{recalls[label]:.4f}', flush=True)
    print(' '.join(f'recall_top1_{label}={value:.4f}' for label, value in recalls.items()))


if __name__ == '__main__':
    main()
