"""The `ecombot` command: a thin layer over the stage packages. Errors the user can fix print as one line."""

from __future__ import annotations

import errno
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ecombot.config.evaluate import DEFAULT_LIMIT
from ecombot.errors import EcombotError

app = typer.Typer(help="Fine-tune a small LLM into an e-commerce support chatbot, then chat with it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect and split datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
adapter_app = typer.Typer(help="Look inside trained adapters; their versions (ecombot learn).", no_args_is_help=True)
app.add_typer(adapter_app, name="adapter")
conversations_app = typer.Typer(help="The conversations the server stored, and their feedback.", no_args_is_help=True)
app.add_typer(conversations_app, name="conversations")
console = Console()
err = Console(stderr=True)
DECODE_BITS_HELP = ("Weights for one-token decoding steps on CPU: 8 (int8 body, int4 output head: 2.05x plain fp32 "
                    "generate, held-out loss +0.3%), 4 (int4: 2.4x, loss +6.7%) or 16 (bf16 as loaded). "
                    "Batched steps keep bf16 weights; fp32 models (CPUs without native bf16) take the low-bit "
                    "steps on AVX-512 CPUs only, batched steps of up to 8 rows too. PyTorch engine only.")
REUSE_HELP = ("A question that a stored Q&A pair of the knowledge base asks in other words (cosine >= 0.90 "
              "between the two questions, knowledge.REUSE_THRESHOLD) gets the pair's answer as written, without the "
              "model; --no-reuse-answers generates every answer.")
CHECK_FACTS_HELP = ("A generated answer may state only the amounts, durations, times and contacts that the knowledge "
                    "base or the conversation states: a sentence stating another is left out and the answer ends "
                    "with the handoff (an agent takes over); --no-check-facts gives answers as generated.")
ENGINE_HELP = ("Runtime: 'transformers' (PyTorch, default) or 'llama.cpp' (the base model's GGUF + each adapter as a "
               "LoRA GGUF, converted once; needs pip install 'ecombot[llama-cpp]'). LoRA adapters only.")


@data_app.command("inspect")
def data_inspect(
    file: Path = typer.Argument(..., help="Data file: FAQ JSON, CSV, chat JSONL, ShareGPT, Alpaca or prompt/completion."),
    model: str = typer.Option("gemma-3-270m", help="Model whose tokenizer counts the tokens."),
    max_length: Optional[int] = typer.Option(None, min=1, help="Token limit used to count truncated conversations "
                                             "(default: train's max_length, 1024; training prompts also hold the "
                                             "knowledge passages, so grounded training cuts earlier)."),
    system_prompt: Optional[str] = typer.Option(None, help="System prompt included in the token counts (training "
                                                "uses none unless the config sets one)."),
    tokens: bool = typer.Option(True, help="Count tokens (loads the model's tokenizer)."),
) -> None:
    """Summarise a data file: format, rows, intents, token lengths, dropped rows and why."""
    from ecombot.config import TrainConfig
    from ecombot.data import load_conversations

    convs, report = load_conversations(file)
    max_length = TrainConfig().max_length if max_length is None else max_length
    if tokens and convs:
        from ecombot.models import encode_conversations, load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(model))
        encoded = encode_conversations(convs, tokenizer, system_prompt, max_length)
        report.add_token_lengths(encoded.lengths, max_length)
    table = Table(title=f"{file} ({report.format})", show_header=False)
    if report.read_from:
        table.add_row("read from", report.read_from)
    table.add_row(f"{report.read_unit} read", str(report.rows_read))
    table.add_row("kept", str(report.kept))
    table.add_row("multi-turn", str(report.multi_turn))
    table.add_row("intents", f"{len(report.intents)}" + (
        ": " + ", ".join(f"{k} ({v})" for k, v in report.intents.most_common(12)) + (" ..." if len(report.intents) > 12 else "")
        if report.intents else ""))
    if report.token_percentiles:
        table.add_row("tokens", ", ".join(f"{k} {v}" for k, v in report.token_percentiles.items()))
        table.add_row(f"longer than {max_length}", str(report.truncated))
    for reason, count in report.dropped.most_common():
        table.add_row(f"dropped: {reason}", f"{count} (e.g. {', '.join(report.dropped_examples[reason])})")
    console.print(table)


