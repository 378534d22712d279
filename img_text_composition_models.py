"""Image-text composition models, one registry (`MODELS`) whose keys are the --model choices.

Every model honours TIRG's interface (Vo et al., "Composing Text and Image for Image
Retrieval - An Empirical Odyssey", CVPR 2019):
    extract_img_feature(imgs (B, 3, H, W))            -> (B, d)  gallery / target features
    extract_text_feature(texts [B strings])            -> (B, d)
    compose_img_text(imgs, texts, masks=None)           -> (B, d)  query features
    compute_loss(imgs_query, texts, imgs_target, masks=None) -> {'total': scalar, terms...}
`forward` is `compute_loss`, so a DistributedDataParallel wrapper trains any of them.
`masks` (B, 3, H, W) are LPVL localisation masks; models without a mask branch ignore them.
"""
import contextlib
import os

import torch
import torchvision
from torch import nn

import torch_functions
from errors import UsageError
from text_model import TextLSTMModel

IMAGENET_WEIGHTS = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
LEVEL_CHANNELS = (64, 128, 512)  # channels of the L, M, H levels of ResNet-18


def imagenet_weights_path():
    """Where torchvision's weights API keeps the ImageNet ResNet-18 (honours TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(IMAGENET_WEIGHTS.url))


def load_backbone_state(weights):
    """State dict for `--backbone_weights`: 'none' (random init) -> None, 'imagenet', or a
    path to a ResNet-18 state dict."""
    if weights == 'none':
        return None
    if weights == 'imagenet':
        try:
            return IMAGENET_WEIGHTS.get_state_dict(progress=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError: no network
            raise UsageError(
                f'ImageNet ResNet-18 weights are not on disk and cannot be downloaded ({e}); '
                f'put {os.path.basename(IMAGENET_WEIGHTS.url)} from {IMAGENET_WEIGHTS.url} at '
                f'{imagenet_weights_path()} (TORCH_HOME sets the folder) or pass '
                f'--backbone_weights /path/to/{os.path.basename(IMAGENET_WEIGHTS.url)}') from None
    if not os.path.isfile(weights):
        raise UsageError(f'--backbone_weights: no such file {weights} (use none, imagenet or '
                         'the path of a ResNet-18 state dict)')
    try:
        return torch.load(weights, map_location='cpu', weights_only=True)
    except Exception as e:  # any unreadable file is a user error here, named in one line
        raise UsageError(f'--backbone_weights: cannot load {weights}: '
                         f'{str(e).splitlines()[0]}') from None


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18 without its classifier, exposing TILA's three levels."""

    def __init__(self, weights='none'):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        state = load_backbone_state(weights)
        if state is not None:
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise UsageError(f'--backbone_weights {weights} is not a ResNet-18 state '
                                 f'dict: {str(e).splitlines()[0]}') from None
        self.pretrained = state is not None
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)

    def levels(self, x):
        """x (B, 3, H, W) -> L (B, 64, H/4, W/4), M (B, 128, H/8, W/8), H (B, 512, H/32, W/32)."""
        low = self.stem(x)
        mid = self.layer2(self.layer1(low))
        return low, mid, self.layer4(self.layer3(mid))

    def forward(self, x):
        """x (B, 3, H, W) -> H feature map (B, 512, H/32, W/32)."""
        return self.levels(x)[2]


def pool(x):
    """Global average pooling: (B, C, h, w) -> (B, C)."""
    return x.mean(dim=(2, 3))


