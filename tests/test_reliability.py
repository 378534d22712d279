"""Exact resume, atomic and safe checkpoints, signals, non-finite losses, bad input."""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoints
import css_generator
import main as driver
import torch_functions
from errors import UsageError
from tests.conftest import ROOT

TINY = ['--model', 'tirg', '--loss', 'soft_triplet', '--batch_size', '8', '--image_embed_dim',
        '32', '--loader_num_workers', '0']


def run(css_dir, log_dir, *extra):
    driver.main(['--dataset_path', css_dir, '--log_dir', str(log_dir), *TINY, *extra])
    return checkpoint_in(log_dir)


def checkpoint_in(log_dir, name='latest_checkpoint.pth'):
    path, = glob.glob(os.path.join(str(log_dir), '*', name))
    return path


def test_resume_is_exact(css_dir, tmp_path):
    one_go = run(css_dir, tmp_path / 'a', '--num_iters', '6', '--eval_every', '3')
    first_half = run(css_dir, tmp_path / 'b', '--num_iters', '3', '--eval_every', '3')
    driver.main(['--resume', first_half, '--num_iters', '6', '--dataset_path', css_dir])
    a, b = checkpoints.load(one_go), checkpoints.load(first_half)
    assert a['it'] == b['it'] == 6
    for name, tensor in a['model_state_dict'].items():
        assert torch.equal(tensor, b['model_state_dict'][name]), name
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])
    with open(os.path.join(os.path.dirname(first_half), 'results.jsonl')) as f:
        assert [json.loads(line)['it'] for line in f] == [3, 6]


def test_checkpoint_content_is_plain(css_dir, tmp_path):
    path = run(css_dir, tmp_path, '--num_iters', '2', '--eval_every', '1')
    state = torch.load(path, weights_only=True)
    assert {'it', 'opt', 'model_state_dict', 'optimizer_state_dict', 'vocab', 'rng'} <= set(state)
    assert isinstance(state['opt'], dict) and isinstance(state['vocab'], list)
    best = torch.load(checkpoint_in(tmp_path, 'best_checkpoint.pth'), weights_only=True)
    assert best['best_recall'] >= 0 and best['it'] in (1, 2)


def test_rng_states_round_trip():
    states = checkpoints.rng_states()
    expected = (np.random.rand(), torch.rand(1).item())
    checkpoints.set_rng_states(states)
    assert (np.random.rand(), torch.rand(1).item()) == expected


def test_atomic_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'latest_checkpoint.pth')
    checkpoints.save(path, {'it': 1})
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        with open(f, 'wb') as out:
            out.write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError):
        checkpoints.save(path, {'it': 2})
    monkeypatch.setattr(torch, 'save', real_save)
    assert torch.load(path, weights_only=True) == {'it': 1}


def test_unsafe_and_foreign_checkpoints_are_refused(tmp_path):
    pickled = tmp_path / 'pickled.pth'
    torch.save({'it': 1, 'opt': argparse.Namespace(model='tirg'), 'model_state_dict': {},
                'vocab': []}, pickled)
    with pytest.raises(UsageError, match='pickled Python objects'):
        checkpoints.load(str(pickled))
    foreign = tmp_path / 'foreign.pth'
    torch.save({'weights': torch.zeros(1)}, foreign)
    with pytest.raises(UsageError, match='not a checkpoint'):
        checkpoints.load(str(foreign))
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(b'PK\x03\x04 not really')
    with pytest.raises(UsageError, match='cannot load checkpoint'):
        checkpoints.load(str(truncated))
    weights_only_state = tmp_path / 'no_training_state.pth'
    torch.save({'it': 1, 'opt': {}, 'model_state_dict': {}, 'vocab': []}, weights_only_state)
    assert checkpoints.load(str(weights_only_state))['it'] == 1
    with pytest.raises(UsageError, match='cannot resume .* lacks optimizer_state_dict'):
        checkpoints.load(str(weights_only_state), resume=True)


def test_test_only_refuses_mismatches(css_dir, tmp_path):
    path = run(css_dir, tmp_path, '--num_iters', '1')
    with pytest.raises(UsageError, match='--model LGLI does not match'):
        driver.main(['--dataset_path', css_dir, '--test_only', '--model_checkpoint', path,
                     '--model', 'LGLI'])
    state = torch.load(path, weights_only=True)
    state['model_state_dict']['img_fc.weight'] = torch.zeros(3, 3)
    torch.save(state, tmp_path / 'edited.pth')
    with pytest.raises(UsageError, match=r'img_fc.weight has shape \(3, 3\)'):
        driver.main(['--dataset_path', css_dir, '--test_only', '--model_checkpoint',
                     str(tmp_path / 'edited.pth'), '--log_dir', str(tmp_path)])


