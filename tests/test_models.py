"""Every registered model builds, composes, and trains; backbone weights load or fail clearly."""
import argparse
import os
import urllib.error

import pytest
import torch
import torchvision

import img_text_composition_models as m
from errors import UsageError

VOCAB = ['<UNK>', 'add', 'red', 'circle', 'remove']
TEXTS = ['add red circle', 'remove circle', '', 'unknown words here']


def make_opt(model, **kw):
    return argparse.Namespace(**{'model': model, 'image_embed_dim': 32, 'loss':
                                 'batch_based_classification', 'backbone_weights': 'none',
                                 'mask_scale': 1e-5, 'text_proj': 'mlp', 'mask_bn_stats': 'shared',
                                 'multi_level_loss': True, **kw})


@pytest.mark.parametrize('name', sorted(m.MODELS))
@pytest.mark.parametrize('loss', ['batch_based_classification', 'soft_triplet'])
def test_forward_backward(name, loss):
    torch.manual_seed(0)
    model = m.build_model(make_opt(name, loss=loss), VOCAB, (64, 64))
    imgs, targets, masks = (torch.randn(4, 3, 64, 64) for _ in range(3))
    assert model.extract_img_feature(imgs).shape == (4, 32)
    assert model.extract_text_feature(TEXTS).shape == (4, 32)
    assert model.compose_img_text(imgs, TEXTS, masks).shape == (4, 32)
    losses = model(imgs, TEXTS, targets, masks)
    assert losses['total'].ndim == 0 and torch.isfinite(losses['total'])
    losses['total'].backward()
    assert model.img_model.stem[0].weight.grad.abs().sum() > 0  # targets always use the CNN
    uses_text = name != 'imgonly'
    assert (model.text_model.embedding_layer.weight.grad is not None) == uses_text


@pytest.mark.parametrize('name', ['tirg_lastconv', 'LGLI'])
def test_non_square_input(name):
    model = m.build_model(make_opt(name, text_proj='linear'), VOCAB, (120, 180))
    imgs = torch.randn(2, 3, 120, 180)
    assert model.compose_img_text(imgs, TEXTS[:2], imgs).shape == (2, 32)


def test_backbone_levels_shapes():
    low, mid, high = m.ResNetBackbone().levels(torch.randn(2, 3, 64, 96))
    assert low.shape == (2, 64, 16, 24) and mid.shape == (2, 128, 8, 12)
    assert high.shape == (2, 512, 2, 3)


def test_tirg_composition_formula():
    torch.manual_seed(0)
    model = m.build_model(make_opt('tirg'), VOCAB, (64, 64)).eval()
    imgs = torch.randn(3, 3, 64, 64)
    img, text = model.extract_img_feature(imgs), model.extract_text_feature(TEXTS[:3])
    both = torch.cat([img, text], 1)
    expected = torch.sigmoid(model.gated_feature_composer(both)) * img + \
        10.0 * model.res_info_composer(both)
    assert torch.allclose(model.compose_img_text(imgs, TEXTS[:3]), expected, atol=1e-5)


def test_backbone_weights_from_path(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / 'r18.pth'
    torch.save(reference.state_dict(), path)
    backbone = m.ResNetBackbone(str(path))
    assert backbone.pretrained
    assert torch.equal(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    model = m.build_model(make_opt('tirg', backbone_weights=str(path)), VOCAB, (64, 64))
    assert len(model.pretrained_parameters()) == len(list(model.img_model.parameters()))
    assert m.build_model(make_opt('tirg'), VOCAB, (64, 64)).pretrained_parameters() == []


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(UsageError, match='no such file'):
        m.ResNetBackbone(str(tmp_path / 'missing.pth'))
    bad = tmp_path / 'bad.pth'
    torch.save({'conv1.weight': torch.zeros(1)}, bad)
    with pytest.raises(UsageError, match='not a ResNet-18 state dict'):
        m.ResNetBackbone(str(bad))


def test_imagenet_weights_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    with pytest.raises(UsageError) as e:
        m.ResNetBackbone('imagenet')
    message = str(e.value)
    assert 'resnet18-f37072fd.pth' in message and '--backbone_weights' in message
    assert str(tmp_path) in message and '\n' not in message


def test_imagenet_weights_from_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    reference = torchvision.models.resnet18()
    os.makedirs(os.path.dirname(m.imagenet_weights_path()))
    torch.save(reference.state_dict(), m.imagenet_weights_path())
    backbone = m.ResNetBackbone('imagenet')
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
