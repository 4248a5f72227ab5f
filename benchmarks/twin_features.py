"""Can an MLP twin learn the SHG device? Plain inputs vs Fourier features.

Fits three twins on 20,000 device outputs (theta at its default) for 3000
Adam steps and prints the final fit loss, the output variance and the cosine
between each twin's VJP and the exact one on 512 held-out inputs.
Run: .venv/bin/python benchmarks/twin_features.py
"""
import torch, math, time
torch.set_num_threads(1)
from torch import nn
from blackgrad.devices import SHG
from blackgrad.nets import MLP
torch.manual_seed(0)
dev = SHG()
N = 20000
X = torch.rand(N, 32)*2-1
X[:, 16:] = 0  # theta at default
Y = dev(X[:, :16], X[0, 16:])
Xt = torch.rand(512, 32)*2-1; Xt[:,16:]=0
G = torch.randn(512, 16)
ex, _ = dev.exact_vjp(Xt[:, :16], Xt[0,16:], G)
class Fourier(nn.Module):
    def __init__(s, k): super().__init__(); s.k=k
    def forward(s, a):
        f = torch.arange(1, s.k+1, dtype=a.dtype) * math.pi
        z = a.unsqueeze(-1)*f
        return torch.cat([a, torch.sin(z).flatten(1), torch.cos(z).flatten(1)], 1)
for name, model in [("mlp128", MLP(32, 16, (128,128))), ("mlp256x3", MLP(32,16,(256,256,256))), ("fourier3+mlp", nn.Sequential(Fourier(3), MLP(32*7, 16, (256,256))))]:
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t=time.time()
    for step in range(3000):
        i = torch.randint(0, N, (256,))
        loss = ((model(X[i]) - Y[i])**2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    a = Xt.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(a), a, G)
    cos = nn.functional.cosine_similarity(g[:, :16], ex, dim=1).mean().item()
    print(name, "loss %.4f var %.4f cos %.3f  %.0fs" % (loss.item(), Y.var().item(), cos, time.time()-t), flush=True)
