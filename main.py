"""Train and evaluate image-text composition models for interactive image retrieval.

    python main.py                         # quick start: generated CSS data, a few minutes on CPU
    python main.py --dataset=fashion200k --dataset_path=../data/fashion200k/ --model=LGLI \
        --loss=batch_based_classification --learning_rate_decay_frequency=50000 \
        --num_iters=160000 --use_complete_text_query True
"""
import argparse
import datetime
import json
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm

import checkpoints
import css_generator
import distributed
import datasets
import img_text_composition_models
import lpvl
import test_retrieval
import torch_functions
import visualize
from errors import UsageError, one_line
from text_model import SimpleVocab

DEFAULT_CSS_PATH = os.path.join('data', 'css_generated')
PRETRAINED_LR_FACTOR = 0.1  # pretrained backbone layers train at 0.1 x the learning rate
MIN_IMAGE_SIDE = 32  # smaller inputs leave ResNet-18's last level without spatial extent
SHAPE_FLAGS = ('model', 'image_embed_dim', 'text_proj')  # fix the tensors of a checkpoint
MODE_FLAGS = ('resume', 'test_only', 'model_checkpoint')  # never taken from a checkpoint


def str2bool(value):
    """'True'/'False'/'1'/'0'/'yes'/'no' (any case) -> bool."""
    if isinstance(value, bool):
        return value
    if value.lower() in ('true', '1', 'yes', 'y', 't'):
        return True
    if value.lower() in ('false', '0', 'no', 'n', 'f'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {value!r}')


def add_bool(parser, name, default, help):
    """A bool flag usable as `--name`, `--name True` or `--name=False`."""
    parser.add_argument(name, type=str2bool, nargs='?', const=True, default=default, help=help)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='css3d', choices=sorted(datasets.DATASETS))
    p.add_argument('--dataset_path', default=None,
                   help=f'dataset folder (css3d default: {DEFAULT_CSS_PATH}, generated if absent)')
    p.add_argument('--model', default='LGLI', choices=sorted(img_text_composition_models.MODELS))
    p.add_argument('--image_embed_dim', '--embed_dim', type=int, default=512)
    p.add_argument('--backbone_weights', default=None,
                   help='none, imagenet or a ResNet-18 state-dict path '
                        '(default: none on css3d, imagenet elsewhere)')
    p.add_argument('--loss', default='batch_based_classification',
                   choices=sorted(torch_functions.LOSSES))
    p.add_argument('--mask_source', default=None, choices=lpvl.MASK_SOURCES,
                   help='LPVL masks for LGLI (default: scene on css3d, detector_clip elsewhere)')
    p.add_argument('--mask_scale', type=float, default=1e-5,
                   help='s in the local awareness C = F + s * F * Fm (published: 1e-5)')
    p.add_argument('--text_proj', default=None, choices=['mlp', 'linear'],
                   help='LGLI text maps (default: mlp on css3d, linear elsewhere)')
    add_bool(p, '--multi_level_loss', True, 'LGLI: add the per-level loss terms')
    p.add_argument('--mask_bn_stats', default='shared', choices=['shared', 'frozen'],
                   help='LGLI: mask batches update the backbone\'s BatchNorm running statistics '
                        '(shared, as published) or leave them to the images (frozen; a '
                        'deviation, see README)')
    p.add_argument('--lpvl_topk', type=int, default=None,
                   help='detector_clip boxes kept (default: 3 on css3d, 1 elsewhere)')
    p.add_argument('--detector_weights', default=None, help='Faster R-CNN COCO state dict')
    p.add_argument('--clip_weights', default=None, help='open_clip ViT-B-32 checkpoint')
    p.add_argument('--learning_rate', type=float, default=1e-2)
    p.add_argument('--learning_rate_decay_frequency', type=int, default=9999999,
                   help='multiply the learning rate by 0.1 every this many iterations')
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--weight_decay', type=float, default=1e-6)
    p.add_argument('--num_iters', type=int, default=600)
    p.add_argument('--eval_every', type=int, default=5000, help='evaluate every N iterations')
    p.add_argument('--eval_batch_size', type=int, default=128)
    p.add_argument('--visualize', type=int, default=0,
                   help='at each evaluation, save a grid of N queries with their top results')
    p.add_argument('--eval_split', default='test',
                   help='split to evaluate on (a "val" split is for model selection)')
    p.add_argument('--loader_num_workers', type=int, default=2)
    p.add_argument('--css_render', default='png', choices=['png', '2d'],
                   help='css3d images: read the PNGs, or draw 2-D scenes from the annotations')
    add_bool(p, '--use_complete_text_query', False,
             'the text is the whole target description instead of the modification')
    add_bool(p, '--skip_bad_images', False,
             'fashion200k/mitstates: check every image once and leave out those that do not '
             'decode (default: an unreadable image is an error naming the file)')
    add_bool(p, '--test_only', False, 'evaluate --model_checkpoint and exit')
    p.add_argument('--model_checkpoint', default='', help='checkpoint for --test_only')
    p.add_argument('--comment', default='', help='suffix of the run directory name')
    p.add_argument('--log_dir', default='runs', help='run directories are created in here')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='auto', help='auto (CUDA when present), cpu, cuda, cuda:N')
    p.add_argument('--resume', default='', help='continue training exactly from a checkpoint')
    p.add_argument('--amp', default='off', choices=['off', 'bf16', 'fp16'],
                   help='mixed precision (fp16 with a gradient scaler, CUDA only)')
    add_bool(p, '--channels_last', False, 'channels-last memory format for images and model')
    add_bool(p, '--cache_images', False, 'keep decoded images in memory (small datasets)')
    add_bool(p, '--skip_nonfinite', False,
             'step over batches whose loss is not finite (default: stop with an error)')
    return p


