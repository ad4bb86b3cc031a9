"""Five weekly feedback rounds on the built-in store: does `ecombot learn` teach each round's corrections and keep what
the bot knew, against naive sequential training on the feedback alone and a retrain from scratch on everything?

The base adapter is trained on the built-in data without five intents. Each round, customers ask one of those
topics (new to the bot) and some questions whose answer a policy change altered (slices/policy_edits.json, one edit
per round); agents correct the answers and a reviewer approves them, in the conversation store, as in production.
Then three ways to the next version:
  learn    `ecombot learn` (from the live version, replay, guard set, promotion rule)
  naive    the previous naive version trained on the round's feedback alone (same steps and learning rate)
  retrain  a fresh adapter on the base data plus every round's feedback so far (the base run's settings: by default
           `ecombot train`'s own recipe, what a user retraining from scratch runs), after the last round
           (`--retrain-every N` for more: each is a full training run)
After each round, each version answers (greedy, as `ecombot evaluate`): the round's slice (its held-out feedback and
other questions of the same kind, never trained on) before and after, and the guard set (the base run's test
split): intent accuracy (nearest reference intent), fact accuracy, and loss per answer token. Ungrounded
(`--knowledge none`) so the corrections must reach the weights; the grounded loop is the same code.

    python benchmarks/learn_rounds.py --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_results  # noqa: E402

EXTRA_TOPICS = 2  # new topics beyond data.UNSEEN_INTENTS, so that five rounds each bring one


def two_turn(convs):
    return [c for c in convs if len(c.messages) == 2]


def build_rounds(convs, rounds: int, per_topic: int, per_edit: int, slice_extra: int, seed: int):
    """(base conversations, [round: {"feedback": [...], "extra": [...] never trained on, "topic", "edit"}])."""
    from ecombot.data import UNSEEN_INTENTS
    from ecombot.evaluate.slices import edit_conversation, policy_edits

    rng = random.Random(seed)
    others = sorted({c.intent for c in convs} - set(UNSEEN_INTENTS))
    topics = list(UNSEEN_INTENTS) + rng.sample(others, EXTRA_TOPICS)
    base = [c for c in convs if c.intent not in topics]
    needed = per_edit + slice_extra // 2  # edits that change too few conversations to make a round are skipped
    edits = [e for e in policy_edits() if sum(e[0] in c.answer for c in two_turn(base)) >= needed]
    plan = []
    for r in range(rounds):
        topic, edit = topics[r % len(topics)], edits[r % len(edits)]
        asked = two_turn([c for c in convs if c.intent == topic])
        rng.shuffle(asked)
        changed = [edit_conversation(c, [edit]) for c in two_turn(base) if edit[0] in c.answer]
        rng.shuffle(changed)
        plan.append({"topic": topic, "edit": edit,
                     "feedback": asked[:per_topic] + changed[:per_edit],
                     "extra": asked[per_topic:per_topic + slice_extra] + changed[per_edit:per_edit + slice_extra // 2]})
    return base, plan, topics


def base_fields(args) -> dict:
    """The base run's (and each retrain's) settings: `ecombot train`'s default recipe unless --base-steps is given;
    ungrounded, so that the corrections must reach the weights."""
    fields = dict(model=args.model, knowledge="none", seed=args.seed)
    if args.base_steps:  # the quickstart's validation budget: every 50 steps on 64 conversations
        fields.update(max_steps=args.base_steps, eval_steps=50, eval_max_examples=64)
    return fields


def train_from_scratch(args, convs, data: Path, output: Path):
    """A fresh adapter on `convs` with the base run's settings (base_fields): the base run, and each retrain."""
    from ecombot.config import load_config
    from ecombot.train import train

    return train(load_config(None, data=str(write_jsonl(data, convs)), output=str(output), **base_fields(args)),
                 show_progress=False)


def guard_questions(run: Path, plan, size: int):
    """The base run's held-out questions whose answers no round changes: a fixed set, so rounds compare."""
    from ecombot.data import read_file

    return [c for c in read_file(run / "data" / "test.jsonl").conversations
            if not any(r["edit"][0] in c.answer for r in plan)][:size]


