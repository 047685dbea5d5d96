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


# --- two worlds: the robot and the twin ------------------------------------------------------------------------
def successes_by_condition(rollouts: list, policy: str) -> dict[int, bool]:
    return {r.condition.index: r.success for r in rollouts if r.policy == policy}


def transfer(robot_rollouts: list, twin_rollouts: list) -> dict:
    """The robot and the twin on the same conditions: BC's **twin fidelity gap** (BC in the twin − BC on the robot,
    paired on the condition: Newcombe interval, exact McNemar), each world's **gain** (BC + residual − BC) and
    whether the twin's gain transfers (twin gain − robot gain: the mean of the per-condition differences of
    differences, normal 95 % interval). Points are percentage points."""
    from scipy.stats import norm

    worlds = {"robot": robot_rollouts, "twin": twin_rollouts}
    table = {w: {p: successes_by_condition(r, p) for p in ("bc", "bc_residual")} for w, r in worlds.items()}
    conditions = sorted(set.intersection(*(set(t) for w in table.values() for t in w.values())))
    if not conditions:
        raise ValueError("the robot and the twin share no condition on which both policies ran")
    s = {w: {p: [table[w][p][c] for c in conditions] for p in ("bc", "bc_residual")} for w in table}

    def paired(first: list[bool], second: list[bool]) -> dict:
        counts = paired_counts(first, second)
        diff, low, high = paired_difference_interval(first, second)
        return {"points": 100 * diff, "ci95_points": [100 * low, 100 * high],
                "only_first": counts["only_first"], "only_second": counts["only_second"],
                "mcnemar_exact_p": mcnemar_exact(counts["only_first"], counts["only_second"])}

    def rate(x: list[bool]) -> dict:
        k, n = int(sum(x)), len(x)
        return {"successes": k, "episodes": n, "success_rate": k / n, "ci95": list(wilson_interval(k, n))}

    gap = paired(s["robot"]["bc"], s["twin"]["bc"])  # twin − robot; only_first: BC succeeds on the robot only
    gains = {w: paired(s[w]["bc"], s[w]["bc_residual"]) for w in s}
    per_condition = np.array([(int(s["twin"]["bc_residual"][i]) - int(s["twin"]["bc"][i]))
                              - (int(s["robot"]["bc_residual"][i]) - int(s["robot"]["bc"][i]))
                              for i in range(len(conditions))], dtype=float)
    n = len(per_condition)
    mean = float(per_condition.mean())
    half = float(norm.ppf(0.975) * per_condition.std(ddof=1) / np.sqrt(n)) if n > 1 else 1.0
    return {
        "conditions": n,
        "success": {w: {p: rate(s[w][p]) for p in s[w]} for w in s},
        "fidelity_gap": {"points": gap["points"], "ci95_points": gap["ci95_points"],
                         "only_robot": gap["only_first"], "only_twin": gap["only_second"],
                         "mcnemar_exact_p": gap["mcnemar_exact_p"]},
        "gain": {w: {"points": g["points"], "ci95_points": g["ci95_points"], "only_bc": g["only_first"],
                     "only_bc_residual": g["only_second"], "mcnemar_exact_p": g["mcnemar_exact_p"]}
                 for w, g in gains.items()},
        "gain_transfer": {"points": 100 * mean, "ci95_points": [100 * (mean - half), 100 * (mean + half)],
                          "meaning": "twin gain − robot gain (> 0: the twin promises more than the robot delivers)"},
    }