def parse_args(argv=None):
    return resolve_defaults(build_parser().parse_args(argv))


def explicit_flags(argv):
    """The flags actually written in argv, as {dest: value} (defaults left out)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def resolve_defaults(opt):
    """Fill dataset-dependent defaults and check flag values; bad values raise UsageError."""
    if opt.dataset_path is None:
        if opt.dataset != 'css3d':
            raise UsageError(f'--dataset_path is required for --dataset={opt.dataset}')
        opt.dataset_path = DEFAULT_CSS_PATH
    css = opt.dataset == 'css3d'
    for name, css_default, other_default in (('backbone_weights', 'none', 'imagenet'),
                                             ('mask_source', 'scene', 'detector_clip'),
                                             ('text_proj', 'mlp', 'linear'),
                                             ('lpvl_topk', 3, 1)):
        if getattr(opt, name) is None:
            setattr(opt, name, css_default if css else other_default)
    if opt.mask_source == 'scene' and not css:
        raise UsageError('--mask_source scene needs CSS scene annotations; use detector_clip '
                         'or none on ' + opt.dataset)
    for name in ('num_iters', 'eval_every', 'eval_batch_size', 'image_embed_dim'):
        if getattr(opt, name) < 1:
            raise UsageError(f'--{name} must be at least 1, got {getattr(opt, name)}')
    if opt.batch_size < 2:
        raise UsageError(f'--batch_size must be at least 2 for the {opt.loss} loss '
                         f'(it contrasts the samples of a batch), got {opt.batch_size}')
    if opt.test_only and not opt.model_checkpoint:
        raise UsageError('--test_only needs --model_checkpoint PATH')
    if opt.test_only and opt.resume:
        raise UsageError('--resume and --test_only exclude each other')
    return opt


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ensure_quickstart_data(opt):
    """Generate the quick-start CSS set on first use of the default path."""
    npy = os.path.join(opt.dataset_path, css_generator.NPY_NAME)
    if opt.dataset == 'css3d' and opt.dataset_path == DEFAULT_CSS_PATH and not os.path.isfile(npy):
        print(f'No CSS data at {opt.dataset_path}: generating the quick-start set '
              '(css_generator.py, default flags, seed 0; once, about 10 s)')
        css_generator.generate(opt.dataset_path, seed=0)


def load_datasets(opt):
    """(trainset, testset) for opt.dataset with its default transform."""
    ensure_quickstart_data(opt)
    cls = datasets.DATASETS[opt.dataset]
    transform = datasets.make_transform(cls.crop_size)
    trainset = cls.from_args(opt, 'train', transform)
    testset = cls.from_args(opt, opt.eval_split, transform)
    trainset.seed = opt.seed
    trainset.cache_images = testset.cache_images = opt.cache_images
    if img_text_composition_models.MODELS[opt.model].uses_mask:
        trainset.mask_source = testset.mask_source = opt.mask_source
    print(f'{opt.dataset}: {len(trainset.imgs)} training images, {len(testset.imgs)} '
          f'{opt.eval_split} images, {len(testset.get_test_queries())} queries, chance level '
          f'recall_top1 {test_retrieval.chance_recall_at_1(testset):.4f}')
    return trainset, testset


def create_run_dir(opt):
    """<log_dir>/<time>_<comment>/ with args.json; returns (path, SummaryWriter)."""
    name = datetime.datetime.now().strftime('%b%d_%H-%M-%S') + (f'_{opt.comment}' if opt.comment else '')
    run_dir = os.path.join(opt.log_dir, name)
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, 'args.json'), 'w') as f:
            json.dump(vars(opt), f, indent=2)
    except OSError as e:
        raise UsageError(f'--log_dir {opt.log_dir}: cannot write the run directory ({e})') from None
    writer = SummaryWriter(run_dir)
    writer.add_text('args', json.dumps(vars(opt), indent=2).replace('\n', '  \n'), 0)
    print(f'Log files saved to {run_dir}')
    return run_dir, writer


def build_optimizer(opt, model):
    """SGD (momentum 0.9); pretrained backbone layers at PRETRAINED_LR_FACTOR x lr."""
    pretrained = {id(p) for p in model.pretrained_parameters()}
    groups = [{'params': [p for p in model.parameters() if id(p) not in pretrained]}]
    if pretrained:
        groups.append({'params': model.pretrained_parameters(),
                       'lr': PRETRAINED_LR_FACTOR * opt.learning_rate})
    return torch.optim.SGD(groups, lr=opt.learning_rate, momentum=0.9,
                           weight_decay=opt.weight_decay)


def evaluate(opt, model, testset, writer, it, run_dir, **record):
    """Recall@K on the evaluation split: printed one metric per line, logged to TensorBoard
    and appended to <run_dir>/results.jsonl with `record` (training loss, time, ...); with
    --visualize N also a grid of N queries and their top results."""
    results, topk_ids = test_retrieval.test_with_ranking(opt, model, testset)
    for name, value in results:
        print(f'{opt.eval_split} {name} {value:.4f}')
        writer.add_scalar(f'{opt.eval_split}/{name}', value, it)
    with open(os.path.join(run_dir, 'results.jsonl'), 'a') as f:
        f.write(json.dumps({'it': it, 'split': opt.eval_split, **record, **dict(results)}) + '\n')
    if opt.visualize:
        queries = visualize.sample_queries(len(topk_ids), opt.visualize)
        image = visualize.retrieval_grid(testset, topk_ids, queries)
        path = os.path.join(run_dir, f'retrieval_{opt.eval_split}_it{it:06d}.png')
        image.save(path)
        writer.add_image(f'{opt.eval_split}/retrieval', np.asarray(image), it, dataformats='HWC')
        print(f'Retrieval grid saved to {path}')
    return results


def log_hparams(writer, opt, results):
    """Flags and final recalls for TensorBoard's HParams tab."""
    flags = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in vars(opt).items()}
    writer.add_hparams(flags, {f'hparam/{name}': value for name, value in results})


