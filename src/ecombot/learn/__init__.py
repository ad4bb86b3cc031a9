"""Learning from reviewed feedback: each `ecombot learn` trains the next version of an adapter from the live one,
on the new approved answers mixed with a replay of what it was trained on, and promotes it only if it helped and
kept what the bot knew (loop.py); the versions live in the run directory (run_dir.py)."""

from ecombot.learn.loop import LearnResult, Recipe, learn, rollback, versions

__all__ = ["LearnResult", "Recipe", "learn", "rollback", "versions"]
