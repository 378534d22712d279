"""Synthetic CSS data in the real CSS3D file format, and the CSS text grammar.

The real CSS3D files (Vo et al., CVPR 2019) cannot be downloaded here, so this module
writes data in their exact format:

    <out>/css_toy_dataset_novel2_small.dup.npy   pickled dict {'train': split, 'test': split}
    <out>/images/css_<split>_<id:06d>.png

A split holds 'objects_img' (one object list per image), 'mods' (each with 'to_str', 'from',
'to' and the attribute keys of the real file) and 'labels' (images showing the same scene
share a label). Base scenes come first (ids 0..n_base-1); every application of a mod to a
base scene renders a new target image. Images are drawn in the published 2-D style.

The same module owns the CSS text grammar (`mod_text`, `parse_mod_text`, `resolve_reference`,
`apply_mod`) so that the dataset, the LPVL `scene` masks and the tests all read texts one way.

Usage: python css_generator.py --out data/css_generated [--seed 0] [--image_size 64]
"""
import argparse
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

NPY_NAME = 'css_toy_dataset_novel2_small.dup.npy'
COLORS = ['gray', 'red', 'blue', 'green', 'brown', 'purple', 'cyan', 'yellow']
COLOR_RGB = {  # the CLEVR palette the published renderer draws with
    'gray': (87, 87, 87), 'red': (173, 35, 35), 'blue': (42, 75, 215), 'green': (29, 105, 20),
    'brown': (129, 74, 25), 'purple': (129, 38, 192), 'cyan': (41, 208, 208),
    'yellow': (255, 238, 51)}
SHAPES = ['rectangle', 'circle', 'triangle']
SIZES = ['small', 'large']
ROWS = ['top', 'middle', 'bottom']
COLS = ['left', 'center', 'right']
POSITIONS = [f'{r}-{c}' for r in ROWS for c in COLS]  # cell index = 3 * row + col
MOD_TYPES = ['add', 'remove', 'make_color', 'make_size']
ATTRIBUTES = ['pos', 'size', 'color', 'shape']
# (base scenes, mods, pairs per mod): 15 queries per base scene, as in the real CSS3D
QUICKSTART_SPLITS = {'train': (300, 1500, 3), 'test': (100, 500, 3)}
MAX_OFFSET = 0.03  # random shift of an object from its cell centre, in image units
BASE_HALF_SIZE = 4.0  # half-size of a small object on the published 64x64 canvas
BASE_CANVAS = 64


# ----------------------------------------------------------------------------- scenes
def cell_of(obj):
    """Grid cell index (0..8) of an object whose 'pos' is (y, x) in [0, 1]."""
    y, x = obj['pos']
    return 3 * min(int(y * 3), 2) + min(int(x * 3), 2)


def position_word(obj):
    return POSITIONS[cell_of(obj)]


def cell_centre(cell, rng):
    """(y, x) of a cell centre plus a small random offset."""
    row, col = divmod(cell, 3)
    dy, dx = rng.uniform(-MAX_OFFSET, MAX_OFFSET, size=2)
    return (round(float((row + 0.5) / 3 + dy), 4), round(float((col + 0.5) / 3 + dx), 4))


def random_object(cell, rng):
    return {'pos': cell_centre(cell, rng), 'color': COLORS[rng.integers(len(COLORS))],
            'shape': SHAPES[rng.integers(len(SHAPES))], 'size': SIZES[rng.integers(len(SIZES))]}


def random_scene(rng, min_objects=2, max_objects=5):
    """2-5 objects, at most one per grid cell, in cell order."""
    n = rng.integers(min_objects, max_objects + 1)
    cells = sorted(rng.choice(9, size=n, replace=False).tolist())
    return [random_object(c, rng) for c in cells]


def scene_key(objects):
    """What makes two images 'the same scene': the objects in their cells, offsets ignored."""
    return tuple(sorted((cell_of(o), o['color'], o['shape'], o['size']) for o in objects))


# ----------------------------------------------------------------------------- text grammar
def mod_text(mod):
    """The modification text of a mod dict (TIRG's three templates, unnamed attributes left out)."""
    words = lambda *ws: ' '.join(w for w in ws if w)
    noun = mod['target_shape'] or 'object'
    if mod['type'] == 'add':
        return words('add', mod['target_size'], mod['target_color'], noun, 'to', mod['target_pos'])
    if mod['type'] == 'remove':
        return words('remove', mod['target_pos'], mod['target_size'], mod['target_color'], noun)
    new_value = mod['make_new_color'] or mod['make_new_size']
    return words('make', mod['target_pos'], mod['target_size'], mod['target_color'], noun,
                 new_value)