def batches(trainset, opt, start_it, device):
    """Endless training batches, starting at sample start_it * batch_size."""
    sampler = range(start_it * opt.batch_size, sys.maxsize)
    return iter(trainset.get_loader(batch_size=opt.batch_size, sampler=sampler, drop_last=True,
                                    num_workers=opt.loader_num_workers,
                                    pin_memory=device.type == 'cuda'))


class Precision:
    """--amp and --channels_last as objects the training step uses unconditionally: when
    off, the autocast context and the gradient scaler are pass-throughs."""

    def __init__(self, opt, device):
        self.dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(opt.amp)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=opt.amp == 'fp16')
        self.memory_format = torch.channels_last if opt.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16,
                              enabled=self.dtype is not None)

    def images(self, batch, key, device):
        """batch[key] on the device in the configured memory format, or None if absent."""
        if key not in batch:
            return None
        return batch[key].to(device, non_blocking=True, memory_format=self.memory_format)


def train_step(model, batch, optimizer, precision, device):
    """Forward and loss for one batch: {name: loss tensor}, 'total' included."""
    with precision.autocast():
        return model(precision.images(batch, 'source_img_data', device), batch['mod']['str'],
                     precision.images(batch, 'target_img_data', device),
                     precision.images(batch, 'source_img_mask', device))


