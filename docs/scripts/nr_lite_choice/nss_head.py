"""Method-choice experiment for nr-lite 0.2.0 (docs/nriqa.md, "Method choice"): the ceiling of the NSS branch alone.

NSSStats features of every group of a pseudo-MOS cache are computed once, then only a 36-64-1 MLP head is trained
(within-group pseudo-MOS ranking, reference first, hard negatives last, cross-content term), evaluated on 42
Kodak24 + McMaster18 groups of 192 px (never trained on). From the repository root:

    OMP_NUM_THREADS=1 python docs/scripts/nr_lite_choice/nss_head.py experiments/pmos_cache/train_p128_g8_c2_n2960.pt 2960 0.5
"""
import sys, time, numpy as np, torch, torch.nn.functional as F
import iqa_plugin
from iqa_plugin.archs.nss_stats import NSSStats
from iqa_plugin.models.nr_lite_model import hard_negatives, HARD_KINDS, content_free_target
from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset
from scipy.stats import spearmanr
torch.set_num_threads(1); torch.manual_seed(0)
nss = NSSStats()
cache = sys.argv[1]; ngroups = int(sys.argv[2]) if len(sys.argv) > 2 else 10**9
ds = PseudoMOSDataset(dict(cache_file=cache, return_maps=False))
G = min(len(ds), ngroups)
t0 = time.time()
feats, pm, raw, hardf = [], [], [], []
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for i in range(G):
        it = ds[i]
        x = torch.cat([it['ref'][None], it['dist']])
        h = hard_negatives(it['ref'][None], torch.arange(len(HARD_KINDS))[None], gen)[0]
        f = nss(torch.cat([x, h]))
        feats.append(f[:9]); hardf.append(f[9:]); pm.append(it['pmos']); raw.append(it['raw'])
print('features', time.time() - t0, flush=True)
feats, hardf, pm, raw = torch.stack(feats), torch.stack(hardf), torch.stack(pm), torch.stack(raw)
val = PseudoMOSDataset(dict(dataroot=['../shared/data/train/Kodak24', '../shared/data/train/McMaster18'], patch_size=192,
                            group_size=8, mode='tiers', chains=2, length=42, return_maps=False, seed=7))
vit = [val[i] for i in range(42)]
with torch.no_grad():
    vf = torch.stack([nss(torch.cat([i['ref'][None], i['dist']])) for i in vit]); vp = torch.stack([i['pmos'] for i in vit])
    b = vit[0]['ref'][None]
    degen = torch.cat([torch.zeros_like(b), torch.ones_like(b), torch.full_like(b, .5), torch.rand_like(b),
                       torch.round(b * 2) / 2, F.avg_pool2d(F.pad(b, (7,) * 4, mode='replicate'), 15, 1)])
    df = nss(degen)
mu, sd = feats.flatten(0, 1).mean(0), feats.flatten(0, 1).std(0) + 1e-3
nf = NSSStats.num_features
head = torch.nn.Sequential(torch.nn.Linear(nf, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1))
opt = torch.optim.Adam(head.parameters(), lr=3e-3)
def q(f): return head((f - mu) / sd).squeeze(-1)
def ev():
    with torch.no_grad():
        qv = q(vf); sg = np.nanmean([spearmanr(-a[1:], p)[0] for a, p in zip(qv.numpy(), vp.numpy())])
        pooled = spearmanr(-qv[:, 1:].flatten().numpy(), vp.flatten().numpy())[0]
        refwin = (qv[:, :1] > qv[:, 1:]).float().mean().item()
        qd = q(df); below = int((qd < qv[:, 0].min()).sum())
    return dict(sg=round(float(sg), 3), pooled=round(float(pooled), 3), refwin=round(refwin, 3), below=below)
cw = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
for step in range(1, 3001):
    idx = torch.randint(0, G, (64,))
    f, p, r, h = feats[idx], pm[idx], raw[idx], hardf[idx]
    qa = q(f); qh = q(h)
    qr, qd = qa[:, :1], qa[:, 1:]
    d = qd[:, :, None] - qd[:, None, :]
    dp = p[:, None, :] - p[:, :, None]
    keep = dp > 0.05
    l_pm = (dp[keep] / dp[keep].mean() * F.softplus(-d[keep])).mean()
    l_ref = F.softplus(-(qr - qd)).mean()
    l_hard = F.softplus(-(qa[:, :, None] - qh[:, None, :])).mean()
    t = content_free_target(torch.cat([r.new_zeros(64, 1, r.shape[2]), r], 1)).flatten()
    qq = qa.flatten(); dq = qq[:, None] - qq[None, :]; dt = t[None, :] - t[:, None]; k2 = dt > 0.05
    l_cross = (dt[k2] / dt[k2].mean() * F.softplus(-dq[k2])).mean()
    loss = l_pm + l_ref + l_hard + cw * l_cross + 0.1 * (qr - 2.2).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 500 == 0:
        print(step, f'pm {l_pm.item():.3f} ref {l_ref.item():.3f} hard {l_hard.item():.3f} cross {l_cross.item():.3f}', ev(), flush=True)
