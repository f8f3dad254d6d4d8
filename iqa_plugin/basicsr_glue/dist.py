"""Distributed training on CPU for BasicSR 1.4.2.

BasicSR's ``--launcher pytorch`` path assumes CUDA in three places; each is handled only where it fails:

* ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]`` to DistributedDataParallel.
  Not patched: every plugin model overrides it through ``CPUDistributedMixin`` (in the bases of
  ``IQAModelMixin`` and ``MetricTrainModel``), which calls BasicSR's own method on CUDA and outside DDP and
  builds a CPU DDP (no ``device_ids``) otherwise. BasicSR's stock models (``model_type: SRModel``) keep
  BasicSR's method, so they train under DDP on GPUs only.
* ``_init_dist_pytorch`` calls ``torch.cuda.set_device(rank % torch.cuda.device_count())`` (a ZeroDivisionError
  without GPUs) and
* ``basicsr.train.load_resume_state`` maps the state onto ``torch.cuda.current_device()``, which fails
  without a GPU.

``enable_cpu_distributed`` replaces those two functions (gloo backend, a CPU-mapped resume state read with
``weights_only=True``) when CUDA is not available, and only then: with GPUs BasicSR's own code (nccl, its
resume loader, whose ``torch.load`` reads with ``weights_only=True`` by default since torch 2.6) runs
unchanged.

It also holds the plugin's few collectives for DDP runs (docs/distributed.md): ``gather_to_rank0`` (one
object per rank, collected on rank 0 for the one writer) and ``wait_for_rank0_validation`` (the other
ranks wait for rank 0's validation on a gloo group with a long timeout, not in an NCCL collective).
"""
import atexit
import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_enabled = False
_wait_groups = {}  # timeout in minutes -> the gloo group of wait_for_rank0_validation

# How long the other ranks wait for rank 0's validation (``val.dist_timeout_minutes``); far above NCCL's
# 10 minutes: a validator on a large set may run longer, and torchrun ends the others if rank 0 dies.
DEFAULT_VAL_TIMEOUT_MINUTES = 24 * 60

# The BasicSR releases whose functions these patches replace (this is the one module that patches BasicSR;
# the torchvision alias in ``iqa_plugin.basicsr_glue.compat`` patches torchvision's module name, not BasicSR).
TESTED_BASICSR = ('1.4.2',)


def basicsr_version_supported():
    """True when the installed BasicSR is one these patches were written against."""
    import basicsr

    return getattr(basicsr, '__version__', '') in TESTED_BASICSR


def read_training_state(path, map_location='cpu'):
    """A BasicSR ``<iter>.state`` file, read with ``weights_only=True`` (its only non-tensor type is the
    ``collections.Counter`` of BasicSR's MultiStepRestartLR)."""
    import collections

    with torch.serialization.safe_globals([collections.Counter]):
        return torch.load(path, map_location=map_location, weights_only=True)


def init_dist_cpu_aware(launcher, backend='nccl', **kwargs):
    """``basicsr.utils.dist_util.init_dist`` that falls back to gloo when there is no GPU."""
    from basicsr.utils import dist_util

    if torch.cuda.is_available():
        return dist_util.init_dist(launcher, backend=backend, **kwargs)
    if launcher not in ('pytorch', 'slurm'):
        raise ValueError(f'invalid launcher: {launcher} (expected none, pytorch or slurm)')
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if launcher == 'slurm':
        # same environment derivation as BasicSR's slurm path, without the CUDA device
        import subprocess
        os.environ.setdefault('MASTER_PORT', str(kwargs.pop('port', None) or 29500))
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['RANK'] = os.environ['SLURM_PROCID']
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')


class CPUDistributedMixin:
    """``model_to_device`` for a BasicSR model class: put before ``BaseModel`` in the bases (see the module
    docstring). Under DDP on a CPU device it wraps the net in a DistributedDataParallel without
    ``device_ids``; otherwise (CUDA, or no DDP) it is BasicSR's own method."""

    def model_to_device(self, net):
        if not self.opt['dist'] or self.device.type == 'cuda':
            return super().model_to_device(net)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net.to(self.device),
                                       find_unused_parameters=self.opt.get('find_unused_parameters', False))