class ImgTextCompositionBase(nn.Module):
    """Shared parts: ResNet-18 image model, LSTM text model, normalisation, loss."""

    uses_mask = False  # True: queries are composed with an LPVL mask
    uses_all_parameters = True  # False: DistributedDataParallel must look for unused ones

    def __init__(self, vocab_words, embed_dim=512, loss='batch_based_classification',
                 backbone_weights='none'):
        super().__init__()
        self.embed_dim = embed_dim
        self.loss_fn = torch_functions.LOSSES[loss]
        self.normalization_layer = torch_functions.NormalizationLayer(4.0, learn_scale=True)
        self.img_model = ResNetBackbone(backbone_weights)
        self.img_fc = nn.Linear(LEVEL_CHANNELS[2], embed_dim)
        self.text_model = TextLSTMModel(vocab_words, text_embed_dim=embed_dim)

    @classmethod
    def from_args(cls, opt, vocab_words, input_size):
        """Build from parsed flags; `input_size` (H, W) matters to models with spatial maps."""
        return cls(vocab_words, embed_dim=opt.image_embed_dim, loss=opt.loss,
                   backbone_weights=opt.backbone_weights)

    def pretrained_parameters(self):
        """Parameters loaded from pretrained weights (trained at a lower learning rate)."""
        return list(self.img_model.parameters()) if self.img_model.pretrained else []

    def extract_img_feature(self, imgs):
        """imgs (B, 3, H, W) -> (B, d) = fc(pool(H))."""
        return self.img_fc(pool(self.img_model(imgs)))

    def extract_text_feature(self, texts):
        """texts: B strings -> (B, d)."""
        return self.text_model(texts)

    def compose_img_text(self, imgs, texts, masks=None):
        """Query features (B, d) from reference images (B, 3, H, W), B texts and, for models
        with a mask branch, LPVL masks (B, 3, H, W)."""
        raise NotImplementedError

    def compute_loss(self, imgs_query, texts, imgs_target, masks=None):
        """The configured metric-learning loss between normalised query and target features."""
        query = self.normalization_layer(self.compose_img_text(imgs_query, texts, masks))
        target = self.normalization_layer(self.extract_img_feature(imgs_target))
        return {'total': self.loss_fn(query, target)}

    def forward(self, imgs_query, texts, imgs_target, masks=None):
        """compute_loss, so that DistributedDataParallel's forward trains the model."""
        return self.compute_loss(imgs_query, texts, imgs_target, masks)


class ImgOnly(ImgTextCompositionBase):
    """Baseline: the query is the reference image's feature; the text is ignored."""

    uses_all_parameters = False  # the text model is never used

    def compose_img_text(self, imgs, texts, masks=None):
        return self.extract_img_feature(imgs)


class TextOnly(ImgTextCompositionBase):
    """Baseline: the query is the text feature; the reference image is ignored."""

    def compose_img_text(self, imgs, texts, masks=None):
        return self.extract_text_feature(texts)


class Concat(ImgTextCompositionBase):
    """Baseline: an MLP on the concatenated image and text features."""

    def __init__(self, vocab_words, embed_dim=512, **kwargs):
        super().__init__(vocab_words, embed_dim, **kwargs)
        d = embed_dim
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d),
            nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(2 * d, d))

    def compose_img_text(self, imgs, texts, masks=None):
        both = torch.cat([self.extract_img_feature(imgs), self.extract_text_feature(texts)], 1)
        return self.mlp(both)


class TIRG(ImgTextCompositionBase):
    """TIRG: query = w0 * sigmoid(gate([img; text])) * img + w1 * residual([img; text])."""

    def __init__(self, vocab_words, embed_dim=512, **kwargs):
        super().__init__(vocab_words, embed_dim, **kwargs)
        d = embed_dim
        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))
        self.gated_feature_composer = nn.Sequential(
            nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.res_info_composer = nn.Sequential(
            nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d), nn.ReLU(),
            nn.Linear(2 * d, d))

    def compose_img_text(self, imgs, texts, masks=None):
        img = self.extract_img_feature(imgs)
        both = torch.cat([img, self.extract_text_feature(texts)], 1)
        gate = torch.sigmoid(self.gated_feature_composer(both))
        return self.a[0] * gate * img + self.a[1] * self.res_info_composer(both)


