"""Retrieval grids and mask previews."""
import numpy as np
import torch
from PIL import Image

import lpvl
import visualize as vis


class Gallery:
    """Six solid-colour images; image i has caption 'c<i // 2>'."""

    mask_source = None

    def __init__(self):
        self.imgs = [{'captions': [f'c{i // 2}']} for i in range(6)]
        self.queries = [{'source_img_id': 0, 'target_caption': 'c1', 'mod': {'str': 'to one'}},
                        {'source_img_id': 5, 'target_caption': 'c0', 'mod': {'str': ''}}]

    def get_test_queries(self):
        return self.queries

    def get_img(self, i, raw_img=False):
        return Image.new('RGB', (40, 30), (40 * i, 0, 0))

    def get_raw_mask(self, img_id, text, size):
        return lpvl.boxes_mask(size, [(0, 0, 10, 10)]) if img_id == 0 else None


def test_grid_size_and_hit_frames():
    testset = Gallery()
    topk = torch.tensor([[2, 3, 4, 1, 5], [1, 0, 2, 3, 4]])
    image = vis.retrieval_grid(testset, topk, [0, 1], k=5)
    assert image.size == (2 * vis.CELL + vis.TEXT_WIDTH + 5 * vis.CELL, 18 + 2 * vis.CELL)
    pixels = np.asarray(image)
    for row, query in enumerate(testset.queries):
        for j, gallery_id in enumerate(topk[row].tolist()):
            x = 2 * vis.CELL + vis.TEXT_WIDTH + j * vis.CELL + 1
            y = 18 + row * vis.CELL + 1
            hit = testset.imgs[gallery_id]['captions'][0] == query['target_caption']
            assert tuple(pixels[y, x]) == (vis.GREEN if hit else vis.GREY)


def test_mask_overlay_darkens_outside():
    image = Image.new('RGB', (20, 20), (200, 200, 200))
    over = np.asarray(vis.mask_overlay(image, lpvl.boxes_mask((20, 20), [(0, 0, 10, 10)])))
    assert tuple(over[2, 2]) == (200, 200, 200) and tuple(over[15, 15]) == (60, 60, 60)


def test_sample_queries_is_stable():
    assert vis.sample_queries(100, 5) == vis.sample_queries(100, 5)
    assert len(set(vis.sample_queries(100, 5))) == 5 and vis.sample_queries(3, 5) == [0, 1, 2]


def test_lpvl_preview(css_dir, tmp_path, capsys):
    out = tmp_path / 'masks.png'
    lpvl.main(['--dataset_path', css_dir, '--split', 'test', '--preview', '4', '--out', str(out)])
    assert Image.open(out).size == (2 * vis.CELL + vis.TEXT_WIDTH, 18 + 4 * vis.CELL)
    assert '4 masks drawn' in capsys.readouterr().out