def parse_mod_text(text):
    """Parse a CSS text back into {'type', 'pos', 'size', 'color', 'shape', 'new_color',
    'new_size'} (None where the text names nothing). Raises ValueError on other texts."""
    tokens = text.strip().lower().split()
    if not tokens or tokens[0] not in ('add', 'remove', 'make'):
        raise ValueError(f'not a CSS modification text: {text!r}')
    parsed = dict.fromkeys(['pos', 'size', 'color', 'shape', 'new_color', 'new_size'])
    parsed['type'] = tokens[0]
    body = tokens[1:]
    if parsed['type'] == 'make':
        if not body:
            raise ValueError(f'make text without a new value: {text!r}')
        new_value = body.pop()
        parsed['new_color' if new_value in COLORS else 'new_size'] = new_value
    for tok in body:
        if tok in POSITIONS:
            parsed['pos'] = tok
        elif tok in SIZES:
            parsed['size'] = tok
        elif tok in COLORS:
            parsed['color'] = tok
        elif tok in SHAPES:
            parsed['shape'] = tok
        elif tok not in ('object', 'to'):
            raise ValueError(f'unknown word {tok!r} in CSS text {text!r}')
    return parsed


def matches(obj, description):
    return all(description.get(a) is None or
               (position_word(obj) if a == 'pos' else obj[a]) == description[a]
               for a in ATTRIBUTES)


def resolve_reference(objects, parsed):
    """Indices of the objects a parsed remove/make text refers to (empty for 'add')."""
    if parsed['type'] == 'add':
        return []
    return [i for i, o in enumerate(objects) if matches(o, parsed)]


def applies_to(objects, parsed):
    """True when the mod changes this scene in exactly one well-defined way."""
    if parsed['type'] == 'add':
        return all(position_word(o) != parsed['pos'] for o in objects)
    hits = resolve_reference(objects, parsed)
    if len(hits) != 1:
        return False
    obj = objects[hits[0]]
    if parsed['type'] == 'make':
        return obj['color'] != parsed['new_color'] if parsed['new_color'] else \
            obj['size'] != parsed['new_size']
    return True


def apply_mod(objects, parsed, rng):
    """The target scene: a copy of `objects` with the mod applied; untouched objects keep
    their exact positions. `rng` places an added object inside its cell."""
    out = [dict(o) for o in objects]
    if parsed['type'] == 'add':
        new = {'pos': cell_centre(POSITIONS.index(parsed['pos']), rng), 'color': parsed['color'],
               'shape': parsed['shape'], 'size': parsed['size']}
        return sorted(out + [new], key=cell_of)
    i, = resolve_reference(objects, parsed)
    if parsed['type'] == 'remove':
        return out[:i] + out[i + 1:]
    if parsed['new_color']:
        out[i]['color'] = parsed['new_color']
    else:
        out[i]['size'] = parsed['new_size']
    return out


# ----------------------------------------------------------------------------- mods
def new_mod_dict(mod_type, description, new_value=None):
    """A mod dict with every key of the real file; 'from'/'to' are filled by the caller."""
    mod = {'type': 'make' if mod_type.startswith('make') else mod_type,
           'target_pos': description.get('pos'), 'target_size': description.get('size'),
           'target_color': description.get('color'), 'target_shape': description.get('shape'),
           'make_new_color': new_value if mod_type == 'make_color' else None,
           'make_new_size': new_value if mod_type == 'make_size' else None,
           'from': [], 'to': []}
    mod['str'] = [mod['type']]
    mod['to_str'] = mod_text(mod)
    return mod


def describe_object(objects, i, rng):
    """A random subset of object i's attributes that singles it out in `objects`
    (the position is added when the drawn subset is not unique)."""
    obj = objects[i]
    full = {'pos': position_word(obj), 'size': obj['size'], 'color': obj['color'],
            'shape': obj['shape']}
    named = {a: full[a] if rng.random() < 0.5 else None for a in ATTRIBUTES}
    probe = dict(named, type='remove')
    if all(v is None for v in named.values()) or len(resolve_reference(objects, probe)) != 1:
        named['pos'] = full['pos']
    return named


def random_mod(scene, rng):
    """A random mod that applies to `scene`, or None when the drawn type cannot apply."""
    mod_type = MOD_TYPES[rng.integers(len(MOD_TYPES))]
    if mod_type == 'add':
        free = [c for c in range(9) if c not in {cell_of(o) for o in scene}]
        if not free:
            return None
        cell = free[rng.integers(len(free))]
        new = random_object(cell, rng)
        return new_mod_dict('add', {'pos': POSITIONS[cell], 'size': new['size'],
                                    'color': new['color'], 'shape': new['shape']})
    i = rng.integers(len(scene))
    description = describe_object(scene, i, rng)
    new_value = None
    if mod_type == 'make_color':
        new_value = [c for c in COLORS if c != scene[i]['color']][rng.integers(len(COLORS) - 1)]
    elif mod_type == 'make_size':
        new_value = 'large' if scene[i]['size'] == 'small' else 'small'
    if mod_type == 'remove' and len(scene) <= 1:
        return None
    return new_mod_dict(mod_type, description, new_value)


