"""Datasets with TIRG's interface: training queries, test queries and gallery images.

Every dataset keeps TIRG's public interface - constructor `(path, split='train',
transform=None)`, `imgs`, `get_test_queries()`, `get_all_texts()`, `get_img(idx)`,
`get_loader(...)` - so scripts written for TIRG port unchanged.

Training samples are a pure function of (seed, rank, sample index): no hidden state, so
the output does not depend on call order, DataLoader workers are safe, and a resumed run
continues the exact sample stream. A sample is a dict:
    source_img_id, source_img_data (3, H, W), target_img_id, target_img_data (3, H, W),
    mod = {'id': int, 'str': text}
    source_img_mask (3, H, W), the LPVL mask, when `mask_source` is set
"""
import os

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

import css_generator
import lpvl
from errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_transform(crop_size=None):
    """ToTensor + ImageNet normalisation, after Resize + CenterCrop when crop_size is set."""
    steps = [T.Resize(crop_size), T.CenterCrop(crop_size)] if crop_size else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def read_rgb(path):
    """PIL RGB image; a missing or undecodable file raises a UsageError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, SyntaxError, ValueError) as e:
        raise UsageError(f'cannot read image {path}: {e}') from None


class BaseDataset(torch.utils.data.Dataset):
    """Shared machinery: index-seeded sampling, test queries, loaders."""

    crop_size = None  # Resize+CenterCrop side of the default transform; None keeps the size

    def __init__(self):
        self.imgs = []
        self.test_queries = []
        self.seed = 0  # training samples derive from (seed, rank, index)
        self.rank = 0
        self.transform = None
        self.mask_source = None  # an lpvl.MASK_SOURCES entry: samples then carry masks

    def get_test_queries(self):
        return self.test_queries

    def get_all_texts(self):
        raise NotImplementedError

    def get_img(self, idx, raw_img=False):
        raise NotImplementedError

    def generate_training_query(self, idx):
        """(source id, mod id, target id, text) of training sample idx."""
        raise NotImplementedError

    def sample_rng(self, key):
        return np.random.default_rng([self.seed, self.rank, key])

    def __len__(self):
        return len(self.imgs)

    def mask_queries(self):
        """Every (reference image id, text) whose LPVL mask training or testing can ask for."""
        return [(q['source_img_id'], q['mod']['str']) for q in self.get_test_queries()]

    def apply_transform(self, img):
        return self.transform(img) if self.transform else img

    def get_source(self, img_id, text):
        """{'img': reference image (3, H, W)} plus, when mask_source is set, 'mask': its
        LPVL mask for `text`, transformed exactly like the image."""
        raw = self.get_img(img_id, raw_img=True)
        out = {'img': self.apply_transform(raw)}
        if self.mask_source:
            mask = lpvl.load_mask(self, self.mask_source, img_id, text, raw.size)
            out['mask'] = self.apply_transform(mask)
        return out

    def __getitem__(self, idx):
        """Training sample number `idx` (any non-negative integer)."""
        source, mod_id, target, text = self.generate_training_query(idx)
        reference = self.get_source(source, text)
        item = {'source_img_id': source, 'source_img_data': reference['img'],
                'target_img_id': target, 'target_img_data': self.get_img(target),
                'mod': {'id': mod_id, 'str': text}}
        if 'mask' in reference:
            item['source_img_mask'] = reference['mask']
        return item

    def get_loader(self, batch_size, shuffle=False, drop_last=False, num_workers=0,
                   sampler=None, pin_memory=False):
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
            num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
            persistent_workers=num_workers > 0)


class CSSDataset(BaseDataset):
    """CSS3D (Vo et al. 2019) and data written by css_generator.py, in the same format.

    `render='2d'` draws each image from its object annotations (published 2-D style,
    `render_size` pixels square) instead of reading the PNG."""

    def __init__(self, path, split='train', transform=None, render=None, render_size=64):
        super().__init__()
        self.path, self.split = path, split
        self.transform = transform
        self.render, self.render_size = render, render_size
        split_data = load_css_split(path, split)
        self.mods = split_data['mods']
        labels = split_data.get('labels') or list(range(len(split_data['objects_img'])))
        self.imgs = [{'objects': objects, 'label': label, 'captions': [str(label)]}
                     for objects, label in zip(split_data['objects_img'], labels)]
        self.imgid2modtarget = [[] for _ in self.imgs]
        for mod_id, mod in enumerate(self.mods):
            for source, target in zip(mod['from'], mod['to']):
                self.imgid2modtarget[source].append((mod_id, target))
        self.test_queries = [
            {'source_img_id': s, 'target_img_id': t,
             'target_caption': self.imgs[t]['captions'][0], 'mod': {'str': mod['to_str']}}
            for mod in self.mods for s, t in zip(mod['from'], mod['to'])]

    def get_all_texts(self):
        return [mod['to_str'] for mod in self.mods]

    def image_path(self, idx):
        return os.path.join(self.path, 'images', f'css_{self.split}_{idx:06d}.png')

    def get_img(self, idx, raw_img=False):
        """Image idx as a PIL image (raw_img) or transformed tensor (3, H, W)."""
        if self.render == '2d':
            objects = self.imgs[idx]['objects']
            img = Image.fromarray(css_generator.render_scene(objects, self.render_size))
        else:
            img = read_rgb(self.image_path(idx))
        return img if raw_img else self.apply_transform(img)

    def random_pair(self, rng):
        """A random mod and one of its (from, to) pairs: (source, mod_id, target)."""
        mod_id = int(rng.integers(len(self.mods)))
        mod = self.mods[mod_id]
        pair = int(rng.integers(len(mod['from'])))
        return mod['from'][pair], mod_id, mod['to'][pair]

    def generate_training_query(self, idx):
        """TIRG's sampling: sample 2k is a random mod and one of its (from, to) pairs; sample
        2k+1 reuses that source with a different mod (a fresh pair when the source has a
        single mod, as TIRG falls back). Returns (source, mod_id, target, text)."""
        rng = self.sample_rng(idx // 2)
        source, mod_id, target = self.random_pair(rng)
        if idx % 2 == 1:
            others = [mt for mt in self.imgid2modtarget[source] if mt[0] != mod_id]
            if others:
                mod_id, target = others[int(rng.integers(len(others)))]
            else:
                source, mod_id, target = self.random_pair(rng)
        return source, mod_id, target, self.mods[mod_id]['to_str']


CSS_SPLIT_KEYS = ('objects_img', 'mods')
CSS_MOD_KEYS = ('to_str', 'from', 'to')


def load_css_split(path, split):
    """One split of the CSS npy file, checked for the keys the loader needs."""
    npy = os.path.join(path, css_generator.NPY_NAME)
    if not os.path.isfile(npy):
        raise UsageError(f'CSS dataset file not found: {npy} (generate one with '
                         f'`python css_generator.py --out {path}`)')
    try:
        data = np.load(npy, allow_pickle=True, encoding='latin1').item()
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f'cannot read CSS dataset file {npy}: {e}') from None
    if not isinstance(data, dict) or split not in data:
        raise UsageError(f'{npy} has no split {split!r}')
    missing = [k for k in CSS_SPLIT_KEYS if k not in data[split]]
    if missing:
        raise UsageError(f'{npy}: split {split!r} lacks key(s) {", ".join(missing)}')
    for i, mod in enumerate(data[split]['mods']):
        missing = [k for k in CSS_MOD_KEYS if k not in mod]
        if missing:
            raise UsageError(f'{npy}: {split} mod {i} lacks key(s) {", ".join(missing)}')
    return data[split]


DATASETS = {
    'css3d': CSSDataset,
}
