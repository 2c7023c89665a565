"""The embedded toy world: a closed synthetic assistant domain where post-training effects are visible.

- :mod:`~posttrain.world.kb` — the fictional knowledge base (200 facts about lands, cities, people);
- :mod:`~posttrain.world.tasks` — prompt families (fact, emotional, howto, arith, reason) and their parser;
- :mod:`~posttrain.world.responses` — good and bad responses of every kind;
- :mod:`~posttrain.world.gold` — the hidden gold reward and its parts;
- :mod:`~posttrain.world.annotators` — noisy, length-biased Bradley–Terry / Plackett–Luce labellers;
- :mod:`~posttrain.world.corpus`, :mod:`~posttrain.world.datasets` — every dataset, from one seed;
- :mod:`~posttrain.world.build` — ``build_world`` (datasets + tokenizer + pretrained base model, cached);
- :mod:`~posttrain.world.evaluate` — gold-only judging (win rate, summaries) and eval prompt loaders;
- :mod:`~posttrain.world.show`, :mod:`~posttrain.world.check` — look at it, measure it.

Importing this package is light (no torch); the build imports torch/transformers when it needs them.
"""

from posttrain.world.annotators import Annotator, AnnotatorPool
from posttrain.world.build import WorldPaths, build_world, default_world_dir, load_world
from posttrain.world.evaluate import eval_prompts, eval_rows, gold_summary, win_rate
from posttrain.world.gold import (extract_answer, gold_components, gold_reward, is_correct, is_correct_arith,
                                  is_correct_fact, is_helpful)
from posttrain.world.tasks import FAMILIES, family_of, parse_prompt

__all__ = ["build_world", "load_world", "default_world_dir", "WorldPaths", "gold_reward", "gold_components",
           "is_helpful", "is_correct", "is_correct_fact", "is_correct_arith", "extract_answer", "family_of",
           "parse_prompt", "FAMILIES", "Annotator", "AnnotatorPool", "win_rate", "gold_summary", "eval_prompts",
           "eval_rows"]
