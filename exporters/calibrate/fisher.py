"""The Fisher diagonal's bookkeeping for ``layers``: per window, each weight's squared
gradient summed into its Fisher, for only the rows the consumer wants of the big outer matrices.

The head's weight gradient for chosen rows comes from the head's input and the gradient at its
output (``HeadRows``), the embedding table's from sparse gradients (``sparse_embeddings``): for a
151,936-token vocabulary neither [vocab, hidden] gradient is ever made.
"""

from __future__ import annotations

import numpy as np


class Keep:
    """The sink without one: every Fisher diagonal kept whole in ``cal.fisher``."""

    def __init__(self, store: dict):
        self.store = store

    @staticmethod
    def wanted_rows(name: str):
        return None

    def add(self, name: str, fisher: np.ndarray, rows=None) -> None:
        self.store[name] = fisher


def sample_tokens(logits, gen):
    """One token per row of ``logits`` [T, vocab], drawn from the model's own predictive
    distribution (the Fisher's expectation is over the model's outputs, not the text's), by the
    inverse of the cumulative distribution: one uniform number a row.  ``torch.multinomial`` did
    the same in 9 s of a 0.5B calibration's 224 on a 2-core EPYC (a 151,936-token vocabulary)."""
    import torch

    with torch.no_grad():
        cdf = torch.softmax(logits.float(), -1).cumsum_(-1)
        u = torch.rand(cdf.shape[0], 1, generator=gen, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u)[:, 0].clamp_(max=cdf.shape[1] - 1)


def rows_tensor(rows, device: str):
    import torch
    return None if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)


def rows_array(rows):
    return None if rows is None else rows.cpu().numpy()


class HeadRows:
    """The head's weight gradient for the rows the sink wants only: from the head's input x and
    the gradient g at its output, rows r of a window's gradient are gᵀ[r] x, summed over the
    window's token slices, so the [vocab, hidden] gradient (544 MB for Qwen2.5's) never exists."""

    def __init__(self, model, outer, rows):
        import torch

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = {id(p): n for n, p in outer}
        self.weight = None
        if isinstance(head, torch.nn.Linear) and id(head.weight) in names:
            self.weight, self.name = head.weight, names[id(head.weight)]
            self.rows = rows.get(self.name)
            self.acc, self.x, self.g = None, None, None
            self.handle = head.register_forward_hook(self._seen)

    def _seen(self, _mod, args, out):
        self.x = args[0].detach()
        if out.requires_grad:
            out.register_hook(self._grad)

    def _grad(self, g):
        self.g = g.detach()

    def slice_done(self) -> None:
        if self.weight is None or self.g is None:
            return
        g = self.g.reshape(-1, self.g.shape[-1])
        if self.rows is not None:
            g = g[:, self.rows]
        part = g.T.float() @ self.x.reshape(-1, self.x.shape[-1]).float()
        self.acc = part if self.acc is None else self.acc.add_(part)
        self.x = self.g = None

    def window_done(self, fish: dict) -> None:
        if self.acc is not None:
            add_squares(fish, self.name, self.acc, None)
            self.acc = None

    def close(self) -> None:
        if self.weight is not None:
            self.handle.remove()


class sparse_embeddings:
    """Embedding tables give sparse gradients (the rows looked up) while inside."""

    def __init__(self, model):
        import torch
        self.mods = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and not m.sparse]

    def __enter__(self):
        for m in self.mods:
            m.sparse = True

    def __exit__(self, *exc):
        for m in self.mods:
            m.sparse = False


def add_squares(fish: dict, name: str, g, rows) -> None:
    """fish[name] += g² over the wanted ``rows`` (all when None); a sparse ``g`` (an embedding's)
    adds the rows it has."""
    import torch

    if g.is_sparse:
        g = g.coalesce()
        idx, vals = g.indices()[0], g.values().float()
        n = g.shape[0] if rows is None else len(rows)
        if rows is not None:
            pos = torch.searchsorted(rows, idx).clamp_(max=len(rows) - 1)
            keep = rows[pos] == idx
            idx, vals = pos[keep], vals[keep]
        if name not in fish:
            fish[name] = torch.zeros(n, *g.shape[1:], device=g.device)
        fish[name].index_add_(0, idx, vals * vals)
        return
    if rows is not None:
        g = g[rows]
    g = g.float()
    if name in fish:
        fish[name].addcmul_(g, g)
    else:
        fish[name] = g * g


