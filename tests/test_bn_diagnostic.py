"""benchmarks/bn_diagnostic.py: BatchNorm statistics re-estimated from images."""
import glob
import importlib.util
import os

import pytest
import torch

import main as driver
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location(
    'bn_diagnostic', os.path.join(ROOT, 'benchmarks', 'bn_diagnostic.py'))
bn_diagnostic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bn_diagnostic)


class ChannelStats(torch.nn.Module):
    """extract_img_feature = BatchNorm over the raw image channels."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)

    def extract_img_feature(self, imgs):
        return self.bn(imgs)


def test_statistics_are_the_average_over_the_batches_seen():
    images = torch.rand(8, 3, 4, 5) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1) + 0.5
    model = ChannelStats()
    model.bn.running_mean.fill_(7.0)  # stale statistics are replaced, not blended
    bn_diagnostic.reestimate_bn_statistics(model, images, batches=1, batch_size=8)
    per_channel = images.permute(1, 0, 2, 3).reshape(3, -1)
    torch.testing.assert_close(model.bn.running_mean, per_channel.mean(1))
    torch.testing.assert_close(model.bn.running_var, per_channel.var(1))  # unbiased
    assert not model.training
    bn_diagnostic.reestimate_bn_statistics(model, images, batches=2, batch_size=4)
    torch.testing.assert_close(model.bn.running_mean, per_channel.mean(1))  # equal halves
    bn_diagnostic.reestimate_bn_statistics(model, images, batches=1, batch_size=4, seed=1)
    assert not torch.allclose(model.bn.running_mean, per_channel.mean(1))  # half the images


def test_command_on_a_checkpoint(css_dir, tmp_path, capsys):
    driver.main(['--dataset_path', css_dir, '--log_dir', str(tmp_path), '--model', 'LGLI',
                 '--batch_size', '8', '--image_embed_dim', '32', '--num_iters', '4',
                 '--loader_num_workers', '0'])
    checkpoint, = glob.glob(os.path.join(str(tmp_path), '*', 'latest_checkpoint.pth'))
    as_trained = dict(driver.main(['--test_only', '--model_checkpoint', checkpoint,
                                   '--log_dir', str(tmp_path)]))
    capsys.readouterr()
    bn_diagnostic.main([checkpoint, '--eval_split', 'test', '--batches', '1'])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(item.split('=') for item in last.split())
    assert float(values['recall_top1_as_trained']) == pytest.approx(
        as_trained['recall_top1_correct_composition'], abs=5e-5)
    assert 0.0 <= float(values['recall_top1_bn_from_images']) <= 1.0
