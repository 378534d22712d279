"""LPVL masks: scene source, top-k union, cache, detector+CLIP plumbing, dataset items."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import css_generator as cg
import datasets
import lpvl
from errors import UsageError

WHITE, BLACK = [255, 255, 255], [0, 0, 0]


def as_bool(mask):
    arr = np.asarray(mask)
    assert ((arr == 0) | (arr == 255)).all() and (arr == arr[..., :1]).all()  # white on black
    return arr[..., 0] == 255


def test_boxes_mask_and_empty_fallback():
    mask = as_bool(lpvl.boxes_mask((8, 6), [(1, 2, 4, 5)]))
    assert mask.shape == (6, 8) and mask.sum() == 3 * 3
    assert mask[2:5, 1:4].all()
    assert as_bool(lpvl.boxes_mask((8, 6), [])).all()


def test_topk_union():
    boxes = torch.tensor([[0, 0, 2, 2], [4, 4, 6, 6], [0, 4, 2, 6]], dtype=torch.float)
    scores = torch.tensor([0.9, 0.1, 0.5])
    mask = as_bool(lpvl.topk_union_mask((6, 6), boxes, scores, 2))
    assert mask[0:2, 0:2].all() and mask[4:6, 0:2].all() and not mask[4:6, 4:6].any()
    assert mask.sum() == 8
    assert as_bool(lpvl.topk_union_mask((6, 6), torch.zeros(0, 4), torch.zeros(0), 3)).all()


def object_pixels(obj, size):
    img = cg.render_scene([obj], size)
    return (img != 255).any(-1)


def test_scene_mask_covers_the_named_object_only(css_data):
    d = css_data['test']
    checked = 0
    for mod in d['mods']:
        parsed = cg.parse_mod_text(mod['to_str'])
        for source in mod['from']:
            objects = d['objects_img'][source]
            mask = as_bool(lpvl.scene_mask(objects, mod['to_str'], (64, 64)))
            if parsed['type'] == 'add':
                row, col = divmod(cg.POSITIONS.index(parsed['pos']), 3)
                assert mask.sum() == pytest.approx(64 * 64 / 9, rel=0.2)
                assert mask[int((row + 0.5) * 64 / 3), int((col + 0.5) * 64 / 3)]
                continue
            i, = cg.resolve_reference(objects, parsed)
            named = object_pixels(objects[i], 64)
            assert mask[named].all()  # the named object lies inside the mask
            for j, other in enumerate(objects):
                if j != i:
                    assert not mask[object_pixels(other, 64)].any()
            checked += 1
    assert checked > 10


def test_cache_then_fallback_then_error(tmp_path, css_dir):
    ds = datasets.CSSDataset(css_dir, 'test')
    ds.path = str(tmp_path)  # an empty cache
    q = ds.get_test_queries()[0]
    text, img_id = q['mod']['str'], q['source_img_id']
    on_the_fly = lpvl.load_mask(ds, 'scene', img_id, text, (64, 64))
    assert np.array_equal(np.asarray(on_the_fly),
                          np.asarray(lpvl.scene_mask(ds.imgs[img_id]['objects'], text, (64, 64))))
    cached = Image.new('RGB', (64, 64), (255, 0, 0))
    lpvl.write_atomic(cached, lpvl.mask_path(ds, 'scene', img_id, text))
    assert np.asarray(lpvl.load_mask(ds, 'scene', img_id, text, (64, 64)))[0, 0].tolist() == [255, 0, 0]
    assert as_bool(lpvl.load_mask(ds, 'none', img_id, text, (64, 64))).all()
    with pytest.raises(UsageError, match='python lpvl.py'):
        lpvl.load_mask(ds, 'detector_clip', img_id, text, (64, 64))


def test_precompute_cli(tmp_path, css_dir, capsys):
    import shutil
    copy = str(tmp_path / 'css')
    shutil.copytree(css_dir, copy)
    lpvl.main(['--dataset', 'css3d', '--dataset_path', copy, '--mask_source', 'scene',
               '--split', 'test'])
    ds = datasets.CSSDataset(copy, 'test')
    pairs = set(ds.mask_queries())
    folder = os.path.join(copy, 'lpvl_masks', 'scene', 'test')
    assert len(os.listdir(folder)) == len(pairs)
    assert f'test: {len(pairs)} masks written' in capsys.readouterr().out
    img_id, text = sorted(pairs)[0]
    with Image.open(lpvl.mask_path(ds, 'scene', img_id, text)) as cached:
        assert np.array_equal(np.asarray(cached), np.asarray(
            lpvl.scene_mask(ds.imgs[img_id]['objects'], text, (64, 64))))
    lpvl.main(['--dataset_path', copy, '--split', 'test'])  # all cached: nothing to do
    assert 'test: 0 masks written' in capsys.readouterr().out


def test_dataset_items_carry_transformed_masks(css_dir):
    ds = datasets.CSSDataset(css_dir, 'train', transform=datasets.make_transform())
    assert 'source_img_mask' not in ds[0]
    ds.mask_source = 'scene'
    item = ds[0]
    assert item['source_img_mask'].shape == item['source_img_data'].shape
    expected = ds.transform(lpvl.scene_mask(ds.imgs[item['source_img_id']]['objects'],
                                            item['mod']['str'], (64, 64)))
    assert torch.equal(item['source_img_mask'], expected)


def test_missing_weights_errors(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(UsageError, match='--detector_weights'):
        lpvl.load_detector()
    with pytest.raises(UsageError, match='--clip_weights'):
        lpvl.load_clip(None)
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not weights')
    with pytest.raises(UsageError, match='--detector_weights'):
        lpvl.load_detector(str(junk))
    with pytest.raises(UsageError, match='--clip_weights'):
        lpvl.load_clip(str(junk))


@pytest.fixture(scope='module')
def localizer():
    torch.manual_seed(0)
    return lpvl.DetectorClipLocalizer(topk=2, random_init=True)


def test_detector_clip_plumbing(localizer, monkeypatch):
    image = Image.fromarray(cg.render_scene(
        [{'pos': (0.5, 0.5), 'color': 'red', 'shape': 'rectangle', 'size': 'large'}], 96))
    assert as_bool(localizer(image, 'make red rectangle blue')).shape == (96, 96)
    boxes = torch.tensor([[0, 0, 30, 30], [40, 40, 90, 90], [10, 50, 40, 90]], dtype=torch.float)
    scores = localizer.scores(image, boxes, 'make red rectangle blue')
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    monkeypatch.setattr(localizer, 'proposals', lambda img: boxes)
    mask = as_bool(localizer(image, 'make red rectangle blue'))
    best = scores.topk(2).indices.tolist()
    expected = as_bool(lpvl.boxes_mask((96, 96), boxes[best].tolist()))
    assert np.array_equal(mask, expected)
    monkeypatch.setattr(localizer, 'proposals', lambda img: torch.zeros(0, 4))
    assert as_bool(localizer(image, 'anything')).all()  # no box: the whole image


def test_crops_are_embedded_whole(localizer):
    # two crops that share their first pixel row but differ below it must score differently
    arr = np.full((64, 64, 3), 255, dtype=np.uint8)
    arr[20:, 32:] = (200, 30, 30)
    image = Image.fromarray(arr)
    boxes = torch.tensor([[0, 0, 32, 64], [32, 0, 64, 64]], dtype=torch.float)
    scores = localizer.scores(image, boxes, 'red')
    assert not torch.isclose(scores[0], scores[1])
