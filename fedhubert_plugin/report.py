"""The demo's report: PNG plots of the federated runs and ``report.md`` with the results tables."""

import math
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from fedhubert_plugin.federation.server.runlog import read_metrics, updates_behind, validations  # noqa: E402
from fedhubert_plugin.reference_curve import first_reaching, reference_band  # noqa: E402


def save_figure(fig: plt.Figure, title: str, out: Path) -> Path:
    """``fig`` with ``title`` written to ``out`` (PNG) and closed; ``out``."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_run(lines: List[Dict], title: str, out: Path) -> Path:
    """Loss and masked accuracy (global train per round; global and each client's valid per validated model),
    and bytes per round."""
    rounds = [line["round"] for line in lines]
    validated = validations(lines)
    models = list(validated)
    clients = sorted({name for v in validated.values() for name in v["clients"]})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, ax in (("loss", axes[0]), ("acc_masked", axes[1])):
        ax.plot(rounds, [line["train"].get(key) for line in lines], "k-o", label="global train")
        ax.plot(models, [v["metrics"].get(key) for v in validated.values()], "b-o", label="global valid")
        for name in clients:
            values = [v["clients"].get(name, {}).get(key) for v in validated.values()]
            ax.plot(models, values, "--", alpha=0.6, label=f"{name} valid")
        ax.set_xlabel("round (valid: the round whose model was validated; 0: initial)")
        ax.set_xticks(sorted(set(rounds) | set(models)))
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    axes[2].bar(
        [r - 0.2 for r in rounds], [line["bytes_sent"] / 1e6 for line in lines], width=0.4, label="server → clients"
    )
    axes[2].bar(
        [r + 0.2 for r in rounds], [line["bytes_received"] / 1e6 for line in lines], width=0.4, label="clients → server"
    )
    axes[2].set_xlabel("round")
    axes[2].set_xticks(rounds)
    axes[2].set_ylabel("MB")
    axes[2].legend(fontsize=7)
    return save_figure(fig, title, out)


def plot_against_reference(lines: List[Dict], curves: Dict, out: Path) -> Path:
    """The run's validations (loss, masked accuracy) against the updates behind each model, over the tiny recipe's
    reference bands (``reference_curve``); updates on a log scale, since the references run 3,200."""
    behind, validated = updates_behind(lines), validations(lines)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, measure in zip(axes, ("loss", "acc_masked")):
        for (kind, curve), color in zip(curves["runs"].items(), ("tab:green", "tab:orange", "tab:blue")):
            ax.fill_between(
                curve["updates"], curve[measure]["min"], curve[measure]["max"], color=color, alpha=0.3, label=kind
            )
        models = [r for r in validated if behind.get(r, 0) > 0]
        ax.plot([behind[r] for r in models], [validated[r]["metrics"].get(measure) for r in models], "k-o", label="run")
        ax.set_xscale("log")
        ax.set_xlabel("updates in all (every client's, summed)")
        ax.set_ylabel(f"valid {measure}")
        ax.legend(fontsize=7)
    return save_figure(fig, "this run against the tiny recipe's reference curves (band: min-max over seeds)", out)


def reference_summary(lines: List[Dict], curves: Dict, kind: str) -> str:
    """What the run of ``kind`` (its strategy) learned, said beside the reference curves: its validation loss from
    the initial model to the last, and its masked accuracy against its kind's band at its updates and against twice
    the references' first point."""
    behind, validated = updates_behind(lines), validations(lines)
    first, last = validated[min(validated)]["metrics"], validated[max(validated)]["metrics"]
    updates, acc = behind.get(max(validated), 0), last.get("acc_masked", math.nan)
    curve = curves["runs"].get(kind)
    band = reference_band(curve, updates)
    if band:
        where = (
            f"the {kind} reference's band there: valid loss {band['loss'][0]:.3f}–{band['loss'][1]:.3f}, masked acc "
            f"{band['acc_masked'][0]:.3f}–{band['acc_masked'][1]:.3f}"
        )
    elif curve:
        where = f"outside the {kind} reference's stored updates ({curve['updates'][0]:,}–{curve['updates'][-1]:,})"
    else:
        where = f"no reference curve is stored for {kind}"
    twice = {name: 2 * run["acc_masked"]["mean"][0] for name, run in curves["runs"].items()}
    if acc >= min(twice.values()):
        masked = f"Masked accuracy {acc:.3f}, at least twice the references' at their first point."
    else:
        reached = [(name, first_reaching(name, "acc_masked", value, curves)) for name, value in twice.items()]
        masked = (
            f"Not shown at this size: masked accuracy {acc:.3f}. The references' masked accuracy doubles its first "
            "point's after " + " and ".join(f"{u:,} updates ({name})" for name, u in reached if u) + ", more than "
            "a 5-minute demo on 2 cores trains."
        )
    return (
        f"The last validated model has {updates:,} updates behind it; {where}. Learned beyond noise: the valid loss "
        f"fell from {first['loss']:.3f} (the initial model) to {last['loss']:.3f}. {masked} The whole curves: "
        "docs/training-curves.md; `benchmarks/learning_curve.py` trains them."
    )


def clients_table(partition: Dict) -> str:
    """Markdown table of the partition: speakers, utterances and minutes of audio per client."""
    rows = [
        "| client | speakers | train utterances | train minutes | valid utterances |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, client in partition["clients"].items():
        rows.append(
            f"| {name} | {len(client['speakers'])} | {client['train']['utterances']} | "
            f"{60 * client['train']['hours']:.1f} | {client['valid']['utterances']} |"
        )
    return "\n".join(rows)


def rounds_table(lines: List[Dict]) -> str:
    """One markdown row per round: train loss, the validation of the round's model (masked accuracy, or
    fine-tuning's WER), traffic, time."""
    validated = validations(lines)
    wer = any("wer" in v["metrics"] for v in validated.values())
    measure, title = ("wer", "valid WER %") if wer else ("acc_masked", "valid masked acc")
    rows = [
        f"| round | train loss | its model: valid loss | {title} | clients | MB sent | MB received | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for line in lines:
        valid = validated.get(line["round"], {}).get("metrics", {})
        rows.append(
            f"| {line['round']} | {line['train']['loss']:.3f} | {valid.get('loss', math.nan):.3f} | "
            f"{valid.get(measure, math.nan):.{1 if wer else 3}f} | {len(line['participants'])} | "
            f"{line['bytes_sent'] / 1e6:.1f} | {line['bytes_received'] / 1e6:.1f} | {line['round_seconds']:.1f} |"
        )
    return "\n".join(rows)


def finetune_summary(save: Path) -> str:
    """A federated fine-tuning run (its save dir): each round's validation WER on the clients' valid splits, and
    its best model."""
    lines = read_metrics(save)
    return (
        f"{rounds_table(lines)}\n\nfairseq's hubert_ctc fine-tuned from the teacher on each client's letters "
        f"(`finetune/`); the WER pools every validating client's words. Best: round {lines[-1]['best_round']}'s "
        f"model, `{save / 'server' / 'checkpoint_best.pt'}`; `fedhubert asr-eval` decodes it. At demo scale the "
        "model has seen too few updates to spell: WER near or above 100 % is expected (docs/finetuning.md)."
    )


def downstream_table(results: Dict[str, Dict]) -> str:
    """Markdown table of KS test accuracy per upstream, and its PR test PER where it ran (``pr_per``)."""
    pr = all("pr_per" in result for result in results.values())
    rows = [
        "| upstream | parameters | KS test accuracy | " + ("PR test PER % | " if pr else "") + "checkpoint |",
        "| --- | --- | --- | " + ("--- | " if pr else "") + "--- |",
    ]
    for name, result in results.items():
        cells = [f"{result['parameters'] / 1e6:.2f} M", f"{result['test_acc']:.3f}"]
        cells += [f"{result['pr_per']:.1f}"] if pr else []
        rows.append(f"| {name} | {' | '.join(cells)} | `{result['checkpoint']}` |")
    return "\n".join(rows)


def write_report(out: Path, sections: Dict[str, Optional[str]], timings: Dict[str, float]) -> Path:
    """``out/report.md`` from titled markdown sections plus the time each phase took."""
    parts = ["# fedhubert demo report", ""]
    for title, body in sections.items():
        parts += [f"## {title}", "", body or "(not run)", ""]
    parts += ["## Time per phase", "", "| phase | seconds |", "| --- | --- |"]
    parts += [f"| {phase} | {seconds:.1f} |" for phase, seconds in timings.items()]
    path = Path(out) / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def plot_probe(results, out: Path) -> Path:
    """Phone accuracy, k-means PNMI and speaker accuracy by layer, one line per model (``probe.ProbeResult``), MFCC
    as a level."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("phone_accuracy", "linear phone accuracy"), ("pnmi", "PNMI"), ("speaker_accuracy", "speaker accuracy"))
    for ax, (key, label) in zip(axes, panels):
        for result in results:
            values = [getattr(score, key) for score in result.layers]
            if len(values) == 1:
                ax.axhline(values[0], color="grey", linestyle=":", label=result.name)
            else:
                ax.plot(range(len(values)), values, "-o", label=result.name)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("layer (0: conv front end; n ≥ 1: after n transformer layers)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return save_figure(fig, "what the layers know about phones and speakers (held-out speakers)", out)
