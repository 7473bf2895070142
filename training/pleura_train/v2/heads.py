"""Linear heads on the backbone's pooled features, trained at the video level through
attention pooling (multiple-instance learning), with a small per-frame auxiliary loss so
that frame-level outputs (key frames, activation maps) stay meaningful.

Linear heads keep the class activation map exact: a 1x1 convolution applied before global
average pooling is the same function as the linear head after it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import NOT_COVID
from .labels import DATASETS

N_FIND = 5


class Heads(nn.Module):
    def __init__(self, dim: int, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mu", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("sd", torch.tensor(std, dtype=torch.float32))
        self.cls = nn.Linear(dim, 3)
        self.sev = nn.Linear(dim, 1)
        self.find = nn.Linear(dim, N_FIND)
        self.att = nn.Linear(dim, 1)
        # ordinal cut-points per data set (POCUS and COVID-BLUES score differently)
        self.cut_base = nn.Parameter(torch.zeros(len(DATASETS), 1))
        self.cut_gaps = nn.Parameter(torch.zeros(len(DATASETS), 2))

    def cuts(self) -> torch.Tensor:
        """Sorted cut-points [datasets, 3]."""
        gaps = F.softplus(self.cut_gaps) + 0.05
        return torch.cat([self.cut_base, self.cut_base + gaps.cumsum(1)], dim=1)

    def frame(self, x: torch.Tensor):
        h = (x - self.mu) / self.sd
        return self.cls(h), self.sev(h).squeeze(-1), self.find(h), self.att(h).squeeze(-1)


def pad(feats: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos as [videos, max frames, dim] with a frame mask."""
    t = max(len(f) for f in feats)
    X = np.zeros((len(feats), t, feats[0].shape[1]), dtype=np.float32)
    M = np.zeros((len(feats), t), dtype=bool)
    for i, f in enumerate(feats):
        X[i, : len(f)] = f
        M[i, : len(f)] = True
    return torch.from_numpy(X), torch.from_numpy(M)


class Many(nn.Module):
    """K independent copies of `Heads`, trained in one batched loop (each on its own videos):
    the folds of a cross-validation cost one pass instead of K."""

    def __init__(self, k: int, dim: int, mu: torch.Tensor, sd: torch.Tensor):
        super().__init__()
        self.register_buffer("mu", mu)  # [K, D]
        self.register_buffer("sd", sd)
        out = 3 + 1 + N_FIND + 1
        self.w = nn.Parameter(torch.stack([nn.Linear(dim, out).weight.detach().T.clone() for _ in range(k)]))
        self.b = nn.Parameter(torch.stack([nn.Linear(dim, out).bias.detach().clone() for _ in range(k)]))
        self.cut_base = nn.Parameter(torch.zeros(k, len(DATASETS), 1))
        self.cut_gaps = nn.Parameter(torch.zeros(k, len(DATASETS), 2))

    def cuts(self) -> torch.Tensor:
        gaps = F.softplus(self.cut_gaps) + 0.05
        return torch.cat([self.cut_base, self.cut_base + gaps.cumsum(2)], dim=2)  # [K, datasets, 3]

    def forward(self, X):  # X [V, T, D] -> [K, V, T, out]
        # standardisation folded into the weights: no [K, V, T, D] intermediate
        w = self.w / self.sd[:, :, None]
        b = self.b - torch.einsum("kd,kdo->ko", self.mu, w)
        return torch.einsum("vtd,kdo->kvto", X, w) + b[:, None, None]

    def single(self, k: int) -> Heads:
        m = Heads(self.w.shape[1], self.mu[k].numpy(), self.sd[k].numpy())
        w, b = self.w[k].detach().T, self.b[k].detach()
        with torch.no_grad():
            for lin, (a, z) in ((m.cls, (0, 3)), (m.sev, (3, 4)), (m.find, (4, 9)), (m.att, (9, 10))):
                lin.weight.copy_(w[a:z])
                lin.bias.copy_(b[a:z])
            m.cut_base.copy_(self.cut_base[k])
            m.cut_gaps.copy_(self.cut_gaps[k])
        return m.eval()