def fidelity_checks(robot_summary: dict, transfer_info: dict | None, max_harm_points: float,
                    robot_name: str = "the stand-in robot") -> list[dict]:
    """The behaviour-level warnings: `residual_not_worse_than_bc` (judged on the robot) and, with the twin on the
    same conditions, `twin_reproduces_bc` (BC's success intervals in the two worlds overlap)."""
    checks = []
    d, p = robot_summary["difference"], robot_summary["paired"]
    bc, rl = robot_summary["policies"]["bc"], robot_summary["policies"]["bc_residual"]
    significant = d["points"] < 0 and p["mcnemar_exact_p"] < 0.05
    worse = significant or d["points"] <= -max_harm_points
    checks.append({
        "name": "residual_not_worse_than_bc", "passed": not worse,
        "description": (f"BC + residual makes {robot_name} worse: {rl['successes']}/{rl['episodes']} vs BC alone "
                        f"{bc['successes']}/{bc['episodes']}, {d['points']:+.1f} points (95 % CI "
                        f"{d['ci95_points'][0]:+.1f} to {d['ci95_points'][1]:+.1f}; {p['only_bc']} conditions only "
                        f"BC solved, {p['only_bc_residual']} only the residual; exact McNemar p = "
                        f"{p['mcnemar_exact_p']:.3g}); do not deploy this residual" if worse else
                        f"BC + residual {d['points']:+.1f} points vs BC alone on {robot_name} (95 % CI "
                        f"{d['ci95_points'][0]:+.1f} to {d['ci95_points'][1]:+.1f}; warns at "
                        f"-{max_harm_points:g} points or a significant loss)"),
    })
    if transfer_info is not None:
        sr, st = transfer_info["success"]["robot"]["bc"], transfer_info["success"]["twin"]["bc"]
        (rl_lo, rl_hi), (tw_lo, tw_hi) = sr["ci95"], st["ci95"]
        overlap = rl_lo <= tw_hi and tw_lo <= rl_hi
        gap = transfer_info["fidelity_gap"]
        worse_world = "the twin" if st["success_rate"] < sr["success_rate"] else robot_name
        text = (f"BC alone succeeds {st['successes']}/{st['episodes']} ({100 * st['success_rate']:.0f} %, Wilson "
                f"{100 * tw_lo:.0f}–{100 * tw_hi:.0f} %) in the twin and {sr['successes']}/{sr['episodes']} "
                f"({100 * sr['success_rate']:.0f} %, {100 * rl_lo:.0f}–{100 * rl_hi:.0f} %) on {robot_name}: "
                f"fidelity gap {gap['points']:+.1f} points (95 % CI {gap['ci95_points'][0]:+.1f} to "
                f"{gap['ci95_points'][1]:+.1f})")
        checks.append({
            "name": "twin_reproduces_bc", "passed": overlap,
            "description": text + ("" if overlap else f"; the intervals do not overlap: {worse_world} is the worse "
                                   "world, and what the residual learns there may not transfer"),
        })
    return checks


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


