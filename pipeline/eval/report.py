"""The evaluation report: statistics of the paired rollouts, figures, `report.md` and a self-contained
`report.html` (figures embedded), with the lineage of everything that produced it."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from pipeline.eval.robots import OUTCOMES
from pipeline.common.stats import mcnemar_exact, paired_counts, paired_difference_interval, wilson_interval

LABELS = {"bc": "BC alone", "bc_residual": "BC + residual"}


def summarize(rollouts: list, fps: int) -> dict:
    """Paired statistics of BC (`bc`) vs BC + residual (`bc_residual`), plus any extra residual policies."""
    by_policy: dict[str, dict[int, object]] = {}
    for r in rollouts:
        by_policy.setdefault(r.policy, {})[r.condition.index] = r
    if "bc" not in by_policy or "bc_residual" not in by_policy:
        raise ValueError("the report needs rollouts of both `bc` and `bc_residual`")
    conditions = sorted(set(by_policy["bc"]) & set(by_policy["bc_residual"]))
    policies = {}
    for name, runs in by_policy.items():
        ok = [runs[c].success for c in conditions if c in runs]
        k, n = int(sum(ok)), len(ok)
        times = [runs[c].seconds for c in conditions if c in runs and runs[c].success]
        policies[name] = {
            "successes": k, "episodes": n, "success_rate": k / n if n else 0.0, "ci95": list(wilson_interval(k, n)),
            "outcomes": {o: sum(1 for c in conditions if c in runs and runs[c].outcome == o) for o in OUTCOMES},
            "cycle_time_s": {"mean": float(np.mean(times)) if times else None,
                             "median": float(np.median(times)) if times else None,
                             "std": float(np.std(times)) if times else None},
        }
    bc = [by_policy["bc"][c].success for c in conditions]
    rl = [by_policy["bc_residual"][c].success for c in conditions]
    counts = paired_counts(bc, rl)
    diff, low, high = paired_difference_interval(bc, rl)
    residual_policies = [p for p in policies if p != "bc"]
    rates = [policies[p]["success_rate"] for p in residual_policies]
    return {
        "pairs": len(conditions), "fps": fps, "policies": policies,
        "paired": {"both_succeed": counts["both"], "only_bc": counts["only_first"],
                   "only_bc_residual": counts["only_second"], "neither": counts["neither"],
                   "mcnemar_exact_p": mcnemar_exact(counts["only_first"], counts["only_second"])},
        "difference": {"points": 100 * diff, "ci95_points": [100 * low, 100 * high]},
        "policy_seeds": {"policies": residual_policies, "success_rates": rates,
                         "mean": float(np.mean(rates)), "std": float(np.std(rates, ddof=1)) if len(rates) > 1 else None},
    }


# --- lineage ------------------------------------------------------------------------------------------------------
def lineage(root: Path, used_files: dict[str, Path]) -> dict:
    """What produced this report: code commit, every upstream stage's output md5 as dvc.lock records it (when it
    was written, the git commit that recorded it; `pipeline.common.lineage`, which `twinloop lineage` verifies), the
    dataset's episodes, the recipe's section hashes, and the md5 of each file the evaluation loaded."""
    from pipeline.common.recipe import load_recipe
    from pipeline.common.lineage import LineageError, code_commit, trace
    from pipeline.common.artifacts import file_md5, portable

    root = Path(root)
    out = {"code_commit": code_commit(root), "artifacts": [], "files": {k: {"path": portable(v, root), "md5": file_md5(v)} for k, v in used_files.items()}}
    try:
        links = trace(root, "eval_report", verify=False).links
    except LineageError:  # not a Twinloop project (a bare output folder): no upstream to list
        links = []
    for link in links:
        if link.stage == "eval_report":
            continue
        out["artifacts"].append({"stage": link.stage, "path": link.out, "md5": link.md5, "files": link.files,
                                 "written": link.written, "commit": link.recorded_in_commit})
        if link.stage == "demos" and link.extra:
            out["dataset"] = {"path": link.out, **link.extra}
    params = root / "params.yaml"
    if params.is_file():
        recipe = load_recipe(params)
        out["recipe"] = {s: recipe.section_hash(s) for s in type(recipe).model_fields}
    return out


# --- figures ------------------------------------------------------------------------------------------------------
def figures(summary: dict, rollouts: list, bin_box: tuple, alpha: float, examples: int) -> dict[str, bytes]:
    """PNG bytes of each figure, by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    pol = summary["policies"]
    names = ["bc", "bc_residual"]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1.1, 1, 1.3]})
    ax = axes[0]
    for i, name in enumerate(names):
        s = pol[name]
        lo, hi = s["ci95"]
        ax.bar(i, s["success_rate"], color=("tab:gray", "tab:green")[i])
        ax.errorbar(i, s["success_rate"], yerr=[[s["success_rate"] - lo], [hi - s["success_rate"]]], color="k",
                    capsize=6)
        ax.text(i, min(hi + 0.03, 1.02), f"{s['successes']}/{s['episodes']}", ha="center")
    extra = [p for p in summary["policy_seeds"]["policies"] if p != "bc_residual"]
    for p in extra:
        ax.plot(1.3, pol[p]["success_rate"], "o", color="tab:olive", ms=5)
    ax.set_xticks(range(2), [LABELS[n] for n in names])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("success (Wilson 95 %)")
    d = summary["difference"]
    ax.set_title(f"gain {d['points']:+.0f} pts [{d['ci95_points'][0]:+.0f}, {d['ci95_points'][1]:+.0f}]", fontsize=10)
    ax = axes[1]
    p = summary["paired"]
    table = np.array([[p["both_succeed"], p["only_bc"]], [p["only_bc_residual"], p["neither"]]])
    ax.imshow(table, cmap="Greens", vmin=0, vmax=max(1, table.max()))
    for (r, c), v in np.ndenumerate(table):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["BC+res ok", "BC+res fails"])
    ax.set_yticks([0, 1], ["BC ok", "BC fails"])
    ax.set_title(f"paired outcomes (McNemar exact p = {p['mcnemar_exact_p']:.3g})", fontsize=10)
    ax = axes[2]
    bottom = np.zeros(2)
    colours = {"success": "tab:green", "no_grasp": "tab:red", "dropped": "tab:orange", "misplaced": "tab:purple",
               "timeout": "tab:gray"}
    for outcome, colour in colours.items():
        vals = np.array([pol[n]["outcomes"][outcome] for n in names])
        ax.barh(range(2), vals, left=bottom, color=colour, label=outcome.replace("_", " "))
        bottom += vals
    ax.set_yticks(range(2), [LABELS[n] for n in names])
    ax.set_xlabel("episodes")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    ax.set_title("outcomes", fontsize=10)
    fig.tight_layout()
    figs["summary"] = _png(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    (bx0, by0), (bx1, by1) = bin_box
    markers = {"success": ("o", "tab:green"), "no_grasp": ("x", "tab:red"), "dropped": ("v", "tab:orange"),
               "misplaced": ("s", "tab:purple"), "timeout": ("d", "tab:gray")}
    for ax, name in zip(axes[:2], names):
        for outcome, (mk, colour) in markers.items():
            pts = [r.condition.cube_xy for r in rollouts if r.policy == name and r.outcome == outcome]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(ys, xs, marker=mk, color=colour, label=outcome.replace("_", " "), s=28)
        ax.add_patch(plt.Rectangle((by0, bx0), by1 - by0, bx1 - bx0, fill=False, ec="tab:blue", lw=1.5))
        ax.text((by0 + by1) / 2, bx1 + 0.005, "bin", ha="center", color="tab:blue", fontsize=8)
        ax.set_xlabel("y (m)")
        ax.set_ylabel("x (m)")
        ax.set_aspect("equal")
        ax.invert_xaxis()
        ax.set_title(f"{LABELS[name]}: cube start poses", fontsize=10)
    axes[0].legend(fontsize=7)
    ax = axes[2]
    data = [[r.seconds for r in rollouts if r.policy == n and r.success] for n in names]
    if any(data):
        ax.boxplot([d if d else [np.nan] for d in data], tick_labels=[LABELS[n] for n in names])
    ax.set_ylabel("cycle time of successes (s)")
    ax.set_title("cycle time", fontsize=10)
    fig.tight_layout()
    figs["conditions"] = _png(fig)

    res = [r for r in rollouts if r.policy == "bc_residual" and r.frames]
    if res:
        mag = np.mean([np.mean(np.abs(np.stack([f["policy.residual"] for f in r.frames])), 0) for r in res], 0)
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.bar(range(6), alpha * mag, color="tab:green")
        ax.set_xticks(range(6), ["pan", "lift", "elbow", "wr flex", "wr roll", "grip"])
        ax.set_ylabel("mean |alpha * residual| (units)")
        ax.set_title("how much the residual changes BC's actions", fontsize=10)
        fig.tight_layout()
        figs["residual"] = _png(fig)

    failed = [r for r in rollouts if not r.success and r.keyframes][:examples]
    if failed:
        cols = max(len(r.keyframes) for r in failed)
        fig, axes = plt.subplots(len(failed), cols, figsize=(3.2 * cols, 2.6 * len(failed)), squeeze=False)
        for i, r in enumerate(failed):
            for j in range(cols):
                ax = axes[i, j]
                ax.axis("off")
                if j < len(r.keyframes):
                    ax.imshow(r.keyframes[j])
                    ax.set_title(("start", "middle", "end")[j] if cols == 3 else f"frame {j}", fontsize=8)
            axes[i, 0].text(-0.05, 0.5, f"{LABELS.get(r.policy, r.policy)}\ncondition {r.condition.index}\n"
                            f"{r.outcome.replace('_', ' ')}", transform=axes[i, 0].transAxes, ha="right",
                            va="center", fontsize=8)
        fig.tight_layout()
        figs["failures"] = _png(fig)
    return figs


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


# --- documents ----------------------------------------------------------------------------------------------------
def markdown(summary: dict, rollouts: list, lineage_info: dict, robot_label: str, figure_files: dict[str, str]) -> str:
    pol, d, p = summary["policies"], summary["difference"], summary["paired"]
    bc, rl = pol["bc"], pol["bc_residual"]
    lines = [f"# Twinloop evaluation: BC alone vs BC + residual on {robot_label}", ""]
    if "sim proxy" in robot_label:
        lines += ["> **Sim proxy.** These rollouts ran in the USD twin with held-out domain randomization, not on the "
                  "real arm: they estimate, not measure, the real-robot gain.", ""]
    lines += [
        f"**{summary['pairs']} paired initial conditions.** BC alone {bc['successes']}/{bc['episodes']} "
        f"({100 * bc['success_rate']:.0f} %, 95 % CI {100 * bc['ci95'][0]:.0f}–{100 * bc['ci95'][1]:.0f}); "
        f"BC + residual {rl['successes']}/{rl['episodes']} ({100 * rl['success_rate']:.0f} %, "
        f"{100 * rl['ci95'][0]:.0f}–{100 * rl['ci95'][1]:.0f}). Gain **{d['points']:+.1f} points** "
        f"(95 % CI {d['ci95_points'][0]:+.1f} to {d['ci95_points'][1]:+.1f}, Newcombe paired); "
        f"exact McNemar p = {p['mcnemar_exact_p']:.3g} on {p['only_bc'] + p['only_bc_residual']} discordant pairs.",
        "",
        "| policy | successes | success rate | Wilson 95 % | mean cycle time (s) | no grasp | dropped | misplaced "
        "| timeout |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in pol.items():
        ct = s["cycle_time_s"]["mean"]
        o = s["outcomes"]
        lines.append(f"| {LABELS.get(name, name)} | {s['successes']}/{s['episodes']} | {s['success_rate']:.2f} | "
                     f"{s['ci95'][0]:.2f}–{s['ci95'][1]:.2f} | {'—' if ct is None else f'{ct:.2f}'} | "
                     f"{o['no_grasp']} | {o['dropped']} | {o['misplaced']} | {o['timeout']} |")
    seeds = summary["policy_seeds"]
    if seeds["std"] is not None:
        lines += ["", f"Across {len(seeds['policies'])} residual policies (policy seeds): success "
                  f"{100 * seeds['mean']:.1f} ± {100 * seeds['std']:.1f} % (mean ± sd)."]
    lines += ["", "| both succeed | only BC | only BC + residual | neither |", "|---|---|---|---|",
              f"| {p['both_succeed']} | {p['only_bc']} | {p['only_bc_residual']} | {p['neither']} |", ""]
    for name, file in figure_files.items():
        lines.append(f"![{name}]({file})")
    lines += ["", "## Per condition", "",
              "| # | seed | cube x, y (m) | yaw (deg) | first | BC | BC + residual | BC s | BC + res s |",
              "|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for r in rollouts:
        rows.setdefault(r.condition.index, {})[r.policy] = r
    for idx in sorted(rows):
        bc_r, rl_r = rows[idx].get("bc"), rows[idx].get("bc_residual")
        if bc_r is None or rl_r is None:
            continue
        c = bc_r.condition
        first = "BC" if bc_r.order == 0 else "BC + res"
        lines.append(f"| {idx} | {c.seed} | {c.cube_xy[0]:.3f}, {c.cube_xy[1]:.3f} | {c.cube_yaw_deg:.0f} | {first} | "
                     f"{bc_r.outcome} | {rl_r.outcome} | {bc_r.seconds:.1f} | {rl_r.seconds:.1f} |")
    lines += ["", "## Lineage", "", f"- code commit: `{lineage_info.get('code_commit')}` (`-dirty`: uncommitted "
              "changes in pipeline/, assets/ or resources/)"]
    if "dataset" in lineage_info:
        ds = lineage_info["dataset"]
        lines.append(f"- dataset: `{ds['path']}`, {ds['episodes']} episodes, {ds['frames']} frames at {ds['fps']} fps")
    if "recipe" in lineage_info:
        lines.append("- recipe section hashes: " + ", ".join(f"{k} `{v[:10]}`" for k, v in lineage_info["recipe"].items()))
    lines += ["", "| stage | output | md5 (dvc.lock) | files | written | recorded in commit |",
              "|---|---|---|---|---|---|"]
    for a in lineage_info["artifacts"]:
        commit = f"`{a['commit'][:12]}`" if a.get("commit") else "not committed"
        lines.append(f"| {a['stage']} | `{a['path']}` | `{a['md5']}` | {a['files'] or ''} | {a['written'] or ''} | "
                     f"{commit} |")
    lines += ["", "| loaded file | md5 |", "|---|---|"]
    for name, f in lineage_info["files"].items():
        lines.append(f"| {name}: `{f['path']}` | `{f['md5']}` |")
    return "\n".join(lines) + "\n"


def html_document(md_text: str, figs: dict[str, bytes]) -> str:
    """report.md as a self-contained HTML page: the figures inlined as base64 PNGs."""
    body = []
    in_table = False
    for line in md_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[2:line.index("]")]
            data = base64.b64encode(figs[name]).decode()
            body.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>')
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("> "):
            body.append(f'<p class="note">{_inline(line[2:])}</p>')
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}.note{background:#fff4d6;padding:8px;border-left:4px solid "
             "#e0a800}code{font-size:12px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Twinloop evaluation</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]*)\*\*", r"<b>\1</b>", out)
