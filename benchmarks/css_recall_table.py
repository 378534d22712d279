"""The paper's CSS comparison on one generated CSS set: baselines, LGLI and its ablations.

    python benchmarks/css_recall_table.py [--num_iters 1200] [--seed 0]

Data: one css_generator.py set at the real CSS3D training scale (1,000 base scenes, 6,000
mods x 3 pairs = 18,000 training pairs), with a validation split for model selection and
a test split of its own (never used to choose anything).
Protocol: every row trains for the same --num_iters with the same seed and batch size.
tirg and LGLI each get the same learning-rate grid; the rate is chosen by validation
Recall@1 (at the end of training; ties go to the default rate) and only the chosen run is
evaluated on test. The LGLI ablations (no mask, final loss only) train at LGLI's chosen rate,
so that each differs from full LGLI in one thing; the other baselines train at the default
rate. The last row is a deviation from the published model (masks leave the BatchNorm
running statistics alone) with its own grid. Rows already finished in --out are reused and
an interrupted run continues from its last checkpoint, so an interrupted table resumes
where it stopped.
Prints one Markdown table: R@1/5/10/50 on test, training wall time, parameter count.
"""
import argparse
import contextlib
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import css_generator  # noqa: E402
import datasets  # noqa: E402
import main as driver  # noqa: E402
import test_retrieval  # noqa: E402

DATA_SPLITS = {'train': (1000, 6000, 3), 'test': (300, 1800, 3), 'val': (300, 1000, 3)}
DEFAULT_LR = 1e-2
LR_GRID = (3e-3, 1e-2, 3e-2)
KS = (1, 5, 10, 50)
# (row name, --model, extra flags, learning rate: 'default', 'grid' or the row whose rate it takes)
ROWS = [
    ('imgonly', 'imgonly', [], 'default'),
    ('textonly', 'textonly', [], 'default'),
    ('concat', 'concat', [], 'default'),
    ('tirg', 'tirg', [], 'grid'),
    ('tirg_lastconv', 'tirg_lastconv', [], 'default'),
    ('LGLI', 'LGLI', [], 'grid'),
    ('LGLI, no mask (--mask_source none)', 'LGLI', ['--mask_source', 'none'], 'LGLI'),
    ('LGLI, final loss only (--multi_level_loss False)', 'LGLI',
     ['--multi_level_loss', 'False'], 'LGLI'),
    # a deviation from the published model, under its own name (see README): masks no
    # longer update the BatchNorm running statistics that evaluation uses
    ('LGLI-frozenBN, deviation (--mask_bn_stats frozen)', 'LGLI',
     ['--mask_bn_stats', 'frozen'], 'grid'),
]


def prepare_data(data_dir, seed, scale=1.0):
    """Generate the data set once (split sizes x scale); reuse it when its stamp matches."""
    splits = {s: (max(round(b * scale), 10), max(round(m * scale), 2), p)
              for s, (b, m, p) in DATA_SPLITS.items()}
    stamp = {'seed': seed, 'splits': splits, 'image_size': 64}
    stamp_path = os.path.join(data_dir, 'bench_stamp.json')
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == json.loads(json.dumps(stamp)):
                return
    print(f'generating the benchmark data in {data_dir} (about 2 minutes)', flush=True)
    css_generator.generate(data_dir, seed=seed, image_size=64, splits=splits)
    with open(stamp_path, 'w') as f:
        json.dump(stamp, f)


def run_records(log_dir):
    """The results.jsonl records of the run under log_dir (oldest first), or []."""
    files = sorted(glob.glob(os.path.join(log_dir, '*', 'results.jsonl')))
    if not files:
        return []
    with open(files[-1]) as f:
        return [json.loads(line) for line in f]


def last_record(log_dir):
    """Final results.jsonl record of the run under log_dir, or None."""
    records = run_records(log_dir)
    return records[-1] if records else None


def curve_line(name, lr, log_dir):
    """One row of the training-curve table: validation R@1 and mean training loss at each
    evaluation of the run under log_dir."""
    records = run_records(log_dir)
    recalls = ' / '.join(f'{100 * r["recall_top1_correct_composition"]:.1f}' for r in records)
    losses = ' / '.join(f'{r["train_loss"]:.2f}' for r in records)
    return f'| {name} | {lr:g} | {recalls} | {losses} |'


