"""Soak test: train, kill -9 at random moments, resume, and prove nothing was lost.

    python benchmarks/soak.py [--minutes 4] [--seed 0]

A small tirg model trains on a tiny generated CSS set with an evaluation and a checkpoint
every few iterations. The run is killed (SIGKILL to its whole process group, loader workers
included) at random moments and resumed with --resume from its latest checkpoint until it
reaches N iterations; an uninterrupted run of the same N iterations is the reference.
Checks: every checkpoint left behind by a kill loads; the evaluations in results.jsonl are
exactly every eval_every iterations, none missing or repeated; the final weights equal the
uninterrupted run's bit for bit (an iteration lost or run twice would change them).
Last line: iterations=<N> kills=<K> checkpoints_loaded=<C> evaluations_ok=<bool>
identical_to_uninterrupted=<bool>
"""
import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoints  # noqa: E402
import css_generator  # noqa: E402

FLAGS = ['--model', 'tirg', '--loss', 'soft_triplet', '--batch_size', '8', '--image_embed_dim',
         '32', '--loader_num_workers', '1', '--comment', 'soak']


def launch(args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS='1'))


def timed_run(args):
    start = time.perf_counter()
    proc = launch(args)
    if proc.wait() != 0:
        sys.exit(f'training failed: main.py {" ".join(args)}')
    return time.perf_counter() - start


def latest_in(log_dir):
    found = glob.glob(os.path.join(log_dir, '*', 'latest_checkpoint.pth'))
    return found[0] if found else None


def soak(common, log_dir, num_iters, rng, max_wait, max_kills):
    """Run to num_iters, killed at random moments up to max_kills times (then left to finish);
    returns (kills, checkpoints loaded)."""
    kills = loaded = 0
    while True:
        latest = latest_in(log_dir)
        if latest and checkpoints.load(latest)['it'] == num_iters:
            return kills, loaded
        args = ['--resume', latest, '--num_iters', str(num_iters)] if latest else \
            common + ['--num_iters', str(num_iters), '--log_dir', log_dir]
        proc = launch(args)
        try:
            proc.wait(timeout=rng.uniform(1.0, max_wait) if kills < max_kills else None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            for path in glob.glob(os.path.join(log_dir, '*', '*_checkpoint.pth')):
                checkpoints.load(path)  # raises if a kill left a broken checkpoint
                loaded += 1
            if not latest_in(log_dir):  # killed before the first checkpoint: start over
                for leftover in glob.glob(os.path.join(log_dir, '*')):
                    subprocess.run(['rm', '-rf', leftover], check=True)


def evaluations_ok(log_dir, num_iters, eval_every):
    path, = glob.glob(os.path.join(log_dir, '*', 'results.jsonl'))
    with open(path) as f:
        its = [json.loads(line)['it'] for line in f]
    return its == list(range(eval_every, num_iters + 1, eval_every))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--minutes', type=float, default=4.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--kills', type=int, default=5, help='SIGKILLs before the run may finish')
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'css')
        css_generator.generate(data, seed=args.seed, splits={'train': (40, 60, 3),
                                                             'test': (20, 20, 3)})
        common = ['--dataset_path', data, '--seed', str(args.seed), *FLAGS]
        calibration = 40
        seconds = timed_run(common + ['--num_iters', str(calibration), '--eval_every', '20',
                                      '--log_dir', os.path.join(tmp, 'calibration')])
        # the reference and the soaked run share the budget; kills add restarts
        num_iters = max(int(calibration * args.minutes * 60 / 3 / seconds), 20)
        eval_every = max(num_iters // 20, 1)
        num_iters = eval_every * (num_iters // eval_every)
        common += ['--eval_every', str(eval_every)]
        print(f'soak: {num_iters} iterations, an evaluation and checkpoint every {eval_every}')
        reference = os.path.join(tmp, 'reference')
        timed_run(common + ['--num_iters', str(num_iters), '--log_dir', reference])
        soaked = os.path.join(tmp, 'soaked')
        kills, loaded = soak(common, soaked, num_iters, rng, seconds, args.kills)
        a = checkpoints.load(latest_in(reference))['model_state_dict']
        b = checkpoints.load(latest_in(soaked))['model_state_dict']
        identical = all(torch.equal(a[k], b[k]) for k in a)
        evals = evaluations_ok(soaked, num_iters, eval_every)
        print(f'iterations={num_iters} kills={kills} checkpoints_loaded={loaded} '
              f'evaluations_ok={evals} identical_to_uninterrupted={identical}')
        return 0 if identical and evals else 1


if __name__ == '__main__':
    sys.exit(main())
