"""The query's attention row as a text table, by role, before and after fine-tuning (``icr-interp reproduce``).

Rows are the mean query row over held-out prompts of one fixed layout (``task.layout(1)``), so positions
and roles coincide; each context pair's mass ``s + a`` and within-pair balance ``2 min(s, a) / (s + a)``
come from :class:`icr_interp.analysis.scoring.templates.RoleMass` and :func:`~icr_interp.analysis.scoring.templates.balance`.
"""

import torch

from icr_interp.analysis.scoring.templates import RoleMass, balance
from icr_interp.task.prompts import ICRecallTask
from icr_interp.viz.labels import position_labels


def pair_balance(mass: RoleMass) -> torch.Tensor:
    """Each pair's own balance ``2 min(s_i, a_i) / (s_i + a_i)``, ``[*lead pair]`` (0 for an unattended pair)."""
    none = torch.zeros_like(mass.subject)  # BOS and query mass do not enter a balance
    return balance(RoleMass(mass.subject[..., None], mass.answer[..., None], none, none))


def attention_report(task: ICRecallTask, before: list[float], after: list[float], n_prompts: int) -> str:
    """Tables of the mean query attention row by role, and of each pair's mass and balance, before/after."""
    rows = torch.tensor([before, after], dtype=torch.float)[:, None, :]  # [2 batch=1 pos]
    layout = task.layout(1)
    lines = [f"query attention row, mean over {n_prompts} held-out prompts:",
             f"  {'pos':>3}  {'role':<6} {'before':>7} {'after':>7}"]
    for pos, label in enumerate(position_labels(layout, task.n_ctx)):
        lines.append(f"  {pos:>3}  {label:<6} {rows[0, 0, pos]:7.3f} {rows[1, 0, pos]:7.3f}")
    mass = RoleMass.of(rows, layout)  # subject, answer: [2 1 pair]
    pair_mass, bal = (mass.subject + mass.answer)[:, 0], pair_balance(mass)[:, 0]  # [2 pair]
    overall = balance(mass)[:, 0]  # over all pairs: the share of context attention that is paired
    lines += ["", "context pairs: mass s+a and within-pair balance 2*min(s,a)/(s+a)",
              "(balance 1 = subject and answer attended equally; a pair with little mass has a noisy balance):",
              f"  {'':<5} {'-------- before':>16}   {'--------- after':>16}",
              f"  {'pair':<5} {'mass':>7} {'balance':>8}   {'mass':>7} {'balance':>8}"]
    for i in range(task.n_pairs):
        lines.append(f"  {i + 1:<5} {pair_mass[0, i]:7.3f} {bal[0, i]:8.3f}   {pair_mass[1, i]:7.3f} {bal[1, i]:8.3f}")
    lines.append(f"  {'all':<5} {pair_mass[0].sum():7.3f} {overall[0]:8.3f}   {pair_mass[1].sum():7.3f} "
                 f"{overall[1]:8.3f}")
    return "\n".join(lines)