class TIRGLastConv(ImgTextCompositionBase):
    """TIRG applied on the last feature map: the text is tiled over space and both branches
    are BatchNorm2d, 3x3 Conv, ReLU, 3x3 Conv; then pool and fc."""

    def __init__(self, vocab_words, embed_dim=512, **kwargs):
        super().__init__(vocab_words, embed_dim, **kwargs)
        c, d = LEVEL_CHANNELS[2], embed_dim
        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))

        def branch():
            return nn.Sequential(nn.BatchNorm2d(c + d), nn.Conv2d(c + d, c + d, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(c + d, c, 3, padding=1))
        self.mod2d, self.mod2d_gate = branch(), branch()

    def compose_img_text(self, imgs, texts, masks=None):
        fmap = self.img_model(imgs)  # (B, 512, h, w)
        text = self.extract_text_feature(texts)[:, :, None, None].expand(
            -1, -1, *fmap.shape[2:])
        both = torch.cat([fmap, text], 1)
        out = self.a[0] * torch.sigmoid(self.mod2d_gate(both)) * fmap + self.a[1] * self.mod2d(both)
        return self.img_fc(pool(out))


def conv_out(n, kernel, stride, padding):
    return (n + 2 * padding - kernel) // stride + 1


def level_sizes(input_size):
    """Spatial (h, w) of the L, M, H levels of ResNet-18 for an (H, W) input."""
    def sizes(n):
        low = conv_out(conv_out(n, 7, 2, 3), 3, 2, 1)  # conv1, maxpool
        mid = conv_out(low, 3, 2, 1)  # layer2
        return low, mid, conv_out(conv_out(mid, 3, 2, 1), 3, 2, 1)  # layer3, layer4
    return list(zip(sizes(input_size[0]), sizes(input_size[1])))


class TextMap(nn.Module):
    """Text feature (B, d) -> full (B, C, h, w) map. 'mlp' (published CSS variant):
    Linear(d, C*h), ReLU, Linear(C*h, C*h*w); 'linear' (published Fashion200k variant):
    Linear(d, C*h*w)."""

    def __init__(self, text_dim, channels, size, kind='mlp'):
        super().__init__()
        self.shape = (channels, *size)
        c, h, w = self.shape
        self.proj = nn.Sequential(nn.Linear(text_dim, c * h), nn.ReLU(),
                                  nn.Linear(c * h, c * h * w)) if kind == 'mlp' else \
            nn.Linear(text_dim, c * h * w)

    def forward(self, text):
        """(B, d) -> (B, C, h, w)."""
        return self.proj(text).view(len(text), *self.shape)


def infiltrate(feature, mask_feature, text_map, mask_scale):
    """TILA on one level. Local awareness C = F + s * F * Fm, then infiltration
    ((C - mu(F)) / (sigma(F) + 1e-5)) * T + F with per-sample, per-channel statistics of F
    over space, detached. All (B, C, h, w)."""
    aware = feature + mask_scale * feature * mask_feature
    mu = feature.mean(dim=(2, 3), keepdim=True).detach()
    sigma = feature.std(dim=(2, 3), unbiased=False, keepdim=True).detach()
    return (aware - mu) / (sigma + 1e-5) * text_map + feature


@contextlib.contextmanager
def frozen_bn_statistics(module, frozen=True):
    """Inside, BatchNorm layers of `module` still normalise a training batch by its own
    statistics but leave their running statistics unchanged (momentum 0)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    if frozen:
        for layer in layers:
            layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


class LGLI(ImgTextCompositionBase):
    """LGLI (Huang & Zhang, "Language Guided Local Infiltration for Interactive Image
    Retrieval", CVPR Workshops 2023): the TILA module infiltrates text maps into the L, M
    and H levels of the reference image, made aware of the LPVL localisation mask, which
    goes through the same backbone. Images (query and gallery alike) are represented by
    fc1 over the three pooled levels; the loss adds one term per level."""

    LEVEL_NAMES = ('L', 'M', 'H')
    uses_mask = True

    def __init__(self, vocab_words, embed_dim=512, input_size=(64, 64), mask_scale=1e-5,
                 text_proj='mlp', multi_level_loss=True, mask_bn_stats='shared', **kwargs):
        super().__init__(vocab_words, embed_dim, **kwargs)
        self.mask_bn_stats = mask_bn_stats
        del self.img_fc  # LGLI represents images through fc1 over all three levels
        self.fc1 = nn.Linear(sum(LEVEL_CHANNELS), embed_dim)
        self.text_maps = nn.ModuleList(
            TextMap(embed_dim, c, size, text_proj)
            for c, size in zip(LEVEL_CHANNELS, level_sizes(input_size)))
        self.mask_scale = mask_scale
        self.multi_level_loss = multi_level_loss

    @classmethod
    def from_args(cls, opt, vocab_words, input_size):
        return cls(vocab_words, embed_dim=opt.image_embed_dim, loss=opt.loss,
                   backbone_weights=opt.backbone_weights, input_size=input_size,
                   mask_scale=opt.mask_scale, text_proj=opt.text_proj,
                   multi_level_loss=opt.multi_level_loss, mask_bn_stats=opt.mask_bn_stats)

    def extract_img_levels(self, imgs):
        """imgs (B, 3, H, W) -> (fc1 representation (B, d), pooled levels [(B, 64),
        (B, 128), (B, 512)])."""
        pooled = [pool(level) for level in self.img_model.levels(imgs)]
        return self.fc1(torch.cat(pooled, 1)), pooled

    def extract_img_feature(self, imgs):
        """imgs (B, 3, H, W) -> (B, d) = fc1(cat(pool(L), pool(M), pool(H)))."""
        return self.extract_img_levels(imgs)[0]

    def compose_levels(self, imgs, texts, masks):
        """Query (B, d) and its pooled infiltrated levels, from reference images and masks
        (B, 3, H, W) and B texts."""
        if masks is None:
            raise ValueError('LGLI composes with a localisation mask; got masks=None')
        text = self.extract_text_feature(texts)
        # the image pass comes first, as published: in training mode the order of the two
        # passes decides how the BatchNorm running averages weight images against masks
        img_levels = self.img_model.levels(imgs)
        with frozen_bn_statistics(self.img_model, self.mask_bn_stats == 'frozen'):
            mask_levels = self.img_model.levels(masks)
        pooled = [pool(infiltrate(f, fm, text_map(text), self.mask_scale))
                  for f, fm, text_map in zip(img_levels, mask_levels, self.text_maps)]
        return self.fc1(torch.cat(pooled, 1)), pooled

    def compose_img_text(self, imgs, texts, masks=None):
        return self.compose_levels(imgs, texts, masks)[0]

    def compute_loss(self, imgs_query, texts, imgs_target, masks=None):
        """The loss on (query, target) plus, with multi_level_loss, one term per level."""
        query, query_levels = self.compose_levels(imgs_query, texts, masks)
        target, target_levels = self.extract_img_levels(imgs_target)
        pairs = {'final': (query, target)}
        if self.multi_level_loss:
            pairs.update(zip(self.LEVEL_NAMES, zip(query_levels, target_levels)))
        losses = {name: self.loss_fn(self.normalization_layer(q), self.normalization_layer(t))
                  for name, (q, t) in pairs.items()}
        losses['total'] = sum(losses.values())
        return losses


MODELS = {
    'imgonly': ImgOnly,
    'textonly': TextOnly,
    'concat': Concat,
    'tirg': TIRG,
    'tirg_lastconv': TIRGLastConv,
    'LGLI': LGLI,
}


def build_model(opt, vocab_words, input_size):
    """The model named by opt.model, built from the flags, the vocabulary and the input
    image size (H, W)."""
    return MODELS[opt.model].from_args(opt, vocab_words, input_size)