def square_into(fish: dict, params, rows: dict) -> None:
    """Add each parameter's squared gradient (one window's) to the Fisher sums, for the rows
    ``rows`` names (all by default); drop the gradient."""
    for name, p in params:
        if p.grad is not None:
            add_squares(fish, name, p.grad.detach(), rows.get(name))
            p.grad = None


def _is_conv1d(m) -> bool:              # GPT-2's Conv1D: y = x W with W [in, out]
    return type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None


class TokenFisher:
    """The per-token Fisher diagonal of the weights of ``modules`` (name -> module: linear layers,
    GPT-2's Conv1D, embedding lookups), from the same backward pass that hands the gradient down:

        F[o, i] += Σ_t g[t, o]² · x[t, i]²        (a linear's input x, the gradient g at its output)
        F[v, :] += Σ_{t: id_t = v} g[t, :]²        (a lookup: the gradient at the row's output)

    one product of the weight gradient's size, but a sample per token where the squared window
    gradient has one per window: the cross terms between a window's tokens (zero in expectation,
    with labels drawn from the model) are left out, so far fewer windows give a steady estimate.
    The weights need no gradient of their own.  ``rows``: name -> the rows wanted (sorted);
    ``table_rows``: a lookup's row count."""

    def __init__(self, modules: dict, fish: dict, rows: dict | None = None, dtype: str = "float32",
                 table_rows: dict | None = None):
        import torch

        self.fish, self.rows, self.table_rows, self.handles = fish, rows or {}, table_rows or {}, []
        self.dtype = getattr(torch, dtype)
        for name, m in modules.items():
            self.handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: self._seen(name, mod, args, out)))

    def _seen(self, name, mod, args, out) -> None:
        import torch

        if not out.requires_grad:
            return
        x = args[0].detach()
        lookup = isinstance(mod, torch.nn.Embedding)
        conv1d = _is_conv1d(mod)
        out.register_hook(lambda g: self._add(name, x, g.detach(), lookup, conv1d))

    def _add(self, name, x, g, lookup: bool, conv1d: bool) -> None:
        import torch

        rows = self.rows.get(name)
        g = g.reshape(-1, g.shape[-1])
        if lookup:
            self._add_lookup(name, x.reshape(-1), g.float().square(), rows)
            return
        # Squared in the products' type, as the model hands them over: a bfloat16 square is the
        # float32 square rounded once, the same numbers as squaring in float32 and converting,
        # without the two copies each way that cost a third of the time on small models.
        # Not in place: g and x are autograd's.
        with torch.autocast(g.device.type, enabled=False):
            if not conv1d and rows is not None:
                g = g[:, rows]
            g2 = g.to(self.dtype).square()
            x2 = x.reshape(-1, x.shape[-1]).to(self.dtype).square()
            part = x2.T @ g2 if conv1d else g2.T @ x2       # Conv1D's W is [in, out]: rows are inputs
        if name in self.fish:
            self.fish[name].add_(part)                      # summed in float32
        else:
            self.fish[name] = part.float()

    def _add_lookup(self, name, ids, g2, rows) -> None:
        import torch

        n = self.table_rows[name]
        if rows is not None:
            pos = torch.searchsorted(rows, ids).clamp_(max=len(rows) - 1)
            keep = rows[pos] == ids
            ids, g2, n = pos[keep], g2[keep], len(rows)
        if name not in self.fish:
            self.fish[name] = torch.zeros(n, g2.shape[1], device=g2.device)
        self.fish[name].index_add_(0, ids, g2)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def token_modules(module, params, lookups: bool = False) -> dict:
    """Name -> module for the ``params`` ((name, parameter) pairs) that ``TokenFisher`` can take
    from ``module``'s modules: linear layers and Conv1D, or with ``lookups`` the embeddings."""
    import torch

    by_id = {id(p): name for name, p in params}
    kinds = (torch.nn.Embedding,) if lookups else (torch.nn.Linear,)
    out = {}
    for m in module.modules():
        w = getattr(m, "weight", None)
        if w is not None and id(w) in by_id and (isinstance(m, kinds) or (not lookups and _is_conv1d(m))):
            out.setdefault(by_id[id(w)], m)
    return out