def load_resume_state_safe(opt):
    """``basicsr.train.load_resume_state`` without its CUDA assumption, reading with weights_only=True.

    BasicSR maps the state onto ``torch.cuda.current_device()``, which fails on a CPU machine, and
    unpickles arbitrary objects; a training state only holds tensors, numbers and the
    ``collections.Counter`` of BasicSR's MultiStepRestartLR.
    """
    from os import path as osp

    from basicsr.utils import check_resume, scandir

    state_path = None
    if opt['auto_resume']:
        folder = opt['path']['training_states']  # absolute, so any root_path works
        if osp.isdir(folder):
            states = [float(v.split('.state')[0]) for v in scandir(folder, suffix='state', recursive=False)]
            if states:
                state_path = osp.join(folder, f'{max(states):.0f}.state')
                opt['path']['resume_state'] = state_path
    elif opt['path'].get('resume_state'):
        state_path = opt['path']['resume_state']
    if state_path is None:
        return None
    location = f'cuda:{torch.cuda.current_device()}' if torch.cuda.is_available() else 'cpu'
    state = read_training_state(state_path, location)
    check_resume(opt, state['iter'])
    return state


def enable_cpu_distributed():
    """Patch BasicSR's CUDA-only set-up (dist init, resume) when no GPU is present; with a GPU, nothing.

    Idempotent. The DDP wrapping is the models' own (``CPUDistributedMixin``), not patched.
    """
    global _enabled
    if _enabled:
        return
    if not torch.cuda.is_available() and not basicsr_version_supported():
        import warnings

        import basicsr
        warnings.warn(f'iqa-plugin: BasicSR {basicsr.__version__} is not one of the tested releases '
                      f"({', '.join(TESTED_BASICSR)}); its CPU resume and CPU-DDP set-up are left unpatched")
        _enabled = True
        return
    # BasicSR's own GPU resume loader reads with torch.load's default, weights_only=True since torch 2.6; the
    # one non-tensor type in its state files is the Counter of MultiStepRestartLR's milestones: allow it.
    import collections

    torch.serialization.add_safe_globals([collections.Counter])
    if not torch.cuda.is_available():
        import basicsr.train as basicsr_train
        import basicsr.utils.options as options

        basicsr_train.load_resume_state = load_resume_state_safe
        options.init_dist = init_dist_cpu_aware  # parse_options calls the name imported there
    _enabled = True


def distributed():
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_to_rank0(obj):
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks.

    A collective: every rank must call it at the same point. ``[obj]`` outside a process group."""
    if not distributed():
        return [obj]
    rank = dist.get_rank()
    out = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(obj, out, dst=0)  # NCCL: through torch.cuda.current_device(), which BasicSR sets
    return out


def validation_timeout_minutes(opt):
    """``val.dist_timeout_minutes`` (default ``DEFAULT_VAL_TIMEOUT_MINUTES``); ValueError when not > 0."""
    value = (opt.get('val') or {}).get('dist_timeout_minutes', DEFAULT_VAL_TIMEOUT_MINUTES)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float('inf'):
        raise ValueError(f'val.dist_timeout_minutes must be a finite number of minutes > 0, got {value!r}')
    return value


def wait_for_rank0_validation(opt):
    """After a validation (BasicSR validates on rank 0 only): every rank waits here until rank 0 is done.

    Without it the other ranks run on into the next iteration and wait inside DDP's gradient all-reduce,
    which NCCL aborts after its default 10 minutes (``init_process_group``'s timeout, which BasicSR's
    ``--launcher pytorch`` leaves at the default). This barrier runs on a separate gloo group whose
    timeout is ``val.dist_timeout_minutes`` (default 24 h), so no NCCL collective is pending meanwhile.
    A collective: every rank calls it after every validation. A no-op outside a process group."""
    if not distributed():
        return
    minutes = validation_timeout_minutes(opt)
    group = _wait_groups.get(minutes)
    if group is None:  # created by every rank at the same point (the first validation)
        group = _wait_groups[minutes] = dist.new_group(backend='gloo',
                                                       timeout=datetime.timedelta(minutes=minutes))
        if len(_wait_groups) == 1:
            atexit.register(_destroy_wait_groups)
    dist.barrier(group=group)


def _destroy_wait_groups():
    """At exit, before the interpreter's teardown: a gloo group still alive then may abort the process
    ('terminate called without an active exception', measured 1 exit in 6 on 2 CPU processes)."""
    if dist.is_initialized():  # destroying the default group destroys ours with it
        for group in _wait_groups.values():
            dist.destroy_process_group(group)
    _wait_groups.clear()
