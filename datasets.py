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
import random
import sys

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from tqdm import tqdm

import css_generator
import lpvl
from errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_MOD_ID = -1  # mod id of samples from datasets without a list of mods


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


def decodes(path):
    """True when the image file decodes (JPEGs at reduced scale, which still reads all data)."""
    try:
        with Image.open(path) as img:
            img.draft('RGB', (64, 64))
            img.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def drop_unreadable(imgs, path_of, split):
    """`imgs` without the entries whose file does not decode; reports how many it dropped."""
    readable = [decodes(path_of(img)) for img in tqdm(imgs, desc=f'checking {split} images')]
    keep = [img for img, ok in zip(imgs, readable) if ok]
    bad = [path_of(img) for img, ok in zip(imgs, readable) if not ok]
    if bad:
        print(f'--skip_bad_images: skipped {len(bad)} unreadable {split} image(s), e.g. '
              f'{bad[0]}', file=sys.stderr)
    return keep


def seed_worker(worker_id):
    """Distinct numpy and python random streams per loader worker (samples themselves are
    seeded by their index; this covers any random transform)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


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
        self.cache_images, self.image_cache = False, {}

    @classmethod
    def from_args(cls, opt, split, transform):
        """The dataset split as configured by main.py's flags."""
        return cls(opt.dataset_path, split=split, transform=transform,
                   use_complete_text_query=opt.use_complete_text_query,
                   skip_bad_images=opt.skip_bad_images)

    def get_test_queries(self):
        return self.test_queries

    def get_all_texts(self):
        raise NotImplementedError

    def read_image(self, idx):
        """Decode image idx from its file: a PIL RGB image."""
        raise NotImplementedError

    def get_img(self, idx, raw_img=False):
        """Image idx as a PIL image (raw_img) or transformed tensor (3, H, W); with
        cache_images each process decodes an image once."""
        if not self.cache_images:
            img = self.read_image(idx)
        elif idx in self.image_cache:
            img = self.image_cache[idx]
        else:
            img = self.image_cache[idx] = self.read_image(idx)
        return img if raw_img else self.apply_transform(img)

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
        mask = self.get_raw_mask(img_id, text, raw.size)
        if mask is not None:
            out['mask'] = self.apply_transform(mask)
        return out

    def get_raw_mask(self, img_id, text, size):
        """The PIL LPVL mask of (image img_id, text) of size (W, H), or None without masks."""
        return lpvl.load_mask(self, self.mask_source, img_id, text, size) if self.mask_source \
            else None

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
            persistent_workers=num_workers > 0, worker_init_fn=seed_worker)


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

    @classmethod
    def from_args(cls, opt, split, transform):
        if opt.use_complete_text_query:
            raise UsageError('--use_complete_text_query needs target descriptions; css3d has '
                             'none (its captions are scene labels)')
        if opt.skip_bad_images:
            raise UsageError('--skip_bad_images is for fashion200k and mitstates; CSS mods '
                             'refer to images by position, so every CSS image must be readable')
        return cls(opt.dataset_path, split=split, transform=transform,
                   render='2d' if opt.css_render == '2d' else None)

    def get_all_texts(self):
        return [mod['to_str'] for mod in self.mods]

    def image_path(self, idx):
        return os.path.join(self.path, 'images', f'css_{self.split}_{idx:06d}.png')

    def read_image(self, idx):
        if self.render == '2d':
            objects = self.imgs[idx]['objects']
            return Image.fromarray(css_generator.render_scene(objects, self.render_size))
        return read_rgb(self.image_path(idx))

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


def different_words(source_caption, target_caption):
    """TIRG's modification text: 'replace <a> with <b>', a = first source word missing from
    the target, b = first target word missing from the source."""
    source_words, target_words = source_caption.split() or [''], target_caption.split() or ['']
    a = next((w for w in source_words if w not in target_words), source_words[-1])
    b = next((w for w in target_words if w not in source_words), target_words[-1])
    return f'replace {a} with {b}'


def fashion_caption(raw):
    """Caption post-processing of Fashion200k labels (as in TIRG)."""
    return (raw.strip().replace('.', 'dotmark').replace('?', 'questionmark')
            .replace('&', 'andmark').replace('*', 'starmark'))


def parent_caption(caption, word):
    """The caption with every occurrence of the substring `word` removed, then one pass of
    double spaces to single and stripped (TIRG's exact rule)."""
    return caption.replace(word, '').replace('  ', ' ').strip()