def apply_update(losses, optimizer, precision):
    """Backward and SGD step through the (possibly disabled) gradient scaler."""
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(losses['total']).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag that the training loop checks after each step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signal_name, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.request) for s in self.SIGNALS}
        return self

    def request(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class NullWriter:
    """Stands in for the SummaryWriter on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def checkpoint_state(opt, model, optimizer, scheduler, precision, it, progress):
    """Everything an exact resume needs, as tensors and plain data."""
    return {'it': it, 'opt': vars(opt), 'model_state_dict': model.state_dict(),
            'optimizer_state_dict': optimizer.state_dict(),
            'scheduler_state_dict': scheduler.state_dict(),
            'scaler_state_dict': precision.scaler.state_dict(),
            'vocab': list(model.text_model.vocab.words), 'rng': checkpoints.rng_states(),
            **progress}


def checkpoint_evaluation(ctx, it, mean_loss):
    """Rank 0: evaluate, save latest (and best) checkpoint; then every rank waits."""
    if ctx['rank'] == 0:
        opt, model, progress = ctx['opt'], ctx['model'], ctx['progress']
        tqdm.write(f'iteration {it}: mean loss {mean_loss:.4f}, skipped non-finite batches '
                   f'{progress["skipped_nonfinite"]}')
        results = evaluate(opt, model, ctx['testset'], ctx['writer'], it, ctx['run_dir'],
                           train_loss=mean_loss, train_seconds=progress['train_seconds'],
                           parameters=sum(p.numel() for p in model.parameters()))
        recall_at_1 = dict(results)['recall_top1_correct_composition']
        improved = recall_at_1 > progress['best_recall']
        progress['best_recall'] = max(recall_at_1, progress['best_recall'])
        save_latest(ctx, it)
        if improved:
            checkpoints.copy(ctx['latest'], os.path.join(ctx['run_dir'], 'best_checkpoint.pth'))
        ctx['results'] = results
    distributed.barrier()


def save_latest(ctx, it):
    if ctx['rank'] == 0:
        checkpoints.save(ctx['latest'], checkpoint_state(
            ctx['opt'], ctx['model'], ctx['optimizer'], ctx['scheduler'], ctx['precision'], it,
            ctx['progress']))


def resume_state(checkpoint, optimizer, scheduler, precision, progress):
    """Load the training state of a checkpoint (after the loader drew its seed, so that the
    random streams continue exactly)."""
    optimizer.load_state_dict(checkpoint['optimizer_state_dict'])
    scheduler.load_state_dict(checkpoint['scheduler_state_dict'])
    if 'scaler_state_dict' in checkpoint:
        precision.scaler.load_state_dict(checkpoint['scaler_state_dict'])
    progress.update({k: checkpoint[k] for k in progress if k in checkpoint})
    checkpoints.set_rng_states(checkpoint['rng'])


def setup_training(opt, model, testset, device, run_dir, writer, checkpoint, rank):
    """Optimizer, schedule, precision and progress (restored from `checkpoint` if given),
    gathered with what evaluation and saving need."""
    optimizer = build_optimizer(opt, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, opt.learning_rate_decay_frequency, 0.1)
    if rank == 0:
        print(f'model {opt.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M '
              'parameters')
    return {'opt': opt, 'model': model, 'optimizer': optimizer, 'scheduler': scheduler,
            'precision': Precision(opt, device), 'rank': rank, 'testset': testset,
            'writer': writer, 'run_dir': run_dir, 'results': [], 'device': device,
            'latest': os.path.join(run_dir, 'latest_checkpoint.pth'),
            'progress': {'best_recall': -1.0, 'skipped_nonfinite': 0, 'train_seconds': 0.0}}


def update_or_skip(ctx, losses, it):
    """Apply the update when the loss is finite on every rank and return the total loss
    (averaged over ranks); otherwise skip the batch (--skip_nonfinite, returns None) or stop."""
    opt, writer, progress = ctx['opt'], ctx['writer'], ctx['progress']
    finite = not distributed.any_rank(not torch.isfinite(losses['total']).item(), ctx['device'])
    total = None
    if finite:
        apply_update(losses, ctx['optimizer'], ctx['precision'])
        values = distributed.mean_over_ranks({k: v.item() for k, v in losses.items()},
                                             ctx['device'])
        for name, value in values.items():
            writer.add_scalar(f'train/loss_{name}', value, it)
        total = values['total']
    elif opt.skip_nonfinite:
        progress['skipped_nonfinite'] += 1
        writer.add_scalar('train/skipped_nonfinite', progress['skipped_nonfinite'], it)
    else:
        last_good = ctx['latest'] if os.path.isfile(ctx['latest']) else 'none yet'
        raise FloatingPointError(
            f'non-finite loss {losses["total"].item()} at iteration {it}; training stopped, the '
            f'last good checkpoint is {last_good} (--skip_nonfinite steps over such batches)')
    writer.add_scalar('train/learning_rate', ctx['optimizer'].param_groups[0]['lr'], it)
    return total


def train(opt, model, trainset, testset, device, run_dir, writer, checkpoint=None, rank=0):
    """The training loop: SGD steps, step-decay schedule, periodic evaluation and checkpoints;
    continues `checkpoint` exactly when given. `model` is trained through a
    DistributedDataParallel wrapper under torchrun. Returns the last evaluation."""
    ctx = setup_training(opt, model, testset, device, run_dir, writer, checkpoint, rank)
    start_it = checkpoint['it'] if checkpoint else 0
    data = batches(trainset, opt, start_it, device)
    if checkpoint:
        resume_state(checkpoint, ctx['optimizer'], ctx['scheduler'], ctx['precision'],
                     ctx['progress'])
    trained = wrap_for_training(model, device)
    window = []  # total losses since the last evaluation
    model.train()
    started = time.perf_counter()
    with StopRequest() as stop:
        for it in tqdm(range(start_it + 1, opt.num_iters + 1), desc='train', initial=start_it,
                       total=opt.num_iters, dynamic_ncols=True, disable=rank != 0):
            losses = train_step(trained, next(data), ctx['optimizer'], ctx['precision'], device)
            total = update_or_skip(ctx, losses, it)
            window += [] if total is None else [total]
            ctx['scheduler'].step()
            evaluate_now = it % opt.eval_every == 0 or it == opt.num_iters
            stop_now = distributed.any_rank(stop.signal_name is not None, device)
            if evaluate_now or stop_now:
                ctx['progress']['train_seconds'] += time.perf_counter() - started
            if evaluate_now:
                checkpoint_evaluation(ctx, it, sum(window) / max(len(window), 1))
                window = []
            if stop_now:
                stop_with_checkpoint(ctx, it, saved=evaluate_now, reason=stop.signal_name)
                return ctx['results']
            if evaluate_now:
                started = time.perf_counter()
    finish_training(ctx, model, device)
    return ctx['results']


def stop_with_checkpoint(ctx, it, saved, reason):
    """A stop request (signal): save unless this iteration's evaluation just saved."""
    if not saved:
        save_latest(ctx, it)
    if ctx['rank'] == 0:
        print(f'{reason or "stop"}: stopped after iteration {it}; checkpoint saved to '
              f'{ctx["latest"]} (continue with --resume {ctx["latest"]})')


def finish_training(ctx, model, device):
    """Check that all ranks ended with the same weights; say where the checkpoint is."""
    if distributed.is_distributed():
        if not distributed.parameters_identical(model, device):
            raise RuntimeError('parameters differ across ranks after training')
        if ctx['rank'] == 0:
            print('parameters identical on every rank')
    if ctx['rank'] == 0:
        print(f'Checkpoint saved to {ctx["latest"]}')


def wrap_for_training(model, device):
    """The module the training step calls: DistributedDataParallel under torchrun."""
    if not distributed.is_distributed():
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == 'cuda' else None,
        find_unused_parameters=not model.uses_all_parameters)


