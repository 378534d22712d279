"""Multi-process training through torchrun; every helper is a no-op in a single process.

    torchrun --nproc_per_node=N main.py ...                       # one machine, N processes
    torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:PORT main.py ...                     # M machines

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; the backend is NCCL on CUDA, gloo on CPU.
"""
import os

import torch
import torch.distributed as dist


def init_distributed(device_name):
    """(rank, world_size, device). Joins the process group when torchrun started us; in a
    single process it only resolves the device. device_name: auto, cpu, cuda or cuda:N."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    use_cuda = device_name.startswith('cuda') or (device_name == 'auto' and
                                                  torch.cuda.is_available())
    if world_size == 1:
        return 0, 1, torch.device(device_name if device_name != 'auto' else
                                  ('cuda' if use_cuda else 'cpu'))
    local_rank = int(os.environ['LOCAL_RANK'])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group('nccl' if use_cuda else 'gloo')
    return dist.get_rank(), world_size, torch.device(f'cuda:{local_rank}' if use_cuda else 'cpu')


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def barrier():
    if is_distributed():
        dist.barrier()


def mean_over_ranks(values, device):
    """{name: float} averaged over all ranks (for logging)."""
    if not is_distributed():
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


def any_rank(flag, device):
    """True on every rank when `flag` is True on at least one (e.g. a stop request)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def parameters_identical(model, device):
    """True when every rank holds the same parameters (a checksum compared across ranks)."""
    if not is_distributed():
        return True
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    weights = torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64, device=flat.device)
    checksum = torch.stack([flat.sum(), (flat * weights).sum(), flat.square().sum()]).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def broadcast_from_rank0(obj):
    """Rank 0's `obj` on every rank (a picklable object, e.g. the run directory)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup():
    if is_distributed():
        dist.destroy_process_group()
