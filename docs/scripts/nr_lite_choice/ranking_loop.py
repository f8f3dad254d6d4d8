"""Method-choice experiment for nr-lite 0.2.0 (docs/nriqa.md, "Method choice"): label-free ranking in a plain loop.

On-the-fly engine groups (CBSD68 + CSun_Hays80, 96 px, 2 chains x 4 tiers, no pseudo-MOS) ranked by construction
(lower tier better within a chain, the reference best, hard negatives worst), validated on 24 Kodak groups (128 px)
against pseudo-MOS. Runs from the repository root:

    OMP_NUM_THREADS=1 python docs/scripts/nr_lite_choice/ranking_loop.py --iters 400 --bs 8 --crop 64            # CNN
    OMP_NUM_THREADS=1 python docs/scripts/nr_lite_choice/ranking_loop.py --iters 400 --bs 8 --crop 64 --nss 1    # CNN + NSS
"""
import argparse, time, math, sys
import numpy as np, torch, torch.nn.functional as F
import iqa_plugin
from iqa_plugin.archs.nr_lite_arch import NRLite
from iqa_plugin.models.nr_lite_model import variance_preserving_init, hard_negatives, HARD_KINDS
from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset
from scipy.stats import spearmanr

p = argparse.ArgumentParser()
p.add_argument('--iters', type=int, default=300); p.add_argument('--bs', type=int, default=8)
p.add_argument('--crop', type=int, default=64); p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--hard', type=float, default=1.0); p.add_argument('--cache', default=None)
p.add_argument('--pmos_w', type=float, default=0.0); p.add_argument('--eval_every', type=int, default=100)
p.add_argument('--threads', type=int, default=1); p.add_argument('--save', default=None)
p.add_argument('--channels', default='16,24,32,48,64'); p.add_argument("--pooled", type=int, default=3); p.add_argument("--nss", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
roots = ['../shared/data/train/CBSD68', '../shared/data/train/CSun_Hays80']
if a.cache:
    ds = PseudoMOSDataset(dict(cache_file=a.cache, return_maps=False))
else:
    ds = PseudoMOSDataset(dict(dataroot=roots, patch_size=96, group_size=8, mode='tiers', chains=2, length=10**6,
                               return_maps=False, pmos=False, seed=0))
val = PseudoMOSDataset(dict(dataroot=['../shared/data/train/Kodak24'], patch_size=128, group_size=8, mode='tiers',
                            chains=2, length=24, return_maps=False, seed=7))
t0 = time.time(); vitems = [val[i] for i in range(24)]; print('val built', time.time() - t0, flush=True)
net = NRLite(channels=[int(c) for c in a.channels.split(',')], pooled_stages=a.pooled, nss=bool(a.nss)); variance_preserving_init(net)
opt = torch.optim.Adam(net.parameters(), lr=a.lr, betas=(0.9, 0.99))
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.iters, eta_min=a.lr * 0.05)
gen = torch.Generator().manual_seed(0)
rng = np.random.default_rng(0)

def logit(x):
    return net.head(net.features(x)).squeeze(1)

def evaluate():
    net.eval()
    with torch.no_grad():
        sg, allq, allp, clean_win = [], [], [], []
        for it in vitems:
            x = torch.cat([it['ref'][None], it['dist']])
            q = logit(x).numpy()
            sg.append(spearmanr(-q[1:], it['pmos'].numpy())[0])
            allq.append(q[1:]); allp.append(it['pmos'].numpy())
            clean_win.append(np.mean(q[0] > q[1:]))
        refs = torch.stack([it['ref'] for it in vitems])
        qref = logit(refs).numpy()
        b = refs[:1]
        degen = torch.cat([torch.zeros_like(b), torch.ones_like(b), torch.full_like(b, .5), torch.rand_like(b),
                           torch.round(b * 2) / 2, F.avg_pool2d(F.pad(b, (7,) * 4, mode='replicate'), 15, 1)])
        qd = logit(degen).numpy()
    net.train()
    return dict(srcc_group=float(np.nanmean(sg)), ref_win=float(np.mean(clean_win)),
                degen_below=int((qd < qref.min()).sum()), qd=np.round(qd, 2).tolist(), qref_min=round(float(qref.min()), 2))

def batch():
    items = [ds[int(rng.integers(0, len(ds)))] for _ in range(a.bs)]
    ref = torch.stack([i['ref'] for i in items]); dist = torch.stack([i['dist'] for i in items])
    c = a.crop; P = ref.shape[-1]; t, l = rng.integers(0, P - c + 1, 2)
    ref, dist = ref[..., t:t + c, l:l + c], dist[..., t:t + c, l:l + c]
    tier = torch.stack([i['tier'] for i in items]); chain = torch.stack([i['chain'] for i in items])
    pm = torch.stack([i['pmos'] for i in items]) if 'pmos' in items[0] else None
    return ref, dist, tier, chain, pm

for step in range(1, a.iters + 1):
    ref, dist, tier, chain, pm = batch()
    b, n = dist.shape[:2]
    kinds = torch.stack([torch.randperm(len(HARD_KINDS), generator=gen)[:2] for _ in range(b)])
    hard = hard_negatives(ref, kinds, gen)
    x = torch.cat([ref[:, None], dist, hard], 1)
    q = logit(x.flatten(0, 1)).view(b, -1)
    qr, qd, qh = q[:, :1], q[:, 1:n + 1], q[:, n + 1:]
    # within-chain severity order: same chain, lower tier better
    same = (chain[:, :, None] == chain[:, None, :]) & (tier[:, :, None] < tier[:, None, :])
    diff = qd[:, :, None] - qd[:, None, :]  # q_i - q_j, want > 0 where i better
    l_tier = F.softplus(-diff[same]).mean()
    l_ref = F.softplus(-(qr - qd)).mean()
    l_hard = F.softplus(-(torch.cat([qr, qd], 1)[:, :, None] - qh[:, None, :])).mean()
    loss = l_tier + l_ref + a.hard * l_hard
    if pm is not None and a.pmos_w:
        dp = pm[:, None, :] - pm[:, :, None]  # pm_j - pm_i >0 means i better
        keep = dp > 0.05
        l_pm = (dp[keep] / dp[keep].mean() * F.softplus(-diff[keep])).mean()
        loss = loss + a.pmos_w * l_pm
    anchor = 0.1 * (qr - 2.2).pow(2).mean()
    loss = loss + anchor
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if step % 20 == 0:
        print(f'{step} tier {l_tier.item():.3f} ref {l_ref.item():.3f} hard {l_hard.item():.3f} t {time.time()-t0:.0f}s', flush=True)
    if step % a.eval_every == 0 or step == a.iters:
        print('EVAL', step, evaluate(), flush=True)
        if a.save:
            torch.save({**net.state_dict(), 'config': net.config()}, a.save)
