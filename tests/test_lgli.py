"""LGLI (TILA): level sizes, infiltration formula, mask branch, multi-level loss."""
import argparse

import pytest
import torch

import img_text_composition_models as m
import torch_functions

VOCAB = ['<UNK>', 'make', 'red', 'circle', 'blue']
TEXTS = ['make red circle blue', 'make circle red']


def lgli(**kw):
    opt = argparse.Namespace(**{'model': 'LGLI', 'image_embed_dim': 32, 'loss':
                                'batch_based_classification', 'backbone_weights': 'none',
                                'mask_scale': 1e-5, 'text_proj': 'mlp', 'mask_bn_stats': 'shared',
                                'multi_level_loss': True, **kw})
    return m.build_model(opt, VOCAB, (64, 64))


@pytest.mark.parametrize('size', [(64, 64), (120, 180), (224, 224), (65, 97)])
def test_level_sizes_match_the_backbone(size):
    levels = m.ResNetBackbone().eval().levels(torch.zeros(1, 3, *size))
    assert [tuple(x.shape[2:]) for x in levels] == m.level_sizes(size)


@pytest.mark.parametrize('kind,layers', [('mlp', 2), ('linear', 1)])
def test_text_map_variants(kind, layers):
    text_map = m.TextMap(32, 64, (16, 16), kind)
    linears = [l for l in text_map.modules() if isinstance(l, torch.nn.Linear)]
    assert len(linears) == layers and linears[-1].out_features == 64 * 16 * 16
    if kind == 'mlp':
        assert linears[0].out_features == 64 * 16  # Linear(d, C*h) first
    assert text_map(torch.randn(3, 32)).shape == (3, 64, 16, 16)


def test_infiltrate_hand_computed():
    # one sample, one channel, 2 spatial positions: F = [1, 3], mu = 2, sigma = 1
    feature = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    mask_feature = torch.tensor([2.0, 0.0]).view(1, 1, 1, 2)
    text_map = torch.tensor([10.0, 100.0]).view(1, 1, 1, 2)
    out = m.infiltrate(feature, mask_feature, text_map, mask_scale=0.5)
    # C = F + 0.5 * F * Fm = [2, 3]; ((C - 2) / (1 + 1e-5)) * T + F
    expected = torch.tensor([0.0 * 10 + 1, (1 / (1 + 1e-5)) * 100 + 3])
    assert torch.allclose(out.flatten(), expected)


def test_statistics_are_detached():
    feature = torch.randn(2, 3, 4, 4, requires_grad=True)
    text_map = torch.randn(2, 3, 4, 4)
    m.infiltrate(feature, torch.zeros_like(feature), text_map, 1e-5).sum().backward()
    # with mu and sigma detached, d out / d F = T / (sigma + eps) + 1 elementwise
    sigma = feature.detach().std(dim=(2, 3), unbiased=False, keepdim=True)
    assert torch.allclose(feature.grad, text_map / (sigma + 1e-5) + 1, atol=1e-4)


def test_query_and_gallery_share_fc1_over_three_levels():
    torch.manual_seed(0)
    model = lgli().eval()
    imgs = torch.randn(2, 3, 64, 64)
    rep, levels = model.extract_img_levels(imgs)
    assert [l.shape[1] for l in levels] == [64, 128, 512]
    assert torch.allclose(rep, model.fc1(torch.cat(levels, 1)), atol=1e-6)
    assert not hasattr(model, 'img_fc')


def test_mask_changes_the_query_with_a_large_scale():
    torch.manual_seed(0)
    model = lgli(mask_scale=1.0).eval()
    imgs = torch.randn(2, 3, 64, 64)
    white, other = torch.ones_like(imgs), torch.randn_like(imgs)
    a = model.compose_img_text(imgs, TEXTS, white)
    assert not torch.allclose(a, model.compose_img_text(imgs, TEXTS, other))
    assert not torch.allclose(a, model.compose_img_text(imgs, TEXTS[::-1], white))
    with pytest.raises(ValueError, match='mask'):
        model.compose_img_text(imgs, TEXTS)


def test_multi_level_loss_terms():
    torch.manual_seed(0)
    model = lgli()
    imgs, targets, masks = (torch.randn(2, 3, 64, 64) for _ in range(3))
    losses = model(imgs, TEXTS, targets, masks)
    assert set(losses) == {'total', 'final', 'L', 'M', 'H'}
    assert torch.allclose(losses['total'], losses['final'] + losses['L'] + losses['M'] + losses['H'])
    model.eval()  # deterministic: recompute the H term by hand
    losses = model(imgs, TEXTS, targets, masks)
    _, q_levels = model.compose_levels(imgs, TEXTS, masks)
    _, t_levels = model.extract_img_levels(targets)
    norm = model.normalization_layer
    expected = torch_functions.batch_based_classification_loss(norm(q_levels[2]), norm(t_levels[2]))
    assert torch.allclose(losses['H'], expected)
    single = lgli(multi_level_loss=False)(imgs, TEXTS, targets, masks)
    assert set(single) == {'total', 'final'}


def test_frozen_mask_bn_statistics():
    """'frozen' trains identically but keeps the masks out of the BN running statistics."""
    imgs, targets = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    masks = torch.full((4, 3, 64, 64), -2.0)  # mostly-black masks: very different statistics
    runs = {}
    for mode in ('shared', 'frozen'):
        torch.manual_seed(0)
        model = lgli(mask_bn_stats=mode)
        losses = model(imgs, TEXTS * 2, targets, masks)
        runs[mode] = (losses['total'].item(), model.img_model.stem[1].running_mean.clone())
    torch.manual_seed(0)
    reference = lgli()
    reference.img_model(imgs)  # what the statistics see without masks: images, then targets
    reference.img_model(targets)
    assert runs['shared'][0] == runs['frozen'][0]  # same training computation
    assert torch.allclose(runs['frozen'][1], reference.img_model.stem[1].running_mean)
    assert not torch.allclose(runs['shared'][1], runs['frozen'][1])
    bn = reference.img_model.stem[1]
    assert bn.momentum == 0.1  # the context restores the momentum


def test_image_pass_precedes_mask_pass():
    """As published, the reference image goes through the backbone before its mask, so with
    momentum 1 the running statistics after composing are the mask batch's."""
    imgs, masks = torch.randn(4, 3, 64, 64), torch.full((4, 3, 64, 64), -2.0)
    model = lgli()
    bn = model.img_model.stem[1]
    bn.momentum = 1.0
    model.compose_img_text(imgs, TEXTS * 2, masks)
    after_compose = bn.running_mean.clone()
    model.img_model(masks)
    assert torch.equal(after_compose, bn.running_mean)
    model.img_model(imgs)
    assert not torch.allclose(after_compose, bn.running_mean)
