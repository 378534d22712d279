"""Retrieval evaluation: Recall@K of composed queries against the test gallery.

Protocol (TIRG): the gallery is every image of the test split, embedded once by the image
encoder; queries are composed from (reference image, text); both are L2-normalised and
ranked by cosine similarity; the query's own reference image is excluded from its ranking;
a query is correct at K when one of its top-K images carries the target caption.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

RECALL_KS = (1, 5, 10, 50, 100)
QUERY_CHUNK = 512  # queries ranked at once: memory is QUERY_CHUNK x gallery similarities


class QueryImages(torch.utils.data.Dataset):
    """Test query i -> {'img': (3, H, W), 'text': str} and 'mask' (3, H, W) when the
    testset carries LPVL masks."""

    def __init__(self, testset):
        self.testset, self.queries = testset, testset.get_test_queries()

    def __len__(self):
        return len(self.queries)

    def __getitem__(self, i):
        query = self.queries[i]
        text = query['mod']['str']
        return dict(self.testset.get_source(query['source_img_id'], text), text=text)


class GalleryImages(torch.utils.data.Dataset):
    """Gallery image i -> (3, H, W)."""

    def __init__(self, testset):
        self.testset = testset

    def __len__(self):
        return len(self.testset.imgs)

    def __getitem__(self, i):
        return self.testset.get_img(i)


def loader(dataset, opt):
    return torch.utils.data.DataLoader(dataset, batch_size=opt.eval_batch_size,
                                       num_workers=opt.loader_num_workers)


def device_of(model):
    return next(model.parameters()).device


@torch.inference_mode()
def encode_queries(model, testset, opt):
    """Composed, L2-normalised query features (Nq, d)."""
    feats, device = [], device_of(model)
    for batch in tqdm(loader(QueryImages(testset), opt), desc='queries', leave=False):
        masks = batch['mask'].to(device) if 'mask' in batch else None
        feats.append(model.compose_img_text(batch['img'].to(device), batch['text'], masks).float())
    return F.normalize(torch.cat(feats), dim=1)


@torch.inference_mode()
def encode_gallery(model, testset, opt):
    """L2-normalised image features of the whole test split (Ng, d)."""
    feats, device = [], device_of(model)
    for imgs in tqdm(loader(GalleryImages(testset), opt), desc='gallery', leave=False):
        feats.append(model.extract_img_feature(imgs.to(device)).float())
    return F.normalize(torch.cat(feats), dim=1)


@torch.inference_mode()
def rank_gallery(query_feats, gallery_feats, exclude_ids, k, chunk=QUERY_CHUNK):
    """Indices of the k most similar gallery items per query, the item exclude_ids[i] left
    out of query i's ranking. query_feats (Nq, d), gallery_feats (Ng, d), exclude_ids (Nq,)
    -> (Nq, min(k, Ng - 1)) int64; memory bounded by one (chunk, Ng) block."""
    k = min(k, len(gallery_feats) - 1)
    exclude_ids = exclude_ids.to(query_feats.device)
    out = []
    for start in range(0, len(query_feats), chunk):
        sims = query_feats[start:start + chunk] @ gallery_feats.t()
        rows = torch.arange(len(sims), device=sims.device)
        sims[rows, exclude_ids[start:start + chunk]] = -float('inf')
        out.append(sims.topk(k, dim=1).indices.cpu())
    return torch.cat(out)


def recall_at_k(topk_ids, gallery_labels, target_labels, ks=RECALL_KS):
    """Fraction of queries with a gallery item of their target label among the top K.
    topk_ids (Nq, k), gallery_labels (Ng,), target_labels (Nq,) -> {K: recall}."""
    hits = gallery_labels[topk_ids] == target_labels[:, None]
    first_hit = torch.where(hits.any(1), hits.float().argmax(1), hits.shape[1])
    return {k: (first_hit < k).sum().item() / len(first_hit) for k in ks}


def caption_codes(gallery_captions, target_captions):
    """Integer codes of captions; a target caption absent from the gallery gets -1."""
    code = {c: i for i, c in enumerate(dict.fromkeys(gallery_captions))}
    return (torch.tensor([code[c] for c in gallery_captions]),
            torch.tensor([code.get(c, -1) for c in target_captions]))


def test(opt, model, testset):
    """Recall@K of `model` on `testset` as [(name, value)], names
    recall_top{K}_correct_composition. opt needs eval_batch_size and loader_num_workers."""
    return test_with_ranking(opt, model, testset)[0]


def test_with_ranking(opt, model, testset):
    """(test()'s recalls, top-100 gallery ids per query (Nq, 100))."""
    was_training = model.training
    model.eval()
    queries = testset.get_test_queries()
    query_feats = encode_queries(model, testset, opt)
    gallery_feats = encode_gallery(model, testset, opt).to(query_feats.device)
    model.train(was_training)
    exclude = torch.tensor([q['source_img_id'] for q in queries])
    topk_ids = rank_gallery(query_feats, gallery_feats, exclude, max(RECALL_KS))
    gallery_captions = [img['captions'][0] for img in testset.imgs]
    target_captions = [q['target_caption'] for q in queries]
    # the whole caption, then (MIT-States) single words of it: the adjective, the noun
    views = {'composition': lambda c: c}
    views.update({name: (lambda c, i=i: c.split()[i])
                  for name, i in getattr(testset, 'caption_parts', {}).items()})
    results = []
    for name, view in views.items():
        recalls = recall_at_k(topk_ids, *caption_codes(list(map(view, gallery_captions)),
                                                       list(map(view, target_captions))))
        results += [(f'recall_top{k}_correct_{name}', r) for k, r in recalls.items()]
    return results, topk_ids


def chance_recall_at_1(testset):
    """Expected Recall@1 of a random ranking: per query, the share of the other gallery
    images that carry its target caption."""
    queries = testset.get_test_queries()
    gallery_labels, target_labels = caption_codes(
        [img['captions'][0] for img in testset.imgs], [q['target_caption'] for q in queries])
    counts = torch.bincount(gallery_labels, minlength=len(gallery_labels)).float()
    per_query = torch.where(target_labels >= 0, counts[target_labels.clamp(min=0)], 0.0)
    sources = torch.tensor([q['source_img_id'] for q in queries])
    per_query -= (gallery_labels[sources] == target_labels).float()  # the source is excluded
    return (per_query / (len(gallery_labels) - 1)).mean().item()


def parse_args(argv=None):
    import argparse
    p = argparse.ArgumentParser(description='Evaluate a saved checkpoint: Recall@K, printed as '
                                'main.py prints it, and written to JSON.')
    p.add_argument('--model_checkpoint', required=True)
    p.add_argument('--dataset_path', default=None, help="default: the checkpoint's")
    p.add_argument('--output', default=None, help='JSON file for the recalls')
    p.add_argument('--visualize', type=int, default=0, help='grid of N queries (PNG)')
    p.add_argument('--log_dir', default=None, help="default: the checkpoint's folder")
    return p.parse_args(argv)


def main(argv=None):
    """Evaluate --model_checkpoint through main.py's --test_only path."""
    import json
    import os
    import main as driver
    args = parse_args(argv)
    forwarded = ['--test_only', 'True', '--model_checkpoint', args.model_checkpoint,
                 '--log_dir', args.log_dir or os.path.dirname(os.path.abspath(args.model_checkpoint)),
                 '--visualize', str(args.visualize)]
    if args.dataset_path:
        forwarded += ['--dataset_path', args.dataset_path]
    results = driver.main(forwarded)
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(dict(results), f, indent=2)
        print(f'Results written to {args.output}')
    return results


if __name__ == '__main__':
    import sys
    from errors import UsageError, one_line
    try:
        main()
    except UsageError as e:
        sys.exit(f'error: {one_line(e)}')
