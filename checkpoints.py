"""Checkpoints: atomic writes, safe loading, and the random states an exact resume needs.

A checkpoint holds only tensors and plain data, so it loads with
`torch.load(weights_only=True)`:
    it, opt (flags as a dict), model_state_dict, optimizer_state_dict, scheduler_state_dict,
    vocab (list of words), rng (python / numpy / torch / cuda states), best_recall,
    skipped_nonfinite
The first three keys are TIRG's, so TIRG-style scripts can read the model back.
"""
import os
import pickle
import random
import shutil

import numpy as np
import torch

from errors import UsageError


def save(path, state):
    """Write `state` to a temporary file, then os.replace it onto `path`: a crash while
    saving never leaves a truncated checkpoint at `path`."""
    torch.save(state, path + '.tmp')
    os.replace(path + '.tmp', path)


def copy(source, path):
    """Atomic copy of a checkpoint file."""
    shutil.copyfile(source, path + '.tmp')
    os.replace(path + '.tmp', path)


RESUME_KEYS = ('optimizer_state_dict', 'scheduler_state_dict', 'rng')


def load(path, resume=False):
    """The checkpoint at `path`, loaded on the CPU with weights_only=True; anything else
    (missing, corrupt, carrying pickled Python objects, or for `resume` lacking the training
    state an exact resume needs) is a one-line UsageError."""
    if not os.path.isfile(path):
        raise UsageError(f'checkpoint not found: {path}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f'refusing checkpoint {path}: it holds pickled Python objects, not '
                         f'only tensors and plain data ({str(e).splitlines()[0]})') from None
    except Exception as e:  # truncated or foreign files: name the file, in one line
        raise UsageError(f'cannot load checkpoint {path}: {str(e).splitlines()[0]}') from None
    keys = state.keys() if isinstance(state, dict) else ()
    missing = [k for k in ('it', 'opt', 'model_state_dict', 'vocab') if k not in keys]
    if missing:
        raise UsageError(f'{path} is not a checkpoint of this code base (no '
                         f'{", ".join(missing)})')
    missing = [k for k in RESUME_KEYS if resume and k not in keys]
    if missing:
        raise UsageError(f'cannot resume from {path}: it lacks {", ".join(missing)} (written '
                         'by an older version?); it still works with --test_only')
    return state


def rng_states():
    """Python, numpy, torch and CUDA random states as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)),
                      'pos': int(pos), 'has_gauss': int(has_gauss), 'cached': float(cached)},
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states):
    """Restore what rng_states() returned."""
    random.setstate(states['python'])
    n = states['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['cached']))
    torch.set_rng_state(states['torch'])
    if states['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def check_model_state(model, state_dict, path):
    """Load `state_dict` into `model`, or raise a UsageError naming the first difference."""
    expected = model.state_dict()
    for name, tensor in state_dict.items():
        if name not in expected:
            raise UsageError(f'checkpoint {path} has a tensor {name} this model lacks')
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UsageError(f'checkpoint {path}: {name} has shape {tuple(tensor.shape)}, this '
                             f'model expects {tuple(expected[name].shape)}')
    missing = [name for name in expected if name not in state_dict]
    if missing:
        raise UsageError(f'checkpoint {path} lacks {missing[0]} (and {len(missing) - 1} more)')
    model.load_state_dict(state_dict)