def train_many(feats: list[np.ndarray], cls, sev, find, dataset, masks: np.ndarray, seed: int,
               epochs: int = 300, frame_weight: float = 0.2, wd: float = 1e-2, lr: float = 5e-3) -> list[Heads]:
    """One model per row of `masks` ([K, videos] bool: the videos that model trains on)."""
    torch.manual_seed(seed)
    X, M = pad(feats)
    V, T, D = X.shape
    mk = torch.from_numpy(np.asarray(masks, dtype=bool))
    K = mk.shape[0]
    fw = (mk[:, :, None] & M[None]).float()  # [K, V, T] frames each model sees
    cnt = fw.sum((1, 2))[:, None]
    mu = torch.einsum("kvt,vtd->kd", fw, X) / cnt
    var = torch.einsum("kvt,kvtd->kd", fw, (X[None] - mu[:, None, None]) ** 2) / cnt
    m = Many(K, D, mu, var.sqrt() + 1e-3)
    cls_np, find_np = np.asarray(cls), np.asarray(find)
    cls_t, sev_t = torch.tensor(cls_np), torch.tensor(np.asarray(sev))
    find_t, ds_t = torch.tensor(find_np), torch.tensor(np.asarray(dataset))
    mk_np = np.asarray(masks, dtype=bool)
    cls_w = torch.stack([torch.tensor((c := np.array([(cls_np[r] == j).sum() for j in range(3)], float) + 1).sum() / (3 * c),
                                      dtype=torch.float32) for r in mk_np])
    pos_w = torch.stack([torch.tensor(np.sqrt(np.array([((find_np[r][:, j] == 0).sum() + 1) / ((find_np[r][:, j] == 1).sum() + 1)
                                                         for j in range(N_FIND)])), dtype=torch.float32) for r in mk_np])
    # per-video class weight and partial-label weight, per model
    known = cls_t >= 0
    part = cls_t == NOT_COVID
    y = (sev_t[:, None] >= torch.arange(1, 4)[None]).float()  # [V, 3]
    sev_known = sev_t >= 0
    fmask = (find_t >= 0).float()
    ftarget = find_t.clamp_min(0).float()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)
    nv = mk.float().sum(1)  # [K]
    nf = fw.sum((1, 2))

    for _ in range(epochs):
        m.train()
        out = m(X)  # [K, V, T, 10]
        att = out[..., 9].masked_fill(~M[None], -1e9)
        w = torch.softmax(att, dim=2)  # [K, V, T]
        pooled = (w[..., None] * out).sum(2)  # [K, V, 10]
        cuts = m.cuts()[:, ds_t]  # [K, V, 3]
        total = 0.0
        for o, weight, norm in ((pooled, mk.float(), nv), (out, fw, nf)):
            frame = o.dim() == 4
            c, s, f = o[..., 0:3], o[..., 3], o[..., 4:9]
            logp = F.log_softmax(c, -1)
            tgt = cls_t.clamp_min(0)
            kw = cls_w[:, tgt]  # [K, V]
            if frame:
                lk = -logp.gather(-1, tgt[None, :, None, None].expand(K, V, T, 1)).squeeze(-1) * kw[..., None]
                lp = -torch.logsumexp(logp[..., 1:], -1) * cls_w[:, 1:].mean(1)[:, None, None]
                kn, pa = known[None, :, None], part[None, :, None]
                cz = cuts[:, :, None, :]
                yy, sk = y[None, :, None, :], sev_known[None, :, None]
                fm_, ft_ = fmask[None, :, None, :], ftarget[None, :, None, :]
                pw = pos_w[:, None, None, :]
            else:
                lk = -logp.gather(-1, tgt[None, :, None].expand(K, V, 1)).squeeze(-1) * kw
                lp = -torch.logsumexp(logp[..., 1:], -1) * cls_w[:, 1:].mean(1)[:, None]
                kn, pa = known[None], part[None]
                cz = cuts
                yy, sk = y[None], sev_known[None]
                fm_, ft_ = fmask[None], ftarget[None]
                pw = pos_w[:, None, :]
            lc = torch.where(kn, lk, torch.zeros(())) + torch.where(pa, lp, torch.zeros(()))
            ls = (F.binary_cross_entropy_with_logits(s[..., None] - cz, yy.expand_as(s[..., None] - cz),
                                                     reduction="none").sum(-1) * sk)
            lf = (F.binary_cross_entropy_with_logits(f, ft_.expand_as(f), pos_weight=pw, reduction="none") * fm_).sum(-1)
            per = ((lc + ls + lf) * weight).reshape(K, -1).sum(1) / norm
            total = total + (frame_weight if frame else 1.0) * per.sum()
        opt.zero_grad()
        total.backward()
        opt.step()
    m.eval()
    return [m.single(k) for k in range(K)]


def train(feats: list[np.ndarray], cls, sev, find, dataset, seed: int, **hp) -> Heads:
    return train_many(feats, cls, sev, find, dataset, np.ones((1, len(feats)), dtype=bool), seed, **hp)[0]


@torch.no_grad()
def predict_raw(m: Heads, feats: list[np.ndarray]) -> list[dict]:
    out = []
    for f in feats:
        c, s, fi, a = m.frame(torch.tensor(f, dtype=torch.float32))
        out.append({"attention": a.numpy(), "class_logits": c.numpy(), "severity_latent": s.numpy(),
                    "finding_logits": fi.numpy()})
    return out
