"""Quick held-out check of nr-lite files (docs/nriqa.md): 42 Kodak24 + McMaster18 pseudo-MOS groups of 192 px
and six degenerate images. ``shipped`` = the packaged weights. From the repository root:

    OMP_NUM_THREADS=1 python docs/scripts/nr_lite_choice/quick_eval.py shipped experiments/nr_lite/models/nr_lite_1500.pth
"""
import sys, os, numpy as np, torch, torch.nn.functional as F
import iqa_plugin
from iqa_plugin.archs.nr_lite_arch import build_nr_lite_scorer
from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset
from scipy.stats import spearmanr
torch.set_num_threads(1)
vp = 'experiments/nr_lite_choice_val192.pt'
if not os.path.exists(vp):
    val = PseudoMOSDataset(dict(dataroot=['../shared/data/train/Kodak24', '../shared/data/train/McMaster18'], patch_size=192,
                                group_size=8, mode='tiers', chains=2, length=42, return_maps=False, seed=7))
    torch.save([{k: val[i][k] for k in ('ref', 'dist', 'pmos')} for i in range(42)], vp)
vit = torch.load(vp)
for path in sys.argv[1:]:
    s = build_nr_lite_scorer(weights_path=path) if path != 'shipped' else build_nr_lite_scorer()
    net = s.net.eval()
    with torch.no_grad():
        qv = torch.stack([net(torch.cat([i['ref'][None], i['dist']])) for i in vit]).numpy()
        pm = torch.stack([i['pmos'] for i in vit]).numpy()
        sg = np.nanmean([spearmanr(-a[1:], p)[0] for a, p in zip(qv, pm)])
        pooled = spearmanr(-qv[:, 1:].flatten(), pm.flatten())[0]
        refwin = (qv[:, :1] > qv[:, 1:]).mean()
        b = vit[0]['ref'][None]
        degen = torch.cat([torch.zeros_like(b), torch.ones_like(b), torch.full_like(b, .5), torch.rand_like(b),
                           torch.round(b * 2) / 2, F.avg_pool2d(F.pad(b, (7,) * 4, mode='replicate'), 15, 1)])
        qd = net(degen).numpy()
    print(path, dict(sg=round(float(sg), 3), pooled=round(float(pooled), 3), refwin=round(float(refwin), 3),
                     below=int((qd < qv[:, 0].min()).sum()), qd=np.round(qd, 3).tolist(), refmin=round(float(qv[:, 0].min()), 3)), flush=True)
