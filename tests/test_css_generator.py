"""The generated CSS data: real file format, valid mods, parse-back, labels, determinism."""
import hashlib
import os

import numpy as np
import pytest

import css_generator as cg
from tests.conftest import TINY_SPLITS

MOD_KEYS = {'type', 'str', 'to_str', 'from', 'to', 'target_pos', 'target_size', 'target_color',
            'target_shape', 'make_new_color', 'make_new_size'}


def test_file_layout_and_keys(css_dir, css_data):
    assert set(css_data) == {'train', 'test'}
    for split, (n_base, n_mods, pairs) in TINY_SPLITS.items():
        d = css_data[split]
        assert set(d) == {'objects_img', 'mods', 'labels'}
        assert len(d['mods']) == n_mods
        assert len(d['objects_img']) == n_base + n_mods * pairs == len(d['labels'])
        for i in range(len(d['objects_img'])):
            assert os.path.isfile(os.path.join(css_dir, 'images', f'css_{split}_{i:06d}.png'))
        for mod in d['mods']:
            assert set(mod) == MOD_KEYS
            assert mod['str'] == [mod['type']] and mod['type'] in ('add', 'remove', 'make')
            assert len(mod['from']) == len(mod['to']) == pairs
            assert all(0 <= f < n_base for f in mod['from'])  # sources are base scenes
            assert all(t >= n_base for t in mod['to'])  # each application a new image


def test_base_scenes_follow_the_rules(css_data):
    for split, (n_base, _, _) in TINY_SPLITS.items():
        for scene in css_data[split]['objects_img'][:n_base]:
            cells = [cg.cell_of(o) for o in scene]
            assert 2 <= len(scene) <= 5 and len(set(cells)) == len(cells)
            assert all(o['color'] in cg.COLORS and o['shape'] in cg.SHAPES and
                       o['size'] in cg.SIZES for o in scene)


def test_every_mod_type_occurs():
    data = cg.generate_split(100, 200, 3, np.random.default_rng(1))
    kinds = {(m['type'], m['make_new_color'] is not None) for m in data[1]}
    assert kinds == {('add', False), ('remove', False), ('make', True), ('make', False)}
    texts = [m['to_str'] for m in data[1]]
    assert any('object' in t for t in texts)  # shape left out where the reference is unique
    assert any(not any(p in t for p in cg.POSITIONS) for t in texts if not t.startswith('add'))


def strip_offsets(objects):
    return sorted((cg.cell_of(o), o['color'], o['shape'], o['size']) for o in objects)


def test_texts_parse_back_to_the_right_change(css_data):
    for split in ('train', 'test'):
        objects_img = css_data[split]['objects_img']
        for mod in css_data[split]['mods']:
            parsed = cg.parse_mod_text(mod['to_str'])
            assert parsed['type'] == mod['type']
            for f, t in zip(mod['from'], mod['to']):
                source, target = objects_img[f], objects_img[t]
                hits = cg.resolve_reference(source, parsed)
                if parsed['type'] == 'add':
                    assert hits == [] and len(target) == len(source) + 1
                    added = [o for o in target if cg.position_word(o) == parsed['pos']]
                    assert len(added) == 1 and added[0]['color'] == parsed['color']
                else:
                    assert len(hits) == 1  # the text names exactly one object
                    expected = cg.apply_mod(source, parsed, np.random.default_rng(0))
                    assert strip_offsets(expected) == strip_offsets(target)
                # objects the text does not touch keep their exact positions
                touched = {cg.position_word(source[h]) for h in hits} | {parsed['pos']}
                kept = [o['pos'] for o in source if cg.position_word(o) not in touched]
                assert all(p in [o['pos'] for o in target] for p in kept)


def test_parse_known_texts():
    p = cg.parse_mod_text('make bottom-center small purple circle large')
    assert (p['type'], p['pos'], p['size'], p['color'], p['shape'], p['new_size']) == \
        ('make', 'bottom-center', 'small', 'purple', 'circle', 'large')
    p = cg.parse_mod_text('make bottom-center brown object cyan')
    assert (p['shape'], p['new_color'], p['size']) == (None, 'cyan', None)
    p = cg.parse_mod_text('add large red triangle to top-left')
    assert (p['type'], p['pos'], p['size'], p['color'], p['shape']) == \
        ('add', 'top-left', 'large', 'red', 'triangle')
    with pytest.raises(ValueError):
        cg.parse_mod_text('paint it black')


def test_labels_mark_identical_scenes(css_data):
    for split in ('train', 'test'):
        d = css_data[split]
        keys = [cg.scene_key(s) for s in d['objects_img']]
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                assert (keys[i] == keys[j]) == (d['labels'][i] == d['labels'][j])


def test_test_scenes_are_not_training_scenes(css_data):
    n_train_base, n_test_base = TINY_SPLITS['train'][0], TINY_SPLITS['test'][0]
    train = {cg.scene_key(s) for s in css_data['train']['objects_img'][:n_train_base]}
    test = {cg.scene_key(s) for s in css_data['test']['objects_img'][:n_test_base]}
    assert not train & test


def test_renderer_sizes_and_shapes():
    obj = {'pos': (0.5, 0.5), 'color': 'red', 'shape': 'rectangle', 'size': 'small'}
    red = np.array(cg.COLOR_RGB['red'])
    count = lambda img: int((img == red).all(-1).sum())
    small = count(cg.render_scene([obj], 64))
    large = count(cg.render_scene([dict(obj, size='large')], 64))
    assert small == 8 * 8 and large == 16 * 16  # half-size 4 px and 8 px on 64x64
    assert count(cg.render_scene([obj], 128)) == 16 * 16  # scaled with the canvas
    tri = (cg.render_scene([dict(obj, shape='triangle', size='large')], 64) == red).all(-1)
    rows = tri.sum(1)[tri.any(1)]
    assert rows[0] < rows[-1]  # upward: narrow at the top, wide at the bottom
    img = cg.render_scene([dict(obj, shape='circle')], 64)
    assert img[0, 0].tolist() == [255, 255, 255] and count(img) < small


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        h.update(name.encode())
        if os.path.isdir(path):
            h.update(digest(path).encode())
        else:
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def test_deterministic(tmp_path):
    splits = {'train': (15, 10, 2), 'test': (10, 5, 2)}
    a, b, c = (str(tmp_path / n) for n in 'abc')
    cg.generate(a, seed=3, splits=splits)
    cg.generate(b, seed=3, splits=splits)
    cg.generate(c, seed=4, splits=splits)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_cli(tmp_path, capsys):
    cg.main(['--out', str(tmp_path), '--train_base_scenes', '12', '--train_mods', '5',
             '--test_base_scenes', '12', '--test_mods', '4', '--val_base_scenes', '12',
             '--val_mods', '3', '--pairs_per_mod', '2', '--image_size', '32'])
    data = np.load(tmp_path / cg.NPY_NAME, allow_pickle=True).item()
    assert set(data) == {'train', 'val', 'test'}
    assert len(data['val']['mods']) == 3 and len(data['test']['objects_img']) == 12 + 8
    from PIL import Image
    assert Image.open(tmp_path / 'images' / 'css_val_000000.png').size == (32, 32)
    assert 'val: 18 images, 3 mods, 6 (from, to) pairs' in capsys.readouterr().out
