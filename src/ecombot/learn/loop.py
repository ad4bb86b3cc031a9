"""`ecombot learn`, read top to bottom: the reviewed feedback since the last version -> a replay sample of what the
live version was trained on -> the next version trained from the live one -> both versions measured on the guard
set and the new feedback's held-out part -> promoted only if it helped and kept what the bot knew.

Why each number (benchmarks/learn_rounds.py measures the loop over five rounds against naive sequential training on
the feedback alone and a retrain from scratch):
- replay: training on a handful of corrections alone pulls the whole adapter toward them and the answers to every
  other question drift (catastrophic forgetting); mixed with Recipe.replay_per_item earlier training conversations
  per feedback item (at least MIN_REPLAY), the gradient keeps pointing at the old answers too.
- from the live adapter at Recipe.lr_factor of its learning rate, for Recipe.passes passes over the mix (between
  MIN_STEPS and MAX_STEPS optimizer steps; above 16 feedback items with 9 replayed per item the 40-step cap makes it
  fewer: each version records the passes it had): a round costs a small share of a full retrain.
  Chosen by benchmarks/learn_settings.py and learn_rounds.py (2-core Zen 4, bf16; a default-recipe base of 208
  steps). Round 1, the round's own guard (84 conversations, loss 0.033): the earlier recipe (4 passes, 3 replayed
  per item, half the lr) left it at 0.079, 9 replayed at half the lr at 0.056, at a quarter of the lr at 0.036. Over
  five rounds (without the pull below) a quarter of the lr kept the guard loss lowest (0.035 -> 0.039 vs 0.050 at
  half) but learnt the slices of rounds 2-4 by -17 to +17 points of greedy intent; half the lr learnt every round's
  (+22 to +61): a version that does not say the agents' corrections is not worth a round. ~60 s a round, ~20% of
  a default-recipe retrain.
- the L2 pull toward the live version's weights (Recipe.parent_l2, TrainConfig.parent_l2): replay alone still let
  every weight drift (Adam moves each one by about the learning rate per step, whatever its gradient), and the
  guard's greedy intent fell 0.83 -> 0.69 over five rounds. With the pull at 0.1 the weights the round's data does
  not push hard stay put: after five rounds 0.83 / facts 0.86 / loss 0.032 (base 0.83 / 0.90 / 0.035), the slices
  learnt by +48, -13 (facts +65), +9, +26, +44 points of intent; at 0.03 the guard read 0.81 / 0.80 and the slices
  less; at 1 round 1 learnt nothing (same base, side by side; README "Learning from feedback").
- each feedback item once a pass (Recipe.feedback_repeats; TrainConfig.emphasis repeats it in training): three
  times a pass, in the same 40 steps, learnt round 3's topic, the one that shares its wording with refunds
  (price_adjustment: +38 points of greedy intent instead of +20), but less of rounds 1, 4 and 5 (+38, +9, +6 instead
  of +52, +21, +32), and after five rounds the guard's facts read 0.83 instead of 0.89 (base 0.92); from a second
  base (seed 7) it learnt every round by 15-51 points (the default: 3-20) and the guard's facts read 0.72 instead of
  0.82 (base 0.80): the corrections outweigh the replay, a trade the guard should not pay by default
  (learn_rounds.py --base, 65-question slices, Zen 5; README "Learning from feedback"; `learn --feedback-repeats`).
- each version's scores are kept per conversation (VersionScores): the live version was scored on last round's
  guard set and slice when it was the candidate, so the same prompts are not scored again (a grounded round whose
  knowledge base changed retrieves other passages: those prompts are new and scored).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ecombot import atomic
from ecombot.config import TrainConfig
from ecombot.database import without_password
from ecombot.data import Conversation, conversations_jsonl, normalise_text, read_file
from ecombot.errors import EcombotError
from ecombot.learn.feedback import FeedbackRound, as_conversation, feedback_round, states_superseded, superseded
from ecombot.run_dir import FIRST_VERSION, RunDir
from ecombot.serve.store import Store

MIN_REPLAY = 32
MIN_STEPS, MAX_STEPS = 10, 40
# The promotion rule: the feedback slice's loss must fall, and the guard set's share of answer tokens the model is
# sure of (p > 0.5: greedy decoding says them) may fall by at most this much. Not the guard loss: on templated answers
# it sits near 0.1 nats, where a 35% rise (0.117 -> 0.159, a round of benchmarks/learn_rounds.py) went with a sure
# share 96.3% -> 96.1% and guard intent accuracy 0.53 -> 0.61 on 64 greedy answers; a loss veto rejected that version.
GUARD_SURE_DROP = 0.01
SCORE_MAX_LENGTH = 1024  # tokens per scored conversation (answer_token_stats' limit)
GUARD_MAX = 100  # guard conversations scored per version (the first ones: the same every round): ~20 s each on CPU


@dataclass(frozen=True)
class Recipe:
    """How a round trains: replayed conversations per feedback item, the share of the first training's learning
    rate, passes over feedback + replay, the L2 pull toward the live version's weights (TrainConfig.parent_l2), the
    times each feedback item is trained a pass; why these: the module docstring; benchmarks/learn_settings.py and
    learn_rounds.py --recipe compare."""
    replay_per_item: int = 9
    lr_factor: float = 0.5
    passes: int = 2
    parent_l2: float = 0.1
    feedback_repeats: int = 1

    def __post_init__(self):
        if (self.replay_per_item < 0 or not 0 < self.lr_factor <= 1 or self.passes < 1 or self.parent_l2 < 0
                or self.feedback_repeats < 1):
            raise ValueError(f"a learn recipe replays >= 0 conversations per item, at a share of the learning rate in "
                             f"(0, 1], for >= 1 pass, with an L2 pull >= 0, each item trained >= 1 times a pass "
                             f"(got {self})")


@dataclass
class LearnResult:
    version: str | None  # None: nothing new to learn from (or a dry run)
    promoted: bool = False
    reason: str = ""
    record: dict = field(default_factory=dict)
    feedback: FeedbackRound | None = None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ancestors(lineage: dict, version: str) -> list[dict]:
    """The version's record and its parents', newest first."""
    by_name = {v["name"]: v for v in lineage["versions"]}
    chain = []
    while version is not None:
        chain.append(by_name[version])
        version = by_name[version]["parent"]
    return chain


def drop_unfinished(root: RunDir, lineage: dict) -> None:
    """A learn killed mid-run leaves a version directory its lineage never recorded: remove it (a rerun trains it
    again); the live version was never touched."""
    known = {v["name"] for v in lineage["versions"]}
    versions = root.path / "versions"
    for path in versions.glob("*") if versions.is_dir() else []:
        if path.is_dir() and path.name not in known:
            shutil.rmtree(path)


def next_version(lineage: dict) -> str:
    return f"v{max(int(v['name'][1:]) for v in lineage['versions']) + 1}"


def replay_pool(root: RunDir, lineage: dict) -> list[Conversation]:
    """What the live version knows: the first training split plus the feedback each ancestor trained on."""
    first = root.train_split()
    if first is None:
        raise EcombotError(f"{root.path}: the run kept no data/train.jsonl to replay from; `ecombot learn` needs a run "
                           "trained by ecombot")
    pool = read_file(first).conversations
    for record in ancestors(lineage, lineage["live"])[:-1]:
        pool += read_file(root.path / "versions" / f"{record['name']}-feedback.jsonl").conversations
    return pool


def learn_steps(examples: int, batch: int, passes: int = Recipe.passes) -> int:
    return min(MAX_STEPS, max(MIN_STEPS, -(-passes * examples // batch)))


def learn_data_path(root: RunDir, version: str) -> Path:
    """Where a version's training data is kept. Its pairs join the knowledge base as "data: <file name>", which
    another adapter's version of the same number must not replace: the name carries the adapter's directory (default
    runs are all called after their method, "lora") and a hash of its resolved path."""
    where = hashlib.sha256(str(root.path.resolve()).encode()).hexdigest()[:8]
    return root.path / "versions" / f"{root.name}-{where}-{version}-learn.jsonl"


def write_jsonl(path: Path, convs: list[Conversation]) -> None:
    atomic.write_text(path, conversations_jsonl(convs))


@contextlib.contextmanager
def only_learn_running(root: RunDir):
    """One `learn` per adapter at a time (two would train the same next version); the lock goes with the process."""
    import fcntl

    (root.path / "versions").mkdir(exist_ok=True)
    with open(root.path / "versions" / ".learn.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EcombotError(f"{root.path}: another `ecombot learn` is running on this adapter") from None
        yield


def learn(adapter: str | Path, db: str | None = None, served_as: str | None = None, since: datetime | None = None,
          dry_run: bool = False, say: Callable[[str], None] = print, recipe: Recipe = Recipe()) -> LearnResult:
    root = RunDir(adapter)
    root.check_adapter()
    if root.info() is None:
        raise EcombotError(f"{root.path}: not a run trained by ecombot (no run_config.json); `ecombot learn` needs "
                           "the run's data split and settings")
    with only_learn_running(root):
        return learn_locked(root, db, served_as, since, dry_run, say, recipe)


def learn_locked(root: RunDir, db: str | None, served_as: str | None, since: datetime | None, dry_run: bool,
                 say: Callable[[str], None], recipe: Recipe) -> LearnResult:
    lineage = root.lineage()
    drop_unfinished(root, lineage)
    parent = root.version(lineage["live"])
    parent_cfg = TrainConfig.recorded(parent.info()["config"])
    if parent_cfg.task != "support":
        raise EcombotError(f"{root.path}: a {parent_cfg.task} run; `ecombot learn` learns from reviewed support answers "
                           "into a support adapter (train a new version of a catalog task, or of a multi-task adapter, "
                           "with `ecombot train --task ...` on the new catalog and data)")
    served_as = served_as or root.name

    # 1. Feedback: approved answers to this adapter's questions not yet trained on or held out.
    store = Store(db)
    everything = store.reviewed_answers(served_as)  # one read: this round's items and every correction ever
    reviewed = [r for r in everything if since is None or r.reviewed_at >= since]
    trained_before = {i for v in ancestors(lineage, lineage["live"]) for i in v.get("feedback_ids", [])}
    held_before = {i for v in lineage["versions"] for i in v.get("held_out_ids", [])}
    grounder = open_grounder_of(parent_cfg, parent)
    retried = {i for v in lineage["versions"] if v["status"] == "rejected" for i in v.get("feedback_ids", [])}
    feedback = feedback_round(reviewed, trained_before, held_before, parent_cfg.seed + len(lineage["versions"]),
                              grounder, retried)
    say(f"{len(reviewed)} approved answers of '{served_as}' in {without_password(store.url, store.url)}"
        + (f" since {since.isoformat()}" if since else "") + f": {feedback.already_used} learnt or held out before, "
        f"{len(feedback.train)} to train on, {len(feedback.held_out)} held out for ever as the feedback slice, "
        f"{len(feedback.contradictions)} contradicting the knowledge base (not trained on)")
    for found in feedback.contradictions:
        say("  " + found.describe())
    for found in feedback.to_check:
        say("  to check: " + found.describe())
    if not feedback.train:
        return LearnResult(None, reason="no new reviewed feedback to learn from", feedback=feedback)

    # 2. Data: the new feedback mixed with a replay sample of what the live version was trained on, without the
    #    conversations it supersedes (the same question answered anew, or a value a correction changed).
    version = next_version(lineage)
    every_correction = [as_conversation(r) for r in everything]
    old_values = superseded(every_correction)
    asked = {normalise_text(c.question) for c in feedback.train + feedback.held_out}
    pool = [c for c in replay_pool(root, lineage)
            if normalise_text(c.question) not in asked and not states_superseded(c, old_values)]
    rng = random.Random(parent_cfg.seed + int(version[1:]))
    replay = rng.sample(pool, min(len(pool), max(MIN_REPLAY, recipe.replay_per_item * len(feedback.train))))
    batch = parent_cfg.batch_size if isinstance(parent_cfg.batch_size, int) else 8
    rows = len(feedback.train) * recipe.feedback_repeats + len(replay)
    steps = learn_steps(rows, batch, recipe.passes)
    lr = float(root.info()["config"]["learning_rate"]) * recipe.lr_factor  # of the first run, not halved every round
    say(f"{version} from {lineage['live']}: {len(feedback.train)} feedback"
        + (f" (each {recipe.feedback_repeats} times)" if recipe.feedback_repeats > 1 else "")
        + f" + {len(replay)} replayed conversations, "
        f"{steps} steps of {batch} at lr {lr:g} ({recipe.lr_factor:g} of the first training's)")
    if dry_run:
        return LearnResult(None, reason="dry run: nothing trained", feedback=feedback)
    data = learn_data_path(root, version)
    write_jsonl(data, feedback.train + replay)
    feedback_file = root.path / "versions" / f"{version}-feedback.jsonl"
    write_jsonl(feedback_file, feedback.train)

    # 3. Train the candidate from the live adapter (train/recipe.py: the same recipe, grounded the same way).
    from ecombot.train import train

    cfg = dataclasses.replace(parent_cfg, data=str(data), output=str(root.version_dir(version)),
                              init_adapter=str(parent.path), val_fraction=0.0, test_fraction=0.0, epochs=1,
                              max_steps=steps, batch_size=batch, learning_rate=lr, eval_steps=steps,
                              warmup_ratio=0.0, parent_l2=recipe.parent_l2, catalog=None,
                              emphasised=str(feedback_file), emphasis=recipe.feedback_repeats)
    started = time.time()
    result = train(cfg, overwrite=True, show_progress=False)
    candidate = root.version(version)

    # 4. Measure both versions on the guard set and the feedback slice; promote or keep as rejected.
    guard, out_of_date = guard_set(root, every_correction, held_before, old_values)
    slice_items, slice_name = (feedback.held_out, "held-out feedback") if feedback.held_out else (
        feedback.train, "feedback trained on (too few items to hold any out)")
    # grounded as the candidate reads the base (the parent's pairs and the feedback pairs training just added), for
    # both versions: the same prompts, so the scores differ by the weights alone
    scoring = time.time()
    scores = compare_versions(root, lineage["live"], version, {"guard": guard, "feedback": slice_items},
                              open_grounder_of(parent_cfg, candidate))
    score_seconds = round(time.time() - scoring, 1)
    promoted, reason = promotion(scores)
    record = {"name": version, "parent": lineage["live"], "created_at": now_iso(),
              "status": "live" if promoted else "rejected", "reason": reason,
              "feedback_ids": feedback.used_ids, "held_out_ids": feedback.held_out_ids,
              "contradictions": [dataclasses.asdict(c) for c in feedback.contradictions],
              "facts_to_check": [dataclasses.asdict(c) for c in feedback.to_check],
              "replayed": len(replay), "steps": result.steps, "learning_rate": lr, "parent_l2": recipe.parent_l2,
              "passes": round(steps * batch / rows, 2), "feedback_repeats": recipe.feedback_repeats,
              "train_seconds": result.train_seconds, "score_seconds": score_seconds,
              "seconds": round(time.time() - started, 1),
              "feedback_slice": slice_name, "guard_items": len(guard), "guard_out_of_date": out_of_date,
              "superseded_values": {k: sorted(v) for k, v in old_values.items()}, "scores": scores}
    if promoted:
        for v in lineage["versions"]:
            if v["name"] == lineage["live"]:
                v["status"] = "retired"
        lineage["live"] = version
    elif parent_cfg.grounded:  # a rejected round's passages are no version's: out of the base
        from ecombot.knowledge import KnowledgeBase
        from ecombot.train.grounding import training_source

        KnowledgeBase(parent_cfg.db, parent_cfg.knowledge).remove(training_source(str(data)))
    lineage["versions"].append(record)
    lineage.setdefault("history", []).append({"at": now_iso(), "live": lineage["live"],
                                              "event": f"learn {version}: {'promoted' if promoted else 'rejected'}"})
    root.write_lineage(lineage)
    plot_versions(lineage, root.path / "versions.png")
    say(f"{version}: {'PROMOTED, now live' if promoted else 'rejected, ' + lineage['live'] + ' stays live'} — {reason}")
    return LearnResult(version, promoted, reason, record, feedback)


def open_grounder_of(cfg: TrainConfig, run: RunDir):
    """The grounder the version answers with (None for a run trained without knowledge)."""
    if not cfg.grounded:
        return None
    from ecombot.knowledge import open_grounder, recorded_pairs

    recorded = run.knowledge() or {}
    return open_grounder(cfg.knowledge, cfg.db, cfg.knowledge_k, recorded.get("handoff") or cfg.handoff_answer,
                         pairs_from=recorded_pairs(recorded, cfg.knowledge))


def guard_set(root: RunDir, corrections: list[Conversation], held_before: set[int],
              old_values: dict[str, set[str]]) -> tuple[list[Conversation], int]:
    """Never trained on: the first training's test split and every feedback item held out in an earlier round;
    without the items whose answer states a value an approved correction replaced (counted): they would punish the
    new version for learning the new policy."""
    test = root.data_dir / "test.jsonl"
    first = read_file(test).conversations[:GUARD_MAX] if test.is_file() and test.stat().st_size else []
    guard = first + [c for c in corrections if c.meta["feedback_id"] in held_before]
    current = [c for c in guard if not states_superseded(c, old_values)]
    return current, len(guard) - len(current)


class VersionScores:
    """One version's answer-token stats per conversation it was scored on, kept beside its adapter and keyed by the
    prompt and answer exactly as scored (grounded passages included): its weights never change, so next round, as
    the live version, the conversations it was already scored on are not scored again. Kept only for the same
    scorer (device, precision, base model, length limit); a damaged or foreign file is a cache miss, not an error."""

    def __init__(self, run: RunDir, loaded):
        self.path = run.item_scores_file
        self.scorer = {"device": loaded.device, "precision": loaded.precision, "model": str(loaded.model_dir),
                       "max_length": SCORE_MAX_LENGTH}
        self.known = {}
        with contextlib.suppress(OSError, ValueError, AttributeError):
            kept = json.loads(self.path.read_text(encoding="utf-8"))
            if kept.get("scorer") == self.scorer:
                self.known = dict(kept["items"])

    @staticmethod
    def key(system_prompt: str | None, conv: Conversation) -> str:
        return hashlib.sha256(json.dumps([system_prompt, conv.messages], sort_keys=True).encode()).hexdigest()

    def stats(self, model, tokenizer, convs: list[Conversation], system_prompt: str | None) -> list[list[float]]:
        """[loss sum, answer tokens, tokens sure of] per conversation, scoring only the unseen ones."""
        from ecombot.evaluate import answer_token_stats

        keys = [self.key(system_prompt, c) for c in convs]
        unseen = {k: c for k, c in zip(keys, convs) if k not in self.known}
        if unseen:
            found = answer_token_stats(model, tokenizer, list(unseen.values()), system_prompt, SCORE_MAX_LENGTH)
            self.known.update({k: [float(v[i]) for v in found] for i, k in enumerate(unseen)})
            atomic.write_json(self.path, {"scorer": self.scorer, "items": self.known})
        return [self.known[k] for k in keys]


def compare_versions(root: RunDir, parent: str, candidate: str, sets: dict[str, list[Conversation]],
                     grounder) -> dict[str, dict[str, dict[str, float] | None]]:
    """Per set and version (the versions named `parent` and `candidate`): loss per answer token and the share of
    answer tokens the version is sure of (p > 0.5), one base model in memory, prompts grounded the way the versions
    answer (an item's own Q&A pair is never among its passages)."""
    from ecombot.evaluate.grounded import own_pair
    from ecombot.models import load_for_inference

    runs = {"parent": root.version(parent), "candidate": root.version(candidate)}
    loaded = load_for_inference(adapter=runs["parent"].path, adapter_name="parent", live=False)
    loaded.model.load_adapter(str(runs["candidate"].path), adapter_name="candidate")
    loaded.model.eval()
    system_prompt = runs["parent"].system_prompt()
    kept = {role: VersionScores(run, loaded) for role, run in runs.items()}
    scores: dict[str, dict[str, dict[str, float] | None]] = {}
    for name, convs in sets.items():
        if grounder is not None and convs:
            groundings = grounder.ground_many([c.messages[:-1] for c in convs], [own_pair(c) for c in convs])
            convs = [dataclasses.replace(c, messages=g.messages + c.messages[-1:]) for c, g in zip(convs, groundings)]
        scores[name] = {}
        for role in ("parent", "candidate"):
            if not convs:
                scores[name][role] = None
                continue
            loaded.model.set_adapter(role)
            sums, counts, sure = zip(*kept[role].stats(loaded.model, loaded.tokenizer, convs, system_prompt))
            scores[name][role] = {"loss": round(sum(sums) / sum(counts), 4), "sure": round(sum(sure) / sum(counts), 4)}
    return scores


def promotion(scores: dict[str, dict[str, dict[str, float] | None]]) -> tuple[bool, str]:
    """The rule, with its numbers: the feedback slice's loss falls, and the guard set's sure-token share falls by at
    most GUARD_SURE_DROP (an empty guard set cannot veto); the guard loss is reported beside it."""
    fb, guard = scores["feedback"], scores["guard"]
    improved = fb["candidate"]["loss"] < fb["parent"]["loss"]
    why = (f"feedback slice loss {fb['parent']['loss']:.4f} -> {fb['candidate']['loss']:.4f} "
           f"({'better' if improved else 'not better'})")
    if guard["parent"] is None:
        return improved, why + "; no guard set"
    floor = guard["parent"]["sure"] - GUARD_SURE_DROP
    kept = guard["candidate"]["sure"] >= floor
    return improved and kept, (why + f"; guard tokens sure of {guard['parent']['sure']:.1%} -> "
                               f"{guard['candidate']['sure']:.1%} (floor {floor:.1%}: "
                               f"{'kept' if kept else 'regressed'}), guard loss {guard['parent']['loss']:.4f} -> "
                               f"{guard['candidate']['loss']:.4f}")


def plot_versions(lineage: dict, png_path: Path) -> Path:
    """Each version's guard-set sure-token share and feedback-slice loss beside its parent's: the weekly loop's
    report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learnt = [v for v in lineage["versions"] if v.get("scores")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110, sharex=True)
    panels = ((axes[0], "guard", "sure", "guard set: answer tokens sure of (p > 0.5)"),
              (axes[1], "feedback", "loss", "feedback slice: loss per answer token"))
    for ax, name, metric, title in panels:
        names = [v["name"] for v in learnt]
        for who, style in (("parent", "s--"), ("candidate", "o-")):
            ax.plot(names, [(v["scores"][name][who] or {}).get(metric) for v in learnt], style, label=who)
        for i, v in enumerate(learnt):
            if v["status"] == "rejected" and v["scores"][name]["candidate"]:
                ax.annotate("rejected", (i, v["scores"][name]["candidate"][metric]), fontsize=7, color="crimson")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("version")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ecombot learn: {lineage['live']} is live", fontsize=10)
    fig.tight_layout()
    atomic.save_figure(fig, png_path)
    plt.close(fig)
    return png_path


def rollback(adapter: str | Path, version: str) -> dict:
    """Make `version` (a trained version, e.g. the one before the last promotion) live again."""
    root = RunDir(adapter)
    lineage = root.lineage()
    root.existing_version(version).check_adapter()
    names = {v["name"]: v for v in lineage["versions"]}
    if version != lineage["live"]:
        names[lineage["live"]]["status"] = "retired"
        names[version]["status"] = "live"
        lineage["live"] = version
        lineage.setdefault("history", []).append({"at": now_iso(), "live": version, "event": f"rollback to {version}"})
        root.write_lineage(lineage)
    return lineage


def versions(adapter: str | Path) -> dict:
    root = RunDir(adapter)
    root.check_adapter()
    return root.lineage()


__all__ = ["FIRST_VERSION", "LearnResult", "Recipe", "learn", "rollback", "versions"]
