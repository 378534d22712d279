"""Pictures of retrieval: query grids with LPVL masks and top-K results, and mask previews.

A retrieval grid has one row per query: the reference image, its localisation mask over the
image (outside the mask darkened), the text, and the top-K gallery images, each framed green
when it carries the target caption and grey otherwise.
"""
import textwrap

import numpy as np
from PIL import Image, ImageDraw

CELL = 96  # side of one image cell, pixels
TEXT_WIDTH = 176
FRAME = 4
GREEN, GREY, WHITE, BLACK = (40, 180, 60), (170, 170, 170), (255, 255, 255), (0, 0, 0)
OUTSIDE_MASK = 0.3  # brightness kept outside the mask in an overlay


def sample_queries(num_queries, n, seed=0):
    """n query ids spread by a fixed seed, sorted: the same rows at every evaluation."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(num_queries, size=min(n, num_queries), replace=False).tolist())


def mask_overlay(image, mask):
    """The image with everything outside the white mask darkened."""
    inside = np.asarray(mask.convert('L').resize(image.size)) > 127
    pixels = np.asarray(image.convert('RGB')).astype(np.float32)
    pixels[~inside] *= OUTSIDE_MASK
    return Image.fromarray(pixels.astype(np.uint8))


def framed(image, color):
    """Image resized into a CELL x CELL cell with a coloured frame."""
    cell = Image.new('RGB', (CELL, CELL), color)
    inner = CELL - 2 * FRAME
    cell.paste(image.convert('RGB').resize((inner, inner)), (FRAME, FRAME))
    return cell


def text_panel(text, width=TEXT_WIDTH, height=CELL):
    panel = Image.new('RGB', (width, height), WHITE)
    draw = ImageDraw.Draw(panel)
    lines = textwrap.wrap(text, width=width // 7) or ['(empty text)']
    draw.multiline_text((6, 6), '\n'.join(lines[:height // 14]), fill=BLACK, spacing=3)
    return panel


def grid(rows, header):
    """Stack rows of PIL cells under a header of column titles [(title, width)]."""
    width = sum(w for _, w in header)
    out = Image.new('RGB', (width, 18 + CELL * len(rows)), WHITE)
    draw = ImageDraw.Draw(out)
    x = 0
    for title, w in header:
        draw.text((x + 4, 3), title, fill=BLACK)
        x += w
    for r, cells in enumerate(rows):
        x = 0
        for cell in cells:
            out.paste(cell, (x, 18 + r * CELL))
            x += cell.width
    return out


def retrieval_grid(testset, topk_ids, query_ids, k=5):
    """Grid image of the given queries. topk_ids: (Nq, >=k) gallery ids from the ranking."""
    queries = testset.get_test_queries()
    rows = []
    for qi in query_ids:
        query = queries[qi]
        text = query['mod']['str']
        reference = testset.get_img(query['source_img_id'], raw_img=True)
        mask = testset.get_raw_mask(query['source_img_id'], text, reference.size)
        row = [framed(reference, WHITE),
               framed(mask_overlay(reference, mask) if mask else reference, WHITE),
               text_panel(f'{text}\n-> {query["target_caption"]}')]
        for gallery_id in topk_ids[qi][:k].tolist():
            hit = testset.imgs[gallery_id]['captions'][0] == query['target_caption']
            row.append(framed(testset.get_img(gallery_id, raw_img=True), GREEN if hit else GREY))
        rows.append(row)
    header = [('reference', CELL), ('LPVL mask', CELL), ('text -> target', TEXT_WIDTH)]
    header += [(f'top {i + 1}', CELL) for i in range(k)]
    return grid(rows, header)


def mask_preview(pairs, images, masks):
    """Grid of (reference, mask over it, text) rows for a mask source check."""
    rows = [[framed(image, WHITE), framed(mask_overlay(image, mask), WHITE),
             text_panel(text)] for (_, text), image, mask in zip(pairs, images, masks)]
    return grid(rows, [('reference', CELL), ('mask', CELL), ('text', TEXT_WIDTH)])
