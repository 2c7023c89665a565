"""`posttrain <command>`: parse a config, call one stage or recipe. No logic beyond parsing and dispatch."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from posttrain.errors import UserError


@dataclass(frozen=True)
class Command:
    config: str | None  # "module:Class" of the config, None for commands with their own arguments
    run: str            # "module:function"; called with the config (or the argparse namespace)
    help: str


COMMANDS: dict[str, Command] = {
    "pretrain": Command("posttrain.config:PretrainConfig", "posttrain.stages.pretrain:run",
                        "language-model training on `text` data"),
    "sft": Command("posttrain.config:SFTConfig", "posttrain.stages.sft:run",
                   "instruction tuning on prompt-completion or conversational data"),
    "reward-model": Command("posttrain.config:RewardModelConfig", "posttrain.stages.reward_model:run",
                            "train a scalar reward model on preference pairs or K-wise rankings"),
    "score": Command("posttrain.config:ScoreConfig", "posttrain.stages.reward_model:score",
                     "score prompt/completion rows with a reward model"),
    "dpo": Command("posttrain.config:DPOConfig", "posttrain.stages.dpo:run",
                   "direct alignment: DPO, IPO, SimPO, ORPO, KTO, ... (--loss NAME)"),
    "preference-data": Command("posttrain.config:PreferenceDataConfig", "posttrain.stages.dpo:preference_data",
                               "sample K completions per prompt, score them, write preference pairs"),
    "rl": Command("posttrain.config:RLConfig", "posttrain.stages.rl:run",
                  "KL-regularised RL: PPO, REINFORCE, RLOO, GRPO (and variants)"),
    "rejection-sampling": Command("posttrain.config:RejectionSamplingConfig",
                                 "posttrain.stages.rejection_sampling:run",
                                 "best of N samples per prompt, then SFT on them"),
    "best-of-n": Command("posttrain.config:BestOfNConfig", "posttrain.stages.rejection_sampling:best_of_n",
                         "proxy and gold reward of best-of-n sampling vs analytic KL"),
    "recipe": Command(None, "posttrain.recipes:main", "run a multi-stage recipe: instructgpt, tulu3, r1 or a "
                                                      "YAML file"),
    "demo": Command(None, "posttrain.recipes.demo:main", "the toy-world pipeline end to end (make demo)"),
    "report": Command(None, "posttrain.eval.report:main", "write an HTML report for a run directory"),
    "world": Command(None, "posttrain.world.cli:main", "build or show the embedded toy world"),
    "check-data": Command(None, "posttrain.data.cli:main", "validate a dataset file and print its kind"),
}


def _resolve(path: str):
    mod, _, attr = path.partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod or mod.startswith(e.name + ".")):
            return None
        raise
    return getattr(module, attr, None)


def _require(name: str, cmd: Command):
    fn = _resolve(cmd.run)
    if fn is None:
        raise UserError(f"`posttrain {name}` is not available in this version yet")
    return fn


def _config_help(name: str, cmd: Command, cls) -> str:
    from posttrain.config import describe_fields

    rows = describe_fields(cls)
    w_key = max(len(r[0]) for r in rows)
    w_type = min(max(len(r[1]) for r in rows), 40)
    lines = [f"usage: posttrain {name} [--config FILE.yaml] [key=value ...]", "", cmd.help, "",
             "Config keys (YAML file and/or key=value overrides; dotted keys for nested blocks):", ""]
    for key, tname, default, doc in rows:
        lines.append(f"  {key:<{w_key}}  {tname:<{w_type}}  default {default}")
        if doc:
            lines.append(f"  {'':<{w_key}}  {doc}")
    return "\n".join(lines)


def _top_help() -> str:
    w = max(len(n) for n in COMMANDS)
    lines = ["usage: posttrain <command> [--config FILE.yaml] [key=value ...]", "",
             "Post-training language models with human feedback.", "", "commands:"]
    for name, cmd in COMMANDS.items():
        lines.append(f"  {name:<{w}}  {cmd.help}")
    lines += ["", "`posttrain <command> --help` lists every config key with its type, default and meaning."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_top_help())
        return 0
    name, rest = argv[0], argv[1:]
    cmd = COMMANDS.get(name)
    if cmd is None:
        import difflib

        hint = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"error: unknown command '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
              + "; see `posttrain --help`", file=sys.stderr)
        return 2
    try:
        if cmd.config is None:
            fn = _require(name, cmd)
            return int(fn(rest) or 0)
        cls = _resolve(cmd.config)
        parser = argparse.ArgumentParser(prog=f"posttrain {name}", add_help=False)
        parser.add_argument("-h", "--help", action="store_true")
        parser.add_argument("--config", "-c", default=None)
        parser.add_argument("overrides", nargs="*")
        # `--key value` / `--key=value` spellings are accepted too (e.g. `posttrain dpo --loss ipo`).
        args, unknown = parser.parse_known_args(_long_options_to_overrides(rest))
        if unknown:
            raise UserError(f"unrecognised argument '{unknown[0]}' (config keys are given as key=value)")
        if args.help:
            print(_config_help(name, cmd, cls))
            return 0
        from posttrain.config import load_config

        cfg = load_config(cls, args.config, args.overrides)
        fn = _require(name, cmd)
        fn(cfg)
        return 0
    except UserError as e:
        if "posttrain.engine.run" in sys.modules:  # a stage ran: remove run directories it left unstarted
            sys.modules["posttrain.engine.run"].discard_unstarted_runs()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _long_options_to_overrides(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and a not in {"--config", "--help"} and not a.startswith("--config="):
            key = a[2:]
            if "=" in key:
                out.append(key)
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                out.append(f"{key}={args[i + 1]}")
                i += 1
            else:
                out.append(f"{key}=true")
        else:
            out.append(a)
        i += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