def generate_split(n_base, n_mods, pairs_per_mod, rng, exclude_keys=frozenset()):
    """One split: base scenes (none whose scene key is in `exclude_keys`), then mods each
    applied to `pairs_per_mod` distinct base scenes, each application a new target image.
    Returns (objects_img, mods, labels)."""
    objects_img, seen = [], set(exclude_keys)
    while len(objects_img) < n_base:
        scene = random_scene(rng)
        if scene_key(scene) not in seen:
            seen.add(scene_key(scene))
            objects_img.append(scene)
    base = list(objects_img)
    mods, texts = [], set()
    progress = tqdm(total=n_mods, desc='mods', leave=False, disable=n_mods < 2000)
    while len(mods) < n_mods:
        mod = random_mod(base[rng.integers(n_base)], rng)
        if mod is None or mod['to_str'] in texts:
            continue
        parsed = parse_mod_text(mod['to_str'])
        candidates = [b for b, scene in enumerate(base) if applies_to(scene, parsed)]
        if len(candidates) < pairs_per_mod:
            continue
        for b in sorted(rng.choice(candidates, size=pairs_per_mod, replace=False).tolist()):
            mod['from'].append(b)
            mod['to'].append(len(objects_img))
            objects_img.append(apply_mod(base[b], parsed, rng))
        texts.add(mod['to_str'])
        mods.append(mod)
        progress.update()
    progress.close()
    label_of = {}
    labels = [label_of.setdefault(scene_key(s), len(label_of)) for s in objects_img]
    return objects_img, mods, labels


# ----------------------------------------------------------------------------- rendering
def render_scene(objects, image_size=64):
    """Published 2-D style: white canvas, filled square ('rectangle'), diamond-like 'circle'
    and upward 'triangle'; large objects twice the size of small ones.
    Returns a uint8 array of shape (image_size, image_size, 3)."""
    img = np.full((image_size, image_size, 3), 255, dtype=np.uint8)
    yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5
    for obj in objects:
        s = BASE_HALF_SIZE * image_size / BASE_CANVAS * (2 if obj['size'] == 'large' else 1)
        dy, dx = yy - obj['pos'][0] * image_size, xx - obj['pos'][1] * image_size
        inside_box = (np.abs(dy) < s) & (np.abs(dx) < s)
        if obj['shape'] == 'rectangle':
            mask = inside_box
        elif obj['shape'] == 'circle':
            mask = np.abs(dy) + np.abs(dx) < s
        else:  # triangle: apex on top, half-width grows linearly down to s
            mask = inside_box & (np.abs(dx) < (dy + s) / 2)
        img[mask] = COLOR_RGB[obj['color']]
    return img


def write_images(out_dir, split, objects_img, image_size):
    os.makedirs(os.path.join(out_dir, 'images'), exist_ok=True)
    for i, objects in enumerate(tqdm(objects_img, desc=f'render {split}', leave=False)):
        path = os.path.join(out_dir, 'images', f'css_{split}_{i:06d}.png')
        Image.fromarray(render_scene(objects, image_size)).save(path)


def generate(out_dir, seed=0, image_size=64, splits=None):
    """Write the npy file and every image. `splits` maps split name -> (n_base, n_mods,
    pairs_per_mod); later splits never reuse the base scenes of earlier ones."""
    splits = splits or QUICKSTART_SPLITS
    rng = np.random.default_rng(seed)
    data, used_keys = {}, set()
    for split, (n_base, n_mods, pairs) in splits.items():
        objects_img, mods, labels = generate_split(n_base, n_mods, pairs, rng, used_keys)
        used_keys |= {scene_key(s) for s in objects_img[:n_base]}
        data[split] = {'objects_img': objects_img, 'mods': mods, 'labels': labels}
        write_images(out_dir, split, objects_img, image_size)
    np.save(os.path.join(out_dir, NPY_NAME), data, allow_pickle=True)
    return data


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--image_size', type=int, default=64, help='side of the square images')
    for split, (n_base, n_mods, _) in dict(QUICKSTART_SPLITS, val=(0, 0, 0)).items():
        p.add_argument(f'--{split}_base_scenes', type=int, default=n_base)
        p.add_argument(f'--{split}_mods', type=int, default=n_mods)
    p.add_argument('--pairs_per_mod', type=int, default=3)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # test before val, so that adding a val split leaves train and test unchanged
    splits = {s: (getattr(args, f'{s}_base_scenes'), getattr(args, f'{s}_mods'),
                  args.pairs_per_mod) for s in ('train', 'test', 'val')}
    splits = {s: v for s, v in splits.items() if v[0] > 0}
    data = generate(args.out, args.seed, args.image_size, splits)
    for split, d in data.items():
        print(f'{split}: {len(d["objects_img"])} images, {len(d["mods"])} mods, '
              f'{sum(len(m["from"]) for m in d["mods"])} (from, to) pairs')
    print(f'wrote {os.path.join(args.out, NPY_NAME)}')


if __name__ == '__main__':
    main()