def flags_with_checkpoint(opt, argv, checkpoint, path):
    """For --resume and --test_only: the checkpoint's flags, overridden by the flags given
    on this command line; a given flag that changes the network's shape must agree."""
    given = explicit_flags(argv)
    saved = checkpoint['opt']
    for name in SHAPE_FLAGS:
        if name in given and name in saved and given[name] != saved[name]:
            raise UsageError(f'--{name} {given[name]} does not match checkpoint {path}, which '
                             f'was trained with --{name} {saved[name]}')
    merged = {**vars(opt), **saved, **given}
    merged.update({name: getattr(opt, name) for name in MODE_FLAGS})
    return resolve_defaults(argparse.Namespace(**merged))


def start_run(opt, checkpoint):
    """Run directory and TensorBoard writer: a new one, or the checkpoint's for --resume
    (records after the checkpoint's iteration are dropped, as they will be redone)."""
    if not opt.resume:
        return create_run_dir(opt)
    run_dir = os.path.dirname(os.path.abspath(opt.resume))
    results_path = os.path.join(run_dir, 'results.jsonl')
    if os.path.isfile(results_path):
        with open(results_path) as f:
            kept = [line for line in f if json.loads(line)['it'] <= checkpoint['it']]
        with open(results_path, 'w') as f:
            f.writelines(kept)
    print(f'Resuming {opt.resume} at iteration {checkpoint["it"]}; log files in {run_dir}')
    return run_dir, SummaryWriter(run_dir, purge_step=checkpoint['it'] + 1)


