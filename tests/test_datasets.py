"""CSS loader: test queries, labels, index-seeded training sampling, errors."""
import os
import shutil

import numpy as np
import pytest
import torch

import css_generator as cg
import datasets
from errors import UsageError
from tests.conftest import TINY_SPLITS


@pytest.fixture
def trainset(css_dir):
    return datasets.CSSDataset(css_dir, 'train', transform=datasets.make_transform())


def test_test_queries_one_per_pair(css_dir, css_data):
    testset = datasets.CSSDataset(css_dir, 'test')
    queries = testset.get_test_queries()
    pairs = [(f, t, m['to_str']) for m in css_data['test']['mods'] for f, t in zip(m['from'], m['to'])]
    assert len(queries) == len(pairs) == TINY_SPLITS['test'][1] * TINY_SPLITS['test'][2]
    assert [(q['source_img_id'], q['target_img_id'], q['mod']['str']) for q in queries] == pairs
    labels = css_data['test']['labels']
    assert all(q['target_caption'] == str(labels[q['target_img_id']]) for q in queries)
    assert len(testset.imgs) == len(css_data['test']['objects_img'])


def test_captions_are_labels_with_duplicates(css_dir, css_data):
    testset = datasets.CSSDataset(css_dir, 'train')
    captions = [img['captions'][0] for img in testset.imgs]
    assert captions == [str(l) for l in css_data['train']['labels']]


def test_labels_default_to_image_ids(tmp_path, css_dir, css_data):
    data = {s: {k: v for k, v in d.items() if k != 'labels'} for s, d in css_data.items()}
    np.save(tmp_path / cg.NPY_NAME, data, allow_pickle=True)
    ds = datasets.CSSDataset(str(tmp_path), 'test')
    assert [img['captions'][0] for img in ds.imgs[:3]] == ['0', '1', '2']


def test_item_content(trainset, css_data):
    item = trainset[0]
    assert item['source_img_data'].shape == item['target_img_data'].shape == (3, 64, 64)
    mod = css_data['train']['mods'][item['mod']['id']]
    assert item['mod']['str'] == mod['to_str']
    assert (item['source_img_id'], item['target_img_id']) in zip(mod['from'], mod['to'])


def test_consecutive_samples_share_a_source_with_different_mods(trainset):
    for k in range(20):
        a = trainset.generate_training_query(2 * k)
        b = trainset.generate_training_query(2 * k + 1)
        sources_with_several_mods = len(trainset.imgid2modtarget[a[0]]) > 1
        if sources_with_several_mods:
            assert a[0] == b[0] and a[1] != b[1]


def test_sampling_independent_of_call_order_and_seeded(trainset):
    forward = [trainset.generate_training_query(i) for i in range(10)]
    backward = [trainset.generate_training_query(i) for i in reversed(range(10))][::-1]
    assert forward == backward
    trainset.seed = 1
    assert [trainset.generate_training_query(i) for i in range(10)] != forward
    trainset.seed = 0
    trainset.rank = 1
    assert [trainset.generate_training_query(i) for i in range(10)] != forward


def test_loader_with_workers_matches_main_process(trainset):
    def first_batches(workers):
        loader = trainset.get_loader(batch_size=4, sampler=range(100, 112),
                                     num_workers=workers)
        return [(b['source_img_id'].tolist(), b['mod']['str']) for b in loader]
    assert first_batches(0) == first_batches(2)


def test_render_2d(css_dir, css_data):
    ds = datasets.CSSDataset(css_dir, 'test', render='2d', render_size=32)
    img = ds.get_img(3, raw_img=True)
    assert img.size == (32, 32)
    expected = cg.render_scene(css_data['test']['objects_img'][3], 32)
    assert np.array_equal(np.asarray(img), expected)


def test_missing_npy_names_the_path(tmp_path):
    with pytest.raises(UsageError, match=cg.NPY_NAME):
        datasets.CSSDataset(str(tmp_path), 'train')


def test_npy_missing_keys(tmp_path):
    np.save(tmp_path / cg.NPY_NAME, {'train': {'objects_img': []}}, allow_pickle=True)
    with pytest.raises(UsageError, match='mods'):
        datasets.CSSDataset(str(tmp_path), 'train')
    with pytest.raises(UsageError, match="no split 'test'"):
        datasets.CSSDataset(str(tmp_path), 'test')


def test_missing_and_corrupt_image(tmp_path, css_dir):
    copy = tmp_path / 'css'
    shutil.copytree(css_dir, copy)
    os.remove(copy / 'images' / 'css_test_000001.png')
    (copy / 'images' / 'css_test_000002.png').write_bytes(b'not a png')
    ds = datasets.CSSDataset(str(copy), 'test', transform=datasets.make_transform())
    with pytest.raises(UsageError, match='css_test_000001.png'):
        ds.get_img(1)
    with pytest.raises(UsageError, match='css_test_000002.png'):
        ds.get_img(2)


def test_transform_normalises(trainset):
    img = trainset.get_img(0)
    assert img.dtype == torch.float32
    white = (1 - torch.tensor(datasets.IMAGENET_MEAN)) / torch.tensor(datasets.IMAGENET_STD)
    assert torch.allclose(img[:, 0, 0], white)  # the corner of a CSS image is white canvas
