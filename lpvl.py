"""LPVL - Language Prompt Visual Localisation: the localisation mask of (reference image, text).

A mask is an RGB image the size of the reference image, white (255) over the region the text
intends to modify and black elsewhere; all white means "no localisation". Mask sources
(`--mask_source`):
  scene          CSS only: from the reference image's object annotations and the parsed
                 text - the named object's box (remove/make) or the named empty cell (add).
                 Never looks at the target.
  detector_clip  the published method: Faster R-CNN (ResNet-50 FPN, COCO) proposals, each
                 crop and the text embedded by CLIP ViT-B/32, the top-k boxes by similarity
                 united into the mask; the whole image when there is no box. Unlike the
                 published code, each crop is embedded whole (not its first pixel row).
  none           all white (the ablation "without LPVL").
Masks are cached as PNGs under <dataset_path>/lpvl_masks/<source>/<split>/; datasets read the
cache, compute a missing `scene` mask on the fly and refuse a missing `detector_clip` one.

    python lpvl.py --dataset css3d --dataset_path DIR --mask_source scene --split all
"""
import argparse
import hashlib
import os
import sys

import torch
import torchvision
from PIL import Image, ImageDraw
from tqdm import tqdm

import css_generator
from errors import UsageError

MASK_SOURCES = ('scene', 'detector_clip', 'none')
CACHE_DIR = 'lpvl_masks'
DETECTOR_WEIGHTS = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1
CLIP_MODEL = 'ViT-B-32'
MIN_BOX_SIDE = 2.0  # pixels; thinner proposals give empty crops


# ----------------------------------------------------------------------------- mask images
def white_mask(size):
    """All-white RGB mask of size (W, H)."""
    return Image.new('RGB', size, (255, 255, 255))


def boxes_mask(size, boxes):
    """RGB mask of size (W, H): white inside the (x0, y0, x1, y1) pixel boxes, black
    elsewhere; all white when there is no box."""
    if len(boxes) == 0:
        return white_mask(size)
    mask = Image.new('RGB', size, (0, 0, 0))
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([round(x0), round(y0), round(x1) - 1, round(y1) - 1], fill=(255, 255, 255))
    return mask


def topk_union_mask(size, boxes, scores, k):
    """Mask of the union of the k best-scoring boxes. boxes (N, 4), scores (N,)."""
    if len(boxes) == 0:
        return white_mask(size)
    best = torch.as_tensor(scores).topk(min(k, len(boxes))).indices
    return boxes_mask(size, torch.as_tensor(boxes)[best].tolist())


# ----------------------------------------------------------------------------- scene source
def scene_boxes(objects, text, size):
    """Pixel boxes of what a CSS text refers to in a scene of size (W, H): the named object
    (drawn extent of the 2-D renderer, scaled to the image) or, for 'add', the named cell."""
    width, height = size
    parsed = css_generator.parse_mod_text(text)
    if parsed['type'] == 'add':
        row, col = divmod(css_generator.POSITIONS.index(parsed['pos']), 3)
        return [(col * width / 3, row * height / 3, (col + 1) * width / 3, (row + 1) * height / 3)]
    boxes = []
    for i in css_generator.resolve_reference(objects, parsed):
        y, x = objects[i]['pos']
        half = css_generator.BASE_HALF_SIZE / css_generator.BASE_CANVAS * (
            2 if objects[i]['size'] == 'large' else 1)
        boxes.append(((x - half) * width, (y - half) * height,
                      (x + half) * width, (y + half) * height))
    return boxes


def scene_mask(objects, text, size):
    """LPVL mask from CSS annotations; never uses the target."""
    return boxes_mask(size, scene_boxes(objects, text, size))


# ----------------------------------------------------------------------------- detector + CLIP
def load_detector(weights=None, random_init=False):
    """torchvision Faster R-CNN ResNet-50 FPN with COCO weights from `weights` (a path) or
    torchvision's cache; random_init only for plumbing tests."""
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None)
    if not random_init:
        path = weights or os.path.join(torch.hub.get_dir(), 'checkpoints',
                                       os.path.basename(DETECTOR_WEIGHTS.url))
        if not os.path.isfile(path):
            raise UsageError(f'detector weights not found at {path}: download '
                             f'{DETECTOR_WEIGHTS.url} there or pass --detector_weights PATH')
        try:
            detector.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        except Exception as e:  # unreadable or not a Faster R-CNN state dict: name the file
            raise UsageError(f'--detector_weights {path}: {str(e).splitlines()[0]}') from None
    return detector.eval()