def parse_recipe(spec: str):
    """'passes,replayed per feedback item,lr share[,L2 pull toward the parent[,times each feedback item is trained
    per pass]]' -> ecombot learn's Recipe (a field left out keeps its default)."""
    from ecombot.learn import Recipe

    passes, per_item, lr_share, *rest = spec.split(",")
    optional = {name: kind(value) for (name, kind), value in zip((("parent_l2", float), ("feedback_repeats", int)),
                                                                 rest)}
    return Recipe(replay_per_item=int(per_item), lr_factor=float(lr_share), passes=int(passes), **optional)


def copy_base(base: Path, run: Path) -> None:
    """A trained base run without any version `learn` made of it (nor the scores a round kept): rounds from the same
    start, side by side."""
    shutil.copytree(base, run,
                    ignore=shutil.ignore_patterns("versions", "versions.*", "checkpoints", "item_scores.json"))


def write_jsonl(path: Path, convs) -> Path:
    path.write_text("".join(json.dumps(c.to_json()) + "\n" for c in convs))
    return path


def record_feedback(store, adapter: str, version: str, convs, edit) -> dict[int, object]:
    """Each conversation answered by `adapter`, corrected by an agent, approved by a reviewer: feedback id -> it.
    Where the policy changed, the bot said the old value (the answer before the edit)."""
    from ecombot.serve.store import Answer

    ids = {}
    for conv in convs:
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        said = conv.answer.replace(edit[1], edit[0]) if edit[1] in conv.answer else "(the bot's earlier answer)"
        store.record_answer(None, "bench", "api", conv.messages[:-1],
                            Answer(completion, said, adapter, 1.0, 1, 1, "stop", version=version))
        store.record_feedback(completion, "bench", -1, conv.answer)
        suggestion = store.pending_suggestions()[-1]
        store.review(suggestion.id, True, "bench")
        ids[suggestion.id] = conv
    return ids


class Scorer:
    """Answers a set with one adapter and scores it; the pool of reference answers (with their intents) is
    embedded once."""

    def __init__(self, convs, max_new_tokens: int):
        from ecombot.knowledge import embed

        self.pool_intents = [c.intent for c in convs]
        self.pool_vectors = embed([c.answer for c in convs])
        self.max_new_tokens = max_new_tokens

    def __call__(self, adapter: Path, items) -> dict:
        import numpy as np

        from ecombot.chat import Decoding, TransformersEngine
        from ecombot.evaluate import item_losses
        from ecombot.evaluate.metrics import fact_accuracy, nearest_intents
        from ecombot.knowledge import embed
        from ecombot.models import load_for_inference

        loaded = load_for_inference(adapter=adapter, live=False)  # these files, not a later version
        engine = TransformersEngine(loaded, None, Decoding(max_new_tokens=self.max_new_tokens))
        answers = []
        for start in range(0, len(items), 16):
            batch = items[start:start + 16]
            answers += [g.text for g in engine.generate([c.messages[:-1] for c in batch])]
        intents = nearest_intents(embed(answers), self.pool_vectors, self.pool_intents)
        facts = [f for f in fact_accuracy(answers, [c.answer for c in items]) if f is not None]
        sums, counts = item_losses(loaded.model, loaded.tokenizer, items, engine.system_prompt())
        return {"intent": round(float(np.mean([i == c.intent for i, c in zip(intents, items)])), 3),
                "fact": round(float(np.mean(facts)), 3) if facts else None, "fact_items": len(facts),
                "loss": round(float(sums.sum() / counts.sum()), 4), "items": len(items)}