class Fashion200k(BaseDataset):
    """Fashion200k (Han et al. 2017) with TIRG's queries: a source and a target whose
    captions share a parent (one word apart); the text is 'replace a with b'."""

    crop_size = 224

    def __init__(self, path, split='train', transform=None, use_complete_text_query=False,
                 skip_bad_images=False):
        super().__init__()
        self.path, self.split, self.transform = path, split, transform
        self.use_complete_text_query = use_complete_text_query
        self.imgs = read_fashion_labels(path, split)
        if skip_bad_images:
            self.imgs = drop_unreadable(self.imgs, lambda img: os.path.join(path, img['file_path']),
                                        split)
        self.skip_bad_images = skip_bad_images
        self.caption_index_init_()
        if split != 'train':
            self.test_queries = self.read_test_queries()

    def caption_index_init_(self):
        """caption -> image ids, parent -> child captions, modifiable images (linear time)."""
        self.caption2imgids = {}
        for i, img in enumerate(self.imgs):
            self.caption2imgids.setdefault(img['captions'][0], []).append(i)
        children = {}
        for caption in self.caption2imgids:
            for word in caption.split():
                children.setdefault(parent_caption(caption, word), {})[caption] = None
        self.parent2children_captions = {p: list(c) for p, c in children.items()}
        for img in self.imgs:
            img['modifiable'], img['parent_captions'] = False, []
        for parent, captions in self.parent2children_captions.items():
            if len(captions) >= 2:
                for caption in captions:
                    for i in self.caption2imgids[caption]:
                        self.imgs[i]['modifiable'] = True
                        self.imgs[i]['parent_captions'].append(parent)
        self.modifiable_ids = [i for i, img in enumerate(self.imgs) if img['modifiable']]

    def read_test_queries(self):
        path = os.path.join(self.path, 'test_queries.txt')
        if not os.path.isfile(path):
            raise UsageError(f'Fashion200k test queries not found: {path} (TIRG\'s '
                             'test_queries.txt, see README)')
        file2imgid = {img['file_path']: i for i, img in enumerate(self.imgs)}
        queries, skipped = [], 0
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    source, target = (file2imgid[p] for p in line.split())
                except (KeyError, ValueError):
                    if self.skip_bad_images:  # the line names an image that was dropped
                        skipped += 1
                        continue
                    raise UsageError(f'{path}:{line_no}: expected two image paths of the '
                                     f'{self.split} label files, got {line.strip()!r}') from None
                queries.append(self.query(source, target))
        if skipped:
            print(f'--skip_bad_images: skipped {skipped} test queries on unreadable images',
                  file=sys.stderr)
        return queries

    def query(self, source, target):
        source_caption = self.imgs[source]['captions'][0]
        target_caption = self.imgs[target]['captions'][0]
        text = target_caption if self.use_complete_text_query else \
            different_words(source_caption, target_caption)
        return {'source_img_id': source, 'target_img_id': target,
                'source_caption': source_caption, 'target_caption': target_caption,
                'mod': {'str': text}}

    def get_all_texts(self):
        return [img['captions'][0] for img in self.imgs]

    def mask_queries(self):
        """Test queries, or on the training split every (source, text) sampling can draw."""
        if self.split != 'train':
            return super().mask_queries()
        pairs = []
        for i in self.modifiable_ids:
            img = self.imgs[i]
            for parent in img['parent_captions']:
                for caption in self.parent2children_captions[parent]:
                    if caption != img['captions'][0]:
                        target = self.caption2imgids[caption][0]  # the text depends on captions only
                        pairs.append((i, self.query(i, target)['mod']['str']))
        return pairs

    def generate_training_query(self, idx):
        """A modifiable source (idx itself, else drawn until modifiable), a random parent of
        it, a sibling caption other than its own, a random image of that caption."""
        if not self.modifiable_ids:
            raise UsageError(f'no modifiable image in the {self.split} split of {self.path}')
        rng = self.sample_rng(idx)
        source = idx % len(self.imgs)
        if not self.imgs[source]['modifiable']:
            source = self.modifiable_ids[int(rng.integers(len(self.modifiable_ids)))]
        img = self.imgs[source]
        while True:
            parent = img['parent_captions'][int(rng.integers(len(img['parent_captions'])))]
            siblings = self.parent2children_captions[parent]
            caption = siblings[int(rng.integers(len(siblings)))]
            if caption != img['captions'][0]:
                break
        targets = self.caption2imgids[caption]
        target = targets[int(rng.integers(len(targets)))]
        return source, NO_MOD_ID, target, self.query(source, target)['mod']['str']

    def read_image(self, idx):
        return read_rgb(os.path.join(self.path, self.imgs[idx]['file_path']))


def read_fashion_labels(path, split):
    """Images of a split from <path>/labels/*<split>*.txt (path, detection score, caption)."""
    label_dir = os.path.join(path, 'labels')
    if not os.path.isdir(label_dir):
        raise UsageError(f'Fashion200k label folder not found: {label_dir}')
    files = sorted(f for f in os.listdir(label_dir) if split in f and f.endswith('.txt'))
    if not files:
        raise UsageError(f'no label file with {split!r} in its name in {label_dir}')
    imgs = []
    for name in files:
        with open(os.path.join(label_dir, name), encoding='utf-8') as f:
            for line_no, line in enumerate(f, 1):
                fields = line.rstrip('\n').split('\t')
                if len(fields) < 3:
                    raise UsageError(f'{os.path.join(label_dir, name)}:{line_no}: expected '
                                     '<image path>\\t<score>\\t<caption>')
                imgs.append({'file_path': fields[0], 'detection_score': fields[1],
                             'captions': [fashion_caption(fields[2])], 'split': split})
    return imgs


