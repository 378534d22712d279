"""Fashion200k and MIT-States loaders on small fixture trees with hand-derived answers."""
import os

import numpy as np
import pytest
from PIL import Image

import datasets
import main as driver
from errors import UsageError

FASHION_TRAIN = ['red cotton dress', 'blue cotton dress', 'red silk dress', 'green wool skirt',
                 'red embroidered dress', ' black. dress?  ']
FASHION_TEST = ['white lace top', 'black lace top', 'white silk top']


def write_jpeg(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope='module')
def fashion_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('fashion200k')
    os.makedirs(root / 'labels')
    for split, captions in (('train', FASHION_TRAIN), ('test', FASHION_TEST)):
        lines = []
        for i, caption in enumerate(captions):
            for copy in range(2):  # two images per caption
                rel = f'women/{split}/{i}/{i}_{copy}.jpeg'
                write_jpeg(str(root / rel), hash((split, i, copy)) % 1000)
                lines.append(f'{rel}\t0.{i}\t{caption}\n')
        (root / 'labels' / f'dress_{split}_detect_all.txt').write_text(''.join(lines))
    (root / 'labels' / 'README').write_text('not a label file')
    (root / 'test_queries.txt').write_text(
        'women/test/0/0_0.jpeg women/test/1/0_1.jpeg\n'.replace('0_1', '1_1') +
        'women/test/2/2_1.jpeg women/test/0/0_0.jpeg\n')
    return str(root)


def test_fashion_labels_and_captions(fashion_dir):
    ds = datasets.Fashion200k(fashion_dir, 'train')
    assert len(ds.imgs) == 12
    assert ds.imgs[0] == {'file_path': 'women/train/0/0_0.jpeg', 'detection_score': '0.0',
                          'captions': ['red cotton dress'], 'split': 'train',
                          'modifiable': True, 'parent_captions': ['cotton dress', 'red dress']}
    assert ds.imgs[10]['captions'] == ['blackdotmark dressquestionmark']


def test_fashion_parent_child_index(fashion_dir):
    ds = datasets.Fashion200k(fashion_dir, 'train')
    p2c = ds.parent2children_captions
    assert p2c['cotton dress'] == ['red cotton dress', 'blue cotton dress']
    assert p2c['red dress'] == ['red cotton dress', 'red silk dress', 'red embroidered dress']
    # the substring rule: removing 'red' also cuts it out of 'embroidered'
    assert p2c['embroide dress'] == ['red embroidered dress']
    modifiable = sorted({img['captions'][0] for img in ds.imgs if img['modifiable']})
    assert modifiable == ['blue cotton dress', 'red cotton dress', 'red embroidered dress',
                          'red silk dress']
    assert ds.imgs[2]['parent_captions'] == ['cotton dress']  # blue cotton dress


def test_fashion_training_samples(fashion_dir):
    ds = datasets.Fashion200k(fashion_dir, 'train')
    allowed = {('red cotton dress', 'blue cotton dress'): 'replace red with blue',
               ('blue cotton dress', 'red cotton dress'): 'replace blue with red',
               ('red cotton dress', 'red silk dress'): 'replace cotton with silk',
               ('red silk dress', 'red cotton dress'): 'replace silk with cotton',
               ('red embroidered dress', 'red cotton dress'): 'replace embroidered with cotton',
               ('red embroidered dress', 'red silk dress'): 'replace embroidered with silk',
               ('red cotton dress', 'red embroidered dress'): 'replace cotton with embroidered',
               ('red silk dress', 'red embroidered dress'): 'replace silk with embroidered'}
    seen = set()
    for idx in range(200):
        source, _, target, text = ds.generate_training_query(idx)
        pair = (ds.imgs[source]['captions'][0], ds.imgs[target]['captions'][0])
        assert allowed[pair] == text
        seen.add(pair)
    assert seen == set(allowed)
    assert ds.generate_training_query(7) == ds.generate_training_query(7)


def test_fashion_test_queries_and_complete_text(fashion_dir):
    ds = datasets.Fashion200k(fashion_dir, 'test')
    queries = ds.get_test_queries()
    assert [(q['source_img_id'], q['target_caption'], q['mod']['str']) for q in queries] == \
        [(0, 'black lace top', 'replace white with black'),
         (5, 'white lace top', 'replace silk with lace')]
    full = datasets.Fashion200k(fashion_dir, 'test', use_complete_text_query=True)
    assert [q['mod']['str'] for q in full.get_test_queries()] == ['black lace top', 'white lace top']
    train = datasets.Fashion200k(fashion_dir, 'train', use_complete_text_query=True)
    _, _, target, text = train.generate_training_query(0)
    assert text == train.imgs[target]['captions'][0]