def run_once(log_dir, argv, done):
    """driver.main(argv + log dir) unless log_dir already holds a record satisfying done().

    An unfinished run that left a checkpoint continues from it (--resume) instead of
    starting over."""
    record = last_record(log_dir)
    if record is None or not done(record):
        checkpoints = sorted(glob.glob(os.path.join(log_dir, '*', 'latest_checkpoint.pth')))
        resume = ['--resume', checkpoints[-1]] if checkpoints and '--test_only' not in argv \
            else []
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
            driver.main(argv + ['--log_dir', log_dir] + resume)
        record = last_record(log_dir)
    return record


def train_row(out, name, model, flags, lr, common):
    """Train one configuration, evaluated on `split` at the end; returns its record."""
    log_dir = os.path.join(out, 'runs', f'{name}_lr{lr:g}'.replace(' ', '_').replace(',', ''))
    argv = common + ['--model', model, '--learning_rate', str(lr)] + flags
    return log_dir, argv


def evaluate_test(log_dir, argv):
    """The test record of the checkpoint trained in log_dir (evaluated once)."""
    checkpoint, = glob.glob(os.path.join(log_dir, '*', 'latest_checkpoint.pth'))
    test_dir = log_dir + '_test'
    return run_once(test_dir, argv + ['--test_only', 'True', '--model_checkpoint', checkpoint,
                                      '--eval_split', 'test'],
                    lambda r: r['split'] == 'test')


def fmt_row(name, lr, train_record, test_record):
    recalls = [f'{100 * test_record[f"recall_top{k}_correct_composition"]:.1f}' for k in KS]
    minutes = train_record['train_seconds'] / 60
    return (f'| {name} | {lr:g} | ' + ' | '.join(recalls) +
            f' | {minutes:.1f} min | {train_record["parameters"] / 1e6:.1f}M |')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--num_iters', type=int, default=1200)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=os.path.join('runs', 'css_recall_table'))
    p.add_argument('--scale', type=float, default=1.0,
                   help='data size factor, for a quick check of the pipeline only')
    args = p.parse_args(argv)
    data_dir = os.path.join(args.out, 'data')
    prepare_data(data_dir, args.seed, args.scale)
    common = ['--dataset', 'css3d', '--dataset_path', data_dir, '--num_iters',
              str(args.num_iters), '--eval_every', str(max(args.num_iters // 2, 1)), '--seed',
              str(args.seed), '--loader_num_workers', '1', '--eval_batch_size', '256']
    finished = lambda r: r['it'] == args.num_iters

    chosen_lr, curve_lines, table = {}, [], []
    for name, model, flags, lr_policy in ROWS:
        if lr_policy == 'grid':
            val = {}
            for lr in LR_GRID:
                log_dir, row_argv = train_row(args.out, name, model, flags, lr, common)
                try:
                    record = run_once(log_dir, row_argv + ['--eval_split', 'val'], finished)
                    val[lr] = record['recall_top1_correct_composition']
                except FloatingPointError as e:  # a diverged rate is a grid result too
                    print(f'{name} lr {lr:g}: {e}', file=sys.stderr)
                    val[lr] = float('-inf')
                curve_lines.append(curve_line(name, lr, log_dir))
            # best validation R@1; a tie goes to the default rate, then to the first
            chosen_lr[name] = max(LR_GRID, key=lambda lr: (val[lr], lr == DEFAULT_LR))
            lr = chosen_lr[name]
            log_dir, row_argv = train_row(args.out, name, model, flags, lr, common)
            train_record = last_record(log_dir)
        else:
            lr = DEFAULT_LR if lr_policy == 'default' else chosen_lr[lr_policy]
            log_dir, row_argv = train_row(args.out, name, model, flags, lr, common)
            train_record = run_once(log_dir, row_argv + ['--eval_split', 'val'], finished)
            curve_lines.append(curve_line(name, lr, log_dir))
        table.append(fmt_row(name, lr, train_record, evaluate_test(log_dir, row_argv)))
        print(f'done: {table[-1]}', file=sys.stderr, flush=True)

    chance = test_retrieval.chance_recall_at_1(datasets.CSSDataset(data_dir, 'test'))
    lines = [f'Generated CSS (scale {args.scale:g}), {args.num_iters} iterations x batch 32, '
             f'seed {args.seed}; recall in % on the test split (chance R@1 '
             f'{100 * chance:.2f}).', '',
             '| model | lr | R@1 | R@5 | R@10 | R@50 | training time | parameters |',
             '|---|---|---|---|---|---|---|---|', *table, '',
             f'Training curves (every run; at iterations {args.num_iters // 2} / '
             f'{args.num_iters}): validation R@1 in %, the last of which chose the grid rows\' '
             'rate, and the mean training loss since the previous evaluation.', '',
             '| model | lr | val R@1 | training loss |', '|---|---|---|---|', *curve_lines]
    with open(os.path.join(args.out, 'table.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