def nan_on_calls(calls):
    real = torch_functions.LOSSES['soft_triplet']
    count = {'n': 0}

    def loss(query, target):
        count['n'] += 1
        value = real(query, target)
        return value * float('nan') if count['n'] in calls else value
    return loss


def test_nonfinite_loss_stops_with_the_last_good_checkpoint(css_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(torch_functions.LOSSES, 'soft_triplet', nan_on_calls({3}))
    with pytest.raises(FloatingPointError, match='iteration 3.*latest_checkpoint.pth'):
        run(css_dir, tmp_path, '--num_iters', '5', '--eval_every', '2')
    assert checkpoints.load(checkpoint_in(tmp_path))['it'] == 2


def test_skip_nonfinite_counts(css_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(torch_functions.LOSSES, 'soft_triplet', nan_on_calls({2, 4}))
    path = run(css_dir, tmp_path, '--num_iters', '5', '--skip_nonfinite')
    state = checkpoints.load(path)
    assert state['it'] == 5 and state['skipped_nonfinite'] == 2


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_exits_zero(css_dir, tmp_path, sig):
    cmd = [sys.executable, 'main.py', '--dataset_path', css_dir, '--log_dir', str(tmp_path),
           '--num_iters', '100000', '--eval_every', '100000', *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    lines = []
    for line in proc.stdout:  # wait until training has begun
        lines.append(line)
        if line.startswith('model tirg'):
            break
    time.sleep(2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, ''.join(lines) + out
    assert f'{sig.name}: stopped after iteration' in out
    state = checkpoints.load(checkpoint_in(tmp_path))
    assert state['it'] >= 1 and f'--resume {checkpoint_in(tmp_path)}' in out


def test_bad_input_one_line_errors(css_dir, tmp_path):
    with pytest.raises(UsageError, match='not found: .*nowhere'):
        driver.main(['--dataset_path', str(tmp_path / 'nowhere'), '--log_dir', str(tmp_path)])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(UsageError, match='not found'):
        driver.main(['--dataset_path', str(empty), '--log_dir', str(tmp_path)])
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(UsageError, match='--log_dir'):
        driver.main(['--dataset_path', css_dir, '--log_dir', str(blocker / 'sub'), *TINY])
    small = tmp_path / 'small'
    css_generator.generate(str(small), image_size=16, splits={'train': (12, 4, 2),
                                                              'test': (12, 4, 2)})
    with pytest.raises(UsageError, match='at least 32x32'):
        driver.main(['--dataset_path', str(small), '--log_dir', str(tmp_path), *TINY])
    with pytest.raises(UsageError, match='--dataset_path is required'):
        driver.main(['--dataset', 'mitstates'])


@pytest.mark.parametrize('flag,value', [('--model', 'nope'), ('--dataset', 'coco'),
                                        ('--loss', 'hinge')])
def test_unknown_choices_list_the_choices(flag, value, capsys):
    with pytest.raises(SystemExit):
        driver.parse_args([flag, value])
    assert 'choose from' in capsys.readouterr().err


def test_cli_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, 'main.py', '--dataset_path', str(tmp_path / 'x')],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: CSS dataset file')


def test_amp_channels_last_and_cache_run_on_cpu(css_dir, tmp_path):
    path = run(css_dir, tmp_path, '--num_iters', '2', '--amp', 'bf16', '--channels_last',
               '--cache_images')
    state = checkpoints.load(path)
    assert state['it'] == 2 and 'scaler_state_dict' in state
    assert all(torch.isfinite(t).all() for t in state['model_state_dict'].values()
               if t.is_floating_point())
    with pytest.raises(UsageError, match='fp16 needs CUDA'):
        driver.main(['--dataset_path', css_dir, '--amp', 'fp16', '--device', 'cpu'])


def test_cache_images_decodes_once(css_dir, monkeypatch):
    import datasets
    ds = datasets.CSSDataset(css_dir, 'test', transform=datasets.make_transform())
    ds.cache_images = True
    reads = []
    real = datasets.read_rgb
    monkeypatch.setattr(datasets, 'read_rgb', lambda path: reads.append(path) or real(path))
    first, again = ds.get_img(3), ds.get_img(3)
    assert torch.equal(first, again) and len(reads) == 1