def test_fashion_errors(tmp_path, fashion_dir):
    with pytest.raises(UsageError, match='labels'):
        datasets.Fashion200k(str(tmp_path), 'train')
    os.makedirs(tmp_path / 'labels')
    (tmp_path / 'labels' / 'x_test.txt').write_text('a.jpeg\t0.1\tred top\n')
    with pytest.raises(UsageError, match='test_queries.txt'):
        datasets.Fashion200k(str(tmp_path), 'test')
    (tmp_path / 'test_queries.txt').write_text('a.jpeg missing.jpeg\n')
    with pytest.raises(UsageError, match='test_queries.txt:1'):
        datasets.Fashion200k(str(tmp_path), 'test')


MIT_FOLDERS = {'ripe apple': 2, 'rotten apple': 1, 'old car': 1, 'new car': 1,
               'broken tomato': 1, 'ripe tomato': 1, 'rotten tomato': 2,
               'adj tomato': 1, 'tomatoes': 1}


@pytest.fixture(scope='module')
def mit_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('mitstates')
    for k, (folder, n) in enumerate(MIT_FOLDERS.items()):
        for i in range(n):
            write_jpeg(str(root / 'images' / folder / f'img{i}.jpg'), 100 * k + i)
    return str(root)


def test_mit_states_folders_and_splits(mit_dir):
    train = datasets.MITStates(mit_dir, 'train')
    test = datasets.MITStates(mit_dir, 'test')
    assert sorted({img['captions'][0] for img in train.imgs}) == \
        ['new car', 'old car', 'ripe apple', 'rotten apple']
    assert [img['captions'][0] for img in test.imgs] == \
        ['broken tomato', 'ripe tomato', 'rotten tomato', 'rotten tomato']
    assert len(train.imgs) == 5


def test_mit_states_test_queries(mit_dir):
    test = datasets.MITStates(mit_dir, 'test')
    got = [(q['source_img_id'], q['target_caption'], q['mod']['str'])
           for q in test.get_test_queries()]
    assert got == [(0, 'ripe tomato', 'ripe'), (0, 'rotten tomato', 'rotten'),
                   (1, 'broken tomato', 'broken'), (1, 'rotten tomato', 'rotten'),
                   (2, 'broken tomato', 'broken'), (2, 'ripe tomato', 'ripe'),
                   (3, 'broken tomato', 'broken'), (3, 'ripe tomato', 'ripe')]
    full = datasets.MITStates(mit_dir, 'test', use_complete_text_query=True)
    assert full.get_test_queries()[0]['mod']['str'] == 'ripe tomato'


def test_mit_states_paired_training_targets(mit_dir):
    train = datasets.MITStates(mit_dir, 'train')
    for k in range(20):
        s1, _, t1, text1 = train.generate_training_query(2 * k)
        s2, _, t2, text2 = train.generate_training_query(2 * k + 1)
        assert s1 == s2
        assert train.imgs[t1]['noun'] == train.imgs[t2]['noun'] == train.imgs[s1]['noun']
        assert text1 != text2 and text1 == train.imgs[t1]['adj']


def test_mit_states_needs_two_adjectives(tmp_path):
    write_jpeg(str(tmp_path / 'images' / 'old boat' / 'a.jpg'), 0)
    with pytest.raises(UsageError, match='boat'):
        datasets.MITStates(str(tmp_path), 'train')


def run_main(dataset, path, tmp_path, *extra):
    return dict(driver.main(['--dataset', dataset, '--dataset_path', path, '--backbone_weights',
                             'none', '--num_iters', '2', '--batch_size', '4',
                             '--image_embed_dim', '32', '--loader_num_workers', '0',
                             '--log_dir', str(tmp_path), *extra]))


