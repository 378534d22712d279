"""The driver: flag parsing, a tiny end-to-end training run, --test_only on its checkpoint."""
import glob
import json
import os

import pytest
import torch

import main as driver
import test_retrieval
from errors import UsageError


def test_bool_flags_parse_true_and_false():
    opt = driver.parse_args(['--use_complete_text_query', 'True'])
    assert opt.use_complete_text_query is True
    assert driver.parse_args(['--use_complete_text_query', 'False']).use_complete_text_query is False
    assert driver.parse_args(['--use_complete_text_query=0']).use_complete_text_query is False
    assert driver.parse_args(['--test_only', '--model_checkpoint', 'x']).test_only is True
    with pytest.raises(SystemExit):
        driver.parse_args(['--use_complete_text_query', 'maybe'])


def test_seed_style_command_line_parses():
    opt = driver.parse_args(['--dataset=css3d', '--dataset_path=../data/css/', '--model=tirg',
                             '--loss=batch_based_classification',
                             '--learning_rate_decay_frequency=50000', '--num_iters=160000',
                             '--use_complete_text_query', 'True', '--embed_dim', '256'])
    assert (opt.learning_rate_decay_frequency, opt.num_iters, opt.image_embed_dim) == \
        (50000, 160000, 256)
    assert opt.backbone_weights == 'none'


def test_defaults_are_the_quick_start():
    opt = driver.parse_args([])
    assert (opt.dataset, opt.dataset_path) == ('css3d', driver.DEFAULT_CSS_PATH)


def test_bad_flags(capsys):
    with pytest.raises(UsageError, match='batch_size'):
        driver.parse_args(['--batch_size', '1'])
    with pytest.raises(UsageError, match='model_checkpoint'):
        driver.parse_args(['--test_only', 'True'])
    with pytest.raises(SystemExit):
        driver.parse_args(['--model', 'nope'])
    assert 'tirg' in capsys.readouterr().err  # argparse lists the choices


@pytest.fixture(scope='module')
def tiny_run(css_dir, tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp('runs'))
    argv = ['--dataset_path', css_dir, '--num_iters', '60', '--eval_every', '30',
            '--batch_size', '16', '--image_embed_dim', '64', '--loader_num_workers', '0',
            '--log_dir', log_dir, '--comment', 'tiny', '--seed', '1', '--visualize', '3']
    results = driver.main(argv)
    run_dir, = glob.glob(os.path.join(log_dir, '*_tiny'))
    return results, run_dir


def test_training_run_learns(tiny_run, css_dir):
    results, run_dir = tiny_run
    with open(os.path.join(run_dir, 'results.jsonl')) as f:
        evals = [json.loads(line) for line in f]
    assert [e['it'] for e in evals] == [30, 60]
    assert evals[1]['train_loss'] < evals[0]['train_loss']  # the loss falls
    import datasets
    chance = test_retrieval.chance_recall_at_1(datasets.CSSDataset(css_dir, 'test'))
    assert dict(results)['recall_top1_correct_composition'] > 5 * chance
    assert os.path.isfile(os.path.join(run_dir, 'args.json'))
    assert glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))
    grids = sorted(glob.glob(os.path.join(run_dir, 'retrieval_test_it*.png')))
    assert [os.path.basename(g) for g in grids] == ['retrieval_test_it000030.png',
                                                    'retrieval_test_it000060.png']
    assert glob.glob(os.path.join(run_dir, '*', 'events.out.tfevents.*'))  # add_hparams run


def test_standalone_evaluation_matches_main(tiny_run, css_dir, tmp_path, capsys):
    import test_retrieval
    results, run_dir = tiny_run
    capsys.readouterr()
    output = tmp_path / 'results.json'
    again = test_retrieval.main(['--model_checkpoint', os.path.join(run_dir, 'latest_checkpoint.pth'),
                                 '--dataset_path', css_dir, '--output', str(output),
                                 '--log_dir', str(tmp_path), '--visualize', '2'])
    printed = capsys.readouterr().out
    for name, value in results:
        assert f'test {name} {value:.4f}' in printed
    assert json.loads(output.read_text()) == dict(results) == dict(again)
    assert glob.glob(str(tmp_path / '*' / 'retrieval_test_it000060.png'))


def test_checkpoint_and_test_only(tiny_run, css_dir, capsys):
    results, run_dir = tiny_run
    path = os.path.join(run_dir, 'latest_checkpoint.pth')
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint['it'] == 60 and checkpoint['opt']['model'] == 'LGLI'
    assert {'model_state_dict', 'optimizer_state_dict', 'vocab'} <= set(checkpoint)
    capsys.readouterr()
    again = driver.main(['--dataset_path', css_dir, '--test_only', 'True', '--model_checkpoint',
                         path, '--log_dir', run_dir, '--loader_num_workers', '0'])
    printed = capsys.readouterr().out
    for name, value in results:
        assert f'test {name} {value:.4f}' in printed
    assert again == results


def test_test_only_missing_checkpoint(css_dir, tmp_path):
    with pytest.raises(UsageError, match='checkpoint not found'):
        driver.main(['--dataset_path', css_dir, '--test_only', '--model_checkpoint',
                     str(tmp_path / 'none.pth'), '--log_dir', str(tmp_path)])