@data_app.command("split")
def data_split(
    file: Path = typer.Argument(..., help="Data file in any supported format."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for train/validation/test.jsonl."),
    seed: int = typer.Option(42, help="Split seed (train uses the same default)."),
    val_fraction: float = typer.Option(0.1, help="Share of conversations for validation."),
    test_fraction: float = typer.Option(0.1, help="Share of conversations for test."),
) -> None:
    """Write a deterministic, intent-stratified train/validation/test split (chat JSONL)."""
    from ecombot.data import leaked_questions, prepare, write_split

    prepared = prepare(file, val_fraction, test_fraction, seed)
    write_split(prepared.split, output, extra={"seed": seed, "source": str(file)})
    counts = prepared.split.counts()
    leaks = len(leaked_questions(prepared.split.train, prepared.split.test))
    dropped = sum(prepared.report.dropped.values())
    console.print(f"{output}: train {counts['train']}, validation {counts['validation']}, test {counts['test']} "
                  f"(seed {seed}); dropped {dropped}; test questions also in train: {leaks}")


@app.command("config")
def show_config() -> None:
    """Print the documented default training config (YAML) to copy and edit."""
    from ecombot.config import default_yaml_text

    sys.stdout.write(default_yaml_text())


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see `ecombot config`)."),
    data: Optional[str] = typer.Option(None, help="Data file in any supported format (default: built-in dataset)."),
    model: Optional[str] = typer.Option(None, help="'gemma-3-270m', a model directory, a .gguf file or a Hub id."),
    method: Optional[str] = typer.Option(None, help="lora, qlora or dora."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the training split."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    output: Optional[str] = typer.Option(None, help="Run directory (default runs/<method>)."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha."),
    adapted_layers: Optional[str] = typer.Option(None, help="Decoder layers with adapters: all, or N for the top N "
                                                 "only (no backward pass below them: faster, less memory)."),
    prompt_gradients: Optional[bool] = typer.Option(
        None, "--prompt-gradients/--answer-only-backward",
        help="Backward through the prompt tokens too (default), or through the answer tokens only: faster with long "
             "(grounded) prompts, needs packing, learned less in the quickstart (README, Training)."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Conversations per batch."),
    max_length: Optional[int] = typer.Option(None, help="Longest conversation in tokens, knowledge passages included "
                                             "(default 1024; a longer one is cut there, and train says how many)."),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing",
                                           help="Whole conversations end to end in fixed-size rows (default on)."),
    seed: Optional[int] = typer.Option(None, help="Seed for split, initialisation and shuffling."),
    precision: Optional[str] = typer.Option(None, help="auto, bf16, fp32 or int8 (CPU: fp32 with the frozen base's "
                                            "products in int8)."),
    knowledge: Optional[str] = typer.Option(None, help="Knowledge base whose passages go in every training prompt "
                                            "(default 'default'; 'none' trains without)."),
    db: Optional[str] = typer.Option(None, help="Database of the knowledge base (default: $ECOMBOT_DB, else "
                                     "$ECOMBOT_HOME/ecombot.db)."),
    task: Optional[str] = typer.Option(None, help="support (default); copy: product descriptions from --catalog; "
                                       "recommend: products for a customer's request, among those search finds; "
                                       "several comma-separated (support,copy,recommend): one adapter for them all."),
    catalog: Optional[str] = typer.Option(None, help="Catalog file (CSV, JSON, JSON Lines) for --task copy or "
                                          "recommend, or 'builtin'; for support, questions about its products "
                                          "are trained, answered from their passages."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
) -> None:
    """Fine-tune a base model into a support bot (or, with --task, a product-copy writer or a recommender); writes a
    run directory with a PEFT adapter."""
    from ecombot.config import load_config
    from ecombot.train import train as run_training
    from ecombot.train.recipe import is_main_process

    cfg = load_config(config, data=data, model=model, method=method, epochs=epochs, max_steps=max_steps,
                      output=output, rank=rank, alpha=alpha, adapted_layers=adapted_layers,
                      prompt_gradients=prompt_gradients, learning_rate=learning_rate, batch_size=batch_size,
                      max_length=max_length, packing=packing, seed=seed, precision=precision, knowledge=knowledge, db=db, task=task,
                      catalog=catalog)
    result = run_training(cfg, resume=resume, overwrite=overwrite)
    if not is_main_process():
        return
    best = result.best_val_loss
    console.print(f"[green]done[/green]: {result.run.path}  steps {result.steps}, best validation loss "
                  f"{best if best is None else round(best, 4)} (step {result.best_step}), "
                  f"{result.tokens_per_s:.0f} tokens/s")
    if result.cpu_kernels.startswith("off"):
        console.print(f"[yellow]note[/yellow]: fused CPU kernels {result.cpu_kernels}; PyTorch's ops ran instead "
                      "(same results, ~17% slower steps on the CPU this was measured on)")