def load_clip(weights=None, random_init=False):
    """open_clip ViT-B/32 with its eval transform and tokenizer; weights from a checkpoint
    file open_clip reads (e.g. OpenAI's or LAION's ViT-B-32); random_init only for tests."""
    import open_clip
    if not random_init and not (weights and os.path.isfile(weights)):
        raise UsageError(f'CLIP ViT-B/32 weights not found ({weights or "no path given"}): '
                         'pass --clip_weights PATH to an open_clip ViT-B-32 checkpoint')
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            CLIP_MODEL, pretrained=None if random_init else weights)
    except Exception as e:  # unreadable or not a ViT-B-32 checkpoint: name the file
        raise UsageError(f'--clip_weights {weights}: {str(e).splitlines()[0]}') from None
    return model.eval(), preprocess, open_clip.get_tokenizer(CLIP_MODEL)


class DetectorClipLocalizer:
    """The published LPVL: proposals scored against the text by CLIP, top-k united."""

    def __init__(self, topk=1, detector_weights=None, clip_weights=None, device='cpu',
                 random_init=False):
        self.topk, self.device = topk, torch.device(device)
        self.detector = load_detector(detector_weights, random_init).to(self.device)
        self.clip, self.preprocess, self.tokenizer = load_clip(clip_weights, random_init)
        self.clip.to(self.device)

    @torch.inference_mode()
    def proposals(self, image):
        """Detector boxes (N, 4) in pixels of the PIL image, degenerate ones dropped."""
        tensor = torchvision.transforms.functional.to_tensor(image).to(self.device)
        boxes = self.detector([tensor])[0]['boxes'].cpu()
        return boxes[torchvision.ops.remove_small_boxes(boxes, MIN_BOX_SIDE)]

    @torch.inference_mode()
    def crop_features(self, image, boxes):
        """L2-normalised CLIP embeddings of each whole box crop: (N, 512)."""
        crops = torch.stack([self.preprocess(image.crop(tuple(b))) for b in boxes.tolist()])
        return torch.nn.functional.normalize(self.clip.encode_image(crops.to(self.device)), dim=1)

    @torch.inference_mode()
    def text_features(self, texts):
        """L2-normalised CLIP embeddings of the texts: (T, 512)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return torch.nn.functional.normalize(self.clip.encode_text(tokens), dim=1)

    def scores(self, image, boxes, text):
        """Cosine similarity of each box crop to the text under CLIP: (N,)."""
        return (self.crop_features(image, boxes) @ self.text_features([text]).t())[:, 0].cpu()

    def masks(self, image, texts):
        """One mask per text; detection and crop embeddings are computed once per image."""
        boxes = self.proposals(image)
        if len(boxes) == 0:
            return [white_mask(image.size) for _ in texts]
        sims = (self.crop_features(image, boxes) @ self.text_features(texts).t()).cpu()
        return [topk_union_mask(image.size, boxes, sims[:, j], self.topk) for j in range(len(texts))]

    def __call__(self, image, text):
        return self.masks(image, [text])[0]


# ----------------------------------------------------------------------------- cache
def mask_path(dataset, source, img_id, text):
    """<dataset_path>/lpvl_masks/<source>/<split>/<img_id>_<text hash>.png"""
    key = hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]
    return os.path.join(dataset.path, CACHE_DIR, source, dataset.split, f'{img_id:06d}_{key}.png')


def load_mask(dataset, source, img_id, text, size):
    """The mask of (image img_id of `dataset`, text) as a PIL image of size (W, H)."""
    if source == 'none':
        return white_mask(size)
    path = mask_path(dataset, source, img_id, text)
    if os.path.isfile(path):
        with Image.open(path) as mask:
            return mask.convert('RGB')
    if source == 'scene':
        return scene_mask(dataset.imgs[img_id]['objects'], text, size)
    raise UsageError(f'no cached {source} mask at {path}: run `python lpvl.py --dataset ... '
                     f'--dataset_path {dataset.path} --mask_source {source} --split '
                     f'{dataset.split}` first')


def write_atomic(image, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path + '.tmp.png')
    os.replace(path + '.tmp.png', path)


def precompute(dataset, source, make_masks):
    """Write the mask of every (image, text) of `dataset` not cached yet, one image at a
    time; returns the number written."""
    todo = {}
    for img_id, text in sorted(set(dataset.mask_queries())):
        if not os.path.isfile(mask_path(dataset, source, img_id, text)):
            todo.setdefault(img_id, []).append(text)
    for img_id, texts in tqdm(todo.items(), desc=f'{source} masks {dataset.split} (images)'):
        image = dataset.get_img(img_id, raw_img=True)
        for text, mask in zip(texts, make_masks(dataset, img_id, texts, image)):
            write_atomic(mask, mask_path(dataset, source, img_id, text))
    return sum(len(texts) for texts in todo.values())


def mask_maker(opt):
    """f(dataset, img_id, texts, PIL image) -> one PIL mask per text, for opt.mask_source."""
    if opt.mask_source == 'scene':
        return lambda ds, i, texts, image: [scene_mask(ds.imgs[i]['objects'], t, image.size)
                                            for t in texts]
    if opt.mask_source == 'none':
        return lambda ds, i, texts, image: [white_mask(image.size) for _ in texts]
    localizer = DetectorClipLocalizer(opt.lpvl_topk, opt.detector_weights, opt.clip_weights,
                                      'cuda' if torch.cuda.is_available() else 'cpu')
    return lambda ds, i, texts, image: localizer.masks(image, texts)


def preview(dataset, make_masks, n, out):
    """Draw the masks of n queries of `dataset` over their images into the PNG `out`."""
    import visualize
    pairs = sorted(set(dataset.mask_queries()))
    pairs = [pairs[i] for i in visualize.sample_queries(len(pairs), n)]
    images = [dataset.get_img(img_id, raw_img=True) for img_id, _ in pairs]
    masks = [make_masks(dataset, img_id, [text], image)[0]
             for (img_id, text), image in zip(pairs, images)]
    visualize.mask_preview(pairs, images, masks).save(out)
    print(f'{len(pairs)} masks drawn into {out}')


def parse_args(argv=None):
    import datasets
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='css3d', choices=sorted(datasets.DATASETS))
    p.add_argument('--dataset_path', required=True)
    p.add_argument('--mask_source', default='scene', choices=MASK_SOURCES)
    p.add_argument('--split', default='all', choices=['train', 'test', 'all'])
    p.add_argument('--lpvl_topk', type=int, default=None, help='default: 3 on css3d, else 1')
    p.add_argument('--detector_weights', default=None)
    p.add_argument('--clip_weights', default=None)
    p.add_argument('--preview', type=int, default=0,
                   help='instead of caching, draw N masks over their images into --out')
    p.add_argument('--out', default='masks.png', help='preview image path')
    opt = p.parse_args(argv)
    if opt.lpvl_topk is None:
        opt.lpvl_topk = 3 if opt.dataset == 'css3d' else 1
    return opt


def main(argv=None):
    import datasets
    opt = parse_args(argv)
    make_mask = mask_maker(opt)
    if opt.preview:
        return preview(datasets.DATASETS[opt.dataset](opt.dataset_path, split=(
            'test' if opt.split == 'all' else opt.split)), make_mask, opt.preview, opt.out)
    for split in (['train', 'test'] if opt.split == 'all' else [opt.split]):
        dataset = datasets.DATASETS[opt.dataset](opt.dataset_path, split=split)
        written = precompute(dataset, opt.mask_source, make_mask)
        print(f'{split}: {written} masks written under '
              f'{os.path.join(opt.dataset_path, CACHE_DIR, opt.mask_source, split)}')


if __name__ == '__main__':
    try:
        main()
    except UsageError as e:
        sys.exit(f'error: {e}')