@pytest.mark.parametrize('dataset', ['fashion200k', 'mitstates'])
@pytest.mark.parametrize('model', ['tirg', 'LGLI'])
def test_main_runs_on_fixture(dataset, model, fashion_dir, mit_dir, tmp_path):
    path = fashion_dir if dataset == 'fashion200k' else mit_dir
    results = run_main(dataset, path, tmp_path, '--model', model, '--mask_source', 'none',
                       '--use_complete_text_query', 'True')
    assert 0 <= results['recall_top1_correct_composition'] <= 1
    if dataset == 'mitstates':
        assert {'recall_top1_correct_adj', 'recall_top100_correct_noun'} <= set(results)
        # every test query targets a tomato, and every gallery image is one
        assert results['recall_top1_correct_noun'] == 1.0


def test_main_default_weights_offline(fashion_dir, tmp_path, monkeypatch):
    import urllib.error
    import torch

    def no_network(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    with pytest.raises(UsageError, match='resnet18-f37072fd.pth'):
        driver.main(['--dataset', 'fashion200k', '--dataset_path', fashion_dir, '--model', 'tirg',
                     '--log_dir', str(tmp_path)])


def test_corrupt_image_error_and_skip(fashion_dir, css_dir, tmp_path, capsys):
    import shutil
    copy = tmp_path / 'f'
    shutil.copytree(fashion_dir, copy)
    (copy / 'women' / 'test' / '2' / '2_1.jpeg').write_bytes(b'\xff\xd8 truncated jpeg')
    ds = datasets.Fashion200k(str(copy), 'test', transform=datasets.make_transform(224))
    with pytest.raises(UsageError, match='2_1.jpeg'):
        ds.get_img(5)
    skipping = datasets.Fashion200k(str(copy), 'test', skip_bad_images=True)
    assert len(skipping.imgs) == 5
    assert len(skipping.get_test_queries()) == 1  # the query from 2_1.jpeg is gone
    err = capsys.readouterr().err
    assert 'skipped 1 unreadable test image' in err and 'skipped 1 test queries' in err
    with pytest.raises(UsageError, match='skip_bad_images'):
        driver.main(['--skip_bad_images', '--dataset_path', css_dir, '--log_dir', str(tmp_path)])


def test_mit_states_skip(mit_dir, tmp_path):
    import shutil
    copy = tmp_path / 'm'
    shutil.copytree(mit_dir, copy)
    (copy / 'images' / 'rotten tomato' / 'img0.jpg').write_bytes(b'broken')
    assert len(datasets.MITStates(str(copy), 'test', skip_bad_images=True).imgs) == 3


def test_mask_queries_cover_every_training_draw(fashion_dir, mit_dir):
    for ds in (datasets.Fashion200k(fashion_dir, 'train'), datasets.MITStates(mit_dir, 'train')):
        pairs = set(ds.mask_queries())
        for idx in range(100):
            source, _, _, text = ds.generate_training_query(idx)
            assert (source, text) in pairs
    test = datasets.MITStates(mit_dir, 'test')
    assert len(test.mask_queries()) == len(test.get_test_queries()) == 8


def test_lpvl_precompute_on_fashion_with_a_stub_localizer(fashion_dir, tmp_path, monkeypatch):
    import shutil
    import lpvl
    copy = str(tmp_path / 'f')
    shutil.copytree(fashion_dir, copy)
    calls = []

    class Stub:
        def __init__(self, *args):
            pass

        def masks(self, image, texts):
            calls.append(len(texts))
            return [lpvl.boxes_mask(image.size, [(0, 0, 5, 5)]) for _ in texts]
    monkeypatch.setattr(lpvl, 'DetectorClipLocalizer', Stub)
    lpvl.main(['--dataset', 'fashion200k', '--dataset_path', copy, '--mask_source',
               'detector_clip', '--split', 'test'])
    assert calls == [1, 1]  # one detector pass per query image
    lpvl.main(['--dataset', 'fashion200k', '--dataset_path', copy, '--mask_source',
               'detector_clip', '--split', 'train'])
    results = run_main('fashion200k', copy, tmp_path, '--model', 'LGLI')  # cached masks
    assert 0 <= results['recall_top1_correct_composition'] <= 1
    ds = datasets.Fashion200k(copy, 'test', transform=datasets.make_transform(224))
    ds.mask_source = 'detector_clip'
    q = ds.get_test_queries()[0]
    source = ds.get_source(q['source_img_id'], q['mod']['str'])
    assert source['mask'].shape == source['img'].shape == (3, 224, 224)