@app.command()
def chat(
    adapter: Optional[Path] = typer.Option(None, help="Run directory of a trained adapter (default: base model only)."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the one the adapter was trained on)."),
    once: Optional[str] = typer.Option(None, help="Answer this one question and exit (for scripts)."),
    context: List[str] = typer.Option([], help="KEY=VALUE filling placeholders, e.g. 'Order Number=A123'."),
    system_prompt: Optional[str] = typer.Option(None, help="System prompt (default: the one the run trained with; "
                                                "the store prompt for the base model)."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Longest answer in tokens (default: room for the "
                                                 "longest answer the adapter trained on, at least 200)."),
    temperature: float = typer.Option(0.0, help="0 = greedy (default); > 0 samples."),
    repetition_penalty: float = typer.Option(1.1, help="Penalty for repeating tokens."),
    decode_bits: int = typer.Option(8, help=DECODE_BITS_HELP),
    engine: str = typer.Option("transformers", help=ENGINE_HELP),
    knowledge: Optional[str] = typer.Option(None, help="Knowledge base the answers come from, or 'none' (default: "
                                            "the one the adapter trained with, else 'default')."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the database holding the knowledge base "
                                                "(default: the run's, else $ECOMBOT_HOME/ecombot.db)."),
    k: Optional[int] = typer.Option(None, min=1, help="Passages per question (default: the run's, else 3)."),
    reuse_answers: bool = typer.Option(True, help=REUSE_HELP),
    check_facts: bool = typer.Option(True, help=CHECK_FACTS_HELP),
) -> None:
    """Chat in the terminal with a fine-tuned adapter or the base model (streaming answers, with their sources)."""
    from ecombot.chat import (Decoding, adapters_answer_limit, answer_streaming, open_engine, open_knowledge,
                              parse_context, repl)
    from ecombot.run_dir import RunDir

    try:
        values = parse_context(context)
    except ValueError as exc:
        raise EcombotError(str(exc)) from None
    tasks = RunDir(adapter).tasks() if adapter else ["support"]
    if "support" not in tasks:
        task = tasks[0]
        raise EcombotError(f"{adapter} is a {task} adapter: chat talks to support adapters. Serve it beside them "
                           f"(`ecombot serve --adapter {task}={adapter}`: the request's model picks it) or score it "
                           f"with `ecombot evaluate --task {task} --adapter {adapter}`")
    grounder, grounded = open_knowledge(adapter, knowledge, db, k, reuse_answers, check_facts)
    if max_new_tokens is None:
        max_new_tokens = adapters_answer_limit([adapter] if adapter else [])
    bot = open_engine(model, [(adapter.resolve().name, adapter)] if adapter else [],
                      Decoding(max_new_tokens, temperature, repetition_penalty), engine=engine, decode_bits=decode_bits,
                      max_batch=1)
    if system_prompt is not None:
        bot.override_system_prompt(system_prompt)
    err.print(grounded, highlight=False, soft_wrap=True)
    if once is not None:
        answer_streaming(bot, [{"role": "user", "content": once}], values, grounder=grounder)
        return
    repl(bot, values, grounder=grounder)


@app.command()
def evaluate(
    data: Optional[str] = typer.Option(None, help="Data file; its test split is used (same seed => same split as train). "
                                       "Default: the test split the adapter's run kept, else the built-in data."),
    test: Optional[str] = typer.Option(None, help="Explicit test file instead of a split of --data."),
    adapter: List[Path] = typer.Option([], help="Run directory of an adapter (repeatable to compare runs)."),
    systems: Optional[str] = typer.Option(None, help="Comma-separated (default: all of the task's). support: base, "
                                          "base-fewshot, retrieval, finetuned, finetuned+retrieval, grounded, "
                                          "base+knowledge; copy: base-fewshot, finetuned; recommend: search, "
                                          "base-fewshot, finetuned."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the adapter's, else gemma-3-270m)."),
    limit: int = typer.Option(DEFAULT_LIMIT, min=0, help="Questions scored per test set: the first N of the seeded, "
                                                  "intent-stratified split (0: all of them; answering is most of the "
                                                  "time on a CPU)."),
    output: str = typer.Option("runs/eval", help="Folder for results.json, predictions.jsonl and the report."),
    seed: int = typer.Option(42, help="Split (of --data) and bootstrap seed."),
    fewshot_k: int = typer.Option(3, help="Examples in the base-fewshot prompt."),
    batch_size: int = typer.Option(32, help="Questions generated together (one batched generate call)."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Longest answer in tokens (default: room for the "
                                                 "longest reference or training answer scored, at least 160)."),
    knowledge: Optional[str] = typer.Option(None, help="Knowledge base of the grounded systems (default: the "
                                                       "adapter's, else 'default'; 'none': no grounded systems)."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the knowledge base (default: the adapter's, else "
                                                "$ECOMBOT_HOME/ecombot.db)."),
    reuse_answers: bool = typer.Option(True, help="For the grounded systems: " + REUSE_HELP),
    check_facts: bool = typer.Option(True, help="For the grounded systems: " + CHECK_FACTS_HELP),
    slices: bool = typer.Option(True, help="On the built-in data, also score the slices: unseen topics, policy edits, "
                                           "questions the knowledge does not cover."),
    engine: str = typer.Option("transformers", help=ENGINE_HELP + " Answers and held-out loss both come from it."),
    task: str = typer.Option("support", help="support; copy: the held-out products of a --task copy run, their "
                                             "descriptions checked attribute by attribute; recommend: the held-out "
                                             "requests of a --task recommend run against the search baseline."),
    grammar: Optional[str] = typer.Option(None, help="--task recommend: what an answer may name, by constrained "
                                          "decoding: candidates (the products its prompt shows; the default, as "
                                          "serve), catalog (any product), none (free text, other lines dropped)."),
) -> None:
    """Compare base, few-shot, retrieval, fine-tuned and grounded systems on one held-out test set (and the built-in
    data's slices), with 95% CIs."""
    from ecombot.catalog.recommend import GRAMMARS
    from ecombot.config.evaluate import SYSTEMS
    from ecombot.evaluate import EvalConfig, print_table, run_evaluation
    from ecombot.evaluate.tasks import TASK_SYSTEMS

    chosen = tuple(s.strip() for s in systems.split(",") if s.strip()) if systems is not None else (
        SYSTEMS if task == "support" else TASK_SYSTEMS.get(task, ()))
    cfg = EvalConfig(data=data, test=test, adapters=[str(a) for a in adapter], model=model, limit=limit,
                     output=output, seed=seed, fewshot_k=fewshot_k, batch_size=batch_size,
                     max_new_tokens=max_new_tokens, systems=chosen,
                     knowledge=knowledge, db=db, reuse_answers=reuse_answers, check_facts=check_facts, slices=slices,
                     engine=engine,
                     grammar=grammar)
    if grammar is not None and task != "recommend":
        raise EcombotError(f"--grammar chooses what recommendations may name; it has no effect with --task {task}")
    if grammar is not None and grammar not in GRAMMARS:
        raise EcombotError(f"--grammar {grammar}: choose {', '.join(GRAMMARS)}")
    if task != "support":
        from ecombot.evaluate.tasks import evaluate_task

        ignored = [name for name, given in (("--data", data), ("--test", test), ("--no-slices", not slices),
                                            ("--knowledge", knowledge), ("--db", db),
                                            ("--no-reuse-answers", not reuse_answers),
                                            ("--no-check-facts", not check_facts)) if given]
        if ignored:
            raise EcombotError(f"--task {task} evaluates the held-out part of the run's own data, without a knowledge "
                               f"base: drop {', '.join(ignored)}")

        done = evaluate_task(task, cfg, console.print)
        table = Table(*done.header, title=done.title)
        for row in done.rows:
            table.add_row(*row)
        console.print(table)
        console.print(f"report: {Path(output) / 'report.md'} (and results.json, predictions.jsonl)")
        return
    result = run_evaluation(cfg, console)
    print_table(result, console)
    console.print(f"report: {result.files['report']} (and report.html, results.json, predictions.jsonl)")


@adapter_app.command("inspect")
def adapter_inspect(
    run: Path = typer.Argument(..., help="Run directory of a trained adapter."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the one the adapter was trained on)."),
) -> None:
    """Trainable parameters, per-module ||dW||/||W||, singular values and effective rank of an adapter."""
    from ecombot.evaluate.anatomy import inspect_adapter

    anatomy = inspect_adapter(run, model)
    share = f" ({anatomy['trainable_percent']:.2f}% of the base)" if anatomy["trainable_percent"] else ""
    console.print(f"{run}: {anatomy['trainable_parameters']:,} trainable parameters{share}, rank {anatomy['rank']}")
    table = Table("module", "||dW||/||W||", "effective rank (90%)", "top singular values")
    for m in anatomy["modules"]:
        table.add_row(m["name"], f"{m['relative_norm']:.4f}", str(m["effective_rank"]),
                      ", ".join(f"{v:.3f}" for v in m["singular_values"][:4]))
    console.print(table)


@adapter_app.command("versions")
def adapter_versions(run: Path = typer.Argument(..., help="Run directory of a trained adapter.")) -> None:
    """Every version `ecombot learn` made of an adapter: parent, status, measurements and why it was (not) promoted."""
    from ecombot.learn import versions

    lineage = versions(run)
    table = Table("version", "parent", "status", "created", "feedback trained / held out", "steps",
                  "guard: tokens sure of", "feedback-slice loss", "why", title=f"{run}: {lineage['live']} is live")
    for v in lineage["versions"]:
        scores = v.get("scores") or {}

        def pair(name: str, metric: str) -> str:
            got = scores.get(name) or {}
            if not got.get("parent"):
                return "–"
            return f"{got['parent'][metric]} -> {got['candidate'][metric]}"
        table.add_row(v["name"], v.get("parent") or "–", v["status"], v.get("created_at", "(ecombot train)"),
                      f"{len(v.get('feedback_ids', []))} / {len(v.get('held_out_ids', []))}", str(v.get("steps", "–")),
                      pair("guard", "sure"), pair("feedback", "loss"), v.get("reason", ""))
    console.print(table)


@adapter_app.command("rollback")
def adapter_rollback(run: Path = typer.Argument(..., help="Run directory of a trained adapter."),
                     version: str = typer.Argument(..., help="The version to make live again (e.g. v1).")) -> None:
    """Make an earlier version live again; a running `ecombot serve` switches to it within seconds."""
    from ecombot.learn import rollback

    lineage = rollback(run, version)
    console.print(f"{run}: {lineage['live']} is live")


@app.command()
def learn(
    adapter: Path = typer.Option(..., help="Run directory of the adapter to improve (the one `serve` answers with)."),
    served_as: Optional[str] = typer.Option(None, help="The adapter's name in `serve` (--adapter NAME=DIR), whose "
                                            "answers' feedback is used (default: the directory's name)."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the conversation store (default: "
                                                "$ECOMBOT_HOME/ecombot.db)."),
    since: Optional[datetime] = typer.Option(None, help="Only feedback reviewed at or after this date (UTC)."),
    dry_run: bool = typer.Option(False, help="Say what would be trained on, train nothing."),
    feedback_repeats: int = typer.Option(1, min=1, help="Times each feedback item is trained a pass among the "
                                         "replayed conversations: 3 learnt the corrections harder and kept fewer of "
                                         "the guard's facts (README, Learning from feedback)."),
) -> None:
    """Train the next version of an adapter on reviewed feedback, from the live version, with a replay of its training
    data; it goes live only if the feedback improves and the guard set does not regress (`adapter versions`)."""
    from datetime import timezone

    from ecombot.learn import Recipe, learn as learn_from_feedback

    moment = since.replace(tzinfo=timezone.utc) if since is not None and since.tzinfo is None else since
    result = learn_from_feedback(adapter, db=db, served_as=served_as, since=moment, dry_run=dry_run,
                                 say=console.print, recipe=Recipe(feedback_repeats=feedback_repeats))
    if result.version is None:
        console.print(result.reason)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory of a trained adapter."),
    output: Path = typer.Option(..., help="Directory to write (created; complete or not at all)."),
    format: str = typer.Option("merged", help="merged: Transformers safetensors with the adapter merged in (loads in "
                               "AutoModelForCausalLM, vLLM). gguf: the merged model as one llama.cpp GGUF (--quant). "
                               "lora-gguf: the base GGUF it was trained against + the adapter as a LoRA GGUF (llama.cpp "
                               "--lora; for a LoRA run on a GGUF base, no merge and no requantisation). ollama: the "
                               "GGUF files and a Modelfile for `ollama create`. Each carries the training chat "
                               "template and its end-of-turn stop."),
    quant: Optional[str] = typer.Option(None, help="gguf/ollama: f16 (default for gguf), q8_0 (llama.cpp's converter) "
                                        "or q4_k_m (llama.cpp's quantizer: needs `pip install 'ecombot[llama-cpp]'`). "
                                        "With ollama, a --quant exports a merged GGUF instead of the LoRA."),
    version: Optional[str] = typer.Option(None, help="Version of the adapter (default: the live one; see "
                                          "`ecombot adapter versions`)."),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists."),
) -> None:
    """Take a trained bot out of ecombot, in a format other tools load."""
    from ecombot.export import FORMATS

    if format not in FORMATS:
        fail(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if quant is not None and format not in ("gguf", "ollama"):
        fail(f"--quant applies to --format gguf and ollama, not {format}")
    options = {"quant": quant or "f16"} if format == "gguf" else {"quant": quant} if format == "ollama" else {}
    record = FORMATS[format](run, output, version=version, overwrite=overwrite, **options)
    what = {"merged": "merged in (safetensors)", "gguf": f"merged in ({record.get('quant')} GGUF)",
            "lora-gguf": "as a LoRA GGUF beside its base GGUF",
            "ollama": "with a Modelfile for `ollama create`"}[format]
    console.print(f"{record['output']}: {record['base_model']} with {record['run']} ({record['version']}, "
                  f"{record['method']}) {what}; chat template of training, stops at "
                  f"{', '.join(record['stop_tokens'])}. How to run it: {record['output']}/README.md")
    if record["grounded"]:
        console.print(f"The bot was trained grounded in knowledge base '{record['knowledge']['name']}': see the "
                      "README for the prompt layout it expects.")


def split_keys(specs: List[str]) -> List[str]:
    """Keys given as repeated flags, or comma-separated in one environment variable."""
    return [k.strip() for spec in specs for k in spec.split(",") if k.strip()]


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, help="Base model (default: the first adapter's, else gemma-3-270m)."),
    adapter: List[str] = typer.Option([], help="NAME=RUN_DIR (repeatable); the request's `model` picks one. "
                                               "No adapter: the base model is served."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: List[str] = typer.Option([], envvar="ECOMBOT_API_KEYS",
                                      help="Accepted Bearer key (repeatable; env ECOMBOT_API_KEYS, comma-separated)."),
    review_key: List[str] = typer.Option([], envvar="ECOMBOT_REVIEW_KEYS",
                                         help="API key that may also approve customers' suggestions for training "
                                              "(/v1/reviews; repeatable; env ECOMBOT_REVIEW_KEYS, comma-separated)."),
    session_secret: Optional[Path] = typer.Option(None, help="File with the secret that signs chat page sessions "
                                                  "(default $ECOMBOT_HOME/session_secret, made on first start, mode "
                                                  "0600); give every replica the same file."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the conversation store and the knowledge base "
                                                "(default: sqlite:///$ECOMBOT_HOME/ecombot.db; postgresql+psycopg://...)."),
    knowledge: Optional[str] = typer.Option(None, help="Knowledge base the answers come from, or 'none' (default: "
                                            "the one the first adapter trained with, else 'default')."),
    k: Optional[int] = typer.Option(None, min=1, help="Passages per question (default: the run's, else 3)."),
    reuse_answers: bool = typer.Option(True, help=REUSE_HELP),
    check_facts: bool = typer.Option(True, help=CHECK_FACTS_HELP),
    redact: bool = typer.Option(True, help="Remove e-mails, phone and card numbers before anything is stored."),
    cors_origin: List[str] = typer.Option([], help="Allowed browser origin for CORS (repeatable; default: CORS off)."),
    web: bool = typer.Option(True, help="Serve the customer chat page at /."),
    max_batch: int = typer.Option(8, help="Requests generated together."),
    max_queue: int = typer.Option(64, help="Waiting requests before new ones get 503."),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="Largest max_tokens a request may ask for (default: 512, "
                                             "or the default answer length if that is longer; below it, it cuts the "
                                             "default)."),
    default_max_tokens: Optional[int] = typer.Option(None, min=1, help="Answer length when a request does not say "
                                                     "(default: per adapter, room for the longest answer the "
                                                     "version it answers with trained on, at least 200; the base model: the longest "
                                                     "of those)."),
    rate_limit: int = typer.Option(60, help="Requests per minute per client (0: no limit)."),
    max_request_kb: int = typer.Option(64, help="Largest request body in KiB."),
    decode_bits: int = typer.Option(8, help="As for chat. Serving an adapter, int8 measured 11.7 vs 4.1 tokens/s "
                                            "with bf16 at concurrency 1 and 18.3 vs 17.6 at 8 (AMX Xeon); "
                                            "54-61 vs 33-35 at 8 with fp32 weights (AVX-512 Xeon) "
                                            "(benchmarks/serve_load.py)."),
    reload_every: float = typer.Option(5.0, help="Seconds between checks for an adapter version `ecombot learn` "
                                                 "promoted (or `adapter rollback` restored), swapped in without a "
                                                 "restart; 0: never."),
    engine: str = typer.Option("transformers", help=ENGINE_HELP),
) -> None:
    """Serve the bot: OpenAI-compatible API (/v1/chat/completions), web chat page (/), conversation store."""
    from ecombot.chat import Decoding, adapters_answer_limit, open_engine, open_knowledge
    from ecombot.home import ecombot_home
    from ecombot.models import base_model_spec
    from ecombot.serve import ServeConfig, Store, create_app, parse_adapters, run_server
    from ecombot.serve.tasks import CatalogTasks

    adapters = parse_adapters(adapter)
    fitted = default_max_tokens is None  # then each adapter's answers are sized by its own data (ServerState)
    if fitted:
        default_max_tokens = adapters_answer_limit([path for _, path in adapters])
        if max_tokens is not None and max_tokens < default_max_tokens:
            err.print(f"note: answers are cut at --max-tokens {max_tokens}, below the {default_max_tokens} tokens the "
                      "adapters' longest trained answers need")
            default_max_tokens = max_tokens
    max_tokens = max_tokens or max(512, default_max_tokens)
    tasks = CatalogTasks.of_adapters(adapters)
    support_runs = [path for name, path in adapters if tasks.task(name) == "support"]
    base_spec = base_model_spec(model, adapters[0][1] if adapters else None)
    config = ServeConfig(model_name=Path(base_spec).name, api_keys=split_keys(api_key), review_keys=split_keys(review_key),
                         cors_origins=cors_origin, web=web,
                         session_secret_file=session_secret or ecombot_home() / "session_secret",
                         max_request_bytes=max_request_kb * 1024, max_tokens=max_tokens,
                         default_max_tokens=default_max_tokens, rate_limit_per_minute=rate_limit,
                         max_batch=max_batch, max_queue=max_queue, reload_every_s=reload_every)
    store = Store(db, redact_text=redact)
    grounder, grounded = open_knowledge(support_runs, knowledge, db, k, reuse_answers, check_facts)
    bot = open_engine(model, adapters, Decoding(max_new_tokens=default_max_tokens), engine=engine,
                      decode_bits=decode_bits, max_batch=max_batch)
    if any(tasks.task(name) == "recommend" for name, _ in adapters):
        bot.grammar_tokenizer.get()  # ~10 s for Gemma's vocabulary: at start-up, not in the first request's batch
    app = create_app(bot, store, config, grounder, tasks, dict(adapters) if fitted else None)
    names = ", ".join([*(f"{n} ({tasks.task(n)})" if tasks.task(n) != "support" else n for n in bot.adapters()),
                       "base"])
    console.print(f"serving {names} with {engine} on http://{host}:{port} (chat page: {'/' if web else 'off'}; "
                  f"API keys: {len(config.api_keys) or 'none'}, review keys: {len(config.review_keys) or 'none'}; "
                  f"store: {store.engine.url.render_as_string(hide_password=True)}; {grounded})")
    if not run_server(app, host, port):
        raise typer.Exit(1)


@conversations_app.command("export")
def conversations_export(
    output: Path = typer.Option(..., help="Chat JSONL file to write (ecombot train reads it)."),
    rated: bool = typer.Option(False, help="Only answers whose rating a reviewer approved (`conversations review`), "
                                           "with approved corrections in place of wrong answers."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the store (default: $ECOMBOT_HOME/ecombot.db)."),
) -> None:
    """Export stored conversations as training data: the path from reviewed feedback back to `ecombot train`.

    Customers' corrections are used only once a reviewer approved them."""
    from ecombot.serve import Store

    report = Store(db).export(output, rated_only=rated)
    console.print(f"wrote {report.written} conversation(s) to {output}")
    for reason, count in report.skipped.items():
        console.print(f"skipped {count}: {reason}")


@conversations_app.command("review")
def conversations_review(
    approve: List[int] = typer.Option([], help="Suggestion id to approve for training (repeatable)."),
    reject: List[int] = typer.Option([], help="Suggestion id to reject (repeatable)."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the store (default: $ECOMBOT_HOME/ecombot.db)."),
) -> None:
    """Review customers' ratings and corrections: list those waiting, approve or reject them by id.

    Only approved suggestions reach `conversations export`: anonymous customers cannot write training data."""
    import getpass

    from ecombot.serve import Store

    store = Store(db)
    reviewer = f"cli:{getpass.getuser()}"[:64]
    for ids, approved in ((approve, True), (reject, False)):
        for suggestion_id in ids:
            store.review(suggestion_id, approved, reviewer)
    if approve or reject:
        console.print(f"approved {len(approve)}, rejected {len(reject)}")
    pending = store.pending_suggestions()
    table = Table("id", "rating", "question", "answer", "suggested answer", title=f"{len(pending)} waiting for review")
    for s in pending:
        table.add_row(str(s.id), "up" if s.rating > 0 else "down", s.question, s.answer, s.correction or "(the answer as it is)")
    console.print(table)


@conversations_app.command("handoffs")
def conversations_handoffs(
    all_: bool = typer.Option(False, "--all", help="Also the handed-over conversations an agent answered or closed."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the store (default: $ECOMBOT_HOME/ecombot.db)."),
) -> None:
    """The conversations handed over to an agent, oldest first: answer one with `conversations answer`, or close one
    without an answer with `conversations close`."""
    from ecombot.serve import Store

    found = Store(db).handoffs(waiting_only=not all_)
    waiting = sum(h.answered_by is None for h in found)
    table = Table("conversation", "handed over", "note", "question", "bot's last answer", "answered by",
                  title=f"{waiting} handed-over conversation(s) waiting for an agent")
    for h in found:
        done = f"{h.answered_by} (closed: {h.closed_because})" if h.closed_because else h.answered_by
        table.add_row(h.conversation_id, f"{h.handed_over_at:%Y-%m-%d %H:%M}", h.note or "", h.question, h.answer,
                      done or "")
    console.print(table)


@conversations_app.command("answer")
def conversations_answer(
    conversation_id: str = typer.Argument(..., help="A handed-over conversation (`conversations handoffs`)."),
    answer: str = typer.Argument(..., help="The agent's answer to the customer's last question."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the store (default: $ECOMBOT_HOME/ecombot.db)."),
) -> None:
    """Record an agent's answer to a handed-over conversation. It becomes approved training data in place of the
    bot's last answer: the next `ecombot learn` teaches the bot to answer such a question instead of handing over."""
    import getpass

    from ecombot.serve import Store

    Store(db).answer_handoff(conversation_id, answer, f"cli:{getpass.getuser()}"[:64])
    console.print(f"answered {conversation_id}: the next `ecombot learn` trains on it")


@conversations_app.command("close")
def conversations_close(
    conversation_id: str = typer.Argument(..., help="A handed-over conversation (`conversations handoffs`)."),
    because: str = typer.Argument(..., help="Why it is closed without an answer (\"solved by phone\", \"spam\")."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the store (default: $ECOMBOT_HOME/ecombot.db)."),
) -> None:
    """Close a handed-over conversation without an answer to learn from: it stops waiting, nothing is trained on."""
    import getpass

    from ecombot.serve import Store

    Store(db).close_handoff(conversation_id, because, f"cli:{getpass.getuser()}"[:64])
    console.print(f"closed {conversation_id}: no longer waiting for an agent, nothing to train on")


# --- ecombot knowledge: the store's documents and Q&A pairs that answers are grounded in -------------------------
knowledge_app = typer.Typer(help="The store's knowledge base: documents and Q&A pairs answers are grounded in.",
                            no_args_is_help=True)
app.add_typer(knowledge_app, name="knowledge")
KNOWLEDGE_NAME = typer.Option("default", "--name", help="Knowledge base name (several can share one database).")
KNOWLEDGE_DB = typer.Option(None, "--db", help="SQLAlchemy URL of the database (default: $ECOMBOT_HOME/ecombot.db).")


@knowledge_app.command("add")
def knowledge_add(
    files: List[Path] = typer.Argument(None, help="Markdown, text or HTML documents, or data files in any supported "
                                                  "format (each question/answer pair becomes a passage)."),
    catalog: List[str] = typer.Option([], help="A product catalog (CSV, JSON, JSON Lines, or 'builtin'; "
                                               "repeatable): one passage per product, for questions about products."),
    name: str = KNOWLEDGE_NAME,
    db: Optional[str] = KNOWLEDGE_DB,
) -> None:
    """Add files to the knowledge base; a file added again replaces its earlier version."""
    from ecombot.catalog.knowledge import catalog_passages
    from ecombot.knowledge import KnowledgeBase

    if not files and not catalog:
        raise EcombotError("name the files to add, or --catalog FILE")
    catalogs = [catalog_passages(path) for path in catalog]
    names = [f.name for f in files or []] + [source for source, _ in catalogs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EcombotError(f"two sources named {twice[0]!r} in one command: each file name is one source (a later "
                           "one would replace the first); rename one")
    base = KnowledgeBase(db, name)
    summaries = base.add_files(files or [])
    summaries += [base.add_passages(source, passages, kind="document") for source, passages in catalogs]
    for summary in summaries:
        console.print(f"{summary.name}: {summary.status}, {summary.passages} passage(s)")


@knowledge_app.command("list")
def knowledge_list(name: str = KNOWLEDGE_NAME, db: Optional[str] = KNOWLEDGE_DB) -> None:
    """The sources in the knowledge base."""
    from ecombot.knowledge import KnowledgeBase

    sources = KnowledgeBase(db, name).sources()
    table = Table("source", "kind", "passages", "sha256", "added", title=f"knowledge base '{name}': "
                  f"{len(sources)} source(s)")
    for s in sources:
        table.add_row(s.name, s.kind, str(s.passages), s.sha256[:12], f"{s.added_at:%Y-%m-%d %H:%M}")
    console.print(table)


@knowledge_app.command("remove")
def knowledge_remove(source: str = typer.Argument(..., help="Source name as `knowledge list` shows it."),
                     name: str = KNOWLEDGE_NAME, db: Optional[str] = KNOWLEDGE_DB) -> None:
    """Remove a source and its passages."""
    from ecombot.knowledge import KnowledgeBase

    console.print(f"removed {source}: {KnowledgeBase(db, name).remove(source)} passage(s)")


@knowledge_app.command("search")
def knowledge_search(question: str = typer.Argument(..., help="A customer's question."),
                     k: Optional[int] = typer.Option(None, "-k", help="Passages to show (default: the adapter's, "
                                                                      "else 3)."),
                     name: Optional[str] = typer.Option(None, "--name", help="Knowledge base name (default: the "
                                                                             "adapter's, else 'default')."),
                     db: Optional[str] = KNOWLEDGE_DB,
                     adapter: Optional[Path] = typer.Option(None, help="Search as this run's bot does: its knowledge "
                                                                       "base and k, and its own training pairs "
                                                                       "(never another run's).")) -> None:
    """The passages a question retrieves, whether they cover it (else the bot hands off), and whether a stored answer
    is given as written (the closest stored question's cosine)."""
    from ecombot.chat import open_knowledge
    from ecombot.knowledge import REUSE_THRESHOLD

    if name == "none":
        raise EcombotError("--name none: no knowledge base to search")
    grounder, said = open_knowledge(adapter, name or (None if adapter else "default"), db, k, check_facts=False)
    if grounder is None:
        raise EcombotError(f"nothing to search: {said}")
    messages = [{"role": "user", "content": question}]
    grounding = grounder.ground(messages)
    for hit in grounding.hits:
        p = hit.passage
        console.print(f"{hit.score:.3f}  {p.source}:{p.line}  {p.heading or '-'}", highlight=False)
        console.print(f"       {(p.question + ' -> ' if p.question else '') + p.text}", highlight=False, soft_wrap=True)
    retriever = grounder.retriever
    if not grounding.covered:
        verdict = "not covered: the bot hands off"
    elif grounding.reused:
        verdict = (f"covered; the stored answer of {grounding.reused.passage.question!r} is given as written "
                   f"(question cosine {grounding.reuse_cosine:.2f} >= {REUSE_THRESHOLD:.2f})")
    else:  # the closest stored question is asked again only here (its vectors are kept: no new embedding)
        closest = grounder.closest_pairs([messages], [grounding.hits])[0]
        verdict = "covered; the model answers from these passages" + (
            f" (closest stored question {closest[0].passage.question!r}: cosine {closest[1]:.2f} < "
            f"{REUSE_THRESHOLD:.2f})" if closest else "")
    console.print(f"{verdict} (thresholds: Q&A pairs {retriever.threshold:.2f}, documents "
                  f"{retriever.document_threshold:.2f})", highlight=False, soft_wrap=True)


@app.command()
def quickstart(
    output: str = typer.Option("runs/quickstart", help="Run directory for the quickstart adapter."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps of the budget in use (default: 200; 60 where "
                                                   "training runs in fp32 on a CPU, unless --full)."),
    full: bool = typer.Option(False, "--full", help="The full budget (200 steps at lr 1e-3, 32 questions per set) even "
                                                    "on a CPU without native bf16 (about 2.5x the short budget's time "
                                                    "there)."),
) -> None:
    """The main job: fine-tune the default model on the built-in data and compare it with the base model."""
    from ecombot.quickstart import run

    run(output=output, max_steps=max_steps, console=console, full=full)


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    sys.exit(1)


def main() -> None:
    """Entry point: user-fixable problems become one red line and exit code 1, not a traceback."""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    # Library deprecation notices and per-file loading bars are noise in a terminal tool.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    try:
        app()
    except EcombotError as exc:
        fail(str(exc))
    except (MemoryError, torch.OutOfMemoryError):
        fail("out of memory. Try a smaller --batch-size, a shorter max_length, or --method qlora; "
             "checkpoints written so far are kept (continue with --resume).")
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        fail(f"the disk is full ({exc.filename or 'while writing'}). Free some space and continue with --resume; "
             "completed checkpoints are kept.")
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        fail("out of memory. Try a smaller --batch-size or --method qlora; continue with --resume.")
