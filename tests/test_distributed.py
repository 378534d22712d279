"""torchrun with two CPU processes (gloo): identical parameters, a checkpoint that loads."""
import glob
import os
import subprocess
import sys

import torch

import main as driver
from tests.conftest import ROOT


def test_two_process_training(css_dir, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
           '--master_port=29517', 'main.py', '--dataset_path', css_dir, '--log_dir',
           str(tmp_path), '--model', 'imgonly', '--batch_size', '4', '--image_embed_dim', '32',
           '--num_iters', '4', '--eval_every', '2', '--loader_num_workers', '0']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '2 processes, effective batch 8' in proc.stdout
    assert 'parameters identical on every rank' in proc.stdout
    assert proc.stdout.count('test recall_top1_correct_composition') == 2  # rank 0 only
    path, = glob.glob(str(tmp_path / '*' / 'latest_checkpoint.pth'))  # one run directory
    state = torch.load(path, weights_only=True)
    assert state['it'] == 4
    # the checkpoint evaluates in a single process
    results = driver.main(['--test_only', '--model_checkpoint', path, '--dataset_path', css_dir,
                           '--log_dir', str(tmp_path / 'single'), '--loader_num_workers', '0'])
    assert 0 <= dict(results)['recall_top1_correct_composition'] <= 1


def test_ranks_draw_different_queries(css_dir):
    import datasets
    a, b = (datasets.CSSDataset(css_dir, 'train') for _ in range(2))
    b.rank = 1
    assert [a.generate_training_query(i) for i in range(8)] != \
        [b.generate_training_query(i) for i in range(8)]