def plot(results: dict, png: Path) -> None:
    """Each metric across rounds for each system (round 0: the base adapter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("slice_after", "intent", "round's slice: intent accuracy"), ("slice_after", "fact", "round's slice: "
              "fact accuracy"), ("guard", "intent", "guard: intent accuracy"), ("guard", "loss", "guard: loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.4), dpi=110)
    for ax, (part, metric, title) in zip(axes, panels):
        for system, style in (("learn", "o-"), ("naive", "s--"), ("retrain", "^:")):
            points = [(row["round"], row["systems"][system][part][metric]) for row in results["rounds"]
                      if system in row["systems"] and row["systems"][system][part][metric] is not None]
            if part == "guard":
                points = [(0, results["base"]["guard"][metric])] + points
            if points:
                ax.plot(*zip(*points), style, label=system)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-steps", type=int, default=0, help="The base run's (and each retrain's) steps; 0: "
                                                                     "the default recipe's (sized to the data).")
    parser.add_argument("--per-topic", type=int, default=16, help="Feedback items on the round's new topic.")
    parser.add_argument("--per-edit", type=int, default=8, help="Feedback items on the round's policy change.")
    parser.add_argument("--slice-extra", type=int, default=40,
                        help="Further new-topic questions in the round's slice (and half as many policy ones), never "
                             "trained on: 40 makes a slice of 65 questions, where 12 (23) left recipes within noise.")
    parser.add_argument("--retrain-every", type=int, default=5, help="Retrain from scratch every N rounds (and after "
                                                                         "the last): each costs a full training run.")
    parser.add_argument("--guard", type=int, default=48, help="Guard-set questions answered per version.")
    parser.add_argument("--recipe", help="passes,replayed per feedback item,lr share[,L2 pull[,feedback repeats]] for "
                                         "`ecombot learn` (default: learn/loop.py's Recipe)")
    parser.add_argument("--base", help="A base run trained by an earlier run of this script (its `bot`, printed at the "
                                       "start): copied without its versions, so recipes compare from the same base; "
                                       "default: trained here.")
    parser.add_argument("--systems", default="learn,naive,retrain", type=lambda v: v.split(","),
                        help="learn and the anchors to run beside it (naive and retrain do not depend on --recipe: "
                             "leave them out to compare recipes on a base they were measured on)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="benchmarks/results/learn_rounds.json")
    args = parser.parse_args()

    from ecombot.config import load_config
    from ecombot.data import builtin_path, clean, read_file
    from ecombot.learn import Recipe, learn
    from ecombot.run_dir import RunDir
    from ecombot.serve.store import Store
    from ecombot.train import train

    recipe = parse_recipe(args.recipe) if args.recipe else Recipe()
    convs, _ = clean(read_file(builtin_path()))
    base_convs, plan, topics = build_rounds(convs, args.rounds, args.per_topic, args.per_edit, args.slice_extra,
                                            args.seed)
    work = Path(tempfile.mkdtemp(prefix="ecombot-learn-rounds-"))
    db = f"sqlite:///{work / 'store.db'}"
    common = base_fields(args)

    started = time.time()
    if args.base:
        copy_base(Path(args.base), work / "bot")
        base_seconds, base_steps = None, RunDir(work / "bot").info()["results"]["steps"]
    else:
        base_steps = train_from_scratch(args, base_convs, work / "base.jsonl", work / "bot").steps
        base_seconds = round(time.time() - started, 1)
    run = RunDir(work / "bot")
    guard = guard_questions(run.path, plan, args.guard)
    scorer = Scorer(convs + [c for r in plan for c in r["feedback"] + r["extra"]], args.max_new_tokens)
    print(f"base {run.path}: {base_steps} steps in {base_seconds} s; new topics per round: {topics[:args.rounds]}",
          flush=True)

    base_guard = scorer(run.path, guard)
    results = {"machine": machine(), "args": vars(args), "recipe": dataclasses.asdict(recipe),
               "base": {"path": str(run.path), "seconds": base_seconds, "steps": base_steps, "guard": base_guard},
               "rounds": []}
    store = Store(db)
    latest = {"learn": run.path, "naive": run.path, "retrain": run.path}
    trained_so_far = []
    for number, round_ in enumerate(plan, start=1):
        ids = record_feedback(store, "bot", run.live_version(), round_["feedback"], round_["edit"])
        t0 = time.time()
        learned = learn(run.path, db=db, served_as="bot", say=lambda line: print("  " + line, flush=True),
                        recipe=recipe)
        learn_seconds = round(time.time() - t0, 1)
        held = [ids[i] for i in learned.feedback.held_out_ids]
        taught = [ids[i] for i in learned.feedback.used_ids]
        trained_so_far += taught
        slice_items = held + round_["extra"]

        # naive: the previous naive version on this round's feedback alone, the same steps and learning rate
        record = learned.record
        now = {"learn": run.live().path}
        naive_seconds = retrain_seconds = retrain_steps = None
        if "naive" in args.systems:
            data = write_jsonl(work / f"naive-{number}.jsonl", taught)
            naive_cfg = dataclasses.replace(load_config(None, data=str(data), output=str(work / f"naive-v{number + 1}"),
                                                        **common),
                                            init_adapter=str(latest["naive"]), val_fraction=0.0, test_fraction=0.0,
                                            max_steps=record["steps"], learning_rate=record["learning_rate"],
                                            batch_size=8, eval_steps=record["steps"], warmup_ratio=0.0)
            t0 = time.time()
            train(naive_cfg, show_progress=False)
            naive_seconds = round(time.time() - t0, 1)
            now["naive"] = work / f"naive-v{number + 1}"
        if "retrain" in args.systems and (number % args.retrain_every == 0 or number == len(plan)):
            # retrain: a fresh adapter on everything so far, the base run's settings
            t0 = time.time()
            retrained = train_from_scratch(args, base_convs + trained_so_far, work / f"all-{number}.jsonl",
                                           work / f"retrain-{number}")
            retrain_seconds, retrain_steps = round(time.time() - t0, 1), retrained.steps
            now["retrain"] = work / f"retrain-{number}"
        row = {"round": number, "topic": round_["topic"], "edit": round_["edit"], "feedback": len(ids),
               "trained": len(taught), "held_out": len(held), "slice_items": len(slice_items),
               "learn": {"version": learned.version, "promoted": learned.promoted, "reason": learned.reason,
                         "seconds": learn_seconds, "train_seconds": record["train_seconds"],
                         "score_seconds": record["score_seconds"], "steps": record["steps"],
                         "passes": record["passes"],
                         "guard_items": record["guard_items"], "guard_out_of_date": record["guard_out_of_date"]},
               "naive_seconds": naive_seconds, "retrain_seconds": retrain_seconds, "retrain_steps": retrain_steps,
               "systems": {}}
        for system in now:
            row["systems"][system] = {"slice_before": scorer(latest[system], slice_items),
                                      "slice_after": scorer(now[system], slice_items),
                                      "guard": scorer(now[system], guard)}
            latest[system] = now[system]
        results["rounds"].append(row)
        write_results(args.output, results)
        print(json.dumps({k: row[k] for k in ("round", "topic", "learn")}), flush=True)
        for system, got in row["systems"].items():
            print(f"  {system}: slice intent {got['slice_before']['intent']} -> {got['slice_after']['intent']}, "
                  f"fact {got['slice_before']['fact']} -> {got['slice_after']['fact']}; guard intent "
                  f"{got['guard']['intent']} fact {got['guard']['fact']} loss {got['guard']['loss']}", flush=True)

    rows = []
    for row in results["rounds"]:
        for system, got in row["systems"].items():
            seconds = row["learn"]["seconds"] if system == "learn" else row[f"{system}_seconds"] or 0
            rows.append([str(row["round"]), system,
                         f"{got['slice_before']['intent']:.2f} -> {got['slice_after']['intent']:.2f}",
                         f"{got['slice_before']['fact']} -> {got['slice_after']['fact']}",
                         f"{got['guard']['intent']:.2f} / {got['guard']['fact']} / {got['guard']['loss']:.3f}",
                         f"{seconds:.0f} s"])
    print(f"\nbase guard intent / fact / loss: {base_guard['intent']:.2f} / {base_guard['fact']} / "
          f"{base_guard['loss']:.3f}" + (f"; base training {base_seconds:.0f} s" if base_seconds else ""))
    print_table(["round", "system", "slice intent", "slice fact", "guard intent / fact / loss", "time"], rows)
    retrains = [row["retrain_seconds"] for row in results["rounds"] if row["retrain_seconds"]]
    rounds = [row["learn"]["seconds"] for row in results["rounds"]]
    if retrains:
        print(f"a learn round {min(rounds):.0f}-{max(rounds):.0f} s: {min(rounds) / retrains[-1]:.0%}-"
              f"{max(rounds) / retrains[-1]:.0%} of the last retrain ({retrains[-1]:.0f} s)")
    results["seconds"] = round(time.time() - started, 1)
    write_results(args.output, results)
    plot(results, Path(args.output).with_suffix(".png"))


if __name__ == "__main__":
    main()
