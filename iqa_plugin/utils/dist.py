"""Distributed training on CPU for BasicSR 1.4.2.

BasicSR's ``--launcher pytorch`` path assumes CUDA: ``_init_dist_pytorch`` calls
``torch.cuda.set_device(rank % torch.cuda.device_count())`` (a ZeroDivisionError without GPUs) and
``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]`` to
DistributedDataParallel. When CUDA is not available, ``enable_cpu_distributed`` swaps in
versions that use the gloo backend and a CPU DDP; with GPUs BasicSR's own code (nccl) runs
unchanged.
"""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_enabled = False

# The BasicSR releases whose functions these patches replace (this is the one module that patches BasicSR;
# the torchvision alias in ``iqa_plugin.compat`` patches torchvision's module name, not BasicSR).
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


def _model_to_device_cpu_aware(self, net):
    """BaseModel.model_to_device that builds a CPU DDP (no device_ids) when there is no GPU."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = self.opt.get('find_unused_parameters', False)
        if self.device.type == 'cuda':
            net = DistributedDataParallel(net, device_ids=[torch.cuda.current_device()],
                                          find_unused_parameters=find_unused)
        else:
            net = DistributedDataParallel(net, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


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
    """Patch BasicSR's CUDA-only set-up (dist init, DDP wrapping, resume) when no GPU is present.

    Idempotent. Resume states are always read with ``weights_only=True``.
    """
    global _enabled
    if _enabled:
        return
    if not basicsr_version_supported():
        import warnings

        import basicsr
        warnings.warn(f'iqa-plugin: BasicSR {basicsr.__version__} is not one of the tested releases '
                      f"({', '.join(TESTED_BASICSR)}); its resume and CPU-DDP set-up are left unpatched")
        _enabled = True
        return
    import basicsr.train as basicsr_train

    basicsr_train.load_resume_state = load_resume_state_safe
    if not torch.cuda.is_available():
        import basicsr.utils.options as options
        from basicsr.models.base_model import BaseModel

        options.init_dist = init_dist_cpu_aware  # parse_options calls the name imported there
        BaseModel.model_to_device = _model_to_device_cpu_aware
    _enabled = True
