"""Shared fixtures: a tiny generated CSS set, built once per test session."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import css_generator  # noqa: E402

TINY_SPLITS = {'train': (40, 60, 3), 'test': (20, 20, 3)}


@pytest.fixture(scope='session')
def css_dir(tmp_path_factory):
    """Folder with a tiny generated CSS set (64x64 images)."""
    out = str(tmp_path_factory.mktemp('css'))
    css_generator.generate(out, seed=0, image_size=64, splits=TINY_SPLITS)
    return out


@pytest.fixture(scope='session')
def css_data(css_dir):
    import numpy as np
    return np.load(os.path.join(css_dir, css_generator.NPY_NAME), allow_pickle=True,
                   encoding='latin1').item()