def transfer_figure(transfer_info: dict, robot_name: str) -> bytes:
    """Left: success of both policies in both worlds (Wilson 95 %). Right: the fidelity gap, each world's gain and
    the gain transfer, with their intervals (points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1.2]})
    ax = axes[0]
    worlds = [("robot", robot_name), ("twin", "the twin")]
    for j, (policy, colour) in enumerate((("bc", "tab:gray"), ("bc_residual", "tab:green"))):
        for i, (world, _) in enumerate(worlds):
            s = transfer_info["success"][world][policy]
            x = i + (j - 0.5) * 0.38
            ax.bar(x, s["success_rate"], width=0.36, color=colour, label=LABELS[policy] if i == 0 else None)
            lo, hi = s["ci95"]
            ax.errorbar(x, s["success_rate"], yerr=[[s["success_rate"] - lo], [hi - s["success_rate"]]], color="k",
                        capsize=5)
            ax.text(x, min(hi + 0.03, 1.04), f"{s['successes']}/{s['episodes']}", ha="center", fontsize=8)
    ax.set_xticks(range(len(worlds)), [name for _, name in worlds])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("success (Wilson 95 %)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"same {transfer_info['conditions']} conditions in both worlds", fontsize=10)
    ax = axes[1]
    rows = [("pure method gain (robot)", transfer_info["gain"]["robot"], "tab:green"),
            ("gain in the twin", transfer_info["gain"]["twin"], "tab:olive"),
            ("twin gain − robot gain", transfer_info["gain_transfer"], "tab:purple"),
            ("twin fidelity gap (BC twin − robot)", transfer_info["fidelity_gap"], "tab:blue")]
    for i, (label, v, colour) in enumerate(rows):
        lo, hi = v["ci95_points"]
        ax.errorbar(v["points"], i, xerr=[[v["points"] - lo], [hi - v["points"]]], fmt="o", color=colour, capsize=5)
        ax.text(hi + 2, i, f"{v['points']:+.0f} [{lo:+.0f}, {hi:+.0f}]", va="center", fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-105, 130)
    ax.set_xlabel("percentage points (95 % CI)")
    ax.set_title("transfer: what the twin says vs what the robot does", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


# --- documents ----------------------------------------------------------------------------------------------------
def headline(summary: dict, transfer_info: dict | None, checks: list[dict], robot_name: str) -> list[str]:
    """The numbers people came for, first: BC and BC + residual on the robot, the pure method gain, the twin
    fidelity gap, each with its interval; a failed behaviour check is said before any of them."""
    pol, d, p = summary["policies"], summary["difference"], summary["paired"]
    bc, rl = pol["bc"], pol["bc_residual"]
    lines = []
    for c in checks:
        if not c["passed"]:
            lines += [f"> **Warning — `{c['name']}`.** {c['description']}.", ""]
    harmful = any(c["name"] == "residual_not_worse_than_bc" and not c["passed"] for c in checks)
    gain_word = "Method gain (flagged: the residual makes the robot worse)" if harmful else "Pure method gain"
    lines += ["## Headline", "", f"| on {robot_name} | success | 95 % interval |", "|---|---|---|",
              f"| BC alone | {bc['successes']}/{bc['episodes']} ({100 * bc['success_rate']:.0f} %) | "
              f"{100 * bc['ci95'][0]:.0f}–{100 * bc['ci95'][1]:.0f} % (Wilson) |",
              f"| BC + residual | {rl['successes']}/{rl['episodes']} ({100 * rl['success_rate']:.0f} %) | "
              f"{100 * rl['ci95'][0]:.0f}–{100 * rl['ci95'][1]:.0f} % (Wilson) |",
              f"| **{gain_word}** | **{d['points']:+.1f} points** | {d['ci95_points'][0]:+.1f} to "
              f"{d['ci95_points'][1]:+.1f} (Newcombe paired; exact McNemar p = {p['mcnemar_exact_p']:.3g}) |"]
    if transfer_info is not None:
        g, tw = transfer_info["fidelity_gap"], transfer_info["success"]["twin"]
        gt, gtw = transfer_info["gain_transfer"], transfer_info["gain"]["twin"]
        lines += [f"| **Twin fidelity gap** (BC in the twin − BC on the robot) | **{g['points']:+.1f} points** | "
                  f"{g['ci95_points'][0]:+.1f} to {g['ci95_points'][1]:+.1f} (Newcombe paired; BC twin "
                  f"{tw['bc']['successes']}/{tw['bc']['episodes']}) |",
                  f"| Gain in the twin | {gtw['points']:+.1f} points | {gtw['ci95_points'][0]:+.1f} to "
                  f"{gtw['ci95_points'][1]:+.1f} |",
                  f"| Twin gain − robot gain (does the twin's gain transfer?) | {gt['points']:+.1f} points | "
                  f"{gt['ci95_points'][0]:+.1f} to {gt['ci95_points'][1]:+.1f} (normal, per condition) |"]
    return lines + [""]


def transfer_table(transfer_info: dict, robot_name: str) -> list[str]:
    """Both worlds side by side on the same conditions."""
    lines = ["## The robot and the twin, same conditions", "",
             f"{transfer_info['conditions']} conditions, the same cube poses in both worlds.", "",
             "| world | BC alone | BC + residual | gain (points, 95 % CI) | only BC | only BC + residual | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for world, name in (("robot", robot_name), ("twin", "the twin")):
        s, g = transfer_info["success"][world], transfer_info["gain"][world]
        cells = [f"{s[p]['successes']}/{s[p]['episodes']} ({100 * s[p]['ci95'][0]:.0f}–{100 * s[p]['ci95'][1]:.0f} %)"
                 for p in ("bc", "bc_residual")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {g['points']:+.1f} ({g['ci95_points'][0]:+.1f} to "
                     f"{g['ci95_points'][1]:+.1f}) | {g['only_bc']} | {g['only_bc_residual']} | "
                     f"{g['mcnemar_exact_p']:.3g} |")
    g = transfer_info["fidelity_gap"]
    lines += ["", f"BC fidelity: {g['only_robot']} conditions BC solves only on the robot, {g['only_twin']} only in "
              f"the twin (exact McNemar p = {g['mcnemar_exact_p']:.3g}).", ""]
    return lines


def markdown(summary: dict, rollouts: list, lineage_info: dict, robot_label: str, figure_files: dict[str, str],
             transfer_info: dict | None = None, checks: list[dict] = (), robot_name: str = "the robot") -> str:
    pol, d, p = summary["policies"], summary["difference"], summary["paired"]
    bc, rl = pol["bc"], pol["bc_residual"]
    lines = [f"# Twinloop evaluation: BC alone vs BC + residual on {robot_label}", ""]
    if "sim proxy" in robot_label:
        lines += ["> **Sim proxy.** These rollouts ran in the USD twin, not on the (stand-in) real robot: they "
                  "estimate, not measure, the real-robot gain.", ""]
    lines += headline(summary, transfer_info, list(checks), robot_name)
    if transfer_info is not None:
        lines += transfer_table(transfer_info, robot_name)
    if checks:
        lines += ["| behaviour check | result | detail |", "|---|---|---|"]
        lines += [f"| `{c['name']}` | {'pass' if c['passed'] else 'WARN'} | {c['description']} |" for c in checks]
        lines += [""]
    lines += [f"## On {robot_name}", "",
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