MIT_STATES_TEST_NOUNS = frozenset(
    'armor bracelet bush camera candy castle ceramic cheese clock clothes coffee fan fig fish '
    'foam forest fruit furniture garden gate glass horse island laptop lead lightning mirror '
    'orange paint persimmon plastic plate potato road rubber sand shell sky smoke steel '
    'stream table tea tomato vacuum wax wheel window wool'.split())


class MITStates(BaseDataset):
    """MIT-States (Isola et al. 2015) with TIRG's queries: change the adjective of a noun;
    the text is the target adjective."""

    crop_size = 224
    caption_parts = {'adj': 0, 'noun': 1}  # extra recalls on one word of the caption

    def __init__(self, path, split='train', transform=None, use_complete_text_query=False,
                 skip_bad_images=False):
        super().__init__()
        self.path, self.split, self.transform = path, split, transform
        self.use_complete_text_query = use_complete_text_query
        self.imgs = read_mit_states_images(path, split)
        if skip_bad_images:
            self.imgs = drop_unreadable(self.imgs, lambda img: img['file_path'], split)
        self.caption2imgids, self.noun2adjs = {}, {}
        for i, img in enumerate(self.imgs):
            self.caption2imgids.setdefault(img['captions'][0], []).append(i)
            self.noun2adjs.setdefault(img['noun'], {})[img['adj']] = None
        self.noun2adjs = {n: list(a) for n, a in self.noun2adjs.items()}
        single = sorted(n for n, adjs in self.noun2adjs.items() if len(adjs) < 2)
        if single:
            raise UsageError(f'MIT-States {split}: nouns with a single adjective: '
                             f'{", ".join(single[:5])} (every noun needs two)')
        if split != 'train':
            self.test_queries = [self.query(i, f'{adj} {img["noun"]}')
                                 for i, img in enumerate(self.imgs)
                                 for adj in self.noun2adjs[img['noun']] if adj != img['adj']]

    def query(self, source, target_caption):
        img = self.imgs[source]
        text = target_caption if self.use_complete_text_query else target_caption.split()[0]
        return {'source_img_id': source, 'source_caption': img['captions'][0],
                'target_caption': target_caption, 'mod': {'str': text}}

    def get_all_texts(self):
        return [img['captions'][0] for img in self.imgs]

    def mask_queries(self):
        """Test queries, or on the training split every (source, text) sampling can draw."""
        if self.split != 'train':
            return super().mask_queries()
        return [(i, self.query(i, f'{adj} {img["noun"]}')['mod']['str'])
                for i, img in enumerate(self.imgs) for adj in self.noun2adjs[img['noun']]]

    def random_target(self, source, rng):
        """A random image of the source's noun with a random adjective of that noun."""
        noun = self.imgs[source]['noun']
        adjs = self.noun2adjs[noun]
        candidates = self.caption2imgids[f'{adjs[int(rng.integers(len(adjs)))]} {noun}']
        return candidates[int(rng.integers(len(candidates)))]

    def generate_training_query(self, idx):
        """Samples 2k and 2k+1 share a random source; their targets have different
        adjectives."""
        rng = self.sample_rng(idx // 2)
        source = int(rng.integers(len(self.imgs)))
        while True:
            first, second = self.random_target(source, rng), self.random_target(source, rng)
            if self.imgs[first]['adj'] != self.imgs[second]['adj']:
                break
        target = second if idx % 2 else first
        text = self.query(source, self.imgs[target]['captions'][0])['mod']['str']
        return source, NO_MOD_ID, target, text

    def read_image(self, idx):
        return read_rgb(self.imgs[idx]['file_path'])


def read_mit_states_images(path, split):
    """Images of <path>/images/<adj noun>/*.jpg for a split (test: the 49 test nouns);
    folders without a space or whose adjective is 'adj' are skipped."""
    image_dir = os.path.join(path, 'images')
    if not os.path.isdir(image_dir):
        raise UsageError(f'MIT-States image folder not found: {image_dir}')
    imgs = []
    for folder in sorted(os.listdir(image_dir)):
        if ' ' not in folder:
            continue
        adj, noun = folder.split(' ', 1)
        if adj == 'adj' or (noun in MIT_STATES_TEST_NOUNS) != (split == 'test'):
            continue
        for name in sorted(os.listdir(os.path.join(image_dir, folder))):
            if name.lower().endswith(('.jpg', '.jpeg')):
                imgs.append({'file_path': os.path.join(image_dir, folder, name),
                             'captions': [folder], 'adj': adj, 'noun': noun})
    if not imgs:
        raise UsageError(f'no MIT-States {split} images under {image_dir}')
    return imgs


DATASETS = {
    'css3d': CSSDataset,
    'fashion200k': Fashion200k,
    'mitstates': MITStates,
}
