"""RBR command line: the whole loop — answers, grade, fit, rl, eval (docs/rbr.md).

    python -m omni.align answers                         # helpful answers of the instruct model (synthetic data)
    python train.py --config configs/rbr-grader-135m.yaml  # train the proposition grader
    python train.py --config configs/rbr-rm-135m.yaml      # train the helpful-only reward model
    python -m omni.align gold                            # grader ROC-AUC / accuracy per proposition on the gold set
    python -m omni.align fit                             # fit the RBR weights (error rate before/after)
    python -m omni.align grade in.jsonl out.jsonl        # propositions, classes, reward for (prompt, completion) rows
    python -m omni.align rl                              # PPO (= train.py --task rbr-ppo)
    python -m omni.align eval                            # before/after safety table -> docs/rbr.md
    python -m omni.align agreement --tuned RUN           # does the reward order a policy's samples as the eval does?
    python -m omni.align curve RUN [RUN ...] --out X.png # PPO reward per step (training and validation)

Every command takes --config (default configs/rbr-ppo-135m.yaml) plus key=value overrides.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import omni.align.config  # noqa: F401  (registers the `rbr` config section before any config is parsed)
from omni.align.data import load_gold, load_prompts, read_jsonl, write_jsonl
from omni.align.evaluate import (agreement_table, grader_report, grader_table, replace_block, reward_agreement,
                                 reward_curves, run_safety_eval)
from omni.align.grader import load_grader
from omni.align.ppo import RBRPPOTask
from omni.align.reward import RewardModel
from omni.align.rollout import helpful_answers
from omni.align.spec import DEFAULT_SPEC, load_spec
from omni.align.synth import comparison_set
from omni.align.tasks import load_answers
from omni.align.weights import Group, RBRWeights, fit
from omni.config import Config, ConfigError, load_config
from omni.model.build import build_model
from omni.tokenizers.text import build_text_tokenizer


def _spec(cfg: Config):
    return load_spec(cfg.section("rbr").spec or DEFAULT_SPEC)


def _policy(cfg: Config):
    return build_model(cfg).eval(), build_text_tokenizer(cfg.tokenizer)


def cmd_answers(cfg: Config, args: argparse.Namespace) -> None:
    policy, tok = _policy(cfg)
    prompts = [p.prompt for p in load_prompts("train") if p.type == "comply"]
    helpful_answers(policy, tok, prompts, cfg.section("rbr").answers, per_prompt=args.per_prompt)
    print(f"wrote {cfg.section('rbr').answers}")


def cmd_grade(cfg: Config, args: argparse.Namespace) -> None:
    spec, r = _spec(cfg), cfg.section("rbr")
    rows = read_jsonl(args.input)
    for i, row in enumerate(rows):
        if "prompt" not in row or "completion" not in row:
            raise ValueError(f"{args.input}: row {i + 1} needs 'prompt' and 'completion' keys")
    grader = load_grader(spec, r.grader)
    props = grader.probabilities([x["prompt"] for x in rows], [x["completion"] for x in rows], progress=True)
    weights = RBRWeights.load(r.weights, spec) if Path(r.weights).exists() else None
    n_truncated = 0
    for row, p in zip(rows, props):
        dropped = grader.truncation(row["prompt"], row["completion"])
        n_truncated += any(dropped)
        row["truncated"] = {"prompt_tokens": dropped[0], "completion_tokens": dropped[1]} if any(dropped) else False
        row["propositions"] = {q: round(float(v), 4) for q, v in zip(spec.propositions, p)}
        if row.get("type"):
            cp = spec.class_probabilities(p[None], row["type"])[0]
            row["classes"] = {c: round(float(v), 4) for c, v in zip(spec.response_type(row["type"]).class_names, cp)}
            if weights is not None:
                row["rbr_reward"] = float(weights.reward(p[None], [row["type"]])[0])
    write_jsonl(args.output, rows)
    print(f"graded {len(rows)} rows -> {args.output}")
    if n_truncated:
        print(f"warning: {n_truncated} of {len(rows)} rows did not fit the grader's window ({grader.window}); "
              "their 'truncated' field counts the tokens it did not read", file=sys.stderr)


def cmd_gold(cfg: Config, args: argparse.Namespace) -> None:
    spec = _spec(cfg)
    report = grader_report(load_grader(spec, args.grader or cfg.section("rbr").grader), spec, load_gold(spec), args.calibrate)
    print(grader_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    if args.docs:
        replace_block("rbr-grader", grader_table(report))


def cmd_fit(cfg: Config, args: argparse.Namespace) -> None:
    spec, r = _spec(cfg), cfg.section("rbr")
    grader = load_grader(spec, r.grader)
    comps = comparison_set(spec, load_prompts("train"), args.per_class, load_answers(r.answers), seed=cfg.train.seed)
    flat = [g for _, items, _ in comps for g in items]
    props = grader.probabilities([g.prompt for g in flat], [g.completion for g in flat], progress=True)
    base = None
    if r.reward_model:  # fit on top of R_rm, the reward PPO adds the RBR term to
        base = RewardModel.load(r.reward_model).score([g.prompt for g in flat], [g.completion for g in flat])
    groups, k = [], 0
    for p, items, ranks in comps:
        groups.append(Group(p.type, props[k: k + len(items)], torch.tensor(ranks),
                            None if base is None else base[k: k + len(items)]))
        k += len(items)
    weights, report = fit(groups, spec, margin=args.margin, seed=cfg.train.seed)
    weights.save(r.weights, report)
    print(json.dumps(report, indent=1))
    print(f"weights -> {r.weights}")
    if args.docs:
        lines = [f"Margin {report['margin']}, {report['optimiser']}; {args.per_class} completions per class per prompt; "
                 f"ranked quantity: {'R_rm + w·φ' if base is not None else 'w·φ'}.", "",
                 "| type | prompts train/val | error train before → after | error val before → after |", "|---|---|---|---|"]
        for t, v in report["types"].items():
            lines.append(f"| {t} | {v['prompts_train']}/{v['prompts_val']} | {v['error_train_before']:.3f} → "
                         f"{v['error_train_after']:.3f} | {v.get('error_val_before', float('nan')):.3f} → "
                         f"{v.get('error_val_after', float('nan')):.3f} |")
        replace_block("rbr-weights", "\n".join(lines))


def cmd_rl(cfg: Config, args: argparse.Namespace) -> None:
    RBRPPOTask().run(cfg, args)


def cmd_eval(cfg: Config, args: argparse.Namespace) -> None:
    run_safety_eval(cfg, args.tuned, limit=args.limit, docs=not args.no_docs)


def cmd_agreement(cfg: Config, args: argparse.Namespace) -> None:
    scales = [float(x) for x in args.scales.split(",") if x.strip()]
    result = reward_agreement(cfg, args.tuned, args.samples, scales, args.temperature)
    print(agreement_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"-> {args.out}")


def cmd_curve(cfg: Config, args: argparse.Namespace) -> None:
    for name, c in reward_curves(args.runs, args.out or None, args.window).items():
        print(f"{name}: {len(c['steps'])} steps, train reward first {args.window} {c['first']:.3f} -> last {args.window} "
              f"{c['last']:.3f}; per step: {' '.join(f'{x:.2f}' for x in c['reward'])}")
        if c["val_steps"]:
            print(f"  validation reward: {', '.join(f'step {s} {v:.3f}' for s, v in zip(c['val_steps'], c['val_reward']))}")
    if args.out:
        print(f"plot -> {args.out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m omni.align", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("answers", help="sample helpful answers of the instruct model for the comply train prompts")
    a.add_argument("--per-prompt", type=int, default=3, help="answers per prompt, at temperatures 0.3, 0.7, 1.0 in turn")
    g = sub.add_parser("grade", help="grade a JSONL of {prompt, completion[, type]} rows (prompt: text or a list of "
                       "{role, content} turns); rows the grader's window truncates say so in 'truncated'")
    g.add_argument("input")
    g.add_argument("output")
    gd = sub.add_parser("gold", help="per-proposition ROC-AUC and accuracy of a grader on the gold set")
    gd.add_argument("--grader", default="", help="run/step folder or prompted:PATH (default: rbr.grader)")
    gd.add_argument("--out", default="", help="also write the report as JSON here")
    gd.add_argument("--calibrate", action="store_true", help="Platt-scale each proposition on the gold threshold split first")
    gd.add_argument("--docs", action="store_true", help="write the table into docs/rbr.md")
    f = sub.add_parser("fit", help="fit the RBR weights on graded synthetic comparison data")
    f.add_argument("--per-class", type=int, default=2)
    f.add_argument("--margin", type=float, default=1.0)
    f.add_argument("--docs", action="store_true", help="write the error-rate table into docs/rbr.md")
    rl = sub.add_parser("rl", help="PPO with the RBR reward (same as train.py --task rbr-ppo)")
    rl.add_argument("--overwrite", action="store_true")
    e = sub.add_parser("eval", help="helpful-only vs RBR-tuned vs refuse-when-in-doubt on the test prompts")
    e.add_argument("--tuned", action="append", default=[], help="a tuned policy run folder, one row each; repeat for more (default: train.out_dir)")
    e.add_argument("--limit", type=int, default=0, help="use only the first N test prompts (0 = all)")
    e.add_argument("--no-docs", action="store_true", help="print the table without writing docs/")
    ag = sub.add_parser("agreement", help="share of (acceptable, unacceptable) pairs of a policy's own completions to the "
                        "train prompts that each reward (R_rm, w·φ, R_rm + s·w·φ) orders as the safety eval does")
    ag.add_argument("--tuned", default=".cache/rbr/sft", help="the policy's run folder (default: the SFT warm-up)")
    ag.add_argument("--samples", type=int, default=4, help="sampled completions per prompt, beside the greedy one")
    ag.add_argument("--temperature", type=float, default=0.8)
    ag.add_argument("--scales", default="1,2,4", help="comma-separated rbr_scale values to try in R_rm + s·w·φ")
    ag.add_argument("--out", default="", help="also write the result as JSON here")
    c = sub.add_parser("curve", help="PPO reward per step (training batch mean and validation) of runs; optional PNG")
    c.add_argument("runs", nargs="+", help="rbr-ppo run folders (each holds metrics.jsonl)")
    c.add_argument("--out", default="", help="write the plot here (PNG)")
    c.add_argument("--window", type=int, default=5, help="steps in the running mean and the first/last means")
    c.set_defaults(config="configs/rbr-ppo-135m.yaml", overrides=[])  # reads run folders alone
    for p in (a, g, gd, f, rl, e, ag):
        p.add_argument("--config", default="configs/rbr-ppo-135m.yaml", help="YAML config (path or name in configs/)")
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. rbr.grader=.cache/rbr/grader")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        {"answers": cmd_answers, "grade": cmd_grade, "gold": cmd_gold, "fit": cmd_fit, "rl": cmd_rl,
         "eval": cmd_eval, "agreement": cmd_agreement, "curve": cmd_curve}[args.cmd](cfg, args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