def build_model(opt, trainset, input_size, checkpoint=None, checkpoint_path=None):
    """The --model network for images of input_size (H, W): with the vocabulary of the
    training texts, or with the checkpoint's vocabulary and weights."""
    vocab = checkpoint['vocab'] if checkpoint else \
        SimpleVocab.from_texts(trainset.get_all_texts()).words
    model = img_text_composition_models.build_model(
        argparse.Namespace(**dict(vars(opt), backbone_weights='none')) if checkpoint else opt,
        vocab, input_size)
    if checkpoint:
        checkpoints.check_model_state(model, checkpoint['model_state_dict'], checkpoint_path)
    return model


def main(argv=None):
    """Parse flags, train (or evaluate a checkpoint) and return the final [(name, recall)]."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opt = parse_args(argv)
    checkpoint_path = opt.resume or (opt.model_checkpoint if opt.test_only else None)
    checkpoint = checkpoints.load(checkpoint_path, resume=bool(opt.resume)) if checkpoint_path \
        else None
    if checkpoint:
        opt = flags_with_checkpoint(opt, argv, checkpoint, checkpoint_path)
    rank, world_size, device = init_device(opt)
    seed_everything(opt.seed)
    trainset, testset = load_datasets(opt)
    trainset.rank = rank  # each process draws its own training queries
    input_size = tuple(testset.get_img(0).shape[-2:])
    if min(input_size) < MIN_IMAGE_SIDE:
        raise UsageError(f'images are {input_size[0]}x{input_size[1]} after the transform; the '
                         f'ResNet-18 backbone needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}')
    run_dir, writer = start_run(opt, checkpoint) if rank == 0 else (None, NullWriter())
    run_dir = distributed.broadcast_from_rank0(run_dir)
    if world_size > 1 and rank == 0:
        print(f'{world_size} processes, effective batch {world_size * opt.batch_size}')
    model = build_model(opt, trainset, input_size, checkpoint, checkpoint_path)
    model.to(device, memory_format=torch.channels_last if opt.channels_last else
             torch.contiguous_format)
    if opt.test_only:
        results = evaluate(opt, model, testset, writer, checkpoint['it'], run_dir)
    else:
        results = train(opt, model, trainset, testset, device, run_dir, writer, checkpoint, rank)
    if results:
        log_hparams(writer, opt, results)
    writer.close()
    distributed.cleanup()
    return results


def init_device(opt):
    """(rank, world size, device); joins the process group under torchrun."""
    if opt.device != 'auto' and opt.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError(f'--device {opt.device}: CUDA is not available on this machine')
    rank, world_size, device = distributed.init_distributed(opt.device)
    if opt.amp == 'fp16' and device.type != 'cuda':
        raise UsageError('--amp fp16 needs CUDA (its gradient scaler); use bf16 on the CPU')
    if opt.test_only and world_size > 1:
        raise UsageError('--test_only runs in one process; start it without torchrun')
    return rank, world_size, device


def cli():
    try:
        main()
    except (UsageError, FloatingPointError) as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 0


if __name__ == '__main__':
    sys.exit(cli())
